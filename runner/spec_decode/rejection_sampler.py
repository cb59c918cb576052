"""Verifies one sequence's proposals against the target model (vLLM's rejection sampler).

The target scored k + 1 positions: the one after the sequence's last token and one after each
of its k proposals. Greedy: the proposals are kept while each is the target's argmax, then the
target's own argmax follows (the "bonus" token when all were kept) — exactly the tokens that
decoding one at a time would have produced. Sampling: proposal x at position j is kept with
probability min(1, p(x) / q(x)) (p the target's probabilities there, q the proposer's; an
n-gram proposal is certain, q(x) = 1); the first one rejected is replaced by a draw from the
residual max(p - q, 0), normalised, and nothing after it counts. Every output token is then
distributed as the target's (Leviathan et al., 2023). Draws come from the sequence's own
generator, so a seeded request samples the same alone or in any batch.
"""

from __future__ import annotations

import numpy as np

from nanovllm.runner.sampler import sample_from_probs


def accept_greedy(target_argmax: np.ndarray, proposals: list[int]) -> list[int]:
    """target_argmax: [k + 1] tokens; returns the kept proposals followed by one target token."""
    out = []
    for j, token in enumerate(proposals):
        if int(target_argmax[j]) != token:
            break
        out.append(token)
    out.append(int(target_argmax[len(out)]))
    return out


def accept_sampled(target_probs: np.ndarray, proposals: list[int],
                   draft_probs: np.ndarray | None, rng: np.random.Generator) -> list[int]:
    """target_probs: [k + 1, vocab], each row sums to 1 (after temperature and filtering);
    draft_probs: [k, vocab] the proposer's, or None for certain (n-gram) proposals.
    Returns the kept proposals followed by one token from the target or its residual."""
    out = []
    for j, token in enumerate(proposals):
        p = float(target_probs[j, token])
        q = 1.0 if draft_probs is None else float(draft_probs[j, token])
        if rng.random() * q < p:  # probability min(1, p / q); never when p == 0
            out.append(token)
            continue
        residual = residual_probs(target_probs[j], token, None if draft_probs is None
                                  else draft_probs[j])
        out.append(draw(residual, rng))
        return out
    out.append(draw(target_probs[len(proposals)], rng))
    return out


def residual_probs(p: np.ndarray, token: int, q: np.ndarray | None) -> np.ndarray:
    """max(p - q, 0), normalised; q=None is certainty on `token` (its residual is p without it).
    Only reached after a rejection, so p(token) < q(token) and the residual has mass."""
    if q is None:
        residual = p.copy()
        residual[token] = 0.0
    else:
        residual = np.maximum(p - q, 0.0)
    total = residual.sum()
    if total <= 0.0:  # rounding: p and q agree everywhere to float precision
        return p
    return residual / total


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token by inverse CDF from one uniform; never a zero-probability token (the sampler's
    rule, `sample_from_probs`, for one row)."""
    return int(sample_from_probs(probs[None, :], np.array([rng.random()]))[0])
