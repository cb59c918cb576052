"""The plain values that cross between the scheduler and the model runner, as in vLLM v1.

The scheduler says which sequences compute how many tokens this step (`SchedulerOutput`); the
runner answers with what it sampled (`ModelRunnerOutput`). Neither side sees the other's
objects: sequences are named by their seq id, and the runner keeps what it needs to sample a
sequence (its parameters, random generator, tokens) from the step it first appears in
(`NewSequence`) until the scheduler reports it finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.values.sampling_params import SamplingParams


@dataclass(slots=True)
class NewSequence:
    """A sequence the runner has not seen yet (it may be scheduled in a later step)."""
    seq_id: int
    index: int                   # which of its request's samples (seeds a seeded generator)
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(slots=True)
class ScheduledSequence:
    """One sequence's work in a step: positions [num_computed_tokens, + num_new_tokens)."""
    seq_id: int
    block_table: list[int]       # the scheduler's list, read during the step, never changed
    num_computed_tokens: int
    num_new_tokens: int


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledSequence]
    new_seqs: list[NewSequence]  # in the order their requests arrived
    finished_seq_ids: list[int]  # finished or aborted since the last step: their state goes


@dataclass(slots=True)
class TokenLogprobs:
    """Logprobs at one position: the chosen token first, then the top-N."""
    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]


@dataclass(slots=True)
class PromptLogprobs:
    """Logprobs of prompt tokens first_position + 1, first_position + 2, ... of one sequence."""
    seq_id: int
    first_position: int
    logprobs: list[TokenLogprobs]


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled: dict[int, int]                  # seq_id -> next token
    logprobs: dict[int, TokenLogprobs]       # seq_id -> its logprobs, where asked
    prompt_logprobs: list[PromptLogprobs]
