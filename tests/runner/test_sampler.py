"""The sampler's pieces on hand-made inputs: filters, inverse-CDF draws, logit adjustments.

filter_probs_ applies min_p, then top_k, then top_p (on what is left, renormalised), keeping
the token that crosses top_p; sample_from_probs never returns a zero-probability token, nor
does draw, its compiled version, which picks the same tokens, nor sample_softmax, which draws
from the softmax of unfiltered logits in one pass (the same tokens as draw of weights_);
adjust_logits_ follows vLLM: logit_bias is added, min_tokens bans EOS and stop tokens,
repetition_penalty divides positive / multiplies negative logits of every seen token, then
frequency and presence penalties subtract from the logits of generated tokens.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nanovllm import SamplingParams
from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.runner.sampler import (
    MAX_LOGIT,
    adjust_logits_,
    draw,
    filter_probs_,
    new_sequence_state,
    sample,
    sample_from_probs,
    sample_softmax,
    took,
    weights_,
)
from nanovllm.runner.seq_state import SequenceState

PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]
EOS = 9


def kept(probs, top_k=0, top_p=1.0, min_p=0.0, dtype=np.float64) -> list[int]:
    row = np.array(probs, dtype)
    filter_probs_(row, top_k, top_p, min_p)
    return np.flatnonzero(row).tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("top_p, expected", [
    (1.0, [0, 1, 2, 3, 4]), (0.999, [0, 1, 2, 3, 4]), (0.95, [0, 1, 2, 3]), (0.9, [0, 1, 2, 3]),
    (0.71, [0, 1, 2]), (0.7, [0, 1]), (0.6, [0, 1]), (0.5, [0]), (0.3, [0]), (0.01, [0]),
])
def test_top_p_keeps_the_token_that_crosses_p(top_p, expected, dtype):
    assert kept(PROBS, top_p=top_p, dtype=dtype) == expected


def test_top_p_on_exact_ties_and_exact_sums():
    assert kept([0.25] * 4, top_p=0.5) == [0, 1]          # reaches p exactly: stops there
    assert kept([0.25] * 4, top_p=0.51) == [0, 1, 2]
    assert kept([0.125, 0.5, 0.125, 0.25], top_p=0.75) == [1, 3]
    assert len(kept([0.25] * 4, top_p=0.3)) == 2           # one of the tied tokens crosses p


@pytest.mark.parametrize("top_k, expected", [(1, [0]), (2, [0, 1]), (4, [0, 1, 2, 3]),
                                             (5, [0, 1, 2, 3, 4]), (50, [0, 1, 2, 3, 4])])
def test_top_k_keeps_the_k_best(top_k, expected):
    assert kept(PROBS, top_k=top_k) == expected


def test_top_k_with_ties_keeps_exactly_k():
    got = kept([0.4, 0.2, 0.2, 0.2], top_k=2)
    assert len(got) == 2 and 0 in got


@pytest.mark.parametrize("min_p, expected", [(0.3, [0, 1, 2]), (0.4, [0, 1]), (0.41, [0]),
                                             (0.2, [0, 1, 2, 3]), (1.0, [0]), (0.0, [0, 1, 2, 3, 4])])
def test_min_p_keeps_tokens_at_least_min_p_times_the_max(min_p, expected):
    assert kept(PROBS, min_p=min_p) == expected


def test_filters_compose_min_p_then_top_k_then_top_p_on_the_rest():
    # top_k=3 leaves 0.5, 0.2, 0.15 (sum 0.85); top_p=0.8 of that is 0.68: 0.5 + 0.2 crosses it.
    assert kept(PROBS, top_k=3, top_p=0.8) == [0, 1]
    assert kept(PROBS, top_k=3, top_p=0.85) == [0, 1, 2]
    # min_p=0.25 drops p < 0.125, leaving 0.5, 0.2, 0.15 (sum 0.85): top_p=0.5 needs 0.425.
    assert kept(PROBS, min_p=0.25, top_p=0.5) == [0]
    assert kept(PROBS, min_p=0.25, top_p=0.7) == [0, 1]     # needs 0.595
    assert kept(PROBS, min_p=0.25, top_p=0.9) == [0, 1, 2]  # needs 0.765


def reference_top_p(probs: np.ndarray, top_p: float) -> set[int]:
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    return set(order[:int(np.searchsorted(cum, top_p * probs.sum(), side="left")) + 1].tolist())


@pytest.mark.parametrize("shape", ["peaked", "flat"])
def test_top_p_on_a_large_vocabulary_matches_a_full_sort(shape):
    """Beyond 1,024 candidates the filter must fall back to sorting everything."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(5000) * (8.0 if shape == "peaked" else 0.1)
    probs = (np.exp(logits) / np.exp(logits).sum()).astype(np.float32)
    for top_p in (0.3, 0.9, 0.99):
        expected = reference_top_p(probs, top_p)
        assert set(np.flatnonzero(filter_probs_(probs.copy(), 0, top_p, 0.0))) == expected
    if shape == "flat":
        assert len(expected) > 1024


