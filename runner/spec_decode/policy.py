"""How many tokens a speculating step proposes: the k that makes most tokens per second, from what
the engine measured.

The acceptance model (Leviathan et al., 2023): each proposal is kept with probability alpha,
given that the ones before it were. A sequence proposing k tokens then makes on average

    E(alpha, k) = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha)

tokens in the step (the target's own included). Measured acceptance falls with the position
faster than that (an n-gram match runs out, a draft grows less sure), so one alpha overrates the
long k: the step's choice uses a rate per position instead, a_i = the chance position i is kept
given the ones before it were, and

    E(k) = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k

(`expected_tokens_by_position`; the geometric E is the case of equal a_i). Both are estimated
per request from its own proposals, starting from what the engine has seen on all requests; an
n-gram lookup that finds nothing counts as a rejected proposal, since the step it asked for made
one token.

The cost is measured, not summed from parts: the wall time of whole steps proposing k against
plain steps of the same batch size run right before or after them (step_costs.py),
ratio(b, k) >= 1. A step of b decodes that all propose k then makes, per plain step's time,

    rate(k) = mean_i E_i(k) / ratio(b, k)        rate(0) = 1 (a plain decode)

and the step takes the k of the highest rate. k is one per step, for every decode in it: the
step's draft passes and its timing are the step's, not a request's.

Kept honest three ways. Hysteresis: speculation starts only where it promises ENTER_GAIN, and
a batch size keeps its k until another beats it by SWITCH_MARGIN, or until speculating loses
(rate < 1), so a request near break-even does not flap. Probes: now and then a batch size runs
one step of another k than its choice, while it speculates a plain step and, in turn, the k on
either side of its own, while it does not the k the prior costs promise, so a wrong estimate
(a step timed while the machine was busy) is measured again and recovers; the probes grow
rarer while speculation stays on or off (PROBE_FIRST doubling up to PROBE_MOST steps, or up to
PROBE_FAR while off where the measured costs say even the best k clearly loses: there a probe
is almost surely a loss). A draft's probe first has the draft catch up on the sequence's KV
(at batch size 1, every new request's prompt): those steps are timed too, as the probe's, and
while the batch size does not speculate, what they took beyond as many plain steps sets the
wait before the next probe, so catching up spends at most PROBE_SHARE of its time.
And until a k is timed, its cost comes from the nearest timed k of the batch size, or, where
the batch size has none, from its nearest timed neighbour's, or, with none timed, from the
draft's weight bytes against the target's: a draft as costly as the target is never tried.

A seeded sampled request is the exception: its k must repeat from run to run (its samples
depend on it), so it decides from its own acceptance, as one alpha taken optimistically, and
the prior cost only (`choose_k`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nanovllm.runner.spec_decode.step_costs import StepCosts, batch_bucket

# A plain batch size starts speculating only where a k promises this many tokens per plain
# step's time: the estimates are noisy, and a start may first have the draft catch up.
ENTER_GAIN = 1.05
# Where it speculates, another k (0 included) must promise this much more than the current
# one, unless the current one loses against plain decoding.
SWITCH_MARGIN = 1.03
# A batch size's first probe comes after this many steps, each probe doubles the wait, up to
# PROBE_MOST; starting or stopping speculation brings it back to PROBE_FIRST.
PROBE_FIRST = 8
PROBE_MOST = 32
# While a batch size does not speculate, the catch-up its probes need (a draft computing the
# sequence's missing KV) spends at most this share of its time: what a probe's catch-up steps
# took beyond as many plain steps sets the wait before the next one.
PROBE_SHARE = 0.01
# While a batch size does not speculate and the measured costs say even its best k loses by
# more than NEAR_PAYING, its probes wait up to PROBE_FAR steps instead: such a probe is almost
# surely a loss.
NEAR_PAYING = 0.9
PROBE_FAR = 256
# A probe whose step could not be timed (catch-up, prefill, a capped k) is given up after this
# many steps.
PROBE_TRIES = 4
# Where nothing was measured yet: an acceptance rate that lets a request try speculation, with
# the weight of this many proposals (its own soon outweigh it).
PRIOR_ALPHA = 0.6
PRIOR_WEIGHT = 2.0
# A request's rate is taken this many standard errors above its estimate: a few unlucky
# rejections early on do not end its speculation, and more evidence narrows the bonus away.
OPTIMISM = 1.0
# The engine's pooled acceptance forgets its oldest evidence at this rate per recorded step, so
# a change of traffic shows within a few hundred steps.
POOL_DECAY = 0.995


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step proposing k yields on average (the target's own included): 1 + ... + a^k."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_tokens_by_position(rates: list[float]) -> list[float]:
    """E(k) for k = 0..len(rates), `rates[i]` the chance that proposal i + 1 is kept given the
    ones before it were: 1 + the sum over i <= k of rates[0] * ... * rates[i]. Unlike
    `expected_tokens`, the rate may fall with the position, as measured acceptance does: one
    alpha, fitted mostly on the first positions, would overrate a long k."""
    out, survive = [1.0], 1.0
    for rate in rates:
        survive *= rate
        out.append(out[-1] + survive)
    return out


def gain(alpha: float, k: int, cost: float) -> float:
    """Tokens per plain step's time when proposing k, each proposed token costing `cost` plain
    steps: a plain decode's gain is 1."""
    return expected_tokens(alpha, k) / (1.0 + k * cost)


