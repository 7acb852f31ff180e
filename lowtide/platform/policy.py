"""The scaling decision for one endpoint: pure, driven by observations and a clock value.

The hybrid autoscaler of DESIGN.md ("Adaptive control"):
- request signal: replicas = concurrency (in flight + queued) / (limit x target utilization),
  averaged over a stable window (60 s) and a panic window (6 s). When the panic window wants
  twice the ready capacity, scale up at once and hold (no scale down) until a stable window
  has passed without that (Knative KPA's panic mode);
- resource signal: replicas = ready x CPU (or GPU) utilization / target utilization;
- desired = max of the two, bounded by min/max replicas; up at once, down only to the highest
  want of the last `scale_down_delay_s`;
- cold-start fast path: a wake at zero replicas goes straight to ceil(queued / limit);
- zero: after the endpoint's keep-alive (`keepalive.py`), adaptive unless forced;
- instance keep-alive: replicas above one are instances too. When the load falls, the
  instances the last batch of arrivals needed (at the replicas' limit) stay for the same
  keep-alive window after they were last needed, and a pre-warm starts that many: an endpoint
  called in parallel batches finds the whole batch's capacity warm, as the fixed keep-alive
  would keep it, instead of one replica and a cold start for the rest;
- daily pre-warm: an endpoint that woke up at about the same time on most recent days after
  an idle night is warm shortly before that time (`keepalive.DailyArrivals`).

`Autoscaler` holds one endpoint's recent samples (its windows and learned idle gaps) but reads
no clock and does no I/O: `decide(obs, now)` is a function of the observations and the times
it was given, so tests step a fake clock by minutes without sleeping.

What it learns over minutes to days (idle gaps, daily wake-ups, the instances the last batch
needed, the service time) is saved by `learned()` and put back by `restore()`, so a restart of
the platform does not forget it. The short stable and panic windows are not saved: they fill
again within a minute, and a restored policy still waits `scale_down_delay_s` of fresh history
before it scales down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .keepalive import (
    DailyArrivals,
    DailySettings,
    Expected,
    IdleGaps,
    KeepAlive,
    KeepAliveSettings,
    LearnedStateError,
    fixed,
    mapping_from,
)

LEARNED_VERSION = 1  # of the saved learned state; another version is ignored, not guessed at
MAX_SAVED_INSTANCES = 256  # entries of the instance keep-alive history taken from saved state


@dataclass(frozen=True)
class Observation:
    desired: int  # the previous decision
    ready: int
    starting: int
    queued: int  # buffered and not yet taken by a replica
    oldest_wait_s: float  # age of the oldest buffered request not yet taken (queue lag)
    in_flight: int  # running on replicas (direct calls and stream entries)
    last_activity_at: float  # last request arrival or completion, seconds since the epoch
    limit: int  # per-replica concurrency limit (learned by the replicas' limiter)
    min_replicas: int = 0
    max_replicas: int | None = None
    last_request_at: float = 0.0  # last arrival counted by the activators
    arrival_rate_per_s: float = 0.0
    cpu_utilization: float | None = None  # mean over ready replicas; 1.0 = requested cores busy
    gpu_utilization: float | None = None


@dataclass(frozen=True)
class Signals:
    """What a decision was computed from, for the event log and status."""

    stable_concurrency: float
    panic_concurrency: float
    request_replicas: int
    resource_replicas: int
    panic: bool
    keep_alive_s: float
    keep_alive_reason: str


@dataclass(frozen=True)
class Decision:
    desired: int
    kind: str  # wake | panic | scale-up | scale-down | idle | prewarm | bounds | steady
    reason: str
    signals: Signals | None = None

    def changed(self, previous: int) -> bool:
        return self.desired != previous


@dataclass(frozen=True)
class AutoscalerSettings:
    target_utilization: float = 0.7  # of the learned limit (request signal)
    target_cpu_utilization: float = 0.7  # of the requested cores or GPU (resource signal)
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0  # panic window wants this many times the ready capacity
    scale_down_delay_s: float = 30.0
    drain_s: float = 1.0  # a backlog should drain within this, on top of the arrivals
    service_time_smoothing: float = 0.1
    keep_alive_s: float | None = None  # a forced fixed keep-alive; None: adaptive
    keep_alive: KeepAliveSettings = field(default_factory=KeepAliveSettings)
    batch_window_s: float = 10.0  # a batch: the arrivals this close to the last one
    daily: DailySettings = field(default_factory=DailySettings)


# ---- named math -------------------------------------------------------------------------
def replicas_for(demand: float, limit: int) -> int:
    """Replicas needed to hold `demand` concurrent requests at `limit` each."""
    return math.ceil(demand / max(1, limit)) if demand > 0 else 0


def replica_capacity(limit: int, target_utilization: float) -> float:
    """Concurrency one replica should carry: its limit at the target, at least one request."""
    return max(1.0, max(1, limit) * target_utilization)


def request_replicas(concurrency: float, limit: int, target_utilization: float) -> int:
    if concurrency <= 0:
        return 0
    return math.ceil(round(concurrency / replica_capacity(limit, target_utilization), 6))


def capacity_ratio(concurrency: float, limit: int, target_utilization: float,
                   ready: int) -> float:
    """How many times the ready replicas' capacity the concurrency asks for (Knative compares
    this, not a rounded-up replica count, with the panic threshold)."""
    return concurrency / (replica_capacity(limit, target_utilization) * max(1, ready))


def resource_replicas(ready: int, utilization: float | None, target: float) -> int:
    """HPA's rule: current x measured / target (0 when nothing was measured)."""
    if utilization is None or ready <= 0 or utilization <= 0:
        return 0
    return math.ceil(round(ready * utilization / target, 6))


