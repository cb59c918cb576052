"""How many tokens a decode proposes: the k that pays most, from what the engine has measured.

The model (Leviathan et al., 2023): each proposal is kept with probability alpha, given that the
ones before it were. A step proposing k tokens then yields on average

    E(alpha, k) = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha)

tokens (the target's own token included), and costs, in plain decode steps of the same batch,

    1 + k * c,   c = c_draft + c_verify

c_draft: one draft pass over the batch against one target pass (0 for n-gram lookup, which runs
no model); c_verify: one more query row per sequence in the target's pass, against the pass.
The k of most tokens per cost wins. k = 0 is a plain decode (1 token for cost 1): chosen
whenever no k beats it by MIN_GAIN, so speculation never costs more than the estimate's error.

The estimates are online: alpha per request from its own proposals (starting from what the
engine has seen on all requests), taken optimistically while the evidence is thin, and the
costs per engine from the timed passes of its steps (a line, seconds = fixed + per_row * rows,
for the target and for the draft).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A k must promise this many tokens per plain step's cost to be chosen: the estimates are noisy
# (the timings most), and a speculating step that gains nothing still costs the draft's work.
MIN_GAIN = 1.05
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
# The cost lines forget at this rate per timed pass: the machine's load changes under them.
COST_DECAY = 0.98


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a step proposing k yields on average (the target's own included): 1 + ... + a^k."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def gain(alpha: float, k: int, cost: float) -> float:
    """Tokens per plain step's cost when proposing k: a plain decode's gain is 1."""
    return expected_tokens(alpha, k) / (1.0 + k * cost)


def choose_k(alpha: float, cost: float, k_max: int) -> int:
    """The k in 0..k_max of most tokens per cost (the smallest on a tie); 0 unless it beats a
    plain decode by MIN_GAIN. `cost` (c above) is a draft pass plus a verify row per sequence,
    in target passes."""
    best = max(range(k_max + 1), key=lambda k: (gain(alpha, k, cost), -k), default=0)
    return best if gain(alpha, best, cost) >= MIN_GAIN else 0


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
    """An acceptance rate as counts: proposals kept, and proposals decided (kept, or the first
    rejected one; those after it were never judged). kept / decided is alpha's estimate."""
    kept: float = 0.0
    decided: float = 0.0

    def record(self, num_proposed: int, num_kept: int) -> None:
        self.kept += num_kept
        self.decided += num_kept + (num_kept < num_proposed)

    def rate(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        """The estimate, `prior` counting as `weight` decided proposals."""
        return (self.kept + prior * weight) / (self.decided + weight)

    def optimistic(self, prior: float, weight: float = PRIOR_WEIGHT) -> float:
        """The estimate plus OPTIMISM standard errors (at most 1): what the choice of k uses,
        so a request with little evidence keeps trying (an upper confidence bound)."""
        rate = self.rate(prior, weight)
        return min(1.0, rate + OPTIMISM * math.sqrt(rate * (1.0 - rate) / (self.decided + weight)))

    def decay(self, factor: float) -> None:
        self.kept *= factor
        self.decided *= factor


@dataclass(slots=True)
class CostLine:
    """Seconds of a pass over `rows` query rows, fitted online as fixed + per_row * rows by
    least squares, each pass's weight decaying by COST_DECAY per newer one."""
    n: float = 0.0    # sum of weights
    x: float = 0.0    # of weight * rows
    xx: float = 0.0   # of weight * rows^2
    y: float = 0.0    # of weight * seconds
    xy: float = 0.0   # of weight * rows * seconds

    def record(self, rows: int, seconds: float) -> None:
        d = COST_DECAY
        self.n, self.x, self.xx = self.n * d + 1, self.x * d + rows, self.xx * d + rows * rows
        self.y, self.xy = self.y * d + seconds, self.xy * d + rows * seconds

    @property
    def measured(self) -> bool:
        return self.n > 0

    def fit(self) -> tuple[float, float]:
        """(fixed, per_row) seconds, both at least 0. With a single row count seen, the line
        through it is flat (a pass of any size costs the same): verification looks free until
        passes of another size say otherwise."""
        if not self.n:
            return 0.0, 0.0
        var = self.n * self.xx - self.x * self.x
        if var <= 1e-9 * max(self.n * self.xx, 1e-300):
            return self.y / self.n, 0.0
        per_row = (self.n * self.xy - self.x * self.y) / var
        fixed = (self.y - per_row * self.x) / self.n
        if per_row < 0:
            return self.y / self.n, 0.0
        if fixed < 0:  # through the origin
            return 0.0, self.xy / self.xx
        return fixed, per_row

    def seconds(self, rows: float) -> float:
        fixed, per_row = self.fit()
        return fixed + per_row * rows


@dataclass(slots=True)
class StepCosts:
    """The engine's cost lines: the target's passes, and the draft's (None for n-gram lookup,
    whose proposals cost no pass). `draft_share` stands in for the draft's line until a draft
    pass was timed: its weights' bytes against the target's (a decode pass streams them once)."""
    target: CostLine
    draft: CostLine | None
    draft_share: float = 0.0

    def ratio(self, batch_size: int) -> tuple[float, float]:
        """(c_draft, c_verify) for a step of `batch_size` decodes: one draft pass over the batch,
        and one more target row per sequence, each against the target's pass over the batch."""
        fixed, per_row = self.target.fit()
        step = fixed + per_row * batch_size
        if step <= 0:
            return self.draft_share if self.draft is not None else 0.0, 0.0
        c_verify = per_row * batch_size / step
        if self.draft is None:
            return 0.0, c_verify
        if not self.draft.measured:
            return self.draft_share, c_verify
        return self.draft.seconds(batch_size) / step, c_verify

    def catch_up(self, rows: int, batch_size: int) -> float:
        """The draft computing `rows` missing positions of one sequence, in that sequence's share
        of a plain step (a target pass over `batch_size` decodes, over batch_size)."""
        if self.draft is None or rows <= 0:
            return 0.0
        fixed, per_row = self.target.fit()
        step = fixed + per_row * batch_size
        if step <= 0:
            return 0.0
        # Its rows ride on a draft pass the batch makes anyway: only their own cost counts.
        d_per_row = self.draft.fit()[1] if self.draft.measured else per_row * self.draft_share
        return d_per_row * rows / step * batch_size
