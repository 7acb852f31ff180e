"""Requests waiting in this activator's memory for a replica slot, per endpoint, in order.

The queue is Knative's breaker in the activator: a waiter is handed the first slot that
frees, oldest first (unless the stream holds an older untaken entry: `may_take_slot`),
with the slot already taken for it (the replica's `in_flight` counts
it before the waiter runs again), so a request arriving meanwhile cannot take it. Slots free
when a call through this activator ends (`dispatch` from the caller) and when the routes
change (a replica became ready, a limit grew: `dispatch` again; no ready replica left:
`release_all`, and the waiters go to the stream in their order).

Which requests wait here, and for how long, is `admission`'s decision; this module keeps
the queue, carries the decision out (`take_slot`), learns each endpoint's service time, and
reports the waiters each second (`report`: how many, and the oldest's age, per endpoint in
`_keys.waiting`), which the platform counts as queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter
from redis.asyncio.client import Pipeline

from .. import _keys
from .admission import Action, Admission, View, WaitConfig, may_take_slot, smoothed
from .routes import EndpointRoute, ReplicaRoute, pick

SPILLED = Counter("lowtide_activator_spilled_total", "Synchronous requests sent to the "
                  "stream, by cause (cold, bound, long-wait, busy, waited)",
                  ["endpoint", "cause"])
WAITED = Counter("lowtide_activator_waited_total", "Requests that waited in this "
                 "activator's memory for a replica slot", ["endpoint"])


class Waiter:
    __slots__ = ("arrived_at", "future")

    def __init__(self, future: asyncio.Future[ReplicaRoute | None], arrived_at: float
                 ) -> None:
        self.future = future
        self.arrived_at = arrived_at  # seconds since the epoch


@dataclass
class _Queue:
    waiters: deque[Waiter] = field(default_factory=deque)
    service_s: float | None = None  # moving average of direct calls' latency


class Waiters:
    def __init__(self, config: WaitConfig, endpoints: Mapping[str, EndpointRoute],
                 stream_oldest_at: Callable[[str], float | None] = lambda name: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.endpoints = endpoints  # the routes' current view, read when slots free
        self.stream_oldest_at = stream_oldest_at  # the backlog's last reading
        self.clock = clock
        self._queues: dict[str, _Queue] = {}
        self._reported: set[str] = set()  # endpoints with waiters at the last report

    # ---- what the decisions and the signals read ------------------------------------------
    def count(self, name: str) -> int:
        q = self._queues.get(name)
        return len(q.waiters) if q else 0

    def oldest_age_s(self, name: str) -> float:
        q = self._queues.get(name)
        if not q or not q.waiters:
            return 0.0
        return max(0.0, self.clock() - q.waiters[0].arrived_at)

    def service_s(self, endpoint: EndpointRoute) -> float:
        """The endpoint's service time: learned here, else the replicas' no-load latency,
        else 0 (nothing known yet: the wait bound's floor decides)."""
        q = self._queues.get(endpoint.name)
        if q is not None and q.service_s is not None:
            return q.service_s
        no_load = [r.no_load_ms for r in endpoint.replicas.values() if r.no_load_ms]
        return max(no_load) / 1000 if no_load else 0.0

    def observe(self, name: str, latency_s: float) -> None:
        q = self._queue(name)
        q.service_s = smoothed(q.service_s, latency_s, self.config)

    def names(self) -> list[str]:
        return [n for n, q in self._queues.items() if q.waiters]

    def view(self, endpoint: EndpointRoute, stream_queued: int) -> View:
        """What `admission` decides on."""
        ready = endpoint.ready()
        return View(ready=len(ready), capacity=sum(r.slots() for r in ready),
                    open_slot=any(r.room() > 0 for r in ready),
                    waiting=self.count(endpoint.name), stream_queued=stream_queued,
                    service_s=self.service_s(endpoint))

    def to_report(self) -> bool:
        return bool(self._reported or self.names())

    def report(self, pipe: Pipeline, activator_id: str, now: float) -> None:
        """Queue the flush of this activator's waiters (and the end of those it reported
        last time and no longer has) on `pipe`; the caller executes it."""
        waiting = self.names()
        for name in waiting:
            key = _keys.waiting(name)
            pipe.hset(key, activator_id, json.dumps(
                {"n": self.count(name), "oldest_s": round(self.oldest_age_s(name), 3),
                 "at": now}))
            pipe.expire(key, _keys.WAITING_TTL_S)
        for name in self._reported - set(waiting):
            pipe.hdel(_keys.waiting(name), activator_id)
        self._reported = set(waiting)

    # ---- waiting ---------------------------------------------------------------------------
    async def take_slot(self, endpoint: EndpointRoute, decision: Admission, arrived_at: float,
                        start_by: float, front: bool = False) -> ReplicaRoute | None:
        """Carry out `decision`: a replica with a slot taken for the call (at once, or after
        a wait here), or None when the call goes to the stream."""
        name = endpoint.name
        if decision.action is Action.DIRECT:
            replica = pick(endpoint)
            if replica is not None:
                replica.in_flight += 1
                return replica
        elif decision.action is Action.SPILL:
            SPILLED.labels(name, decision.cause).inc()
            return None
        waiter = self.join(name, front, arrived_at)
        self.dispatch(name)  # a slot may be free already (a retry, a new replica)
        WAITED.labels(name).inc()
        replica = await self.wait(name, waiter, min(decision.bound_s, start_by - self.clock()))
        if replica is None:
            SPILLED.labels(name, "waited").inc()
        return replica

    def join(self, name: str, front: bool = False, arrived_at: float | None = None) -> Waiter:
        """Queue a request (at the head: one a replica refused as busy, which keeps its
        place); `arrived_at` orders it against the stream's entries."""
        now = self.clock() if arrived_at is None else arrived_at
        waiter = Waiter(asyncio.get_running_loop().create_future(), now)
        q = self._queue(name)
        if front:
            q.waiters.appendleft(waiter)
        else:
            q.waiters.append(waiter)
        return waiter

    async def wait(self, name: str, waiter: Waiter, timeout_s: float) -> ReplicaRoute | None:
        """The replica whose slot was taken for the waiter, or None when `timeout_s` passed
        or the endpoint lost its replicas (the caller spills the request to the stream).
        Cancelled (the caller went away) after a slot was taken, it hands the slot on."""
        fut = waiter.future
        # a timer that ends the wait (cheaper than asyncio.wait's per-call machinery: this
        # runs for every request past the replicas' limits)
        timer = asyncio.get_running_loop().call_later(max(0.0, timeout_s), _expire, fut)
        try:
            replica = await fut
        except asyncio.CancelledError:
            taken = fut.result() if fut.done() and not fut.cancelled() else None
            self._abandon(name, waiter)
            if taken is not None:
                self.release(name, taken)
            raise
        finally:
            timer.cancel()
        if replica is None:
            self._abandon(name, waiter)  # past its bound (or no replica: already gone)
        return replica

    def release(self, name: str, replica: ReplicaRoute) -> None:
        """A call through this activator left the replica: its slot goes to the oldest
        waiter, if any."""
        replica.in_flight -= 1
        self.dispatch(name)

    def dispatch(self, name: str) -> None:
        """Hand free slots to the oldest waiters, taking each slot for its waiter."""
        q = self._queues.get(name)
        if not q or not q.waiters:
            return
        endpoint = self.endpoints.get(name)
        if endpoint is None or not endpoint.ready():
            self.release_all(name)
            return
        stream_oldest_at = self.stream_oldest_at(name)
        while q.waiters:
            waiter = q.waiters[0]
            if waiter.future.done():
                q.waiters.popleft()
                continue
            if not may_take_slot(waiter.arrived_at, stream_oldest_at):
                return
            replica = pick(endpoint)
            if replica is None:
                return
            q.waiters.popleft()
            replica.in_flight += 1
            waiter.future.set_result(replica)

    def release_all(self, name: str) -> int:
        """No replica left to wait for: every waiter goes to the stream, oldest first."""
        q = self._queues.get(name)
        if not q:
            return 0
        n = 0
        while q.waiters:
            waiter = q.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                n += 1
        return n

    def forget(self, keep: set[str]) -> None:
        """Drop what was learned of endpoints that left the routes (none of them waits)."""
        for name in [n for n, q in self._queues.items() if n not in keep and not q.waiters]:
            del self._queues[name]

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    def _abandon(self, name: str, waiter: Waiter) -> None:
        if not waiter.future.done():
            waiter.future.cancel()
        q = self._queues.get(name)
        if q is not None:
            with contextlib.suppress(ValueError):  # already handed a slot, or released
                q.waiters.remove(waiter)


def _expire(fut: asyncio.Future[ReplicaRoute | None]) -> None:
    if not fut.done():
        fut.set_result(None)