def choose_k(alpha: float, cost: float, k_max: int) -> int:
    """The k in 0..k_max of most tokens per time (the smallest on a tie), each proposed token
    costing `cost` plain steps; 0 unless it beats a plain decode by ENTER_GAIN."""
    best = max(range(k_max + 1), key=lambda k: (gain(alpha, k, cost), -k), default=0)
    return best if gain(alpha, best, cost) >= ENTER_GAIN else 0


def settle(rates: list[float], current: int) -> int:
    """The k a batch size moves to from `current`, given each k's rate (rates[0] = 1): the best,
    with the hysteresis of the module docstring."""
    best = max(range(len(rates)), key=lambda k: (rates[k], -k))
    current = min(current, len(rates) - 1)
    holding = current > 0 and rates[current] >= 1.0  # speculating, and not losing by it
    if holding and rates[best] < rates[current] * SWITCH_MARGIN:
        return current
    if best > 0 and rates[best] < ENTER_GAIN:
        return current if holding else 0
    return best


@dataclass(slots=True)
class BatchChoice:
    """One batch bucket's k, and its probes of the other side."""
    k: int = 0
    wait: int = PROBE_FIRST        # steps between probes
    countdown: int = PROBE_FIRST   # steps to the next probe
    probing: int | None = None     # the k of a probe waiting for its step to be timed
    tries: int = 0                 # steps that probe has had
    probes: int = 0                # probes so far: whose turn the next one is
    extra: float = 0.0             # seconds of that probe's irregular steps (a catch-up)
    extra_steps: int = 0           # and how many there were


