"""After Redis restarts, every pooled connection of a component is dead. The first command on
each must still succeed (the clients reconnect and try once more), instead of failing once
per pooled connection with Redis already back — which a user would see as a 503."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from lowtide._redis import async_redis, sync_redis
from lowtide._redisserver import free_port, start_redis_server


async def test_clients_survive_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    proc, url = start_redis_server(tmp_path / "a", port, appendonly=False)
    aclient, sclient = async_redis(url), sync_redis(url)
    try:
        # several pooled connections on the async client, one on the sync one
        await aclient.set("k", b"1")
        conns = [await aclient.connection_pool.get_connection() for _ in range(4)]
        for c in conns:
            await c.connect()
            await aclient.connection_pool.release(c)
        assert sclient.get("k") == b"1"

        proc.terminate()
        proc.wait(10)
        proc, _ = start_redis_server(tmp_path / "b", port, appendonly=False)

        for i in range(6):  # each may take a dead pooled connection first
            assert await aclient.set(f"a{i}", b"x") is True
        assert sclient.set("s", b"y") is True
        assert await aclient.get("s") == b"y"
    finally:
        await aclient.aclose()
        sclient.close()
        proc.terminate()
        proc.wait(10)


async def test_a_redis_that_is_gone_still_fails_fast(tmp_path: Path) -> None:
    """The retry is bounded: with nothing listening, the error comes within a second."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    aclient, sclient = async_redis(url), sync_redis(url)
    try:
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await aclient.get("k")
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            sclient.get("k")
    finally:
        await aclient.aclose()
        sclient.close()
