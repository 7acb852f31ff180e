"""Redis clients for the components: a bounded pool that waits for a free connection
(instead of failing with "Too many connections" under a burst)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

MAX_CONNECTIONS = 64
POOL_WAIT_S = 10.0


def async_redis(url: str, max_connections: int = MAX_CONNECTIONS) -> Redis:
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                           timeout=POOL_WAIT_S)
    return Redis(connection_pool=pool)
