"""What a beam offers its request's search each step: its best next tokens and their logprobs.

Scored from log_softmax(logits / temperature) (temperature 0: the model's own distribution),
as transformers scores a beam: no penalties, bias or grammar apply to beams.
"""

from __future__ import annotations

import numpy as np

from nanovllm.runner.sampler import log_softmax


def beam_offers(logits: np.ndarray, temperatures: list[float], num_candidates: list[int]
                ) -> list[tuple[list[int], list[float]]]:
    """For each row of `logits` ([rows, vocab]), its `num_candidates` best tokens, best first."""
    offers = []
    for row, t, n in zip(logits, temperatures, num_candidates):
        lps = log_softmax(row / np.float32(t) if t > 0 else row)
        top = np.argpartition(-lps, n - 1)[:n]
        top = top[np.argsort(-lps[top], kind="stable")]
        offers.append((top.tolist(), lps[top].astype(np.float64).tolist()))
    return offers
