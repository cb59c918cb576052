"""What the model runner keeps about each live sequence, keyed by its seq id: only what is its own.

The sequence's tokens live in the engine (`Sequence.token_ids`); each step tells the runner the
tokens it computes (nanovllm/contract/step.py). The runner keeps what it alone reads or makes:
the random generator a sampled sequence draws from, the penalty counts derived from its prompt
and from the tokens sampled for it, and its grammar matcher. A state is made (by the sampler's
`new_sequence_state`) in the step that first announces the sequence, kept while the sequence is
preempted (it resumes the same random stream), and dropped in the step after it finishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nanovllm.runner.structured import GrammarMatcher
from nanovllm.values.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class SequenceState:
    params: SamplingParams
    rng: np.random.Generator
    # logit_bias as arrays, made once: a step adds every row's bias in one indexing operation.
    bias_ids: np.ndarray
    bias_values: np.ndarray
    # stop_token_ids as an array: what min_tokens bans (with EOS, unless ignore_eos).
    stop_ids: np.ndarray
    allowed_ids: np.ndarray | None               # allowed_token_ids, if any
    penalty_counts: PenaltyCounts | None = None  # only where a penalty is asked for
    grammar: GrammarMatcher | None = None        # structured outputs: where the grammar is


class PenaltyCounts:
    """What the penalties read from one sequence: the distinct tokens it has seen (prompt and
    output, for repetition_penalty) and how often it generated each (presence and frequency).

    Made from the prompt when the sequence is announced, then brought up to date with each token
    the runner samples for it, as arrays the step indexes logits with: no step loops over the
    sequence's tokens in Python.
    """

    __slots__ = ("seen", "seen_ids", "output_slot", "output_ids", "output_counts")

    def __init__(self, prompt_token_ids: list[int]) -> None:
        distinct = list(dict.fromkeys(prompt_token_ids))
        self.seen: set[int] = set(distinct)
        self.seen_ids = np.array(distinct, np.int64)  # `seen` as an array, to index logits with
        self.output_slot: dict[int, int] = {}         # generated token -> its place in output_ids
        self.output_ids = np.empty(0, np.int64)       # each generated token once
        self.output_counts = np.empty(0, np.int64)    # and how often it was generated

    def add(self, token: int) -> None:
        """The sequence generated `token`."""
        slot = self.output_slot.get(token)
        if slot is None:
            slot = self.output_slot[token] = len(self.output_ids)
            self.output_ids = np.append(self.output_ids, token)
            self.output_counts = np.append(self.output_counts, 0)
        self.output_counts[slot] += 1
        if token not in self.seen:
            self.seen.add(token)
            self.seen_ids = np.append(self.seen_ids, token)
