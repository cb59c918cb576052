"""The target's side of a speculative step: from the logits of one sequence's k + 1 rows (its
last token, then each proposal) to the tokens it keeps, with their logprobs.

Row j is scored as if the sequence had already taken proposals[:j]: logit bias, min_tokens and
the penalties see them (`adjust_logits_`'s extras), so a kept token is exactly what decoding one
token at a time would have chosen. Logprobs come from the target's raw logits, as without
speculation. Structured-output requests never speculate, so no grammar is consulted here.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from nanovllm.contract.step import TokenLogprobs
from nanovllm.model.kernels.shared import softmax_
from nanovllm.runner.sampler import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    adjust_logits_,
    filter_probs_,
    log_softmax,
    token_logprobs,
)
from nanovllm.runner.seq_state import SequenceState
from nanovllm.runner.spec_decode.rejection_sampler import accept_greedy, accept_sampled


def target_probs(logits: np.ndarray, state: SequenceState) -> np.ndarray:
    """The distribution the target samples from ([rows, vocab]): temperature, then the filters."""
    t = np.float32(np.clip(state.params.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE))
    probs = softmax_(logits / t)
    p = state.params
    for row in probs:
        filter_probs_(row, p.top_k, p.top_p, p.min_p)
        row /= row.sum()
    return probs


def verify(logits: np.ndarray, state: SequenceState, num_output_tokens: int,
           proposals: list[int], draft_probs: np.ndarray | None, eos_token_ids: list[int]
           ) -> tuple[list[int], list[TokenLogprobs] | None]:
    """logits: [len(proposals) + 1, vocab] (changed in place); num_output_tokens: what the
    sequence generated before this step. Returns the kept tokens (at least one) and, where
    asked, their logprobs. The state's penalty counts are not moved past them (the caller does,
    with `took`, for the tokens the engine keeps)."""
    p = state.params
    raw = log_softmax(logits) if p.logprobs is not None else None
    k = len(proposals)
    rows = [_after(state, proposals[:j]) for j in range(k + 1)]
    adjust_logits_(logits, rows, [num_output_tokens + j for j in range(k + 1)], eos_token_ids)
    if p.greedy:
        tokens = accept_greedy(logits.argmax(axis=-1), proposals)
    else:
        tokens = accept_sampled(target_probs(logits, state), proposals, draft_probs, state.rng)
    if raw is None:
        return tokens, None
    return tokens, [token_logprobs(raw[j], t, p.logprobs) for j, t in enumerate(tokens)]


def _after(state: SequenceState, taken: list[int]) -> SequenceState:
    """The state as it would be after the sequence took `taken`: only penalty counts differ
    (a copy, so a rejected proposal is never counted)."""
    if not taken or state.penalty_counts is None:
        return state
    counts = copy.deepcopy(state.penalty_counts)
    for token in taken:
        counts.add(token)
    return replace(state, penalty_counts=counts)
