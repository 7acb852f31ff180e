"""Redis clients for the components: a bounded pool that waits for a free connection
(instead of failing with "Too many connections" under a burst)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None]]

MAX_CONNECTIONS = 64
POOL_WAIT_S = 10.0


def async_redis(url: str, max_connections: int = MAX_CONNECTIONS) -> Redis:
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                           timeout=POOL_WAIT_S)
    return Redis(connection_pool=pool)


async def follow(
    redis: Redis, channel: str, stop: asyncio.Event,
    on_message: Callable[[bytes], Awaitable[None]], *, what: str, poll_s: float = 1.0,
    on_subscribed: Callback | None = None, on_poll: Callback | None = None,
    on_lost: Callable[[], None] | None = None,
) -> None:
    """Deliver a pubsub channel's messages until `stop`, resubscribing with backoff when
    Redis goes away. `on_subscribed` runs after each (re)subscription (catch up on what was
    missed), `on_poll` at least every `poll_s`, `on_lost` when the subscription drops."""
    backoff_s = 0.1
    while not stop.is_set():
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                if on_subscribed is not None:
                    await on_subscribed()
                backoff_s = 0.1
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=poll_s)
                    if msg and msg.get("type") == "message":
                        await on_message(msg["data"])
                    if on_poll is not None:
                        await on_poll()
        except RedisError as exc:
            if on_lost is not None:
                on_lost()
            log.warning("%s lost (%s); retrying in %.1f s", what, exc, backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)