@dataclass(slots=True)
class StepPolicy:
    """The engine's per-step choice of k from the measured step costs (module docstring)."""
    costs: StepCosts
    choices: dict[int, BatchChoice] = field(default_factory=dict)

    def choose(self, batch_size: int, expected: list[float]) -> int:
        """The k of a step of `batch_size` decodes; `expected[k]`: their mean E(alpha_i, k),
        k = 0..k_max."""
        choice = self.choices.setdefault(batch_bucket(batch_size), BatchChoice())
        ratios = self.costs.ratios(batch_size, len(expected) - 1)
        rates = [e / r for e, r in zip(expected, ratios)]
        k = settle(rates, choice.k)
        if (k == 0) != (choice.k == 0):  # started or stopped speculating: check it soon
            choice.wait = PROBE_FIRST
            choice.countdown = min(choice.countdown, PROBE_FIRST)
        choice.k = k
        if choice.probing is not None:
            if choice.tries < PROBE_TRIES:
                choice.tries += 1
                return choice.probing
            self._probe_ended(batch_size, choice)
        choice.countdown -= 1
        if choice.countdown > 0:
            return choice.k
        choice.countdown = choice.wait
        far = not choice.k and max(rates[1:], default=0.0) < NEAR_PAYING
        choice.wait = min(2 * choice.wait, PROBE_FAR if far else PROBE_MOST)
        probe = self._probe(expected, choice)
        if probe != choice.k:
            choice.probing, choice.tries = probe, 1
        return probe

    def probing(self, batch_size: int) -> bool:
        """Whether the steps of `batch_size` decodes are probing a k the measurements advise
        against: that k is judged by the prior cost too (catching the draft up for it)."""
        choice = self.choices.get(batch_bucket(batch_size))
        return choice is not None and bool(choice.probing)

    def _probe(self, expected: list[float], choice: BatchChoice) -> int:
        """The k a probe tries: while speculating, plain decoding every other probe and the k on
        either side of the choice in between; while not, the k the prior cost promises (none
        where even that does not pay)."""
        k = choice.k
        if not k:
            prior = self.costs.prior_per_token
            return settle([e / (1.0 + j * prior) for j, e in enumerate(expected)], 0)
        turns = [0, k + 1, 0, k - 1]
        turns = [j for j in turns if j == 0 or 1 <= j < len(expected)]
        choice.probes += 1
        return turns[(choice.probes - 1) % len(turns)]

    def timed(self, batch_size: int, k: int, seconds: float, regular: bool = True) -> None:
        """A step of `batch_size` decodes proposing (at most) k took `seconds`; `regular`: its
        time is the price of its k (step_costs.py), else it only counts towards a probe's."""
        if regular:
            self.costs.record(batch_size, k, seconds)
        else:
            self.costs.interrupt()
        choice = self.choices.get(batch_bucket(batch_size))
        if choice is None or choice.probing is None:
            return
        if not regular:  # a draft catching up for the probe, or a request's last steps
            choice.extra += seconds
            choice.extra_steps += 1
        elif choice.probing == k:
            self._probe_ended(batch_size, choice)

    def _probe_ended(self, batch_size: int, choice: BatchChoice) -> None:
        """A probe's steps are over. While the batch size does not speculate, what its irregular
        steps (a draft catching up on the sequence's KV) took beyond as many plain steps is
        paid for by waiting until it is PROBE_SHARE of the steps since: the timed steps' cost
        is already what sets the waits, and what it misses is this."""
        plain = self.costs.plain_seconds(batch_size)
        if plain and not choice.k and choice.extra_steps:
            paid_off = math.ceil((choice.extra / plain - choice.extra_steps) / PROBE_SHARE)
            choice.wait = max(choice.wait, paid_off)
            choice.countdown = max(choice.countdown, paid_off)
        choice.probing, choice.extra, choice.extra_steps = None, 0.0, 0


def pays_to_catch_up(alpha: float, cost: float, k: int, remaining: int | None,
                     catch_up_cost: float) -> bool:
    """Whether starting to speculate, with k, is worth computing the draft's missing KV first:
    what speculating saves over the `remaining` tokens the request may still make (None: no
    bound, it pays) against `catch_up_cost`, both in the sequence's share of a plain step."""
    if k == 0:
        return False
    if remaining is None:
        return True
    saved = remaining * (1.0 - (1.0 + k * cost) / expected_tokens(alpha, k))
    return saved > catch_up_cost


@dataclass(slots=True)
class Acceptance:
    """Acceptance as counts by proposal position: how often a proposal was judged there (the
    positions before it all kept; the first rejected one is judged too, those after it never
    are) and how often it was kept there. Summed over positions they give one rate, alpha's
    estimate kept / decided; position by position, the rate at each (`rates`)."""
    reached: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)

    @property
    def kept(self) -> float:
        return sum(self.accepted)

    @property
    def decided(self) -> float:
        return sum(self.reached)

    def record(self, num_proposed: int, num_kept: int) -> None:
        judged = min(num_kept + 1, num_proposed)
        for counts, n in ((self.reached, judged), (self.accepted, num_kept)):
            counts.extend([0.0] * (n - len(counts)))
            for i in range(n):
                counts[i] += 1

    def rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        """The estimate, `prior` counting as `weight` decided proposals."""
        return (self.kept + prior * weight) / (self.decided + weight)

    def rates(self, prior: list[float], weight: float = PRIOR_WEIGHT) -> list[float]:
        """Each position's rate given the ones before it were kept, for as many positions as
        `prior` has, `prior[i]` counting as `weight` proposals judged at position i + 1."""
        def at(counts: list[float], i: int) -> float:
            return counts[i] if i < len(counts) else 0.0
        return [(at(self.accepted, i) + p * weight) / (at(self.reached, i) + weight)
                for i, p in enumerate(prior)]

    def optimistic(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        """The estimate plus OPTIMISM standard errors (at most 1): what the choice of k uses,
        so a request with little evidence keeps trying (an upper confidence bound)."""
        rate = self.rate(prior, weight)
        return min(1.0, rate + OPTIMISM * math.sqrt(rate * (1.0 - rate) / (self.decided + weight)))

    def decay(self, factor: float) -> None:
        self.reached = [n * factor for n in self.reached]
        self.accepted = [n * factor for n in self.accepted]
