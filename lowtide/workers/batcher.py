"""When to run a batch of a `@lowtide.batched` function, and how many items to put in it.

Pure: the replica's batch loop (`workers.batching`) feeds it arrivals and finished batches
with their clock readings and asks `decide(observation, now)`; it never reads the clock.

What it learns, online:
- **The batch cost curve**, `t(n) = fixed + per_item x n`: a least-squares line through
  (batch size, run time) with exponential forgetting (each new batch weighs as much as the
  last `1 / (1 - FORGET)` batches together), so the fit follows a model that warms up or a
  host that gets busier. BentoML's adaptive dispatcher fits the same line.
- **The arrival gap**: an exponential average of the time between arrivals (1 / rate).

What it decides, per batch (one batch runs at a time, as with Ray Serve's default):
- **How many at most** (`cap`): batches grow while they still pay: past the size at which a
  batch reaches `EFFICIENCY` of the curve's best throughput (`n = E/(1-E) x fixed /
  per_item`), a bigger batch adds latency and little throughput, so the replica stops there
  and its queue grows instead, which the autoscaler sees. Never larger than twice the
  largest batch measured so far (the fit says nothing beyond what it has seen; the cap
  doubles as batches fill), than fits the function's timeout, or than the user's
  `max_batch_size` (a memory bound).
- **How long to wait**: a full batch runs at once; so does any batch when no batch is
  running and waiting for the next caller does not pay. Waiting for one more arrival costs
  each of the `n` queued items about one arrival gap; not waiting costs that next caller a
  whole batch run (it waits for this batch to finish). So the batch waits while
  `(n + 1) x gap < t(n + 1)`, never longer than the batch itself takes to run (the oldest
  item waits at most `t(n)`), and stops as soon as arrivals pause (no arrival for twice the
  gap). A lone request under light load (gap much longer than a run) runs at once.

The replica's concurrency limit counts items: `item_limit` admits one running batch and one
forming batch (`2 x cap`), which is what activators and the autoscaler plan with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EFFICIENCY = 0.9  # a batch stops growing once it reaches this share of the best throughput
FORGET = 0.95  # weight kept by past batches at each new one
GAP_ALPHA = 0.1  # weight of a new arrival gap in its average
FIRST_CAP = 8  # the cap before any batch was measured
HARD_MAX = 4096  # no batch is ever larger, whatever the curve says
FIXED_MAX_BATCH = 256  # the fixed-wait baseline's batch size without max_batch_size
MIN_SPREAD = 0.25  # variance of batch sizes below which the line's slope is unknown


@dataclass(frozen=True)
class BatchObservation:
    queued: int  # items waiting to be batched (expired ones already removed)
    oldest_wait_s: float  # how long the oldest queued item has waited
    since_arrival_s: float  # time since the last arrival
    running: int  # batches running now
    timeout_s: float  # the shortest run time the queued items allow


@dataclass(frozen=True)
class BatchDecision:
    take: int  # items to run now as one batch (0: run nothing now)
    wait_s: float | None  # when nothing runs: decide again after this (None: on an event)
    reason: str


@dataclass(frozen=True)
class CostFit:
    fixed_s: float
    per_item_s: float | None  # None while the sizes seen are too alike to tell

    def predict_s(self, n: int) -> float:
        return self.fixed_s + (self.per_item_s or 0.0) * n


class LineFit:
    """Least squares of run time on batch size, with exponential forgetting."""

    def __init__(self, forget: float = FORGET) -> None:
        self.forget = forget
        self._w = self._n = self._nn = self._t = self._nt = 0.0

    def add(self, n: int, t_s: float) -> None:
        f = self.forget
        self._w = self._w * f + 1.0
        self._n = self._n * f + n
        self._nn = self._nn * f + n * n
        self._t = self._t * f + t_s
        self._nt = self._nt * f + n * t_s

    def fit(self) -> CostFit | None:
        if self._w == 0:
            return None
        mean_n, mean_t = self._n / self._w, self._t / self._w
        var_n = self._nn / self._w - mean_n * mean_n
        if var_n < MIN_SPREAD:
            return CostFit(mean_t, None)
        slope = (self._nt / self._w - mean_n * mean_t) / var_n
        if slope <= 0:  # flat (or noise): batching costs nothing per item
            return CostFit(mean_t, 0.0)
        fixed = mean_t - slope * mean_n
        if fixed < 0:  # no fixed cost: the line through the origin
            return CostFit(0.0, self._nt / self._nn)
        return CostFit(fixed, slope)


def efficient_size(fit: CostFit, efficiency: float = EFFICIENCY) -> int | None:
    """The batch size at which throughput n / t(n) reaches `efficiency` of its limit
    1 / per_item; None when the curve is flat or unknown (no such bound)."""
    if not fit.per_item_s:
        return None
    return max(1, math.ceil(efficiency / (1 - efficiency) * fit.fixed_s / fit.per_item_s
                            - 1e-9))


def size_within_s(fit: CostFit, budget_s: float) -> int | None:
    """The largest batch predicted to run within budget_s (None: no bound known)."""
    if not fit.per_item_s:
        return None
    return max(1, math.floor((budget_s - fit.fixed_s) / fit.per_item_s))


class BatchPolicy:
    def __init__(self, max_batch_size: int | None = None) -> None:
        if max_batch_size is not None and not 1 <= max_batch_size <= HARD_MAX:
            raise ValueError(f"max_batch_size={max_batch_size} must be in [1, {HARD_MAX}]")
        self.max_batch_size = max_batch_size or HARD_MAX
        self.line = LineFit()
        self.largest = 0  # the largest batch measured
        self.gap_s: float | None = None
        self._last_arrival: float | None = None
        self.cap_reason = "no batch measured yet"

    # ---- learning ---------------------------------------------------------------------
    def on_arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = max(0.0, now - self._last_arrival)
            self.gap_s = gap if self.gap_s is None else (
                (1 - GAP_ALPHA) * self.gap_s + GAP_ALPHA * gap)
        self._last_arrival = now

    def on_batch(self, size: int, run_s: float) -> None:
        self.line.add(size, run_s)
        self.largest = max(self.largest, size)

    # ---- deciding ---------------------------------------------------------------------
    def cap(self, timeout_s: float = math.inf) -> int:
        """The most items one batch may take now."""
        bounds = {"max_batch_size": self.max_batch_size,
                  "2 x the largest batch measured": max(FIRST_CAP, 2 * self.largest)}
        fit = self.line.fit()
        if fit is not None:
            eff = efficient_size(fit)
            if eff is not None:
                bounds[f"{EFFICIENCY:.0%} of the best throughput"] = eff
            if math.isfinite(timeout_s):
                within = size_within_s(fit, timeout_s / 2)
                if within is not None:
                    bounds["half the timeout"] = within
        reason, cap = min(bounds.items(), key=lambda kv: kv[1])
        self.cap_reason = reason
        return max(1, cap)

    @property
    def item_limit(self) -> int:
        """Items a replica admits at once: one running batch and one forming."""
        return 2 * self.cap()

    def decide(self, obs: BatchObservation, now: float) -> BatchDecision:
        if obs.queued == 0:
            return BatchDecision(0, None, "nothing queued")
        if obs.running > 0:
            return BatchDecision(0, None, "a batch is running")
        cap = self.cap(obs.timeout_s)
        if obs.queued >= cap:
            return BatchDecision(cap, None, f"full batch of {cap} ({self.cap_reason})")
        fit, gap = self.line.fit(), self.gap_s
        if fit is None or gap is None:
            return BatchDecision(obs.queued, None, "nothing learned yet: run at once")
        n = obs.queued
        run_next_s = fit.predict_s(n + 1)
        if (n + 1) * gap >= run_next_s:
            return BatchDecision(n, None, f"arrivals every {gap * 1000:.1f} ms: waiting for "
                                 f"one more costs more than a run ({run_next_s * 1000:.1f} ms)")
        budget_s = fit.predict_s(n) - obs.oldest_wait_s
        pause_s = 2 * gap - obs.since_arrival_s
        wait_s = min(budget_s, pause_s)
        if wait_s <= 0:
            why = "waited a batch's run time" if budget_s <= pause_s else "arrivals paused"
            return BatchDecision(n, None, f"{why}: run {n}")
        return BatchDecision(0, wait_s, f"waiting up to {wait_s * 1000:.1f} ms for more "
                             f"(arrivals every {gap * 1000:.2f} ms)")

    def view(self) -> dict[str, object]:
        """The learned parameters, for status."""
        fit = self.line.fit()
        return {
            "fixed_ms": None if fit is None else round(fit.fixed_s * 1000, 3),
            "per_item_ms": None if fit is None or fit.per_item_s is None
            else round(fit.per_item_s * 1000, 4),
            "max_batch": self.cap(), "cap_reason": self.cap_reason,
            "arrival_gap_ms": None if self.gap_s is None else round(self.gap_s * 1000, 3),
        }


class FixedWaitPolicy(BatchPolicy):
    """The baseline of bench/batching.py (LOWTIDE_BATCH_FIXED_WAIT_MS): a fixed window, as
    Ray Serve's `batch_wait_timeout_s`: a batch runs when it is full (`max_batch_size`,
    FIXED_MAX_BATCH without one) or when its oldest item has waited `wait_s`."""

    def __init__(self, wait_s: float, max_batch_size: int | None = None) -> None:
        super().__init__(max_batch_size or FIXED_MAX_BATCH)
        self.wait_s = wait_s

    def cap(self, timeout_s: float = math.inf) -> int:
        self.cap_reason = "fixed"
        return self.max_batch_size

    def decide(self, obs: BatchObservation, now: float) -> BatchDecision:
        if obs.queued == 0 or obs.running > 0:
            return BatchDecision(0, None, "nothing queued or a batch is running")
        if obs.queued >= self.max_batch_size:
            return BatchDecision(self.max_batch_size, None, "full batch")
        left_s = self.wait_s - obs.oldest_wait_s
        if left_s <= 0:
            return BatchDecision(obs.queued, None, f"waited {self.wait_s * 1000:g} ms")
        return BatchDecision(0, left_s, "fixed wait")