DRAWS = pytest.mark.parametrize("draw_tokens", [sample_from_probs, draw], ids=["numpy", "compiled"])


@DRAWS
@settings(max_examples=200, deadline=None)
@given(probs=st.lists(st.sampled_from([0.0, 0.0, 1e-6, 0.01, 0.1, 0.3, 1.0]), min_size=1,
                      max_size=12).filter(any),
       u=st.sampled_from([0.0, 1e-12, 0.25, 0.5, 0.999999, float(np.nextafter(1.0, 0.0))])
       | st.floats(0.0, 1.0, exclude_max=True))
@example(probs=[0.5, 0.5, 0.0, 0.0], u=float(np.nextafter(1.0, 0.0)))
@example(probs=[0.0, 0.0, 1.0], u=0.0)
def test_sample_from_probs_never_picks_a_zero_probability_token(draw_tokens, probs, u):
    row = np.array(probs, np.float32)
    token = int(draw_tokens(row[None], np.array([u]))[0])
    assert row[token] > 0


@DRAWS
def test_sample_from_probs_is_the_inverse_cdf(draw_tokens):
    row = np.array([[0.25, 0.0, 0.5, 0.25]], np.float32)
    picks = [int(draw_tokens(row, np.array([u]))[0]) for u in (0.0, 0.24, 0.25, 0.74, 0.75, 0.99)]
    assert picks == [0, 0, 2, 2, 3, 3]
    # Unnormalised rows (after filtering) are scaled by their total.
    assert int(draw_tokens(np.array([[0.0, 0.2, 0.2]]), np.array([0.6]))[0]) == 2


@settings(max_examples=60, deadline=None)
@given(vocab=st.sampled_from([1, 2, 255, 256, 257, 1000, 50257]), rows=st.integers(1, 5),
       zeros=st.sampled_from([0.0, 0.5, 0.99]), peak=st.sampled_from([0.1, 3.0, 30.0]),
       seed=st.integers(0, 2**32 - 1))
