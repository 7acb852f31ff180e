"""The prewarmed pool's decisions, pure (a clock and measurements in, a decision out):

- how many idle workers to keep: the largest burst of cold starts the host saw recently
  (starts within `burst_s` of each other), at least one while cold starts happen, none after
  a quiet horizon, within a share of the host's memory;
- which packages they import before they have a function: those the host's recent cold
  starts referenced (the spec's `packages`, recorded by the SDK), most used first;
- how many to start at once (a refill after a burst runs in parallel where cores allow);
- which idle worker a start takes (one with the endpoint's packages already imported);
- whether a start that finds no idle worker waits for one still starting: when it will be
  ready sooner than a full start (a new server process, which pays at least what a pool
  worker pays to start) would be.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ColdStart:
    at: float
    packages: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    """An idle worker as `choose` sees it."""

    preload: frozenset[str]
    ready: bool


@dataclass(frozen=True)
class PoolPolicy:
    max_idle: int = 4
    busy_window_s: float = 60.0  # the largest burst in this window sets the pool size
    burst_s: float = 10.0  # cold starts this close together count as one burst
    horizon_s: float = 600.0  # no cold start for this long: keep no idle worker
    memory_fraction: float = 0.25  # of the host's memory (idle workers' own included)
    default_worker_bytes: int = 300 * 2**20  # until one of a kind is measured
    max_preload: int = 8  # packages a worker imports at most
    max_parallel_starts: int = 4
    default_start_s: float = 10.0  # a worker's spawn to idle, until one is measured
    # a start waits this long at most for a starting worker: the wait holds the agent's
    # command thread, and other starts queue behind it
    max_wait_s: float = 10.0

    def burst(self, starts: Sequence[ColdStart], now: float) -> int:
        """The most cold starts within `burst_s` of each other in the busy window."""
        times = sorted(s.at for s in starts if now - s.at <= self.busy_window_s)
        best, first = 0, 0
        for last, t in enumerate(times):
            while t - times[first] > self.burst_s:
                first += 1
            best = max(best, last - first + 1)
        return best

    def target(self, starts: Sequence[ColdStart], now: float, memory_bytes: int,
               worker_bytes: int) -> int:
        """How many idle workers to keep. `memory_bytes`: the host's available memory plus
        what the idle workers hold now (they are the pool's to give back)."""
        if not starts or now - max(s.at for s in starts) > self.horizon_s:
            return 0
        want = min(self.max_idle, max(1, self.burst(starts, now)))
        per_worker = worker_bytes or self.default_worker_bytes
        fits = math.floor(memory_bytes * self.memory_fraction / per_worker)
        return max(0, min(want, fits))

    def preload(self, starts: Sequence[ColdStart], now: float) -> frozenset[str]:
        """The packages cold starts in the horizon referenced: the most used ones (ties: the
        most recently used), at most `max_preload`."""
        counts: Counter[str] = Counter()
        last: dict[str, float] = {}
        for s in starts:
            if now - s.at > self.horizon_s:
                continue
            for p in s.packages:
                counts[p] += 1
                last[p] = max(last.get(p, s.at), s.at)
        ranked = sorted(counts, key=lambda p: (-counts[p], -last[p], p))
        return frozenset(ranked[:self.max_preload])

    def starts_now(self, missing: int, starting: int, cpus: int) -> int:
        """New workers to start now: up to half the cores' worth at once (each start is
        two interpreters importing BentoML: more in parallel only slows each down)."""
        parallel = min(self.max_parallel_starts, max(1, cpus // 2))
        return max(0, min(missing, parallel - starting))

    def wait_for_starting(self, remaining_s: float, full_start_s: float) -> bool:
        """Wait for a worker still starting rather than start a new server?"""
        return remaining_s < full_start_s and remaining_s <= self.max_wait_s


def choose(candidates: Sequence[Candidate], needed: Iterable[str]) -> int | None:
    """The ready worker a start takes: one that has every needed package imported, else the
    one with the most of them (it still beats a new server: the rest import at load).
    Among equals, the one that imported least (the others fit more endpoints)."""
    need = frozenset(needed)
    best: tuple[int, int, int] | None = None
    pick = None
    for i, c in enumerate(candidates):
        if not c.ready:
            continue
        key = (0 if need <= c.preload else 1, -len(need & c.preload), len(c.preload))
        if best is None or key < best:
            best, pick = key, i
    return pick


def covers(preload: frozenset[str], wanted: frozenset[str]) -> bool:
    """A worker importing `preload` is of the wanted kind."""
    return wanted <= preload
