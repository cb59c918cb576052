"""Requests and their sequences: the token state the scheduler and block manager work on.

A request with `n` samples owns `n` sequences; each has its own tokens and KV blocks, and they
share prompt blocks through the prefix cache. A sequence's tokens are kept here only: each step
hands the model runner the tokens it computes. (Random generators, penalty counts and grammar
matchers are the runner's own, keyed by seq id: runner/seq_state.py.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING

from nanovllm.contract.step import NewSequence
from nanovllm.values.outputs import RequestMetrics
from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.sampling_params import SamplingParams

if TYPE_CHECKING:
    from nanovllm.beam_search import BeamGroup


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)
    # One entry per prompt position (the first is None), filled as prefill chunks are computed.
    prompt_logprobs: list | None = None
    final_only: bool = False  # step() builds its RequestOutput only once it has finished
    beam: BeamGroup | None = None  # a beam search: its sequences are its live beams
    # Computed whole in one step, for a pooled result instead of tokens; nothing of it is kept
    # after that step (no KV, no prefix cache), and then it is finished.
    pooling: PoolingParams | None = None
    token_type_ids: list[int] | None = None  # which text of a pair each prompt token is in
    pooled: object = None  # its result (an embedding or scores), once computed
    metrics: RequestMetrics | None = None  # set by the engine when the request arrives

    @property
    def finished(self) -> bool:
        return all(s.status is SequenceStatus.FINISHED for s in self.seqs)


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request: Request
    index: int                                   # which of the request's n samples
    token_ids: list[int]                         # prompt followed by generated tokens
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0                 # tokens whose K/V are in the cache
    num_cached_tokens: int = 0                   # of those, reused from the prefix cache
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0                   # full blocks registered in the prefix cache
    num_preemptions: int = 0                     # times its blocks were freed to make room
    num_draft_computed: int = 0                  # tokens a draft model's cache holds (speculation)
    # Output state, read by the engine to build RequestOutputs.
    text: str = ""
    detok: object = None
    logprobs: list | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def prefill_only(self) -> bool:
        """Computed whole in one step and finished after it, keeping nothing (a pooling
        request): the scheduler never chunks it, looks it up in or adds it to the prefix cache."""
        return self.request.pooling is not None

    def announce(self) -> NewSequence:
        """What the runner is told of this sequence before its first step."""
        r = self.request
        return NewSequence(self.seq_id, self.index, r.params, r.prompt_token_ids, r.pooling,
                           r.token_type_ids)

    @property
    def computes_prompt_logprobs(self) -> bool:
        """The first sample, on its first pass over the prompt, scores every prompt token (so it
        must compute the whole prompt: cached positions produce no logits). The scheduler reads
        this rule to skip the prefix cache and to name the prompt tokens each chunk scores."""
        return (self.request.prompt_logprobs is not None and self.index == 0
                and self.num_output_tokens == 0)
