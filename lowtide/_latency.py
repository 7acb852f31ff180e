"""Latency histograms small enough to flush every second: log-spaced buckets by index.

The activator counts each answered call into bucket `bucket_of(seconds)` per endpoint and
adds the counts to a Redis hash once a second (`_keys.latency`); the platform takes the
difference between two reads and asks `quantile()` for p50/p99 over any window by summing
bucket counts. Buckets grow by 2**(1/4) (19 %) from 0.1 ms, so a quantile is within 19 % of
the true value — enough to see a latency change on a chart, and 90 integers per endpoint
instead of every sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FIRST_S = 1e-4  # upper bound of bucket 0
GROWTH = 2 ** 0.25
BUCKETS = 90  # the last one, from ~0.1 ms x 2**22.25 (~8 min), takes everything longer
_LOG_GROWTH = math.log(GROWTH)


def bucket_of(seconds: float) -> int:
    """The index of the bucket that holds a latency."""
    if seconds <= FIRST_S:
        return 0
    return min(BUCKETS - 1, math.ceil(math.log(seconds / FIRST_S) / _LOG_GROWTH - 1e-9))


def upper_s(index: int) -> float:
    """The largest latency bucket `index` holds."""
    return FIRST_S * GROWTH ** index


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of the latencies counted, as its bucket's upper bound;
    None when nothing was counted."""
    total = sum(n for n in counts.values() if n > 0)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(counts):
        seen += max(0, counts[index])
        if seen >= rank:
            return upper_s(index)
    return upper_s(max(counts))


def delta(now: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    """What was counted between two reads of the cumulative counts (a counter that went
    down, after a reset, counts from zero)."""
    out = {}
    for index, n in now.items():
        d = n - before.get(index, 0)
        if d < 0:
            d = n
        if d:
            out[index] = d
    return out


def merge(into: dict[int, int], counts: Mapping[int, int]) -> None:
    for index, n in counts.items():
        into[index] = into.get(index, 0) + n
