"""How many requests wait in each endpoint's stream, known without a Redis command per request.

The bound on queue length (429 with Retry-After) is checked on every request this activator
would buffer, so the depth it compares with must come from memory. It is approximate:

    depth ~ the stream's length at the last reading (XLEN, every REFRESH_S for the endpoints
            this activator buffers to) + what this activator buffered since that reading

XLEN counts entries that wait and entries a replica is running (the replicas delete an entry
once it is answered). Other activators' additions show up at the next reading, so with N
activators the bound can be overshot by about what they accept in REFRESH_S; and an
endpoint this activator has never buffered to starts at 0 until its first reading.

The same reading says how many entries no replica had taken yet (XLEN minus the consumer
group's pending count): `queued`, and when the oldest of them was added (its entry id's
time, one XRANGE after the consumer group's last-delivered id): `oldest_queued_at`. While
entries wait untaken a new request does not overtake them on the direct path: it waits in
memory behind them, and a waiter takes a slot only once no untaken entry is older than it
(first come, first served; `admission`). Entries a replica is running do not count, nor do
this activator's own additions since the reading (replicas with room take an entry within a
millisecond or so): counting either kept an endpoint under steady load on the buffered path
for good, as every arrival found one outstanding. While anything is in the stream it is
read every QUEUED_REFRESH_S (at once after an addition), so the stale view lasts about that
long either way; `on_reading` is told each endpoint read, so that waiters the reading lets
through take their slots at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys

log = logging.getLogger(__name__)

REFRESH_S = 1.0
QUEUED_REFRESH_S = 0.05  # while a tracked stream holds entries
RETRY_AFTER_S = 2


class Backlog:
    """Approximate per-endpoint queue depth; pure bookkeeping, the loop below feeds it."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.observed: dict[str, int] = {}  # XLEN at the last reading
        self.untaken: dict[str, int] = {}  # of those, not yet taken by a replica
        self.oldest_at: dict[str, float] = {}  # when the oldest untaken one was added
        self.on_reading: Callable[[str], None] | None = None
        self.added: dict[str, int] = defaultdict(int)  # buffered here since that reading
        self._added_event = asyncio.Event()  # wakes the reading loop

    def depth(self, name: str) -> int:
        return self.observed.get(name, 0) + self.added.get(name, 0)

    def full(self, name: str) -> bool:
        return self.depth(name) >= self.max_queued

    def queued(self, name: str) -> int:
        """Entries no replica had taken at the last reading."""
        return self.untaken.get(name, 0)

    def oldest_queued_at(self, name: str) -> float | None:
        """When the oldest entry no replica had taken was added (seconds since the epoch,
        Redis's clock), at the last reading; None when none waited."""
        return self.oldest_at.get(name) if self.untaken.get(name) else None

    def add(self, name: str) -> None:
        self.added[name] += 1
        self._added_event.set()

    def tracked(self) -> list[str]:
        """Endpoints worth a reading: something was queued at the last one or added since."""
        return [n for n in set(self.observed) | set(self.added) if self.depth(n) > 0]

    def observe(self, name: str, length: int, added_before: int, pending: int = 0,
                oldest_at: float | None = None) -> None:
        """A reading of the stream's length, of its entries taken but not yet answered
        (`pending`) and of when the oldest untaken one was added, taken when `added_before`
        had been added here (those are in the reading; what was added while it travelled
        is not)."""
        self.added[name] = max(0, self.added.get(name, 0) - added_before)
        if length or self.added[name]:
            self.observed[name] = length
            self.untaken[name] = max(0, length - pending)
            if oldest_at is None:
                self.oldest_at.pop(name, None)
            else:
                self.oldest_at[name] = oldest_at
        else:  # forget idle endpoints
            self.observed.pop(name, None)
            self.untaken.pop(name, None)
            self.oldest_at.pop(name, None)
            self.added.pop(name, None)

    async def refresh(self, redis: Redis) -> None:
        names = self.tracked()
        if not names:
            return
        before = {n: self.added.get(n, 0) for n in names}
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xlen(_keys.stream(name))
                pipe.xinfo_groups(_keys.stream(name))
            replies = await pipe.execute(raise_on_error=False)
        readings = {}
        for i, name in enumerate(names):
            length, groups = replies[2 * i], replies[2 * i + 1]
            if isinstance(length, Exception):
                raise length
            # no stream or no consumer group yet (no replica ever read it): nothing taken
            taken, last = _group(groups)
            readings[name] = (int(length), taken, last)
        oldest = await _oldest_untaken(redis, {n: r[2] for n, r in readings.items()
                                               if r[0] > r[1]})
        for name, (length, taken, _) in readings.items():
            self.observe(name, length, before[name], taken, oldest.get(name))
            if self.on_reading is not None:
                self.on_reading(name)

    async def run(self, redis: Redis, stop: asyncio.Event) -> None:
        """Read the tracked streams every QUEUED_REFRESH_S while they hold anything, else
        at the first addition or after REFRESH_S, until `stop`."""
        while not stop.is_set():
            queued = bool(self.tracked())  # anything in a stream, or added since
            self._added_event.clear()
            waits = [asyncio.ensure_future(stop.wait())]
            if not queued:
                waits.append(asyncio.ensure_future(self._added_event.wait()))
            _, rest = await asyncio.wait(waits, timeout=QUEUED_REFRESH_S if queued
                                         else REFRESH_S, return_when=asyncio.FIRST_COMPLETED)
            for task in rest:
                task.cancel()
            try:
                await self.refresh(redis)
            except RedisError as exc:
                log.warning("could not read queue lengths (the bound uses older ones): %s", exc)


def _group(groups: object) -> tuple[int, bytes]:
    """Pending count and last-delivered id of the replicas' consumer group in an XINFO
    GROUPS reply (0 and "0-0" when there is none)."""
    if isinstance(groups, list):
        for group in groups:
            if group["name"] in (_keys.STREAM_GROUP, _keys.STREAM_GROUP.encode()):
                last = group["last-delivered-id"]
                return int(group["pending"]), last.encode() if isinstance(last, str) else last
    return 0, b"0-0"


async def _oldest_untaken(redis: Redis, last_delivered: dict[str, bytes]) -> dict[str, float]:
    """When the first entry after each stream's last delivered one was added (entry ids
    start with Redis's clock in milliseconds)."""
    if not last_delivered:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for name, last in last_delivered.items():
            pipe.xrange(_keys.stream(name), min=b"(" + last, max="+", count=1)
        replies = await pipe.execute(raise_on_error=False)
    oldest = {}
    for name, entries in zip(last_delivered, replies, strict=True):
        if isinstance(entries, list) and entries:
            oldest[name] = int(entries[0][0].split(b"-", 1)[0]) / 1000.0
    return oldest