def test_draw_picks_the_tokens_of_the_reference(vocab, rows, zeros, peak, seed):
    """Softmax-like rows, peaked or flat, with zeros (filtered tokens) across the blocks the
    compiled walk steps over; the edges of [0, 1) among the uniforms."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, vocab)) * peak
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True)).astype(np.float32)
    probs[rng.random((rows, vocab)) < zeros] = 0.0
    probs[np.arange(rows), logits.argmax(axis=-1)] = 1.0  # never a row of zeros only
    uniforms = rng.random(rows)
    uniforms[0] = rng.choice([0.0, float(np.nextafter(1.0, 0.0)), uniforms[0]])
    expected = sample_from_probs(probs, uniforms)
    for row, u, token, want in zip(probs, uniforms, draw(probs, uniforms), expected):
        if token != want:  # only where the target is within rounding of the running sums
            cdf = np.cumsum(row, dtype=np.float64)
            target, slack = u * cdf[-1], 1e-12 * cdf[-1]
            assert row[token] > 0
            assert (token == 0 or cdf[token - 1] <= target + slack) and cdf[token] > target - slack
    # Rounding decides where the target lies at the top of a row (a tail of tokens too small
    # to move a float64 sum), almost never elsewhere.
    assert (draw(probs, uniforms)[1:] == expected[1:]).all()


@pytest.mark.parametrize("temperature", [1e-2, 0.7, 1.0, 5.0, 1e30])
def test_weights_are_the_softmax_at_the_temperature_up_to_a_factor(temperature):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((3, 1000)) * 5).astype(np.float32)
    logits[:, ::7] = -np.inf  # banned tokens
    expected = ref.softmax(logits / np.float32(temperature))
    temps = np.full(3, temperature, np.float32)
    weights = weights_(logits.copy(), logits.max(axis=-1), temps)
    assert (weights[:, ::7] == 0).all() and weights.max(axis=-1).tolist() == [1.0] * 3
    np.testing.assert_allclose(weights / weights.sum(axis=-1, keepdims=True), expected,
                               rtol=1e-4, atol=1e-30)


@settings(max_examples=60, deadline=None)
@given(vocab=st.sampled_from([1, 2, 255, 256, 257, 1000, 50257]), rows=st.integers(1, 5),
       banned=st.sampled_from([0.0, 0.5, 0.99]), peak=st.sampled_from([0.1, 3.0, 30.0]),
       temperature=st.sampled_from([1e-2, 0.7, 1.0, 5.0]), seed=st.integers(0, 2**32 - 1))
def test_sample_softmax_picks_the_tokens_of_the_reference(vocab, rows, banned, peak, temperature,
                                                          seed):
    """The reference is sample_from_probs of reference.softmax at the temperature; banned
    tokens (-inf) across the blocks; the edges of [0, 1) among the uniforms. The logits are
    left as they were."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((rows, vocab)) * peak).astype(np.float32)
    logits[rng.random((rows, vocab)) < banned] = -np.inf
    logits[np.arange(rows), rng.integers(0, vocab, rows)] = peak  # never a row of bans only
    uniforms = rng.random(rows)
    uniforms[0] = rng.choice([0.0, float(np.nextafter(1.0, 0.0)), uniforms[0]])
    temps = np.full(rows, temperature, np.float32)
    given_logits = logits.copy()
    tokens = sample_softmax(logits, logits.max(axis=-1), temps, uniforms)
    np.testing.assert_array_equal(logits, given_logits)
    probs = ref.softmax(logits / np.float32(temperature))
    expected = sample_from_probs(probs, uniforms)
    for row, u, token, want in zip(probs, uniforms, tokens, expected):
        assert row[token] > 0
        if token != want:  # only where the target is within float32 rounding of the sums
            cdf = np.cumsum(row, dtype=np.float64)
            target, slack = u * cdf[-1], 1e-5 * cdf[-1]
            assert (token == 0 or cdf[token - 1] <= target + slack) and cdf[token] > target - slack
    # and the tokens of the two passes it replaces (the same weights, in sums that may round
    # apart only where the target lies at the top of a row, as in the draw test above)
    weights = weights_(logits.copy(), logits.max(axis=-1), temps)
    np.testing.assert_array_equal(tokens[1:], draw(weights, uniforms)[1:])


def test_sample_takes_the_one_pass_draw_only_without_filters():
    """Rows without min_p, top_k or top_p draw from the softmax in one pass; a batch with one
    filtered row filters that row (here top_k=1: its argmax) and draws the others as before."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((4, 1000)).astype(np.float32)
    plain = [make_seq([0], [], rng_seed=s, temperature=0.8) for s in range(4)]
    mixed = [make_seq([0], [], rng_seed=s, temperature=0.8, top_k=1 if s == 3 else 0)
             for s in range(4)]
    uniforms = np.array([np.random.default_rng(s).random() for s in range(4)])
    expected = draw(weights_(logits.copy(), logits.max(axis=-1), np.full(4, 0.8, np.float32)),
                    uniforms)
    tokens, _ = sample(logits.copy(), plain, [0] * 4, EOS)
    assert tokens.tolist() == expected.tolist()
    tokens, _ = sample(logits.copy(), mixed, [0] * 4, EOS)
    assert tokens.tolist() == expected[:3].tolist() + [int(logits[3].argmax())]


def test_draw_of_a_row_of_zeros_is_the_last_token_as_in_the_reference():
    probs = np.zeros((2, 300), np.float32)
    for tokens in (draw(probs, np.array([0.0, 0.5])), sample_from_probs(probs, np.array([0.0, 0.5]))):
        assert tokens.tolist() == [299, 299]


# ---- adjust_logits_ ------------------------------------------------------------------------
def make_seq(prompt: list[int], output: list[int], rng_seed: int = 0, **params) -> SequenceState:
    """A sequence's sampling state as the runner makes it, after it took `output`."""
    seq = new_sequence_state(SamplingParams(**params), prompt, np.random.default_rng(rng_seed), EOS)
    for token in output:
        took(seq, token)
    return seq


def adjusted(logits, prompt, output, **params) -> np.ndarray:
    rows = np.array([logits], np.float32)
    adjust_logits_(rows, [make_seq(prompt, output, **params)], [len(output)], EOS)
    return rows[0]


