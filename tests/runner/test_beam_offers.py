"""runner/beam.py: a beam's offers are its best tokens by log_softmax(logits / T), best first."""

from __future__ import annotations

import numpy as np

from nanovllm.runner.beam import beam_offers


def test_offers_are_the_best_tokens_best_first():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    offers = beam_offers(logits, [0.0, 0.5, 2.0], [4, 6, 1])
    for row, t, (ids, lps), n in zip(logits, [1.0, 0.5, 2.0], offers, [4, 6, 1]):
        scaled = row.astype(np.float64) / t
        ref = scaled - np.log(np.exp(scaled - scaled.max()).sum()) - scaled.max()
        assert ids == np.argsort(-ref)[:n].tolist()
        np.testing.assert_allclose(lps, ref[ids], atol=1e-5)
