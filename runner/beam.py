"""What a beam offers its request's search each step: its best next tokens and their logprobs.

Scored from log_softmax(logits / temperature) (temperature 0: the model's own distribution),
as transformers scores a beam: no penalties, bias or grammar apply to beams.

`beam_offers` is two compiled passes per row: it keeps the row's best tokens (the best is the
maximum), then sums the exponentials once, and takes the logprobs of the kept tokens only; no
vocabulary-sized temporary is made. `reference_beam_offers` is the plain numpy version (a full
log_softmax, then a partition), which it is tested against.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nanovllm.model.kernels.shared import KERNEL_MATH, exp32
from nanovllm.runner.sampler import log_softmax


def beam_offers(logits: np.ndarray, temperatures: list[float], num_candidates: list[int]
                ) -> list[tuple[list[int], list[float]]]:
    """For each row of `logits` ([rows, vocab]), its `num_candidates` best tokens, best first
    (equal logprobs: the lower token id first)."""
    rows = len(num_candidates)
    if rows == 0:
        return []
    width = max(num_candidates)
    ids = np.empty((rows, width), np.int64)
    lps = np.empty((rows, width), np.float64)
    scales = np.array([1.0 / t if t > 0 else 1.0 for t in temperatures], np.float32)
    top_logprobs_(np.ascontiguousarray(logits, np.float32), scales,
                  np.array(num_candidates, np.int64), ids, lps)
    return [(ids[r, :n].tolist(), lps[r, :n].tolist()) for r, n in enumerate(num_candidates)]


def compile_beam_offers() -> None:
    """Compiles `top_logprobs_` now (or loads it from numba's cache), at engine start."""
    beam_offers(np.zeros((1, 2), np.float32), [0.0], [1])


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def top_logprobs_(logits, scales, counts, ids, lps):
    """Row r's counts[r] best tokens of log_softmax(logits[r] * scales[r]) into ids[r], lps[r].

    Serial on purpose: a decode step's few rows are less work than what waking numba's threads
    for a parallel region costs on a busy machine."""
    for r in range(logits.shape[0]):
        row, scale, n = logits[r], scales[r], counts[r]
        top_ids, top_vals = ids[r], lps[r]
        # The best n first (scalar, but rarely past its first test): the best of them is the
        # row's maximum. Scaling by a positive number keeps the order.
        kept, worst = 0, np.float32(-np.inf)  # worst: the n-th best value so far, once n are kept
        for j in range(row.shape[0]):
            v = row[j] * scale
            if v > worst or kept < n:
                i = min(kept, n - 1)  # insert after every kept value >= v: ties keep token order
                while i > 0 and top_vals[i - 1] < v:
                    top_vals[i], top_ids[i] = top_vals[i - 1], top_ids[i - 1]
                    i -= 1
                top_vals[i], top_ids[i] = v, j
                kept = min(kept + 1, n)
                if kept == n:
                    worst = np.float32(top_vals[n - 1])
        # Then the sum of exponentials (vectorized; in float64, which costs little here).
        best = np.float32(top_vals[0])
        total = 0.0
        for j in range(row.shape[0]):
            total += exp32(row[j] * scale - best)
        log_total = best + math.log(total)
        for i in range(n):
            top_vals[i] -= log_total


def reference_beam_offers(logits: np.ndarray, temperatures: list[float],
                          num_candidates: list[int]) -> list[tuple[list[int], list[float]]]:
    """`beam_offers` in plain numpy."""
    offers = []
    for row, t, n in zip(logits, temperatures, num_candidates):
        lps = log_softmax(row / np.float32(t) if t > 0 else row)
        top = np.argsort(-lps, kind="stable")[:n]
        offers.append((top.tolist(), lps[top].astype(np.float64).tolist()))
    return offers
