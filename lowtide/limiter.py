"""Learned per-replica concurrency limit: a latency-gradient limiter.

In the family of Netflix concurrency-limits (Vegas, Gradient2) and Envoy's adaptive
concurrency filter. Pure: it is fed completed requests with the clock reading of their end
and answers with a limit; it never reads the clock or does I/O.

- **No-load latency**: the median latency of a window in which at most one request ran at a
  time. Such windows happen by themselves at low traffic; under sustained load the limiter
  *re-probes* (and probes first thing, as no-load is unknown at start): every
  `probe_interval_s` it admits one request at a time until
  `probe_samples` requests that started alone have finished (or `max_probe_s` passed).
- **Recent latency**: the median of a window (at least `window_s` long and
  `window_samples` requests) of requests that started under the current limit.
- **Decision per window**: latency near no-load (`<= no_load x grow_ratio + buffer_s`)
  grows the limit by at most `growth` of itself (at least 1), but only if in-flight reached
  half the limit in that window, so low traffic cannot inflate it; latency above
  `no_load x shrink_ratio + buffer_s` shrinks it in proportion, by at most half; in between
  it holds. `buffer_s` keeps sub-millisecond jitter of trivial functions from counting as
  queueing.

A CPU-bound function settles near the cores it can use (beyond them each added request
only waits), an I/O-bound one grows until the replica's CPU, or `max_limit`, is the bound.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LimiterConfig:
    initial_limit: int = 4
    min_limit: int = 1
    max_limit: int = 1000
    window_s: float = 0.25
    window_samples: int = 8
    max_window_s: float = 5.0  # a window this old decides on whatever it has (>= 1 sample)
    grow_ratio: float = 1.25
    shrink_ratio: float = 1.5
    buffer_s: float = 0.002
    growth: float = 0.25  # largest growth step, as a fraction of the limit
    probe_interval_s: float = 30.0
    probe_samples: int = 3
    max_probe_s: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(f"limits must satisfy 1 <= min_limit ({self.min_limit}) <= "
                             f"initial_limit ({self.initial_limit}) <= max_limit "
                             f"({self.max_limit})")
        if not 1 <= self.grow_ratio <= self.shrink_ratio:
            raise ValueError(f"need 1 <= grow_ratio ({self.grow_ratio}) <= shrink_ratio "
                             f"({self.shrink_ratio})")
        if not 0 < self.growth <= 1:
            raise ValueError(f"growth={self.growth} must be in (0, 1]")


@dataclass
class _Window:
    start: float
    latencies_s: list[float] = field(default_factory=list)
    max_in_flight: int = 0


def grown(limit: int, growth: float, max_limit: int) -> int:
    """One growth step: by `growth` of the limit, at least 1, at most max_limit."""
    return min(max_limit, limit + max(1, math.floor(limit * growth)))


def shrunk(limit: int, target_s: float, recent_s: float, min_limit: int) -> int:
    """Shrink in proportion to how far recent latency is above its target (by at least 1,
    at most half)."""
    gradient = max(0.5, min(1.0, target_s / recent_s))
    return max(min_limit, min(limit - 1, math.floor(limit * gradient)))


class GradientLimiter:
    def __init__(self, config: LimiterConfig | None = None, now: float = 0.0) -> None:
        self.config = config or LimiterConfig()
        self.limit = self.config.initial_limit  # learned; what the autoscaler plans with
        self.no_load_s: float | None = None
        self.recent_s: float | None = None
        self.reason = "initial"
        self._window = _Window(now)
        self._next_probe_at = now + self.config.probe_interval_s
        # no-load latency is unknown at first: measure it on the first lone requests
        self.probing = True
        self._probe: list[float] = []
        self._probe_start = now

    @property
    def admit_limit(self) -> int:
        """How many requests may run now: the learned limit, or 1 while re-probing."""
        return self.config.min_limit if self.probing else self.limit

    def on_sample(self, latency_s: float, in_flight: int, now: float) -> bool:
        """One request finished at `now` after `latency_s`; `in_flight` ran when it started
        (itself included). Returns True when the limit or the no-load latency changed."""
        started = now - latency_s
        if self.probing:
            return self._probe_sample(latency_s, in_flight, started, now)
        if started < self._window.start:
            return False  # admitted under an older limit: says nothing about this one
        w = self._window
        w.latencies_s.append(latency_s)
        w.max_in_flight = max(w.max_in_flight, in_flight)
        age_s = now - w.start
        full = len(w.latencies_s) >= self.config.window_samples and age_s >= self.config.window_s
        if not full and age_s < self.config.max_window_s:
            return False
        changed = self._decide(statistics.median(w.latencies_s), w.max_in_flight)
        self._window = _Window(now)
        due = self.no_load_s is None or now >= self._next_probe_at
        if due and self.limit > self.config.min_limit:
            self._start_probe(now)
        return changed

    def tick(self, now: float) -> bool:
        """Time passing without samples: give up a probe that found no lone requests."""
        if self.probing and now - self._probe_start >= self.config.max_probe_s:
            self._end_probe(now, "probe found no lone requests")
            return True
        return False

    # ---- decisions --------------------------------------------------------------------
    def _decide(self, recent_s: float, max_in_flight: int) -> bool:
        c = self.config
        self.recent_s = recent_s
        if max_in_flight <= c.min_limit:  # a window at no load measures no-load latency
            changed = self.no_load_s != recent_s
            self.no_load_s = recent_s
        elif self.no_load_s is None:
            return False  # nothing to compare against yet; the first lone requests tell
        else:
            changed = False
        before = self.limit
        near_s = self.no_load_s * c.grow_ratio + c.buffer_s
        far_s = self.no_load_s * c.shrink_ratio + c.buffer_s
        if recent_s > far_s:
            self.limit = shrunk(self.limit, far_s, recent_s, c.min_limit)
            self.reason = (f"latency {recent_s * 1000:.1f} ms over {far_s * 1000:.1f} ms "
                           f"(no-load {self.no_load_s * 1000:.1f} ms)")
        elif recent_s <= near_s and 2 * max_in_flight >= self.limit:
            self.limit = grown(self.limit, c.growth, c.max_limit)
            self.reason = (f"latency {recent_s * 1000:.1f} ms near no-load "
                           f"{self.no_load_s * 1000:.1f} ms at {max_in_flight} in flight")
        return changed or self.limit != before

    def _start_probe(self, now: float) -> None:
        self.probing = True
        self._probe = []
        self._probe_start = now

    def _probe_sample(self, latency_s: float, in_flight: int, started: float, now: float
                      ) -> bool:
        if in_flight <= self.config.min_limit and started >= self._probe_start:
            self._probe.append(latency_s)
        if len(self._probe) >= self.config.probe_samples:
            self.no_load_s = statistics.median(self._probe)
            self._end_probe(now, f"re-probed no-load latency {self.no_load_s * 1000:.1f} ms")
            return True
        return self.tick(now)

    def _end_probe(self, now: float, reason: str) -> None:
        self.probing = False
        self.reason = reason
        self._window = _Window(now)
        self._next_probe_at = now + self.config.probe_interval_s


# ---- how a replica reports its limit to the activator (headers of each direct answer) ---
LIMIT_HEADER = "X-Lowtide-Limit"  # the replica's learned limit
NO_LOAD_HEADER = "X-Lowtide-No-Load-Ms"  # its no-load latency, when known
ADMIT_HEADER = "X-Lowtide-Admit"  # the limit it admits now, when below the learned one
HOLD_HEADER = "X-Lowtide-Hold-Ms"  # how long it holds a direct call over its limit for a slot
BUSY_HEADER = "X-Lowtide-Busy"  # on a 503: the replica was at its limit, nothing ran
