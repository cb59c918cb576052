"""Requests and their sequences: the token state the scheduler and block manager work on.

A request with `n` samples owns `n` sequences; each has its own tokens and KV blocks, and they
share prompt blocks through the prefix cache. A request may instead own a group of sequences
that advance together (`Request.group`: a beam search's beams), sharing blocks copy-on-write.
A sequence's tokens are kept here only: each step hands the model runner the tokens it
computes. (Random generators, penalty counts and grammar matchers are the runner's own, keyed
by seq id: runner/seq_state.py.)

Each field of a sequence has one writer, named beside it below: its identity is set when it
is made; its tokens and its lifecycle (status, preemptions, finish) the scheduler's; its KV state
(block table, computed, cached and hashed counts) the block manager's; its output (text,
logprobs) the output processor's. After a step, the output processor reads what the runner
produced and says what follows (`StepDecisions`: the tokens each sequence takes, the sequences
that finish and why, a group's forks); the scheduler applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Protocol

from nanovllm.contract.step import NewSequence
from nanovllm.values.outputs import RequestMetrics, RequestOutput
from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.sampling_params import SamplingParams

Finish = tuple[str, int | str | None]  # (finish_reason, stop_reason)


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class SequenceGroup(Protocol):
    """A policy for sequences that advance together (beam_search.BeamGroup): each step every
    member offers its `num_candidates` most likely next tokens; once all have (`ready`), the
    policy picks the next members, each a parent's tokens plus one (`advance`: (parent index,
    token) pairs, or None when the group is done), which the scheduler makes (`Fork`). The
    scheduler runs a group's members all or none, in `width` slots."""
    width: int
    num_candidates: int

    def offer(self, seq: Sequence, candidates: tuple[list[int], list[float]]) -> None: ...
    def ready(self, seqs: list[Sequence]) -> bool: ...
    def advance(self, seqs: list[Sequence]) -> list[tuple[int, int]] | None: ...
    def output(self, request: Request, decode, decode_token) -> RequestOutput: ...


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
    group: SequenceGroup | None = None  # its sequences advance together (a beam search)
    # Computed whole in one step, for a pooled result instead of tokens; nothing of it is kept
    # after that step (no KV, no prefix cache), and then it is finished.
    pooling: PoolingParams | None = None
    token_type_ids: list[int] | None = None  # which text of a pair each prompt token is in
    pooled: object = None  # its result (an embedding or scores), once computed
    metrics: RequestMetrics | None = None  # set by the engine when the request arrives
    adapter_id: int = 0  # the loaded adapter (LoRA) its tokens run through; 0: the base model
    priority: int = 0  # lower goes first under the 'priority' scheduling policy

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.seqs)


@dataclass(slots=True, eq=False)
class Sequence:
    # Identity, set when it is made (output_processor.new_sequence).
    seq_id: int
    request: Request
    index: int                                   # which of the request's n samples
    # Tokens and lifecycle: written by the scheduler only.
    token_ids: list[int]                         # prompt followed by generated tokens
    status: SequenceStatus = SequenceStatus.WAITING
    num_preemptions: int = 0                     # times its blocks were freed to make room
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # KV state: written by the block manager only.
    num_computed_tokens: int = 0                 # tokens whose K/V are in the cache
    num_cached_tokens: int = 0                   # of those, reused from the prefix cache
    block_table: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0                   # full blocks registered in the prefix cache
    # Output: written by the output processor only, which builds RequestOutputs from it.
    text: str = ""
    detok: object = None
    logprobs: list | None = None
    cumulative_logprob: float | None = None

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
    def priority(self) -> int:
        return self.request.priority

    @property
    def is_finished(self) -> bool:
        """A finish rule ended it (or it was aborted); the scheduler retires it in the same step."""
        return self.finish_reason is not None

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


@dataclass(slots=True)
class Fork:
    """A group's next members, made all at once (`Scheduler.fork`): member i takes the tokens
    of `request.seqs[parents[i]]` plus `tokens[i]`, and shares that parent's blocks (copy on
    write), so a parent may itself be replaced. `children` are the members it gains (its first
    round: the prompt's sequence forks into the group)."""
    request: Request
    parents: list[int]
    tokens: list[int]
    children: list[Sequence]


@dataclass(slots=True)
class StepDecisions:
    """What the output processor made of a step's outputs, for the scheduler to apply: the
    tokens each sequence takes (in the step's order), the sequences that finish and why, and
    the groups' forks. `advanced` are the requests whose outputs moved."""
    tokens: list[tuple[Sequence, list[int]]] = field(default_factory=list)
    finished: list[tuple[Sequence, Finish]] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)
    advanced: list[Request] = field(default_factory=list)
