"""The scaling decision for one endpoint: a pure function of what was observed and the time.

This is the foundation policy: cold-start fast path on a wake (straight to
ceil(queued / limit)), scale-up on a backlog that waits, and scale to zero (or to
min_replicas) after an idle keep-alive. Every decision carries a one-line reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BACKLOG_WAIT_S = 1.0  # a queue whose oldest waiting request is older than this needs capacity
DEFAULT_KEEP_ALIVE_S = 300.0


@dataclass(frozen=True)
class Observation:
    desired: int  # the previous decision
    ready: int
    starting: int
    queued: int  # buffered and not yet taken by a replica
    oldest_wait_s: float  # age of the oldest buffered request not yet taken
    in_flight: int  # running on replicas (direct calls and stream entries)
    last_activity_at: float  # last request arrival or completion, seconds since the epoch
    limit: int  # per-replica concurrency limit
    min_replicas: int = 0
    max_replicas: int | None = None


@dataclass(frozen=True)
class Decision:
    desired: int
    kind: str  # wake | backlog | idle | bounds | steady
    reason: str

    def changed(self, previous: int) -> bool:
        return self.desired != previous


def replicas_for(demand: int, limit: int) -> int:
    """Replicas needed to hold `demand` concurrent requests at `limit` each."""
    return math.ceil(demand / max(1, limit)) if demand > 0 else 0


def clamp(n: int, lo: int, hi: int | None) -> int:
    n = max(n, lo)
    return n if hi is None else min(n, hi)


def idle_seconds(obs: Observation, now: float) -> float:
    return max(0.0, now - obs.last_activity_at)


def decide(obs: Observation, now: float, keep_alive_s: float) -> Decision:
    lo, hi, prev = obs.min_replicas, obs.max_replicas, obs.desired
    demand = obs.in_flight + obs.queued
    transition = f"{prev} -> "
    if prev == 0 and obs.queued > 0:
        n = clamp(max(1, replicas_for(obs.queued, obs.limit)), lo, hi)
        return Decision(n, "wake", f"{transition}{n}: wake, {obs.queued} queued "
                        f"(oldest {obs.oldest_wait_s:.1f} s), no replica")
    if obs.queued > 0 and obs.oldest_wait_s >= BACKLOG_WAIT_S and obs.starting == 0:
        n = clamp(replicas_for(demand, obs.limit), lo, hi)
        if n > prev:
            return Decision(n, "backlog", f"{transition}{n}: backlog, {obs.queued} queued "
                            f"waiting {obs.oldest_wait_s:.1f} s, {obs.in_flight} in flight "
                            f"over limit {obs.limit} per replica")
    idle_s = idle_seconds(obs, now)
    if demand == 0 and prev > lo and idle_s >= keep_alive_s:
        return Decision(lo, "idle", f"{transition}{lo}: idle {idle_s:.1f} s >= keep-alive "
                        f"{keep_alive_s:g} s")
    bounded = clamp(prev, lo, hi)
    if bounded != prev:
        return Decision(bounded, "bounds", f"{transition}{bounded}: bounds "
                        f"[{lo}, {'inf' if hi is None else hi}]")
    return Decision(prev, "steady", f"{prev} -> {prev}: steady")
