"""The plain values that cross between the scheduler and the model runner, as in vLLM v1.

The scheduler describes each step once (`SchedulerOutput`): for every scheduled sequence, the
tokens it computes, where they go, and what the step must produce from them (a sample, or its
most likely next tokens; prompt logprobs), and the lookahead slots the runner may fill with
tokens of its own choosing, computed in the same step and kept only where the model agrees. The runner answers with what it produced
(`ModelRunnerOutput`). Neither side sees the other's objects: sequences are named by
their seq id. The tokens themselves live in the engine's sequences; the runner keeps only what
is its own (random generators, penalty counts, grammar matchers), from the step a sequence is
first announced in (`NewSequence`) until the scheduler reports it finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nanovllm.values.pooling_params import PoolingParams
from nanovllm.values.sampling_params import SamplingParams


@dataclass(slots=True)
class NewSequence:
    """A sequence the runner has not seen yet (it may be scheduled in a later step)."""
    seq_id: int
    index: int                   # which of its request's samples (seeds a seeded generator)
    params: SamplingParams
    prompt_token_ids: list[int]  # read once, for the distinct ids repetition_penalty reads
    # A sequence computed whole in one step for a pooled result instead of a sample.
    pooling: PoolingParams | None = None
    token_type_ids: list[int] | None = None  # which text of a pair each prompt token is in


@dataclass(slots=True)
class ScheduledSequence:
    """One sequence's work in a step: `token_ids` at positions [start, start + len(token_ids))."""
    seq_id: int
    token_ids: list[int]         # the new tokens this step computes
    start: int                   # the positions before it are already in the KV cache
    block_table: list[int]       # the scheduler's list, read during the step, never changed
    sample: bool                 # the chunk reaches the sequence's end: sample after its last
    num_output_tokens: int       # tokens the sequence generated before this step (min_tokens)
    # Prompt tokens scored for prompt logprobs: row i of this chunk scores prompt position
    # start + 1 + i (its next token); empty when the chunk scores none.
    prompt_logprob_ids: list[int] = field(default_factory=list)
    # Instead of a sample, its this-many most likely next tokens and their logprobs.
    num_candidates: int = 0
    # A decode only: KV slots reserved after token_ids for up to this many more tokens, which
    # the runner may fill and check in this step (each kept one is a token computed).
    num_lookahead: int = 0
    # The adapter the model applies to this sequence's rows (a loaded LoRA's id; 0: none).
    adapter_id: int = 0


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence]  # in scheduling order
    new_seqs: list[NewSequence]         # in the order their requests arrived
    finished_seq_ids: list[int]         # finished or aborted since the last step: their state goes
    # Preempted since the last step: whatever a runner kept in their KV blocks is gone.
    preempted_seq_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0                 # of all scheduled sequences together
    # Copy on write: block dst takes block src's K/V before the step writes anything.
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class TokenLogprobs:
    """Logprobs at one position: the chosen token first, then the top-N."""
    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]


@dataclass(slots=True)
class ModelRunnerOutput:
    # seq_id -> the tokens it takes, where it samples: one, or after lookahead the tokens the
    # model kept from its lookahead slots (their K/V computed in this step), then one more.
    sampled: dict[int, list[int]]
    logprobs: dict[int, list[TokenLogprobs]]         # seq_id -> those tokens' logprobs, where asked
    prompt_logprobs: dict[int, list[TokenLogprobs]]  # seq_id -> its prompt_logprob_ids' logprobs
    # seq_id -> its num_candidates most likely next tokens and their logprobs, best first
    candidates: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    # seq_id -> the lookahead slots the runner filled and checked (may be fewer than reserved)
    lookahead_filled: dict[int, int] = field(default_factory=dict)
    # seq_id -> a pooling sequence's result: its embedding, or its scores
    pooled: dict[int, np.ndarray] = field(default_factory=dict)
