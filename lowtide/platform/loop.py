"""The scaling loop's shell: ticks, timers and wakes around a reconciler.

Each tick, `step()` looks at the endpoints `Schedule.due()` names (the active ones and the
idle ones whose timer fired), reading them in batches of `batch_size` (`Reconciler.read`,
a few pipelined round trips per batch) and reconciling them one by one. Every `resync_s` it
compares the endpoints it knows with `Reconciler.members()` (a missed deploy or delete
event, a shard gained or lost) and looks once at each new one.

A wake (`wake()`: the activator's, a deploy's) is decided at once by a task of its own, not
behind the pass: the wake task reads and reconciles that endpoint alone. The two never
reconcile one endpoint at the same time (a lock per endpoint), and a pass skips an endpoint
that a wake reconciled after the pass had read it (its read is stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from .._redis import pause
from .schedule import Look, Schedule

log = logging.getLogger(__name__)

RESYNC_S = 30.0

RECONCILES = Counter("lowtide_platform_reconciles_total",
                     "Endpoint reconciles run by this platform's scaling loop")
ENDPOINTS = Gauge("lowtide_platform_endpoints",
                  "Endpoints this platform scales: known, active (looked at every tick) and "
                  "waiting on a timer", ["state"])


class Ownership(Protocol):
    def owns(self, name: str) -> bool:
        """Whether this platform scales the endpoint now (its shard's lease is held)."""


class Reconciler(Protocol):
    async def members(self) -> set[str]:
        """The endpoints this platform scales now (all, or its shards')."""

    def owns(self, name: str) -> bool:
        """Whether this platform scales the endpoint now."""

    async def tick(self, now: float) -> None:
        """Per-tick work that is not per endpoint (host liveness)."""

    async def read(self, names: Sequence[str], now: float) -> Any:
        """Everything the endpoints' reconciles need, read together."""

    async def reconcile(self, name: str, batch: Any, now: float) -> Look | None:
        """One endpoint's step; its next look (None: it is gone)."""

    def forget(self, name: str) -> None:
        """The endpoint is no longer this platform's: drop what is kept about it."""


class ScalingLoop:
    def __init__(self, reconciler: Reconciler, clock: Callable[[], float], tick_s: float,
                 batch_size: int = 500, resync_s: float = RESYNC_S) -> None:
        self.reconciler = reconciler
        self.clock = clock
        self.tick_s = tick_s
        self.batch_size = batch_size
        self.resync_s = resync_s
        self.schedule = Schedule()
        self.known: set[str] = set()
        self.looks = 0  # reconciles run (tests and the bench count them)
        self._next_resync = -math.inf
        self._woken: list[str] = []
        self._wake_pending: set[str] = set()
        self._wake = asyncio.Event()
        self._fresh: set[str] = set()  # reconciled by a wake since the pass read them
        self._locks: dict[str, asyncio.Lock] = {}

    def wake(self, name: str) -> None:
        """Decide for the endpoint at once (the wake task)."""
        if name not in self._wake_pending:
            self._wake_pending.add(name)
            self._woken.append(name)
            self._wake.set()

    def resync_soon(self) -> None:
        """Compare with the members at the next step (a shard was gained or lost)."""
        self._next_resync = -math.inf

    # ---- the shell --------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        wakes = asyncio.create_task(self.run_wakes(stop), name="scaling-wakes")
        try:
            while not stop.is_set():
                started = self.clock()
                await self.step(started)
                if wakes.done():
                    wakes.result()  # a dead wake task is an error, not silence
                await pause(stop, max(0.0, self.tick_s - (self.clock() - started)))
        finally:
            wakes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await wakes

    async def run_wakes(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            while self._woken:
                name = self._woken.pop(0)
                self._wake_pending.discard(name)
                if self.reconciler.owns(name):
                    await self.look_now(name)

    async def look_now(self, name: str) -> None:
        now = self.clock()
        try:
            batch = await self.reconciler.read([name], now)
        except Exception as exc:  # the next pass looks again
            log.warning("reading %s for its wake failed: %s", name, exc)
            self.schedule.soon(name)
            return
        await self._look(name, batch, now)
        self._fresh.add(name)

    # ---- one tick ---------------------------------------------------------------------
    async def step(self, now: float) -> None:
        if now >= self._next_resync:
            await self.resync(now)
        try:
            await self.reconciler.tick(now)
        except Exception:
            log.exception("the scaling loop's per-tick work failed")
        names = self.schedule.due(now)
        for i in range(0, len(names), self.batch_size):
            await self._look_many(names[i: i + self.batch_size], now)
            ENDPOINTS.labels(state="known").set(len(self.known))
        ENDPOINTS.labels(state="known").set(len(self.known))
        ENDPOINTS.labels(state="active").set(len(self.schedule.active))
        ENDPOINTS.labels(state="timer").set(self.schedule.timers)

    async def resync(self, now: float) -> None:
        try:
            members = await self.reconciler.members()
        except Exception as exc:
            log.warning("listing the endpoints failed, tried again next tick: %s", exc)
            return
        self._next_resync = now + self.resync_s
        for name in sorted(members - self.known):
            self.schedule.soon(name)
        for name in self.known - members:
            self.schedule.forget(name)
            self.reconciler.forget(name)
        self.known = members

    async def _look_many(self, names: list[str], now: float) -> None:
        self._fresh.clear()
        try:
            batch = await self.reconciler.read(names, now)
        except Exception as exc:
            log.warning("reading %d endpoints failed, looked at again next tick: %s",
                        len(names), exc)
            for name in names:
                self.schedule.soon(name)
            return
        for name in names:
            if name not in self._fresh:
                await self._look(name, batch, now, skip_if_fresh=True)

    async def _look(self, name: str, batch: Any, now: float,
                    skip_if_fresh: bool = False) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                if skip_if_fresh and name in self._fresh:
                    return
                look = await self._reconcile(name, batch, now)
        finally:
            if not lock.locked():
                self._locks.pop(name, None)
        if look is None:
            self.schedule.forget(name)
            self.known.discard(name)
        else:
            self.schedule.set(name, look)
            self.known.add(name)

    async def _reconcile(self, name: str, batch: Any, now: float) -> Look | None:
        self.looks += 1
        RECONCILES.inc()
        try:
            return await self.reconciler.reconcile(name, batch, now)
        except Exception:  # one endpoint's bad state must not stop the loop
            log.exception("reconcile %s failed; tried again next tick", name)
            return Look(False, now + self.tick_s, "retry")
