"""Redis clients for the components, and the one reconnecting pubsub follower.

Every client has explicit timeouts, so a Redis that is gone (connection refused) or hung
(accepts connections, never answers) turns into a RedisError within seconds instead of a
wait forever; callers map that error to a 503 or log it and retry with `Backoff`. The async
pool waits for a free connection (instead of failing with "Too many connections" under a
burst), for a bounded time.

A command that meets a *connection* error is tried again twice, on a new connection, within
about 0.15 s: after Redis restarts, every pooled connection is dead, and without this the
first command on each would fail (a 503 to a user, with Redis already back). Timeouts are not
retried: a hung Redis would multiply every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)
T = TypeVar("T")

Callback = Callable[[], Awaitable[None]]

MAX_CONNECTIONS = 64
POOL_WAIT_S = 10.0
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 5.0  # above every blocking read we issue (XREADGROUP blocks 1 s)
# a subscription is how routes and answers arrive: try again at least every second
FOLLOW_BACKOFF_MAX_S = 1.0
RECONNECT_RETRIES = 2
RECONNECT_BACKOFF = ExponentialBackoff(cap=0.1, base=0.05)


def async_redis(url: str, max_connections: int = MAX_CONNECTIONS,
                timeout_s: float = SOCKET_TIMEOUT_S, pool_wait_s: float = POOL_WAIT_S
                ) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_wait_s,
        socket_connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s), socket_timeout=timeout_s,
        retry=AsyncRetry(RECONNECT_BACKOFF, RECONNECT_RETRIES,
                         supported_errors=(RedisConnectionError,)))
    return Redis(connection_pool=pool)


def sync_redis(url: str, timeout_s: float = SOCKET_TIMEOUT_S) -> SyncRedis:
    """A synchronous client (rq, the agent). rq raises its own connections' socket timeout
    above its blocking dequeue when this one is lower."""
    return SyncRedis.from_url(url, socket_connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
                              socket_timeout=timeout_s,
                              retry=Retry(RECONNECT_BACKOFF, RECONNECT_RETRIES,
                                          supported_errors=(RedisConnectionError,)))


@dataclass
class Backoff:
    """Exponential backoff for retry loops: `next_s()` after a failure, `reset()` after a
    success."""

    first_s: float = 0.1
    max_s: float = 5.0
    current_s: float = 0.0

    def next_s(self) -> float:
        self.current_s = self.first_s if self.current_s == 0 else min(self.current_s * 2,
                                                                       self.max_s)
        return self.current_s

    def reset(self) -> None:
        self.current_s = 0.0


async def until_done(op: Callable[[], Awaitable[T]], stop: asyncio.Event, *, what: str,
                     max_s: float = 2.0) -> T | None:
    """Run `op` until it gets through Redis, retrying with backoff while Redis is away
    (logged once per outage), or until `stop` (None). For a component's start-up steps: a
    platform that met Redis restarting during its own start used to exit."""
    backoff = Backoff(max_s=max_s)
    while not stop.is_set():
        try:
            result = await op()
        except (RedisError, OSError) as exc:
            if backoff.current_s == 0:
                log.warning("%s: Redis is not answering (%s); retrying until it does",
                            what, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_s())
            continue
        if backoff.current_s:
            log.info("%s: Redis answers again", what)
        return result
    return None


async def follow(
    redis: Redis, channel: str, stop: asyncio.Event,
    on_message: Callable[[bytes], Awaitable[None]], *, what: str, poll_s: float = 1.0,
    on_subscribed: Callback | None = None, on_poll: Callback | None = None,
    on_lost: Callable[[], None] | None = None,
) -> None:
    """Deliver a pubsub channel's messages until `stop`, resubscribing with backoff when
    Redis goes away. `on_subscribed` runs after each (re)subscription (catch up on what was
    missed), `on_poll` at least every `poll_s`, `on_lost` when the subscription drops.

    Any other error of a callback is logged with its stack and the follower starts over
    (with backoff): it never dies silently and never stops following."""
    backoff = Backoff(max_s=FOLLOW_BACKOFF_MAX_S)
    while not stop.is_set():
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                if on_subscribed is not None:
                    await on_subscribed()
                backoff.reset()
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=poll_s)
                    if msg and msg.get("type") == "message":
                        await on_message(msg["data"])
                    if on_poll is not None:
                        await on_poll()
        except RedisError as exc:
            wait_s = backoff.next_s()
            log.warning("%s lost (%s); retrying in %.1f s", what, exc, wait_s)
        except Exception:
            wait_s = backoff.next_s()
            log.exception("%s failed; starting over in %.1f s", what, wait_s)
        else:
            continue
        if on_lost is not None:
            on_lost()
        await pause(stop, wait_s)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds`, or less when `stop` is set meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
