"""The plain values that cross between the scheduler and the model runner, as in vLLM v1.

The scheduler describes each step once (`SchedulerOutput`): for every scheduled sequence, the
tokens it computes, where they go, and what the step must produce from them (a sample, or with
k proposals to verify up to 1 + k tokens; prompt logprobs). The runner answers with what it
produced (`ModelRunnerOutput`). Neither side sees the other's objects: sequences are named by
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
class DraftWork:
    """What a draft model computes before proposing: its own cache holds the sequence's
    positions below `start`, so it first runs `token_ids` (positions start onwards, up to and
    including the scheduled sequence's token)."""
    start: int
    token_ids: list[int]


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
    # A beam of a beam search: instead of a sample, its this-many best next tokens (its offers).
    num_beam_candidates: int = 0
    # Speculative decoding (a decode only): proposals to verify after token_ids, one more query
    # row each; n-gram lookup makes them in the scheduler, a draft model in the runner
    # (`num_draft_tokens` of them, its cache caught up by `draft`). Slots are reserved for all.
    spec_token_ids: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0
    draft: DraftWork | None = None
    num_proposals: int = 0  # len(spec_token_ids) + num_draft_tokens: the rows it verifies


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence]  # in scheduling order
    new_seqs: list[NewSequence]         # in the order their requests arrived
    finished_seq_ids: list[int]         # finished or aborted since the last step: their state goes
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
    # seq_id -> the tokens it takes, where it samples: one, or for a speculating decode the
    # proposals the target accepted and then one token of the target's own.
    sampled: dict[int, list[int]]
    logprobs: dict[int, list[TokenLogprobs]]         # seq_id -> those tokens' logprobs, where asked
    prompt_logprobs: dict[int, list[TokenLogprobs]]  # seq_id -> its prompt_logprob_ids' logprobs
    # seq_id -> a beam's offers: its best next tokens and their logprobs, best first
    beam_offers: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)
    # seq_id -> a pooling sequence's result: its embedding, or its scores
    pooled: dict[int, np.ndarray] = field(default_factory=dict)
