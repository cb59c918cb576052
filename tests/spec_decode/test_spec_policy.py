"""The adaptive-k policy's invariants: the model's expected tokens (checked against our own
rejection sampler), the choice of k (an argmax of tokens per cost, 0 when nothing pays, monotone
in acceptance and cost), the acceptance estimate and the cost lines fitted from timings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanovllm.runner.spec_decode.policy import (
    MIN_GAIN,
    Acceptance,
    CostLine,
    StepCosts,
    choose_k,
    expected_tokens,
    gain,
    pays_to_catch_up,
)
from nanovllm.runner.spec_decode.rejection_sampler import accept_sampled
from nanovllm.values.limits import MAX_NUM_SPECULATIVE_TOKENS

alphas = st.floats(0.0, 1.0)
costs = st.floats(0.0, 4.0)
ks = st.integers(0, MAX_NUM_SPECULATIVE_TOKENS)


@given(alphas, ks)
def test_expected_tokens_is_the_geometric_sum(alpha, k):
    e = expected_tokens(alpha, k)
    assert math.isclose(e, sum(alpha ** j for j in range(k + 1)), rel_tol=1e-9, abs_tol=1e-12)
    assert 1.0 <= e <= k + 1 + 1e-9
    assert expected_tokens(alpha, k + 1) >= e


@pytest.mark.parametrize("with_draft", [True, False])
def test_expected_tokens_matches_the_rejection_sampler(with_draft):
    """The model's alpha is the sampler's per-position acceptance, sum(min(p, q)) (n-gram: p of
    the proposal): the mean tokens of a step is E(alpha, k)."""
    rng = np.random.default_rng(3)
    vocab, k, n = 6, 3, 20_000
    p = rng.dirichlet(np.ones(vocab))
    q = rng.dirichlet(np.ones(vocab)) if with_draft else None
    target = np.tile(p, (k + 1, 1))
    draft = None if q is None else np.tile(q, (k, 1))
    alpha = float(np.minimum(p, q).sum()) if with_draft else float(p[2])
    gen = np.random.default_rng(4)
    total = 0
    for _ in range(n):
        proposals = ([int(gen.choice(vocab, p=q)) for _ in range(k)] if with_draft
                     else [2] * k)
        total += len(accept_sampled(target, proposals, draft, gen))
    assert abs(total / n - expected_tokens(alpha, k)) < 0.03


@settings(max_examples=500)
@given(alphas, costs, ks)
def test_choice_is_the_best_k_or_none(alpha, cost, k_max):
    k = choose_k(alpha, cost, k_max)
    assert 0 <= k <= k_max
    best = max(gain(alpha, j, cost) for j in range(k_max + 1))
    if k:
        assert gain(alpha, k, cost) == best >= MIN_GAIN
    else:
        assert best < MIN_GAIN or gain(alpha, 0, cost) == best


@settings(max_examples=500)
@given(alphas, alphas, costs, ks)
def test_more_acceptance_never_proposes_fewer(a, b, cost, k_max):
    lo, hi = sorted((a, b))
    assert choose_k(lo, cost, k_max) <= choose_k(hi, cost, k_max)


@settings(max_examples=500)
@given(alphas, costs, costs, ks)
def test_dearer_proposals_are_never_more(alpha, a, b, k_max):
    lo, hi = sorted((a, b))
    assert choose_k(alpha, lo, k_max) >= choose_k(alpha, hi, k_max)


@given(costs.filter(lambda c: c > 0), ks)
def test_nothing_accepted_never_speculates(cost, k_max):
    assert choose_k(0.0, cost, k_max) == 0


@given(st.floats(MIN_GAIN - 1.0 + 1e-6, 1.0), st.integers(1, MAX_NUM_SPECULATIVE_TOKENS))
def test_free_proposals_take_every_slot(alpha, k_max):
    """Every slot, or as many as add anything to the expected tokens in floating point."""
    k = choose_k(alpha, 0.0, k_max)
    assert k > 0 and expected_tokens(alpha, k) == expected_tokens(alpha, k_max)


@given(alphas, costs, st.integers(1, 8), st.integers(0, 500), st.integers(0, 500),
       st.floats(0.0, 100.0))
def test_catching_up_pays_only_for_enough_tokens(alpha, cost, k, a, b, catch_up):
    fewer, more = sorted((a, b))
    if pays_to_catch_up(alpha, cost, k, fewer, catch_up):
        assert pays_to_catch_up(alpha, cost, k, more, catch_up)
    assert pays_to_catch_up(alpha, cost, k, None, catch_up)
    assert not pays_to_catch_up(alpha, cost, 0, None, catch_up)


# ---- the estimates ----------------------------------------------------------------------------
@given(st.lists(st.tuples(st.integers(1, 8), st.integers(0, 8)), max_size=30), alphas)
def test_acceptance_stays_a_rate_and_moves_with_the_evidence(steps, prior):
    a = Acceptance()
    assert a.rate(prior) == pytest.approx(prior)
    for proposed, kept in steps:
        kept = min(kept, proposed)
        before = a.rate(prior)
        a.record(proposed, kept)
        assert 0.0 <= a.rate(prior) <= 1.0
        if kept == proposed:
            assert a.rate(prior) >= before - 1e-12
        if kept == 0:
            assert a.rate(prior) <= before + 1e-12


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_acceptance_recovers_the_rate_of_truncated_runs(alpha):
    """Steps proposing various k, each proposal kept with probability alpha until the first
    rejection: kept / decided estimates alpha without bias from the truncation at k."""
    rng = np.random.default_rng(0)
    a = Acceptance()
    for _ in range(20_000):
        k = int(rng.integers(1, 6))
        kept = 0
        while kept < k and rng.random() < alpha:
            kept += 1
        a.record(k, kept)
    assert abs(a.rate(0.5, weight=0.0) - alpha) < 0.01


@given(st.floats(0.0, 1.0), st.floats(0.0, 0.1), st.lists(st.integers(1, 256), min_size=2,
                                                          max_size=40, unique=True))
def test_cost_line_recovers_a_line(fixed, per_row, rows):
    line = CostLine()
    for n in rows:
        line.record(n, fixed + per_row * n)
    f, r = line.fit()
    assert f == pytest.approx(fixed, abs=1e-6) and r == pytest.approx(per_row, abs=1e-8)


@given(st.lists(st.tuples(st.integers(1, 256), st.floats(0.0, 1.0)), min_size=1, max_size=40))
def test_cost_line_is_never_negative(passes):
    line = CostLine()
    for n, seconds in passes:
        line.record(n, seconds)
    f, r = line.fit()
    assert f >= 0 and r >= 0
    if len({n for n, _ in passes}) == 1:
        assert r == 0.0


@given(st.floats(1e-4, 1.0), st.floats(0.0, 0.1), st.integers(1, 128), st.integers(1, 128))
def test_verifying_costs_more_in_bigger_batches(fixed, per_row, a, b):
    """A decode pass's fixed part (its weights, read once) is shared by the batch, so one more
    row per sequence weighs more the bigger the batch."""
    line = CostLine()
    for n in (1, 8, 64):
        line.record(n, fixed + per_row * n)
    costs = StepCosts(line, None)
    small, big = sorted((a, b))
    c_small, c_big = costs.ratio(small)[1], costs.ratio(big)[1]
    assert 0.0 <= c_small <= c_big + 1e-12 < 1.0 + 1e-12
    assert costs.ratio(big)[0] == 0.0  # n-gram: no draft pass


def test_draft_share_stands_in_until_a_draft_pass_is_timed():
    target, draft = CostLine(), CostLine()
    for n in (1, 16):
        target.record(n, 0.010 + 0.001 * n)
    costs = StepCosts(target, draft, draft_share=0.25)
    assert costs.ratio(1)[0] == 0.25
    for n in (1, 16):
        draft.record(n, 0.0011 + 0.0001 * n)
    assert costs.ratio(1)[0] == pytest.approx(0.0012 / 0.011)
    assert costs.catch_up(100, 1) == pytest.approx(0.0001 * 100 / 0.011)


def test_adaptive_k_keeps_the_target_distribution():
    """Generation as the engine runs it, in miniature: each step proposes the k the policy
    chooses from the sequence's own acceptance so far (so k depends on earlier draws), and the
    rejection sampler verifies. Every position's token is still distributed as the target's."""
    from test_spec_pieces import _probs, assert_distribution
    rng = np.random.default_rng(5)
    vocab, length, runs = 8, 6, 6000
    p, q = _probs(rng, vocab, True), _probs(rng, vocab, False)
    gen = np.random.default_rng(6)
    tokens = np.empty((runs, length), np.int64)
    chosen = set()
    for r in range(runs):
        own, out = Acceptance(), []
        while len(out) < length:
            k = choose_k(own.rate(0.6), 0.3, min(3, length - len(out) - 1))
            chosen.add(k)
            proposals = [int(gen.choice(vocab, p=q)) for _ in range(k)]
            step = accept_sampled(np.tile(p, (k + 1, 1)), proposals,
                                  np.tile(q, (k, 1)) if k else None, gen)
            own.record(k, len(step) - 1)
            out += step
        tokens[r] = out
    assert len(chosen) >= 3  # the choice did move with what was seen
    for j in range(length):
        assert_distribution(tokens[:, j], p)


@given(st.lists(st.tuples(st.integers(1, 8), st.integers(0, 8)), max_size=30), alphas)
def test_optimism_is_a_bonus_that_evidence_narrows(steps, prior):
    a = Acceptance()
    for proposed, kept in steps:
        a.record(proposed, min(kept, proposed))
        assert a.rate(prior) - 1e-12 <= a.optimistic(prior) <= 1.0
        # at most half a standard error's numerator over the evidence's root
        assert a.optimistic(prior) - a.rate(prior) <= 0.5 / math.sqrt(a.decided + 2) + 1e-12