def demand_concurrency(in_flight: int, queued: int, arrival_rate_per_s: float,
                       service_s: float | None, drain_s: float) -> float:
    """Concurrency the endpoint needs. Without a service-time estimate, in flight + queued
    (Knative). With one, Little's law on the arrivals (never below what is in flight) plus
    the backlog drained within `drain_s`: a queue built while replicas start is work to
    catch up on, not standing concurrency, so it does not inflate the replica count."""
    if service_s is None:
        return float(in_flight + queued)
    return max(float(in_flight), arrival_rate_per_s * service_s) + queued * service_s / drain_s


def smoothed(previous: float | None, sample: float, weight: float) -> float:
    """Exponentially weighted moving average (the first sample starts it)."""
    return sample if previous is None else previous + weight * (sample - previous)


def window_average(samples: Iterable[tuple[float, float]], now: float, span_s: float) -> float:
    """Mean of the samples taken in (now - span_s, now]; 0 without any."""
    values = [v for t, v in samples if now - span_s < t <= now]
    return sum(values) / len(values) if values else 0.0


def window_max(samples: Iterable[tuple[float, int]], now: float, span_s: float) -> int:
    return max((v for t, v in samples if now - span_s < t <= now), default=0)


def sliding_max_push(window: deque[tuple[float, int]], now: float, value: int,
                     span_s: float) -> None:
    """Add a sample to a monotone deque whose head is the most of the last `span_s` (and the
    last time it was seen); the deque holds at most one entry per distinct value."""
    while window and window[-1][1] <= value:
        window.pop()
    window.append((now, value))
    while len(window) > 1 and window[0][0] <= now - span_s:
        window.popleft()


def clamp(n: int, lo: int, hi: int | None) -> int:
    n = max(n, lo)
    return n if hi is None else min(n, hi)


def idle_seconds(obs: Observation, now: float) -> float:
    return max(0.0, now - obs.last_activity_at)


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise LearnedStateError(f"{what}: {v!r} is not a finite number >= 0")
    return float(v)


def _timed_counts(data: Any, what: str) -> list[tuple[float, int]]:
    """Saved [[at, count], ...], in time order, the last MAX_SAVED_INSTANCES of them."""
    if not isinstance(data, list):
        raise LearnedStateError(f"{what}: expected a list, got {type(data).__name__}")
    out: list[tuple[float, int]] = []
    for entry in data[-MAX_SAVED_INSTANCES:]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], int)
                and not isinstance(entry[1], bool) and entry[1] >= 0):
            raise LearnedStateError(f"{what}: {entry!r} is not [time, count]")
        at = _number(entry[0], what)
        if out and at < out[-1][0]:
            raise LearnedStateError(f"{what}: times out of order")
        out.append((at, entry[1]))
    return out