BASE = [2.0, -2.0, 1.0, -1.0, 0.5, 3.0, 0.0, 4.0, -4.0, 1.5]    # token 9 is EOS


def test_logit_bias_adds_to_the_logits():
    got = adjusted(BASE, [0], [], logit_bias={2: 5.0, 8: -100.0})
    expected = np.array(BASE, np.float32)
    expected[2] += 5.0
    expected[8] -= 100.0
    np.testing.assert_allclose(got, expected)


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    # token 1 only in the prompt; token 2 generated twice, token 3 once.
    got = adjusted(BASE, [1, 1], [2, 3, 2], presence_penalty=0.5, frequency_penalty=0.25)
    expected = np.array(BASE, np.float32)
    expected[2] -= 0.5 + 2 * 0.25
    expected[3] -= 0.5 + 1 * 0.25
    np.testing.assert_allclose(got, expected)


def test_negative_penalties_encourage_repeats():
    got = adjusted(BASE, [0], [4], presence_penalty=-1.0, frequency_penalty=-0.5)
    assert got[4] == pytest.approx(BASE[4] + 1.5)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    # tokens 0 (+2.0) and 1 (-2.0) in the prompt, 5 (+3.0) and 3 (-1.0) generated.
    got = adjusted(BASE, [0, 1], [5, 3], repetition_penalty=2.0)
    expected = np.array(BASE, np.float32)
    expected[[0, 5]] /= 2.0
    expected[[1, 3]] *= 2.0
    np.testing.assert_allclose(got, expected)


def test_repetition_penalty_below_one_rewards_seen_tokens():
    got = adjusted(BASE, [0], [8], repetition_penalty=0.5)
    assert got[0] == pytest.approx(4.0) and got[8] == pytest.approx(-2.0)


def test_a_penalty_below_float32s_range_keeps_banned_tokens_banned_without_warnings():
    # EOS is seen and banned (min_tokens): -inf times the penalty, 0 in float32, is NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = adjusted(BASE, [0, EOS], [1], repetition_penalty=1e-50, min_tokens=5)
    assert got[EOS] == -np.inf and got[0] == np.float32(MAX_LOGIT) and got[1] == 0.0


def test_min_tokens_bans_eos_and_stop_tokens_until_reached():
    banned = adjusted(BASE, [0], [1, 2], min_tokens=3, stop_token_ids=[7])
    assert banned[EOS] == -np.inf and banned[7] == -np.inf
    assert np.isfinite(np.delete(banned, [EOS, 7])).all()
    allowed = adjusted(BASE, [0], [1, 2, 3], min_tokens=3, stop_token_ids=[7])
    np.testing.assert_allclose(allowed, BASE)


def test_min_tokens_leaves_eos_alone_with_ignore_eos():
    got = adjusted(BASE, [0], [], min_tokens=2, ignore_eos=True, stop_token_ids=[7])
    assert got[EOS] == BASE[EOS] and got[7] == -np.inf


def test_penalties_compose_in_vllms_order():
    """vLLM: logit bias, then repetition penalty, then frequency, then presence."""
    got = adjusted(BASE, [0], [5, 5], logit_bias={5: 1.0}, repetition_penalty=2.0,
                   frequency_penalty=0.5, presence_penalty=0.25)
    # token 5: (3.0 + 1.0) / 2 - 2 * 0.5 - 0.25 = 0.75
    assert got[5] == pytest.approx(0.75)


def penalized_by_definition(logits, token_ids, num_prompt, p: SamplingParams) -> np.ndarray:
    """The penalties recounted from the whole sequence, as their definition reads."""
    row = np.array(logits, np.float32)
    seen = np.unique(token_ids)
    with np.errstate(over="ignore", divide="ignore"):
        row[seen] = np.where(row[seen] > 0, row[seen] / p.repetition_penalty,
                             row[seen] * p.repetition_penalty)
    counts = np.bincount(token_ids[num_prompt:], minlength=len(row))
    row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return row


@settings(max_examples=40, deadline=None)
@given(prompt=st.lists(st.integers(0, 9), min_size=1, max_size=6),
       steps=st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3), max_size=8),
       repetition=st.sampled_from([1.0, 0.5, 1.3]), presence=st.sampled_from([0.0, 0.5, -1.0]),
       frequency=st.sampled_from([0.0, 0.25, -0.5]))
