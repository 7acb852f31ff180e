"""When the scaling loop looks at each endpoint: its work follows activity, not the number of
endpoints.

An endpoint with replicas, queued requests or a desired count above zero is *active*: looked
at every tick, as before (and so is one active within its policy's windows, a minute ago).
One at zero replicas with nothing queued is *idle*: it costs nothing per tick. It is looked
at again on an event (a wake from the activator, a deploy or delete, its shard taken over)
or at a timer that its policy asked for: the next pre-warm, the daily pattern's next
window, the end of a start backoff, the time its in-memory state is evicted, and at the
latest `MAX_IDLE_LOOK_S` later. The timers live in a heap, so a tick pays for the timers
that are due, not for the endpoints that wait.

`next_look()`, `policy_timers()` and `Schedule` are pure: the loop passes the clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass

from .policy import Autoscaler

MAX_IDLE_LOOK_S = 3600.0  # an idle endpoint is looked at at least this often (a safety net)


@dataclass(frozen=True)
class Look:
    """When the endpoint is looked at next: every tick, else at `at` (or on an event)."""

    every_tick: bool
    at: float | None = None
    why: str = ""


def next_look(*, desired: int, replicas: int, queued: int, backoff_until: float,
              quiet_at: float, timers: Iterable[tuple[float | None, str]], now: float
              ) -> Look:
    """The next look of an endpoint after one at `now`.

    `replicas` counts every record (starting and stopping too), `queued` every entry of its
    stream; until `quiet_at` (its policy's windows after its last activity) an endpoint at
    zero is still looked at every tick, so its windows see the idle time as before. `timers`
    are (time or None, why) pairs from its policy and the loop."""
    if replicas == 0 and backoff_until > now:  # nothing runs and nothing may start yet
        return Look(False, backoff_until, "start backoff ends")
    if desired > 0 or replicas > 0 or queued > 0 or now < quiet_at:
        return Look(True)
    due = [(at, why) for at, why in timers if at is not None and at > now]
    due.append((now + MAX_IDLE_LOOK_S, "idle look"))
    at, why = min(due)
    return Look(False, at, why)


def policy_timers(policy: Autoscaler, last_activity_at: float, now: float
                  ) -> list[tuple[float | None, str]]:
    """When an endpoint idle at zero may be started with no new event: the pre-warm its
    keep-alive window asks for (idle gaps), and the daily pattern's next window."""
    ka = policy.keep_alive()
    prewarm_at = last_activity_at + ka.prewarm_s if 0 < ka.prewarm_s < ka.keep_s else None
    daily_at = None if policy.settings.keep_alive_s is not None else (
        policy.daily.next_window_at(now))
    return [(prewarm_at, "pre-warm"), (daily_at, "daily window")]


class Schedule:
    """The active endpoints and the idle ones' timers (a heap with lazy deletion)."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self._at: dict[str, float] = {}  # name -> its timer (the heap may hold stale ones)
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.active | self._at.keys())

    @property
    def timers(self) -> int:
        return len(self._at)

    def timer_of(self, name: str) -> float | None:
        return self._at.get(name)

    def set(self, name: str, look: Look) -> None:
        if look.every_tick:
            self.active.add(name)
        else:
            self.active.discard(name)
        if look.at is None or look.every_tick:
            self._at.pop(name, None)
        elif self._at.get(name) != look.at:
            self._at[name] = look.at
            heapq.heappush(self._heap, (look.at, name))
            if len(self._heap) > 2 * len(self._at) + 64:  # drop the stale entries
                self._heap = [(at, n) for n, at in self._at.items()]
                heapq.heapify(self._heap)

    def soon(self, name: str) -> None:
        """Look at the endpoint in the next pass (new, or its look failed)."""
        self.set(name, Look(False, -math.inf, "now"))

    def forget(self, name: str) -> None:
        self.active.discard(name)
        self._at.pop(name, None)

    def due(self, now: float) -> list[str]:
        """The active endpoints and those whose timer is due; a fired timer is cleared."""
        names = set(self.active)
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, name = heapq.heappop(heap)
            if self._at.get(name) == at:
                del self._at[name]
                names.add(name)
        return sorted(names)

    def next_at(self) -> float | None:
        """The earliest pending timer."""
        heap = self._heap
        while heap and self._at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None
