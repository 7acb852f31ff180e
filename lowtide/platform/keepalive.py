"""How long an idle endpoint stays warm: the hybrid histogram policy, per endpoint.

Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020): keep a histogram of the idle
gaps between an endpoint's requests. When it shows a pattern, unload right after use, load
again (pre-warm) shortly before the head of the distribution (its 5th percentile) and keep
warm until its tail (99th percentile), each with a 10 % margin. When there are too few gaps,
when they are spread out (a low coefficient of variation of the bin counts) or when many fall
beyond the histogram's range, fall back to a fixed keep-alive window.

An idle night is longer than the histogram's range, so the histogram cannot pre-warm for the
morning. `DailyArrivals` covers that: it remembers the times of day at which the endpoint
woke up after a long idle period and, when most recent days woke up at about the same time,
expects the next one then (`expected(now)`), so the policy can pre-warm shortly before.

Pure: `IdleGaps` is fed idle gaps and `window()` turns what it learned into a `KeepAlive`;
`DailyArrivals` is fed wake-ups and `expected(now)` answers from them. Both are bounded, and
both save what they learned as plain JSON-able data (`to_dict()` / `from_dict()`), so it
outlives the platform process; data that cannot be used raises `LearnedStateError`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class LearnedStateError(ValueError):
    """Saved learned state that cannot be used (another version, or corrupt)."""


def floats_from(data: Any, what: str, keep: int) -> list[float]:
    """The last `keep` of a saved list of finite, non-negative numbers."""
    if not isinstance(data, list):
        raise LearnedStateError(f"{what}: expected a list, got {type(data).__name__}")
    for v in data:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                or v < 0:
            raise LearnedStateError(f"{what}: {v!r} is not a finite number >= 0")
    return [float(v) for v in data[-keep:]] if keep > 0 else []


def mapping_from(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LearnedStateError(f"{what}: expected an object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class KeepAliveSettings:
    fixed_s: float = 600.0  # the fallback window: AWS Lambda's 10 minutes
    bin_s: float = 60.0  # histogram resolution; shorter gaps are not idle periods
    range_s: float = 4 * 3600.0  # gaps beyond this are out of bounds
    head_percentile: float = 5.0
    tail_percentile: float = 99.0
    margin: float = 0.10
    min_gaps: int = 5  # fewer gaps than this: no pattern yet
    min_cv: float = 2.0  # bin counts more uniform than this: no pattern
    max_out_of_bounds: float = 0.5
    startup_s: float = 30.0  # pre-warm this much earlier, to be ready on time
    min_unload_s: float = 120.0  # a predicted gap shorter than this is bridged, not unloaded
    history: int = 500  # gaps remembered (old behaviour fades out)


@dataclass(frozen=True)
class KeepAlive:
    """Warm for `bridge_s` of idle time, then from `prewarm_s` to `keep_s`; cold otherwise."""

    prewarm_s: float
    keep_s: float
    reason: str
    bridge_s: float = 0.0  # gaps shorter than a histogram bin are bursts, not idle periods

    def warm_at(self, idle_s: float) -> bool:
        return idle_s < self.bridge_s or self.prewarm_s <= idle_s < self.keep_s


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile of sorted `values` (0 for none)."""
    if not values:
        return 0.0
    rank = (len(values) - 1) * min(100.0, max(0.0, pct)) / 100.0
    lo, frac = int(rank), rank - int(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * frac


def bin_counts(gaps: Iterable[float], bin_s: float, range_s: float) -> list[int]:
    """Histogram of the gaps within range, one bin per `bin_s`."""
    counts = [0] * max(1, math.ceil(range_s / bin_s))
    for gap in gaps:
        if gap < range_s:
            counts[int(gap // bin_s)] += 1
    return counts


def coefficient_of_variation(counts: Sequence[int]) -> float:
    mean = sum(counts) / len(counts) if counts else 0.0
    if mean == 0:
        return 0.0
    variance = sum((c - mean) ** 2 for c in counts) / len(counts)
    return math.sqrt(variance) / mean


class IdleGaps:
    """The idle gaps of one endpoint, learned from its request arrivals."""

    def __init__(self, settings: KeepAliveSettings | None = None) -> None:
        self.settings = settings or KeepAliveSettings()
        self.gaps: deque[float] = deque(maxlen=self.settings.history)
        self._window: KeepAlive | None = None  # what the gaps say, until a new one comes

    def note_idle_gap(self, gap_s: float) -> None:
        """An arrival after `gap_s` seconds without requests (short gaps are not idle)."""
        if gap_s >= self.settings.bin_s:
            self.gaps.append(gap_s)
            self._window = None

    def to_dict(self) -> dict[str, Any]:
        return {"gaps": list(self.gaps)}

    @classmethod
    def from_dict(cls, data: Any, settings: KeepAliveSettings | None = None) -> IdleGaps:
        gaps = cls(settings)
        saved = mapping_from(data, "idle gaps")
        gaps.gaps.extend(g for g in floats_from(saved.get("gaps"), "idle gaps",
                                                gaps.settings.history)
                         if g >= gaps.settings.bin_s)
        return gaps

    def window(self) -> KeepAlive:
        if self._window is None:
            self._window = self._learn()
        return self._window

    def _learn(self) -> KeepAlive:
        s = self.settings
        gaps = sorted(self.gaps)
        fixed = KeepAlive(0.0, s.fixed_s, "")
        if len(gaps) < s.min_gaps:
            return _with_reason(fixed, f"fixed {s.fixed_s:g} s: {len(gaps)} idle gaps seen, "
                                f"a pattern needs {s.min_gaps}")
        out = sum(1 for g in gaps if g >= s.range_s) / len(gaps)
        if out > s.max_out_of_bounds:
            return _with_reason(fixed, f"fixed {s.fixed_s:g} s: {out:.0%} of idle gaps over "
                                f"{s.range_s / 3600:g} h")
        in_range = [g for g in gaps if g < s.range_s]
        cv = coefficient_of_variation(bin_counts(in_range, s.bin_s, s.range_s))
        if cv < s.min_cv:
            return _with_reason(fixed, f"fixed {s.fixed_s:g} s: idle gaps without a pattern "
                                f"(CV {cv:.1f} < {s.min_cv:g})")
        head_s = percentile(in_range, s.head_percentile)
        tail_s = percentile(in_range, s.tail_percentile)
        if tail_s - head_s > s.fixed_s:
            return _with_reason(fixed, f"fixed {s.fixed_s:g} s: idle gaps spread from "
                                f"{_fmt_s(head_s)} to {_fmt_s(tail_s)}, no narrower window")
        return self._hybrid(head_s, tail_s, len(gaps))

    def _hybrid(self, head_s: float, tail_s: float, n: int) -> KeepAlive:
        s = self.settings
        prewarm_s = max(0.0, head_s * (1 - s.margin) - s.startup_s)
        keep_s = max(s.bin_s, (math.floor(tail_s / s.bin_s) + 1) * s.bin_s * (1 + s.margin))
        head, tail = _fmt_s(head_s), _fmt_s(tail_s)
        if prewarm_s < s.min_unload_s:
            return KeepAlive(0.0, keep_s, f"keep {_fmt_s(keep_s)}: p{s.tail_percentile:g} of "
                             f"{n} idle gaps is {tail}")
        return KeepAlive(prewarm_s, keep_s, f"pre-warm at {_fmt_s(prewarm_s)}, keep to "
                         f"{_fmt_s(keep_s)}: {n} idle gaps, p{s.head_percentile:g} {head}, "
                         f"p{s.tail_percentile:g} {tail}", bridge_s=s.bin_s)


@dataclass(frozen=True)
class DailySettings:
    day_s: float = 86400.0
    min_idle_s: float = 2 * 3600.0  # an idle period this long ends in a "wake-up"
    tolerance_s: float = 900.0  # wake-ups this close in time of day are the same habit
    min_days: int = 1  # days that woke at that time before it counts as a pattern
    min_share: float = 0.8  # of the days with any wake-up in the history
    max_per_day: float = 2.0  # more wake-ups a day than this (on average): random, no habit
    days: int = 7  # history
    lead_s: float = 120.0  # be warm this long before the earliest wake-up seen at that time
    hold_s: float = 900.0  # and stay warm this long after the latest before giving up


@dataclass(frozen=True)
class DailyHabit:
    """Wake-ups at about the same time of day: offsets from midnight (UTC), and support."""

    earliest_s: float  # may be negative or over a day when the habit straddles midnight
    latest_s: float
    typical_s: float
    days: int  # days that woke up within the habit
    seen_days: int  # days with any wake-up in the history
    wakeups: int  # in the history


@dataclass(frozen=True)
class Expected:
    """Arrivals expected: stay warm from `from_at` to `until_at` (absolute seconds)."""

    from_at: float
    until_at: float
    reason: str


def time_of_day(at: float, day_s: float) -> float:
    return at % day_s


def circular_offset(a_s: float, b_s: float, day_s: float) -> float:
    """Signed shortest distance from time of day `b_s` to `a_s` (in [-day/2, day/2))."""
    return (a_s - b_s + day_s / 2) % day_s - day_s / 2


def daily_habit(wakeups: Sequence[float], s: DailySettings) -> DailyHabit | None:
    """The time of day that the most days woke up at (within the tolerance), or None."""
    if not wakeups:
        return None
    seen_days = len({int(w // s.day_s) for w in wakeups})
    best: tuple[int, list[float]] | None = None
    for center in wakeups:
        c = time_of_day(center, s.day_s)
        offsets = [circular_offset(time_of_day(w, s.day_s), c, s.day_s) for w in wakeups]
        near = [(o, int(w // s.day_s)) for o, w in zip(offsets, wakeups, strict=True)
                if abs(o) <= s.tolerance_s]
        support = len({d for _, d in near})
        if best is None or support > best[0]:
            best = (support, [c + o for o, _ in near])
    assert best is not None
    support, times = best
    times.sort()
    return DailyHabit(times[0], times[-1], times[len(times) // 2], support, seen_days,
                      len(wakeups))


class DailyArrivals:
    """When an endpoint wakes up after its idle periods of `min_idle_s` or more, by day."""

    def __init__(self, settings: DailySettings | None = None) -> None:
        self.settings = s = settings or DailySettings()
        per_day = max(1, math.ceil(s.day_s / s.min_idle_s))  # at most this many wake-ups a day
        self.wakeups: deque[float] = deque(maxlen=s.days * per_day)
        self._habit: DailyHabit | None = None
        self._learned = True

    def note_wakeup(self, at: float, idle_s: float) -> None:
        """A request at `at` after `idle_s` seconds without any."""
        if idle_s >= self.settings.min_idle_s:
            self.wakeups.append(at)
            self._learned = False

    def to_dict(self) -> dict[str, Any]:
        return {"wakeups": list(self.wakeups)}

    @classmethod
    def from_dict(cls, data: Any, settings: DailySettings | None = None) -> DailyArrivals:
        daily = cls(settings)
        saved = mapping_from(data, "daily wake-ups")
        wakeups = floats_from(saved.get("wakeups"), "daily wake-ups", daily.wakeups.maxlen or 0)
        daily.wakeups.extend(sorted(wakeups))
        daily._learned = not wakeups
        return daily

    def habit(self, now: float) -> DailyHabit | None:
        s = self.settings
        while self.wakeups and self.wakeups[0] <= now - s.days * s.day_s:
            self.wakeups.popleft()
            self._learned = False
        if not self._learned:
            self._habit, self._learned = daily_habit(list(self.wakeups), s), True
        h = self._habit
        if (h is None or h.days < s.min_days or h.days < s.min_share * h.seen_days
                or h.wakeups > s.max_per_day * h.seen_days):
            return None
        return h

    def expected(self, now: float) -> Expected | None:
        """Arrivals expected about now by the daily pattern (None without a clear one)."""
        s, h = self.settings, self.habit(now)
        if h is None:
            return None
        midnight = now - time_of_day(now, s.day_s)
        for day in (midnight - s.day_s, midnight, midnight + s.day_s):
            from_at, until_at = day + h.earliest_s - s.lead_s, day + h.latest_s + s.hold_s
            came = any(from_at <= w < until_at for w in self.wakeups)  # today's came
            if from_at <= now < until_at and not came:
                typical = time_of_day(h.typical_s, s.day_s)
                return Expected(from_at, until_at, f"arrivals expected around "
                                f"{_clock(typical)} UTC (daily pattern, {h.days} of last "
                                f"{h.seen_days} days)")
        return None

    def next_window_at(self, now: float) -> float | None:
        """When the next window the daily pattern expects arrivals in opens, after `now`
        (None without a clear pattern): an endpoint idle at zero needs no look before it."""
        s, h = self.settings, self.habit(now)
        if h is None:
            return None
        midnight = now - time_of_day(now, s.day_s)
        opens = [day + h.earliest_s - s.lead_s
                 for day in (midnight - s.day_s, midnight, midnight + s.day_s,
                             midnight + 2 * s.day_s)]
        return min((at for at in opens if at > now), default=None)

    def describe(self, now: float) -> str | None:
        """The daily pattern in words, for status (None without a clear one)."""
        h = self.habit(now)
        if h is None:
            return None
        typical = time_of_day(h.typical_s, self.settings.day_s)
        return (f"arrivals expected around {_clock(typical)} UTC ({h.days} of last "
                f"{h.seen_days} days)")


def _clock(time_of_day_s: float) -> str:
    minutes = int(time_of_day_s // 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _with_reason(k: KeepAlive, reason: str) -> KeepAlive:
    return KeepAlive(k.prewarm_s, k.keep_s, reason, k.bridge_s)


def fixed(keep_s: float) -> KeepAlive:
    """A forced window (`lowtide up --keep-alive S`)."""
    return KeepAlive(0.0, keep_s, "fixed by --keep-alive")


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