def _fmt_ago(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _lag(obs: Observation) -> str:
    return f"; queue lag {obs.oldest_wait_s:.1f} s" if obs.queued else ""


# ---- the policy -------------------------------------------------------------------------
class Autoscaler:
    """One endpoint's policy: its windows, panic state and idle-gap histogram."""

    def __init__(self, settings: AutoscalerSettings | None = None) -> None:
        self.settings = settings or AutoscalerSettings()
        self.idle_gaps = IdleGaps(self.settings.keep_alive)
        self._concurrency: deque[tuple[float, float]] = deque()
        self._wants: deque[tuple[float, int]] = deque()
        self._panic_until = -math.inf
        self._seen_request_at = 0.0
        self._seen_activity_at = 0.0
        self._seen_demand = 0
        self.service_s: float | None = None  # mean time a request holds a slot, learned
        self._first_seen_at: float | None = None
        self.daily = DailyArrivals(self.settings.daily)
        self._needs: deque[tuple[float, int]] = deque()  # instances needed, keep-alive span
        self._batch: deque[tuple[float, int]] = deque()  # ... at the last batch's arrivals
        self._kept = 0  # instances the instance keep-alive held at this decision
        self._was_kept = 0  # ... at the previous one

    # ---- learned state, saved across restarts -------------------------------------------
    def learned(self) -> dict[str, Any]:
        """What this policy learned over minutes to days, as JSON-able data (absolute times)."""
        return {
            "version": LEARNED_VERSION,
            "idle_gaps": self.idle_gaps.to_dict(),
            "daily": self.daily.to_dict(),
            # entries that need nothing hold nothing; left out, the saved state stays the
            # same while the endpoint idles (and need not be written again)
            "needs": [[t, n] for t, n in self._needs if n > 0],
            "batch": [[t, n] for t, n in self._batch],
            "seen": {"request_at": self._seen_request_at, "activity_at": self._seen_activity_at,
                     "demand": self._seen_demand},
            "service_s": self.service_s,
            "kept": self._kept,  # instances the instance keep-alive held at the last decision
        }

    def restore(self, data: Any) -> None:
        """Take back what `learned()` saved; all of it, or (LearnedStateError) none of it."""
        saved = mapping_from(data, "learned state")
        if saved.get("version") != LEARNED_VERSION:
            raise LearnedStateError(f"learned state version {saved.get('version')!r}, this "
                                    f"platform reads version {LEARNED_VERSION}")
        idle_gaps = IdleGaps.from_dict(saved.get("idle_gaps"), self.settings.keep_alive)
        daily = DailyArrivals.from_dict(saved.get("daily"), self.settings.daily)
        needs = _timed_counts(saved.get("needs"), "instance needs")
        batch = _timed_counts(saved.get("batch"), "last batch")
        seen = mapping_from(saved.get("seen"), "seen")
        request_at, activity_at, demand = (_number(seen.get(k), f"seen {k}")
                                           for k in ("request_at", "activity_at", "demand"))
        service = saved.get("service_s")
        service_s = None if service is None else _number(service, "service_s")
        kept = int(_number(saved.get("kept", 0), "kept"))
        self.idle_gaps, self.daily = idle_gaps, daily
        self._needs, self._batch = deque(needs), deque(batch)
        self._seen_request_at, self._seen_activity_at = request_at, activity_at
        self._seen_demand, self.service_s = int(demand), service_s
        self._kept = kept

    def keep_alive(self) -> KeepAlive:
        forced = self.settings.keep_alive_s
        return fixed(forced) if forced is not None else self.idle_gaps.window()

    def expected(self, now: float) -> Expected | None:
        """Arrivals expected about now by the daily pattern (never with a forced window)."""
        return None if self.settings.keep_alive_s is not None else self.daily.expected(now)

    def daily_pattern(self, now: float) -> str | None:
        """The daily pattern in words, for status (never with a forced window)."""
        return None if self.settings.keep_alive_s is not None else self.daily.describe(now)

    def instance_keep(self, now: float) -> tuple[int, str]:
        """Instances the instance keep-alive holds: what the last batch needed, while that
        many were needed within the keep-alive window; and why."""
        batch = max((n for _, n in self._batch), default=0)
        kept, needed_at = (self._needs[0][1], self._needs[0][0]) if self._needs else (0, now)
        n = min(batch, kept)
        if n <= 1:
            return n, ""
        return n, (f"instance keep-alive: the last batch needed {batch} at the limit, {n} "
                   f"needed {_fmt_ago(now - needed_at)} ago, keep {_fmt_ago(self._keep_s())}")

    def _keep_s(self) -> float:
        return self.keep_alive().keep_s

    def panicking(self, now: float) -> bool:
        return now < self._panic_until

    def decide(self, obs: Observation, now: float) -> Decision:
        self._learn(obs, now)
        self._was_kept, self._kept = self._kept, 0
        return self._decide(obs, now)

    def _learn(self, obs: Observation, now: float) -> None:
        if self._first_seen_at is None:
            self._first_seen_at = now
        demand = obs.in_flight + obs.queued
        need = replicas_for(demand, obs.limit)
        if obs.last_request_at > self._seen_request_at:
            self._note_arrival(obs, now, need)
        self._seen_activity_at, self._seen_demand = obs.last_activity_at, demand
        if obs.queued == 0 and obs.arrival_rate_per_s > 0 and obs.ready > 0:
            self.service_s = smoothed(self.service_s, obs.in_flight / obs.arrival_rate_per_s,
                                      self.settings.service_time_smoothing)
        self._concurrency.append((now, demand_concurrency(
            obs.in_flight, obs.queued, obs.arrival_rate_per_s, self.service_s,
            self.settings.drain_s)))
        sliding_max_push(self._needs, now, need, self._keep_s())
        horizon = now - max(self.settings.stable_window_s, self.settings.scale_down_delay_s)
        for window in (self._concurrency, self._wants):
            while window and window[0][0] <= horizon:
                window.popleft()

    def _note_arrival(self, obs: Observation, now: float, need: int) -> None:
        """New arrivals: an idle gap ended (histogram, daily wake-ups), a batch goes on."""
        if self._seen_demand == 0 and self._seen_request_at > 0:
            gap_s = obs.last_request_at - self._seen_activity_at
            self.idle_gaps.note_idle_gap(gap_s)
            self.daily.note_wakeup(obs.last_request_at, gap_s)
        elif self._seen_demand == 0 and self._first_seen_at is not None:
            # the first request seen: idle since this policy started watching
            self.daily.note_wakeup(obs.last_request_at,
                                   obs.last_request_at - self._first_seen_at)
        self._seen_request_at = obs.last_request_at
        self._batch.append((now, need))
        while self._batch[0][0] <= now - self.settings.batch_window_s:
            self._batch.popleft()

    def _decide(self, obs: Observation, now: float) -> Decision:
        s, prev = self.settings, obs.desired
        lo, hi = obs.min_replicas, obs.max_replicas
        signals = self._signals(obs, now)
        if prev == 0 and obs.queued > 0:
            n = clamp(max(1, replicas_for(obs.queued, obs.limit)), lo, hi)
            return Decision(n, "wake", f"{prev} -> {n}: wake, {obs.queued} queued "
                            f"(oldest {obs.oldest_wait_s:.1f} s), no replica", signals)
        idle = self._idle(obs, now, signals)
        if idle is not None:
            return idle
        if prev == 0 and obs.in_flight + obs.queued == 0:
            # at zero only demand (a wake) or a pre-warm starts a replica: the windows still
            # remember the traffic before the keep-alive ran out
            return self._hold(obs, clamp(0, lo, hi), signals)
        want = max(signals.request_replicas, signals.resource_replicas)
        self._wants.append((now, want))
        if signals.panic:
            n = clamp(max(prev, want), lo, hi)
            cap = max(1, obs.ready) * replica_capacity(obs.limit, s.target_utilization)
            if n > prev:
                return Decision(n, "panic", f"{prev} -> {n}: panic, {s.panic_window_s:g} s "
                                f"concurrency {signals.panic_concurrency:.0f} over "
                                f"{s.panic_threshold:g} x capacity {cap:.0f}{_lag(obs)}", signals)
            return self._hold(obs, n, signals)
        floor = 1 if prev > 0 or obs.in_flight + obs.queued > 0 else 0
        want = max(want, floor)
        if want > prev:
            n = clamp(want, lo, hi)
            if n > prev:
                return Decision(n, "scale-up", f"{prev} -> {n}: scale-up, "
                                f"{self._why(obs, signals)}{_lag(obs)}", signals)
        elif want < prev and self._watched_for(now, s.scale_down_delay_s):
            return self._scale_down(obs, now, want, signals)
        return self._hold(obs, clamp(prev, lo, hi), signals)

    def _scale_down(self, obs: Observation, now: float, want: int,
                    signals: Signals) -> Decision:
        """Down to the most wanted of the scale-down delay, but not below the instances the
        instance keep-alive holds."""
        s, prev = self.settings, obs.desired
        held = max(want, window_max(self._wants, now, s.scale_down_delay_s))
        keep, keep_why = self.instance_keep(now)
        n = clamp(min(prev, max(held, keep)), obs.min_replicas, obs.max_replicas)
        was_kept, self._kept = self._was_kept, keep if keep > held else 0
        if n >= prev:
            return self._hold(obs, clamp(prev, obs.min_replicas, obs.max_replicas), signals)
        reason = (f"{prev} -> {n}: scale-down, {self._why(obs, signals)}, the most wanted "
                  f"in the last {s.scale_down_delay_s:g} s")
        if self._kept:
            reason += f"; keeps {n}: {keep_why}"
        elif was_kept > n:
            reason += f"; instance keep-alive over: {was_kept} last needed more than " \
                      f"{_fmt_ago(self._keep_s())} ago"
        return Decision(n, "scale-down", reason, signals)

    def _watched_for(self, now: float, span_s: float) -> bool:
        """A scale down needs this much history (none after a restart of the platform)."""
        return self._first_seen_at is not None and now - self._first_seen_at >= span_s

    def _signals(self, obs: Observation, now: float) -> Signals:
        """Both signals from the windows; enters (or extends) panic when the short window
        asks for `panic_threshold` times the ready capacity."""
        s = self.settings
        stable = window_average(self._concurrency, now, s.stable_window_s)
        panic_avg = window_average(self._concurrency, now, s.panic_window_s)
        panic_want = request_replicas(panic_avg, obs.limit, s.target_utilization)
        over = capacity_ratio(panic_avg, obs.limit, s.target_utilization, obs.ready)
        if over >= s.panic_threshold and obs.desired > 0:
            self._panic_until = now + s.stable_window_s  # enter, or extend
        panic = self.panicking(now)
        utilization = max((u for u in (obs.cpu_utilization, obs.gpu_utilization)
                           if u is not None), default=None)
        ka = self.keep_alive()
        return Signals(
            stable_concurrency=stable, panic_concurrency=panic_avg,
            request_replicas=panic_want if panic else request_replicas(
                stable, obs.limit, s.target_utilization),
            resource_replicas=resource_replicas(obs.ready, utilization,
                                                s.target_cpu_utilization),
            panic=panic, keep_alive_s=ka.keep_s, keep_alive_reason=ka.reason,
        )

    def _idle(self, obs: Observation, now: float, signals: Signals) -> Decision | None:
        """Scale to zero (min_replicas) or pre-warm, by the keep-alive policy, when idle."""
        prev, lo = obs.desired, obs.min_replicas
        if obs.in_flight + obs.queued > 0 or signals.panic:
            return None
        ka, idle_s = self.keep_alive(), idle_seconds(obs, now)
        expected = self.expected(now)
        if expected is not None:  # warm through the window the daily pattern expects
            return self._prewarm(obs, now, f"prewarm, {expected.reason}", signals) \
                if prev == 0 else None
        if ka.warm_at(idle_s):
            if prev == 0 and idle_s >= ka.prewarm_s > 0:
                return self._prewarm(obs, now, f"prewarm, idle {idle_s / 60:.1f} min; "
                                     f"{ka.reason}", signals)
            return None
        if prev <= lo:
            return None
        if idle_s < ka.prewarm_s:
            return Decision(lo, "idle", f"{prev} -> {lo}: idle {idle_s:.1f} s, unloaded "
                            f"until pre-warm; {ka.reason}", signals)
        return Decision(lo, "idle", f"{prev} -> {lo}: idle {idle_s:.1f} s >= keep-alive "
                        f"{ka.keep_s:g} s ({ka.reason})", signals)

    def _prewarm(self, obs: Observation, now: float, why: str,
                 signals: Signals) -> Decision | None:
        """From zero to one replica, or to the instances the last batch needed."""
        keep, keep_why = self.instance_keep(now)
        n = clamp(max(1, keep), obs.min_replicas, obs.max_replicas)
        if n <= obs.desired:
            return None
        extra = f"; {keep_why}" if keep > 1 else ""
        return Decision(n, "prewarm", f"{obs.desired} -> {n}: {why}{extra}", signals)

    def _why(self, obs: Observation, signals: Signals) -> str:
        s = self.settings
        request = (f"{s.stable_window_s:g} s concurrency {signals.stable_concurrency:.1f} over "
                   f"limit {obs.limit} x {s.target_utilization:.0%} wants "
                   f"{signals.request_replicas}")
        if signals.resource_replicas <= signals.request_replicas:
            return request
        utilization = max(u for u in (obs.cpu_utilization, obs.gpu_utilization) if u is not None)
        return (f"utilization {utilization:.0%} over target {s.target_cpu_utilization:.0%} on "
                f"{obs.ready} ready wants {signals.resource_replicas} ({request})")

    def _hold(self, obs: Observation, n: int, signals: Signals) -> Decision:
        prev = obs.desired
        if n != prev:
            hi = "inf" if obs.max_replicas is None else obs.max_replicas
            return Decision(n, "bounds", f"{prev} -> {n}: bounds [{obs.min_replicas}, {hi}]",
                            signals)
        return Decision(prev, "steady", f"{prev} -> {prev}: steady", signals)
