"""What the engine returns, shaped like vLLM's RequestOutput."""

from __future__ import annotations

from dataclasses import dataclass


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
