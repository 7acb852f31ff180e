"""Answers to buffered requests, delivered to the activator that waits for them.

One subscription per activator process (its reply channel), not one connection per
request. A result is also stored under its request id, so a waiter re-checks the store
now and then: an answer published while the subscription was reconnecting is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys
from .._protocol import Result
from .._redis import follow

log = logging.getLogger(__name__)

RECHECK_S = 2.0


class ReplyHub:
    def __init__(self, redis: Redis, activator_id: str) -> None:
        self.redis = redis
        self.channel = _keys.reply_channel(activator_id)
        self.subscribed = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[Result]] = {}

    def expect(self, request_id: str) -> asyncio.Future[Result]:
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        return fut

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    async def wait(self, request_id: str, fut: asyncio.Future[Result], timeout_s: float
                   ) -> Result | None:
        """The answer, or None when timeout_s passes without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return await self.stored(request_id)
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(asyncio.shield(fut), min(left, RECHECK_S))
            found = await self.stored(request_id)
            if found is not None:
                return found

    async def stored(self, request_id: str) -> Result | None:
        try:
            fields = await self.redis.hgetall(_keys.result(request_id))
        except RedisError:
            return None
        return Result.from_fields(fields) if fields else None

    async def run(self, stop: asyncio.Event) -> None:
        async def subscribed() -> None:
            self.subscribed.set()

        await follow(self.redis, self.channel, stop, self._deliver, what="reply subscription",
                     on_subscribed=subscribed, on_lost=self.subscribed.clear)

    async def _deliver(self, message: bytes) -> None:
        try:
            request_id, result = Result.from_message(message)
        except ValueError:
            log.error("malformed reply message dropped")
            return
        fut = self._waiting.get(request_id)
        if fut is not None and not fut.done():
            fut.set_result(result)
