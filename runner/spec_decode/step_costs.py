"""What a speculating step costs, measured whole: the wall time of the engine's steps (scheduling,
the draft's passes, the target's pass, verification, output processing: LLMEngine.step from end to
end), by batch size and the step's k, against plain steps (k = 0) of the same batch size.

Adding up parts (a draft pass, one more verified row per sequence) under-counts on a small model,
where a step's fixed cost, the Python around its passes, is a large share of it: the parts leave
that out, and it is what a speculating step pays more of. Whole steps have nothing left out.

A cost is a ratio of two steps timed back to back: a step of k right before or after a plain
step of the same batch size (or after a step of another timed k, through that one's ratio). On
a shared machine a step's wall time moves by several times as other processes come and go; a
batch size that speculates times a plain step only at its probes, so a k's recent steps
against its last plain ones would weigh this minute's load against another's. Adjacent steps
share their load, and their ratio is the price of k.

Only regular decode steps are timed: every scheduled sequence a single decode, none so near its
end that its k is capped, no draft catch-up in the step (a prefill chunk, a request finishing,
or the draft computing what its cache lacks, is not the price of a step's k); any other step
in between breaks the pair. Each estimate is the median of the bucket's last STEP_SAMPLES
samples: a step stalled by another process on the machine does not move it, a lasting change
shows as soon as it holds for half of them. A k not timed takes the cost per token of the
bucket's nearest timed k; a bucket with no timed k borrows from its nearest timed neighbour.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# Batch sizes up to this are a bucket each; larger ones share one per power of two (speculation
# rarely runs there, and neighbouring sizes cost nearly alike).
EXACT_BATCH_SIZES = 8
# The samples (steps' seconds, adjacent steps' ratios) an estimate is the median of.
STEP_SAMPLES = 9
# A k measured on this many pairs bounds the cost of every larger k from below: a step stalled
# by another process is in two pairs (the steps before and after it), and with this many they
# are not the median.
BOUNDING_SAMPLES = 5
# Until a bucket is measured, a proposed token is assumed to cost this share of a plain step on
# top of what the draft's passes cost (its bytes against the target's): one more verified row
# and its share of the step's bookkeeping.
VERIFY_PRIOR = 0.05
# A draft pass's line forgets at this rate per timed pass: the machine's load changes under it.
COST_DECAY = 0.98


def batch_bucket(batch_size: int) -> int:
    """The batch sizes that share timings: each up to EXACT_BATCH_SIZES, then powers of two."""
    if batch_size <= EXACT_BATCH_SIZES:
        return batch_size
    return 1 << (batch_size - 1).bit_length()


@dataclass(slots=True)
class RecentMedian:
    """The median of the last STEP_SAMPLES samples (a step's seconds, or a ratio of two adjacent
    steps'), and how many there were."""
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=STEP_SAMPLES))
    value: float = 0.0
    samples: int = 0

    def record(self, sample: float) -> None:
        self.recent.append(sample)
        self.samples += 1
        ordered = sorted(self.recent)
        mid = len(ordered) // 2
        self.value = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(slots=True)
