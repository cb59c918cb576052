"""What the engine returns, shaped like vLLM's RequestOutput."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int
    decoded_token: str


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None        # "stop", "length" or "abort"
    stop_reason: int | str | None = None    # the stop string or stop token id that ended it


@dataclass(slots=True)
class RequestMetrics:
    """When a request reached each phase, on the engine's clock (time.perf_counter): vLLM's
    queue, prefill, decode and inference times are differences of these."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None  # the request's timeline, on its finished output


@dataclass(slots=True)
class BeamSearchSequence:
    """One beam, as vLLM's LLM.beam_search returns it: `tokens` are the prompt's followed by
    the beam's (its EOS too, if it ended on one); `text` is the completion alone, without EOS."""
    tokens: list[int]
    logprobs: list[dict[int, Logprob]]   # one entry per generated token: its own logprob
    cum_logprob: float
    text: str
    finish_reason: str                   # "stop" (EOS) or "length"
    score: float                         # what beams are ranked by: cum_logprob / len ** penalty


@dataclass(slots=True)
class BeamSearchOutput:
    sequences: list[BeamSearchSequence]  # best first


@dataclass(slots=True)
class PoolingOutput:
    """A pooling request's result, as vLLM's: an embedding's vector, or a cross-encoder's
    scores (one per label; a single-label model's one score)."""
    data: np.ndarray  # float32 [dimensions] or [num_labels]


@dataclass(slots=True)
class PoolingRequestOutput:
    request_id: str
    outputs: PoolingOutput
    prompt_token_ids: list[int]
    finished: bool = True
    metrics: RequestMetrics | None = None


@dataclass(slots=True)
class EmbeddingOutput:
    embedding: list[float]


@dataclass(slots=True)
class EmbeddingRequestOutput:
    """`LLM.embed`'s result per prompt (vLLM's)."""
    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: list[int]
    finished: bool = True


@dataclass(slots=True)
class ScoringOutput:
    score: float


@dataclass(slots=True)
class ScoringRequestOutput:
    """`LLM.score`'s result per pair (vLLM's)."""
    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]
    finished: bool = True
