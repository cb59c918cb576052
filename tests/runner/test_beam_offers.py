"""runner/beam.py: a beam's offers are its best tokens by log_softmax(logits / T), best first."""

from __future__ import annotations

import numpy as np

from nanovllm.runner.beam import beam_offers, reference_beam_offers


def test_offers_are_the_best_tokens_best_first():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50)).astype(np.float32)
    offers = beam_offers(logits, [0.0, 0.5, 2.0], [4, 6, 1])
    for row, t, (ids, lps), n in zip(logits, [1.0, 0.5, 2.0], offers, [4, 6, 1]):
        scaled = row.astype(np.float64) / t
        ref = scaled - np.log(np.exp(scaled - scaled.max()).sum()) - scaled.max()
        assert ids == np.argsort(-ref)[:n].tolist()
        np.testing.assert_allclose(lps, ref[ids], atol=1e-5)


def test_compiled_offers_match_the_plain_reference():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((5, 50257)) * 3).astype(np.float32)
    logits[3, [7, 70, 700]] = logits[3].max() + 1.0  # a three-way tie at the top: lower ids first
    temps, counts = [0.0, 0.7, 1.0, 0.0, 3.0], [8, 2, 16, 4, 1]
    got = beam_offers(logits, temps, counts)
    want = reference_beam_offers(logits, temps, counts)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    assert got[3][0][:3] == [7, 70, 700]
    for (_, lps), (_, ref_lps) in zip(got, want):
        np.testing.assert_allclose(lps, ref_lps, rtol=0, atol=2e-5)


def test_no_rows_no_offers():
    assert beam_offers(np.zeros((0, 10), np.float32), [], []) == []
