"""The adaptive-k policy's invariants: the model's expected tokens (checked against our own
rejection sampler), the choice of k (an argmax of tokens per cost, 0 when nothing pays, monotone
in acceptance and cost), the step's k from measured whole steps (hysteresis, probes that keep
plain decoding reachable and let a wrong estimate recover, a draft's catch-up paid for by their
spacing), the acceptance estimate (one rate, and position by position), the step timings and
the draft's cost line, and a batch-1 engine of requests one after another, losing and paying."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanovllm.runner.spec_decode.policy import (
    ENTER_GAIN,
    PROBE_FAR,
    PROBE_MOST,
    PROBE_SHARE,
    SWITCH_MARGIN,
    Acceptance,
    StepPolicy,
    choose_k,
    expected_tokens,
    expected_tokens_by_position,
    gain,
    pays_to_catch_up,
    settle,
)
from nanovllm.runner.spec_decode.rejection_sampler import accept_sampled
from nanovllm.runner.spec_decode.step_costs import (
    BOUNDING_SAMPLES,
    STEP_SAMPLES,
    CostLine,
    RecentMedian,
    StepCosts,
    batch_bucket,
)
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
        assert gain(alpha, k, cost) == best >= ENTER_GAIN
    else:
        assert best < ENTER_GAIN or gain(alpha, 0, cost) == best


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


@given(st.floats(ENTER_GAIN - 1.0 + 1e-6, 1.0), st.integers(1, MAX_NUM_SPECULATIVE_TOKENS))
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


@given(alphas, ks)
def test_equal_rates_by_position_are_the_geometric_sum(alpha, k_max):
    e = expected_tokens_by_position([alpha] * k_max)
    assert e == pytest.approx([expected_tokens(alpha, k) for k in range(k_max + 1)])


@given(st.lists(st.floats(0.0, 1.0), max_size=MAX_NUM_SPECULATIVE_TOKENS))
def test_expected_tokens_by_position_grow_by_the_survival(rates):
    e = expected_tokens_by_position(rates)
    assert e[0] == 1.0 and len(e) == len(rates) + 1
    for k in range(len(rates)):
        assert e[k + 1] - e[k] == pytest.approx(math.prod(rates[:k + 1]))


def _outcomes(curve: list[float], steps: int, seed: int = 0) -> Acceptance:
    """Steps proposing k = 1..len(curve) at random, proposal i kept with probability curve[i - 1]
    given the ones before it were, until the first rejection."""
    rng = np.random.default_rng(seed)
    a = Acceptance()
    for _ in range(steps):
        k = int(rng.integers(1, len(curve) + 1))
        kept = 0
        while kept < k and rng.random() < curve[kept]:
            kept += 1
        a.record(k, kept)
    return a


FALLING = [0.9, 0.7, 0.3, 0.1]  # conditional rates by position: the n-gram match runs out


def test_rates_by_position_recover_a_falling_survival_curve():
    a = _outcomes(FALLING, 20_000)
    assert a.rates([0.5] * 4) == pytest.approx(FALLING, abs=0.02)
    assert expected_tokens_by_position(a.rates([0.5] * 4)) == pytest.approx(
        expected_tokens_by_position(FALLING), abs=0.02)
    # the one rate fits the early positions, and overrates the long k
    one = a.rate(0.5)
    assert expected_tokens(one, 4) > expected_tokens_by_position(FALLING)[4] + 0.1


def test_rates_by_position_start_at_the_prior_and_follow_the_evidence():
    a = Acceptance()
    assert a.rates([0.3, 0.6]) == [0.3, 0.6]
    a.record(3, 1)  # position 1 kept, position 2 rejected, position 3 never judged
    assert a.reached == [1, 1] and a.accepted == [1]
    assert a.kept == 1 and a.decided == 2
    r = a.rates([0.5, 0.5, 0.5], weight=2.0)
    assert r[0] > 0.5 > r[1] and r[2] == 0.5


def test_a_falling_curve_proposes_fewer_than_one_rate_would():
    """At the same evidence, the policy given E by position picks a smaller k than given the
    geometric E of the overall rate, and a k within a percent of the best for the true curve."""
    a, cost = _outcomes(FALLING, 20_000), 0.1
    geometric = [expected_tokens(a.rate(0.5), k) for k in range(5)]
    by_position = expected_tokens_by_position(a.rates([0.5] * 4))
    k_one = StepPolicy(StepCosts(cost)).choose(8, geometric)
    k_pos = StepPolicy(StepCosts(cost)).choose(8, by_position)
    assert 0 < k_pos < k_one
    true_rates = [e / (1 + k * cost) for k, e in enumerate(expected_tokens_by_position(FALLING))]
    assert true_rates[k_pos] >= 0.99 * max(true_rates)


@pytest.mark.parametrize("alpha", [0.2, 0.4, 0.6, 0.8])
@pytest.mark.parametrize("cost", [0.05, 0.2, 0.5])
def test_geometric_outcomes_choose_as_one_rate_does(alpha, cost):
    """Where acceptance is geometric, both estimates describe the same curve: the same k, or,
    within the sampling noise of a near tie, one as good."""
    a = _outcomes([alpha] * 4, 20_000, seed=int(alpha * 10))
    geometric = [expected_tokens(a.rate(0.5), k) for k in range(5)]
    by_position = expected_tokens_by_position(a.rates([0.5] * 4))
    k_one = StepPolicy(StepCosts(cost)).choose(8, geometric)
    k_pos = StepPolicy(StepCosts(cost)).choose(8, by_position)
    true_rates = [expected_tokens(alpha, k) / (1 + k * cost) for k in range(5)]
    assert k_pos == k_one or true_rates[k_pos] == pytest.approx(true_rates[k_one], rel=0.01)


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


# ---- the step's k, from whole steps -------------------------------------------------------------
rates_lists = st.lists(st.floats(0.0, 5.0), min_size=1, max_size=MAX_NUM_SPECULATIVE_TOKENS).map(
    lambda r: [1.0, *r])


@settings(max_examples=500)
@given(rates_lists, ks)
def test_settle_speculates_only_where_it_does_not_lose(rates, current):
    k = settle(rates, current)
    assert 0 <= k < len(rates)
    if k:
        assert rates[k] >= 1.0
    if k and min(current, len(rates) - 1) == 0:
        assert rates[k] >= ENTER_GAIN  # starting needs a clear promise


@settings(max_examples=500)
@given(rates_lists, ks)
def test_settle_moves_only_for_a_clear_gain(rates, current):
    """A k that does not lose is kept unless another beats it by SWITCH_MARGIN; a clearly best k
    is always taken."""
    current = min(current, len(rates) - 1)
    k = settle(rates, current)
    best = max(rates)
    if current and rates[current] >= 1.0 and k != current:
        assert rates[k] >= rates[current] * SWITCH_MARGIN
    if best >= max(ENTER_GAIN, rates[current] * SWITCH_MARGIN):
        assert rates[k] == best


def test_settle_does_not_flap_near_break_even():
    rng = np.random.default_rng(0)
    k, moves = 0, 0
    for _ in range(1000):
        rates = [1.0, *(1.0 + rng.uniform(-0.02, 0.02, 4))]
        new = settle(rates, k)
        moves += new != k
        k = new
    assert moves == 0


def _machine(policy: StepPolicy, steps: int, alpha: float, step_cost, batch_size: int = 1
             ) -> list[int]:
    """Steps as the engine runs them: the policy chooses, the step is timed."""
    expected = [expected_tokens(alpha, k) for k in range(5)]
    chosen = []
    for n in range(steps):
        k = policy.choose(batch_size, expected)
        policy.timed(batch_size, k, step_cost(k, n))
        chosen.append(k)
    return chosen


def test_a_losing_k_is_dropped_and_probed_rarely():
    """Proposals are dear (a step proposing k costs 1 + 0.5k plain steps) and seldom kept: plain
    decoding wins. The prior (cheap proposals) tries it first; the measured steps end it, and
    it is probed again (so it could recover) less and less often."""
    policy = StepPolicy(StepCosts(prior_per_token=0.05))
    chosen = _machine(policy, 3000, 0.3, lambda k, n: 0.01 * (1 + 0.5 * k))
    late = chosen[500:]
    probes = sum(k > 0 for k in late)
    assert 0 < probes <= len(late) / PROBE_MOST + 1
    assert policy.costs.ratio(1, 1) == pytest.approx(1.5)


def test_a_clearly_losing_k_is_probed_seldom_and_a_near_one_as_before():
    """Plain decoding wins in both, though the prior (a proposal costing 0.05 plain steps)
    promises otherwise: by far where a proposal costs 0.9 (the best k makes 0.68 tokens per
    plain step's time), narrowly where it costs 0.2 and is seldom kept (0.96). Far from paying,
    probes wait up to PROBE_FAR steps; near it, up to PROBE_MOST."""
    def late_probes(alpha, per_token):
        policy = StepPolicy(StepCosts(prior_per_token=0.05))
        late = _machine(policy, 3000, alpha, lambda k, n: 0.01 * (1 + per_token * k))[500:]
        return sum(k > 0 for k in late), len(late)
    far, steps = late_probes(0.3, 0.9)
    assert 0 < far <= steps / PROBE_FAR + 1
    near, steps = late_probes(0.15, 0.2)
    assert steps / PROBE_MOST - 2 <= near <= steps / PROBE_MOST + 1


def test_a_paying_k_keeps_plain_decoding_measured():
    """Cheap proposals, mostly kept: the policy speculates, and still times a plain step now
    and then, rarely."""
    policy = StepPolicy(StepCosts(prior_per_token=0.05))
    chosen = _machine(policy, 3000, 0.8, lambda k, n: 0.01 * (1 + 0.1 * k))
    late = chosen[500:]
    plain = sum(k == 0 for k in late)
    assert 0 < plain <= len(late) / PROBE_MOST + 1
    assert max(set(late), key=late.count) == 4


def test_a_wrong_early_estimate_recovers():
    """The first speculating steps ran while the machine was busy (five times their cost):
    speculation stops, and the probes bring it back once the steps are timed as they are."""
    policy = StepPolicy(StepCosts(prior_per_token=0.05))

    def cost(k, n):
        return 0.01 * (1 + 0.1 * k) * (5.0 if k and n < 20 else 1.0)
    chosen = _machine(policy, 2000, 0.8, cost)
    assert 0 in chosen[:100]
    assert sum(k > 0 for k in chosen[-200:]) > 190


def test_a_draft_dearer_than_the_target_is_never_probed():
    """The prior says no k can pay (the draft's bytes are the target's): nothing measured ever
    says otherwise, so no step proposes."""
    policy = StepPolicy(StepCosts(prior_per_token=1.05))
    assert set(_machine(policy, 500, 0.9, lambda k, n: 0.01 * (1 + k))) == {0}


# ---- step timings -------------------------------------------------------------------------------
@given(st.integers(1, 4096), st.integers(1, 4096))
def test_batch_buckets_are_monotone_and_cover_their_sizes(a, b):
    lo, hi = sorted((a, b))
    assert batch_bucket(lo) <= batch_bucket(hi) and batch_bucket(lo) >= lo


@given(st.floats(1e-4, 1.0), st.lists(st.floats(1e-4, 100.0), max_size=STEP_SAMPLES // 2))
def test_stalls_do_not_move_a_step_time_and_a_lasting_change_does(seconds, stalls):
    t = RecentMedian()
    for _ in range(STEP_SAMPLES):
        t.record(seconds)
    for stall in stalls:  # fewer than half of the samples
        t.record(seconds * stall)
    assert t.value == seconds
    for _ in range(STEP_SAMPLES // 2 + 1):
        t.record(2 * seconds)
    assert t.value == 2 * seconds


def test_step_costs_measure_what_they_can_and_stand_in_for_the_rest():
    costs = StepCosts(prior_per_token=0.3)
    assert costs.ratio(1, 0) == 1.0 and costs.ratio(1, 2) == pytest.approx(1.6)  # the prior
    costs.record(1, 2, 0.014)
    assert costs.ratio(1, 2) == pytest.approx(1.6)  # no plain step to weigh it against
    costs.record(1, 0, 0.010)
    assert costs.ratio(1, 2) == pytest.approx(1.4)
    assert costs.ratio(1, 4) == pytest.approx(1.8)  # the nearest timed k's cost per token
    costs.record(1, 1, 0.009)  # noise: cheaper than plain
    assert costs.ratio(1, 1) == 1.0
    assert costs.ratio(2, 2) == pytest.approx(1.4)  # another batch size: batch 1's costs
    costs.record(12, 0, 0.02)
    costs.record(16, 1, 0.03)
    assert costs.ratio(9, 1) == pytest.approx(1.5)  # 9 to 16 share their timings


def test_a_cost_is_the_ratio_of_adjacent_steps_whatever_the_load_between_them():
    """A batch size times plain steps on a quiet machine, then speculates at k = 2 while other
    processes slow every step fivefold, with a plain probe now and then: the cost of k is its
    steps against the plain steps beside them (1.4), not against the quiet ones (7)."""
    costs = StepCosts(prior_per_token=0.3)
    for _ in range(STEP_SAMPLES):
        costs.record(8, 0, 0.010)
    for _ in range(3):
        for _ in range(8):
            costs.record(8, 2, 0.05 * 1.4)
        costs.record(8, 0, 0.05)  # the probe: paired with the steps before and after it
    costs.record(8, 2, 0.05 * 1.4)
    assert costs.plain_seconds(8) == pytest.approx(0.010)  # most plain steps were quiet
    assert costs.ratio(8, 2) == pytest.approx(1.4)
    # A probe of k = 3 beside steps of k = 2 is costed through k = 2's ratio.
    costs.record(8, 3, 0.05 * 1.6)
    costs.record(8, 2, 0.05 * 1.4)
    assert costs.ratio(8, 3) == pytest.approx(1.6)
    assert costs.ratio(8, 2) == pytest.approx(1.4)  # the probe's pair does not move k = 2


def test_a_larger_k_never_costs_less_than_a_smaller_one_measured_on_enough_pairs():
    """k = 4 drew lucky pairs (1.3), k = 1 was measured on BOUNDING_SAMPLES pairs at 1.5: a
    step of four proposals does all one of one does, so k = 4 is held to 1.5; before k = 1 has
    that many pairs, it does not bound the others."""
    costs = StepCosts(prior_per_token=0.3)
    for k, ratio in ((4, 1.3), (1, 1.5)):
        for _ in range(BOUNDING_SAMPLES - 1):
            costs.record(8, 0, 0.010)
            costs.record(8, k, 0.010 * ratio)
            costs.interrupt()
    assert costs.ratios(8, 4) == pytest.approx([1.0, 1.5, 2.0, 1.225, 1.3])  # 2, 3: nearest k
    costs.record(8, 0, 0.010)
    costs.record(8, 1, 0.015)
    assert costs.ratios(8, 4) == pytest.approx([1.0, 1.5, 2.0, 1.5, 1.5])


def test_steps_not_timed_between_two_break_their_pair():
    costs = StepCosts(prior_per_token=0.3)
    costs.record(1, 0, 0.010)
    costs.interrupt()  # e.g. a prefill chunk
    costs.record(1, 2, 0.030)
    costs.record(4, 0, 0.010)  # another batch size
    costs.record(1, 2, 0.030)
    assert not costs.measured(1, 2) and costs.ratio(1, 2) == pytest.approx(1.6)  # the prior
    costs.record(1, 0, 0.020)
    assert costs.measured(1, 2) and costs.ratio(1, 2) == pytest.approx(1.5)


def test_a_draft_proposal_never_costs_less_than_its_weight_bytes():
    """Steps of k = 4 timed against plain steps a busy machine slowed (the plain median above
    theirs): taken at its word, every k would look free. A draft of a quarter of the target's
    bytes is held to a quarter of a plain step per proposal; n-gram lookup streams no weights."""
    for least, expected in ((0.25, 2.0), (0.0, 1.0)):
        costs = StepCosts(prior_per_token=least + 0.05, least_per_token=least)
        costs.record(1, 0, 0.010)
        costs.record(1, 4, 0.009)
        assert costs.ratio(1, 4) == pytest.approx(expected)
        costs.record(1, 2, 0.020)
        assert costs.ratio(1, 2) == pytest.approx(2.0)  # above it, the measurement stands


def test_a_batch_size_without_timings_borrows_from_its_nearest_timed_neighbour():
    costs = StepCosts(prior_per_token=0.3)
    for batch, per_token in ((2, 0.1), (8, 0.25)):
        costs.record(batch, 0, 0.010)
        costs.record(batch, 2, 0.010 * (1 + 2 * per_token))
    assert costs.per_token(2, 2) == pytest.approx(0.1)
    assert costs.per_token(8, 2) == pytest.approx(0.25)
    assert costs.per_token(1, 2) == pytest.approx(0.1)
    assert costs.per_token(3, 1) == pytest.approx(0.1)   # nearer 2 than 8, by ratio
    assert costs.per_token(6, 3) == pytest.approx(0.25)
    assert costs.per_token(64, 1) == pytest.approx(0.25)
    assert costs.per_token(4, 2) == pytest.approx(0.25)  # as near 2 as 8: the larger batch's
    costs.record(3, 2, 0.05)  # no plain step of its own to weigh it against: still borrows
    assert costs.per_token(3, 2) == pytest.approx(0.1)
    costs.record(1, 0, 0.010)  # a plain step alone is no timing of a k either
    assert costs.per_token(1, 2) == pytest.approx(0.1)


def _noisy(rng, plain: float, a: float, c: float):
    """Step seconds of a k costing 1 + a + c k plain steps, with 10% noise and one step in
    thirty stalled (three to thirty times as long) by another process."""
    def cost(k, n):
        stall = rng.uniform(3.0, 30.0) if rng.random() < 1 / 30 else 1.0
        return plain * (1 + (a + c * k if k else 0.0)) * rng.normal(1.0, 0.1) * stall
    return cost


def test_noisy_steps_find_a_paying_k_and_hold_it():
    """Cheap proposals (1 + 0.03 + 0.08k plain steps) kept with probability 0.5: k = 2 and 3 pay
    about alike (1.47 tokens per plain step's time), 4 less. Through the noise the policy's
    steps make within 3% of the best k's rate, and it moves between k's only to probe."""
    alpha, a, c = 0.5, 0.03, 0.08
    chosen = _machine(StepPolicy(StepCosts(prior_per_token=0.05)), 3000, alpha,
                      _noisy(np.random.default_rng(7), 0.002, a, c))
    late = chosen[500:]
    rate = [expected_tokens(alpha, k) / (1 + (a + c * k if k else 0.0)) for k in range(5)]
    assert sum(rate[k] for k in late) / len(late) > 0.97 * max(rate)
    assert sum(x != y for x, y in zip(late, late[1:])) < len(late) / 8


def test_noisy_steps_of_a_losing_draft_stay_plain():
    """The same engine with a dear draft (1 + 0.12 + 0.26k plain steps) and proposals kept with
    probability 0.3: no k pays, and after the prior's first tries nearly every step is plain."""
    chosen = _machine(StepPolicy(StepCosts(prior_per_token=0.27)), 3000, 0.3,
                      _noisy(np.random.default_rng(8), 0.003, 0.12, 0.26))
    late = chosen[500:]
    assert late.count(0) > 0.95 * len(late)


def test_a_k_timed_in_a_stall_is_measured_again():
    """The first steps of every k > 1 ran while another process held the cores (thirty times
    their cost): the probes on either side of the chosen k time them again, and the policy
    reaches the k that pays most."""
    policy = StepPolicy(StepCosts(prior_per_token=0.05))
    stalled = set()

    def cost(k, n):
        first = k > 1 and k not in stalled
        stalled.add(k)
        return 0.01 * (1 + 0.1 * k) * (30.0 if first else 1.0)
    chosen = _machine(policy, 3000, 0.8, cost)
    assert chosen[-200:].count(4) > 190



def _requests_one_by_one(policy: StepPolicy, alpha: float, step_cost, catch_up_row: float,
                         requests: int = 150, prompt: int = 100, tokens: int = 64,
                         seed: int = 0) -> tuple[float, float]:
    """A batch-1 engine with a draft, as the benchmark runs it: requests one after another, each
    a `prompt` and `tokens` to make. The draft's KV is filled lazily: a speculating step first
    computes the rows it lacks (`catch_up_row` plain steps each; a new request lacks its whole
    prompt, one that decoded plainly the tokens since), and such a step is not the price of its
    k. The real policy chooses each step's k from the pooled acceptance; proposals are kept
    with probability `alpha` each. Returns (tokens per plain step's time, share of steps that
    were not plain)."""
    rng = np.random.default_rng(seed)
    pooled = Acceptance()
    made, seconds, steps, speculating = 0, 0.0, 0, 0
    for _ in range(requests):
        length, draft_valid, left = prompt, 0, tokens
        while left > 0:
            expected = expected_tokens_by_position(pooled.rates([0.6] * 4))
            k = min(policy.choose(1, expected), left - 1)
            took = step_cost(k)
            missing = length + 1 - draft_valid
            regular = not k or missing <= 2
            if k and missing > 2:
                took += catch_up_row * missing * step_cost(0)
            kept = 0
            while k and kept < k and rng.random() < alpha:
                kept += 1
            if k:
                pooled.record(k, kept)
                draft_valid = length + 1 + min(kept, k - 1)
                speculating += 1
            policy.timed(1, k, took, regular)
            length, left = length + 1 + kept, left - 1 - kept
            made, seconds, steps = made + 1 + kept, seconds + took, steps + 1
    return made / seconds * step_cost(0), speculating / steps


def test_a_near_paying_dear_draft_costs_little_at_batch_one():
    """The prior (a light draft: 0.1 plain steps a proposal) promises a gain, the measured steps
    (1 + 0.3k plain steps, a quarter of the proposals kept) say speculating loses narrowly, and
    each probe first has the draft catch up on the request's prompt and tokens (about three
    plain steps). What the probes' catch-up costs sets their spacing: within 2% of plain
    decoding, nearly every step plain."""
    policy = StepPolicy(StepCosts(prior_per_token=0.1))
    speed, share = _requests_one_by_one(policy, 0.25, lambda k: 0.003 * (1 + 0.3 * k), 0.03)
    assert speed >= 0.98
    assert share < 0.02


@pytest.mark.parametrize("catch_up_row", [0.0, 0.03])
def test_a_paying_speculator_keeps_its_gain_at_batch_one(catch_up_row):
    """Cheap proposals (1 + 0.1k plain steps) mostly kept (0.8): k = 4 makes 2.4 tokens per
    plain step's time. With or without a draft to catch up on each new request (n-gram lookup
    has none), the engine finds it and keeps most of it."""
    policy = StepPolicy(StepCosts(prior_per_token=0.1))
    speed, share = _requests_one_by_one(policy, 0.8, lambda k: 0.003 * (1 + 0.1 * k),
                                        catch_up_row)
    assert speed > 2.0
    assert share > 0.9


def test_a_probes_catch_up_sets_the_wait_before_the_next():
    """Plain decoding wins by the measured steps, the prior (a light draft) promises otherwise:
    a probe. Its first step also has the draft catch up (three plain steps more, not the price
    of its k), its next, regular, step is timed as before. The next probe waits until that
    catch-up is PROBE_SHARE of the steps since; without a catch-up it comes much sooner."""
    def steps_to_next_probe(catch_up: float) -> int:
        policy = StepPolicy(StepCosts(prior_per_token=0.1))
        for k, seconds in ((0, 0.01), (1, 0.015)):
            policy.timed(1, k, seconds)
        expected = [expected_tokens(0.25, k) for k in range(5)]
        while not (k := policy.choose(1, expected)):
            policy.timed(1, 0, 0.01)
        if catch_up:
            policy.timed(1, k, 0.01 * (1.5 + catch_up), regular=False)
            assert policy.choose(1, expected) == k  # the probe goes on: its k is not timed yet
        policy.timed(1, k, 0.015)
        waited = 0
        while not policy.choose(1, expected):
            policy.timed(1, 0, 0.01)
            waited += 1
        return waited
    assert steps_to_next_probe(3.0) >= (3.0 + 0.5) / PROBE_SHARE - 1
    assert steps_to_next_probe(0.0) <= PROBE_MOST
