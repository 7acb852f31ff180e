"""How many requests wait in each endpoint's stream, known without a Redis command per request.

The bound on queue length (429 with Retry-After) is checked on every request this activator
would buffer, so the depth it compares with must come from memory. It is approximate:

    depth ~ the stream's length at the last reading (XLEN, every REFRESH_S for the endpoints
            this activator buffers to) + what this activator buffered since that reading

XLEN counts entries that wait and entries a replica is running (the replicas delete an entry
once it is answered). Other activators' additions show up at the next reading, so with N
activators the bound can be overshot by about what they accept in REFRESH_S; and an
endpoint this activator has never buffered to starts at 0 until its first reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys

log = logging.getLogger(__name__)

REFRESH_S = 1.0
RETRY_AFTER_S = 2


class Backlog:
    """Approximate per-endpoint queue depth; pure bookkeeping, the loop below feeds it."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.observed: dict[str, int] = {}  # XLEN at the last reading
        self.added: dict[str, int] = defaultdict(int)  # buffered here since that reading

    def depth(self, name: str) -> int:
        return self.observed.get(name, 0) + self.added.get(name, 0)

    def full(self, name: str) -> bool:
        return self.depth(name) >= self.max_queued

    def add(self, name: str) -> None:
        self.added[name] += 1

    def tracked(self) -> list[str]:
        """Endpoints worth a reading: something was queued at the last one or added since."""
        return [n for n in set(self.observed) | set(self.added) if self.depth(n) > 0]

    def observe(self, name: str, length: int, added_before: int) -> None:
        """A reading of the stream's length, taken when `added_before` had been added here
        (those are in the reading; what was added while it travelled is not)."""
        self.added[name] = max(0, self.added.get(name, 0) - added_before)
        if length or self.added[name]:
            self.observed[name] = length
        else:  # forget idle endpoints
            self.observed.pop(name, None)
            self.added.pop(name, None)

    async def refresh(self, redis: Redis) -> None:
        names = self.tracked()
        if not names:
            return
        before = {n: self.added.get(n, 0) for n in names}
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xlen(_keys.stream(name))
            lengths = await pipe.execute()
        for name, length in zip(names, lengths, strict=True):
            self.observe(name, int(length), before[name])

    async def run(self, redis: Redis, stop: asyncio.Event) -> None:
        """Read the tracked streams' lengths every REFRESH_S until `stop`."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)
            try:
                await self.refresh(redis)
            except RedisError as exc:
                log.warning("could not read queue lengths (the bound uses older ones): %s", exc)
