"""How long an idle endpoint stays warm: the hybrid histogram policy, per endpoint.

Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020): keep a histogram of the idle
gaps between an endpoint's requests. When it shows a pattern, unload right after use, load
again (pre-warm) shortly before the head of the distribution (its 5th percentile) and keep
warm until its tail (99th percentile), each with a 10 % margin. When there are too few gaps,
when they are spread out (a low coefficient of variation of the bin counts) or when many fall
beyond the histogram's range, fall back to a fixed keep-alive window.

Pure: `IdleGaps` is fed arrival times; `window()` turns what it learned into a `KeepAlive`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


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


def _with_reason(k: KeepAlive, reason: str) -> KeepAlive:
    return KeepAlive(k.prewarm_s, k.keep_s, reason, k.bridge_s)


def fixed(keep_s: float) -> KeepAlive:
    """A forced window (`lowtide up --keep-alive S`)."""
    return KeepAlive(0.0, keep_s, "fixed by --keep-alive")


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