def test_incremental_penalty_counts_match_the_definition(prompt, steps, repetition, presence,
                                                         frequency):
    """Counts carried from step to step (one or more tokens appended in between, as after a
    prefill chunk) penalise exactly as counting the whole sequence afresh does."""
    seq = make_seq(prompt, [], repetition_penalty=repetition, presence_penalty=presence,
                   frequency_penalty=frequency)
    token_ids = list(prompt)
    for appended in [[], *steps]:
        for token in appended:
            took(seq, token)
        token_ids += appended
        got = np.array([BASE], np.float32)
        adjust_logits_(got, [seq], [len(token_ids) - len(prompt)], EOS)
        got = got[0]
        expected = penalized_by_definition(BASE, token_ids, len(prompt), seq.params)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("temperature", [1e-3, 1e-30, 1e-45])
def test_tiny_temperatures_sample_the_argmax(temperature):
    """Like vLLM, temperatures below 0.01 count as 0.01 (dividing by less overflows float32)."""
    logits = np.array([[0.0, 3.0, 2.0, -1.0]], np.float32)
    for seed in range(20):
        seq = make_seq([0], [], rng_seed=seed, temperature=temperature)
        tokens, _ = sample(logits.copy(), [seq], [0], EOS)
        assert tokens.tolist() == [1]


def test_infinite_temperature_samples_uniformly_and_keeps_bans():
    logits = np.array([BASE], np.float32)
    seqs = [make_seq([0], [], rng_seed=s, temperature=float("inf"), min_tokens=1)
            for s in range(300)]
    picks = {int(sample(logits.copy(), [seq], [0], EOS)[0][0]) for seq in seqs}
    assert picks == set(range(10)) - {EOS}


@pytest.mark.parametrize("module", ["nanovllm.runner.sampler", "nanovllm.runner.model_runner"])
def test_runner_modules_import_on_their_own(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-500:]


def adjusted_by_definition(logits: np.ndarray, p: SamplingParams, prompt: list[int],
                           output: list[int]) -> np.ndarray:
    """One row, as the adjustments read: a Python loop over the bias, the bans, the penalties."""
    row = logits.copy()
    for token, bias in p.logit_bias.items():
        row[token] += bias
    if len(output) < p.min_tokens:
        for token in p.stop_token_ids + ([] if p.ignore_eos else [EOS]):
            row[token] = -np.inf
    if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
        row = penalized_by_definition(row, prompt + output, len(prompt), p)
    row = np.clip(row, -np.inf, 1e30)
    row[np.isnan(row)] = -np.inf
    return row


sampling = st.fixed_dictionaries({}, optional={
    "logit_bias": st.dictionaries(st.integers(0, 9), st.floats(-100, 100), max_size=10),
    "min_tokens": st.integers(0, 3),
    "stop_token_ids": st.lists(st.integers(0, 9), max_size=4),
    "ignore_eos": st.booleans(),
    "repetition_penalty": st.sampled_from([1.0, 0.5, 1.3]),
    "presence_penalty": st.sampled_from([0.0, 0.5, -1.0]),
    "frequency_penalty": st.sampled_from([0.0, 0.25, -0.5]),
})


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(sampling, st.lists(st.integers(0, 9), min_size=1, max_size=4),
                               st.lists(st.integers(0, 9), max_size=4),
                               st.lists(st.floats(-50, 50, width=32), min_size=10, max_size=10)),
                     min_size=1, max_size=6))
def test_a_batch_is_adjusted_row_by_row_as_defined(rows):
    """The whole batch's logit bias as one indexing operation, and the array-held counts, give
    bit for bit what the straightforward per-row loops give; rows that ask nothing stay as they
    were."""
    seqs = [make_seq(prompt, output, **params) for params, prompt, output, _ in rows]
    logits = np.array([row for *_, row in rows], np.float32)
    expected = [adjusted_by_definition(logits[i], seq.params, prompt, output)
                if seq.params.adjusts_logits else logits[i].copy()
                for i, (seq, (_, prompt, output, _)) in enumerate(zip(seqs, rows))]
    adjust_logits_(logits, seqs, [len(output) for _, _, output, _ in rows], EOS)
    np.testing.assert_array_equal(logits, np.array(expected))


def test_allowed_token_ids_ban_every_other_token_before_the_bias():
    got = adjusted(BASE, [0], [], allowed_token_ids=[2, 8, 2], logit_bias={2: 1.0, 3: 50.0})
    expected = np.full(len(BASE), -np.inf, np.float32)
    expected[2], expected[8] = BASE[2] + 1.0, BASE[8]
    np.testing.assert_array_equal(got, expected)