class StepCosts:
    """Whole-step timings by (batch bucket, k), the ratios of adjacent ones (module docstring),
    and what stands in for the unmeasured: the
    cost per proposed token, in plain steps, of the nearest measured k of the bucket, else
    `prior_per_token` (the draft's weight bytes against the target's, plus VERIFY_PRIOR).
    `least_per_token` bounds every measured cost from below: a draft's pass streams all its
    weights, so a proposal costs at least their bytes against the target's (a plain step streams
    the target's); a measurement under that was timed against a plain step slowed by a busy
    machine, and taken at its word it would make every k look nearly free."""
    prior_per_token: float
    least_per_token: float = 0.0
    times: dict[tuple[int, int], RecentMedian] = field(default_factory=dict)  # seconds
    # (bucket, k > 0) -> a step of k against a plain one, from adjacent steps
    paired: dict[tuple[int, int], RecentMedian] = field(default_factory=dict)
    last: tuple[int, int, float] | None = None  # the step before: (bucket, k, seconds)

    def record(self, batch_size: int, k: int, seconds: float) -> None:
        """A regular step of `batch_size` decodes proposing k took `seconds`: with the step
        before it, of another k and the same bucket, a sample of their ratio."""
        b = batch_bucket(batch_size)
        _sample(self.times, (b, k), seconds)
        if self.last is not None and self.last[0] == b and self.last[1] != k and seconds > 0:
            self._pair(b, self.last[1], self.last[2], k, seconds)
        self.last = b, k, seconds

    def interrupt(self) -> None:
        """A step that was not timed ran: the next one has no step before it to pair with."""
        self.last = None

    def _pair(self, b: int, k0: int, s0: float, k1: int, s1: float) -> None:
        """Steps of k0 then k1 (k0 != k1), `s0` and `s1` seconds: a ratio sample of the one
        that is not plain; neither plain (a probe beside the k a batch size holds), of the one
        with fewer samples, through the other's ratio (its own comes from plain steps only, so
        a probe's stall does not travel back into it)."""
        if s0 <= 0:
            return
        paired = self.paired
        if k0 == 0:
            _sample(paired, (b, k1), s1 / s0)
        elif k1 == 0:
            _sample(paired, (b, k0), s0 / s1)
        else:
            n0, n1 = (paired[b, k].samples if (b, k) in paired else 0 for k in (k0, k1))
            if n0 >= n1 and n0:
                _sample(paired, (b, k1), s1 / s0 * paired[b, k0].value)
            elif n1:
                _sample(paired, (b, k0), s0 / s1 * paired[b, k1].value)

    def measured(self, batch_size: int, k: int) -> bool:
        """Whether k's cost at `batch_size` was measured: a plain step timed, a k > 0 paired."""
        return (batch_bucket(batch_size), k) in (self.paired if k else self.times)

    def plain_seconds(self, batch_size: int) -> float | None:
        """A plain step's seconds at `batch_size`, None until one was timed."""
        t = self.times.get((batch_bucket(batch_size), 0))
        return t.value if t else None

    def ratio(self, batch_size: int, k: int) -> float:
        """A step proposing k against a plain step of the batch; at least 1 (it does all a
        plain step does), so noise never makes a proposal look free."""
        return self.ratios(batch_size, k)[k]

    def ratios(self, batch_size: int, k_max: int) -> list[float]:
        """`ratio(batch_size, k)` for k = 0..k_max, the timings looked up once (the policy asks
        every step): 1 + k times its cost per token (`per_token`'s rule), and never less than
        a smaller k's measured on BOUNDING_SAMPLES pairs or more. A step proposing more does
        all one proposing fewer does: a k measured cheaper than that drew lucky pairs, and the
        policy, taking the best of several noisy estimates, would keep choosing it."""
        b = self._nearest_timed(batch_bucket(batch_size))
        timed = self._timed_per_token(b)
        out, floor = [1.0], 1.0
        for k in range(1, k_max + 1):
            out.append(max(floor, 1.0 + k * self._nearest_k(timed, k)))
            pairs = self.paired.get((b, k))
            if pairs is not None and pairs.samples >= BOUNDING_SAMPLES:
                floor = max(floor, out[-1])
        return out

    def per_token(self, batch_size: int, k: int) -> float:
        """What each of k proposed tokens adds to a step, in plain steps: (ratio - 1) / k, from
        k's measured cost or that of the nearest measured k of the bucket; a bucket with none
        borrows from its nearest timed neighbour; with none timed, the prior."""
        return (self.ratio(batch_size, k) - 1.0) / k if k else 0.0

    def _timed_per_token(self, b: int | None) -> dict[int, float]:
        """The timed bucket `b`'s cost per proposed token by timed k (none where b is None)."""
        if b is None:
            return {}
        return {j: max(self.least_per_token, (t.value - 1.0) / j)
                for (bucket, j), t in self.paired.items() if bucket == b}

    def _nearest_k(self, timed: dict[int, float], k: int) -> float:
        """The cost per token of the timed k nearest k (the smaller on a tie), else the prior."""
        if not timed:
            return self.prior_per_token
        return timed[min(timed, key=lambda j: (abs(j - k), j))]

    def _nearest_timed(self, bucket: int) -> int | None:
        """The timed bucket (a k paired with plain steps) nearest `bucket` by ratio, the larger
        on a tie (a proposal's rows are a larger share of a larger batch's step)."""
        timed = {b for b, _ in self.paired}
        return min(timed, key=lambda b: (abs(math.log(b / bucket)), -b), default=None)


def _sample(table: dict[tuple[int, int], RecentMedian], key: tuple[int, int],
            sample: float) -> None:
    if key not in table:
        table[key] = RecentMedian()
    table[key].record(sample)


@dataclass(slots=True)
class CostLine:
    """Seconds of a pass over `rows` query rows, fitted online as fixed + per_row * rows by
    least squares, each pass's weight decaying by COST_DECAY per newer one. The draft's passes
    are timed so: what the draft computing a sequence's missing rows costs (catching up)."""
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
        through it is flat (a pass of any size costs the same)."""
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
