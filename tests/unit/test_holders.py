"""Which endpoints placement reads replica records of: those with desired replicas and
those that went to zero within the window, not every deployment (10,000 idle endpoints
made each replica start read 10,000 hashes)."""

from __future__ import annotations

import json

from lowtide import _keys
from lowtide._redis import async_redis
from lowtide.platform import state


async def test_replica_holders_follow_activity_not_deployments(own_redis_url: str) -> None:
    redis = async_redis(own_redis_url)
    now = 1_000_000.0
    names = [f"idle-{i}" for i in range(50)] + ["busy", "cooling", "long-gone"]
    try:
        await redis.sadd(_keys.DEPLOYMENTS, *names)
        await redis.sadd(_keys.ACTIVE, "busy")
        await redis.zadd(_keys.COOLING, {"cooling": now - 60,
                                         "long-gone": now - state.HOLDERS_WINDOW_S - 1})
        for name in ("busy", "cooling", "long-gone"):
            await redis.hset(_keys.replicas(name), f"r-{name}", json.dumps({
                "id": f"r-{name}", "endpoint": name, "version": 1, "host": "h1",
                "state": "stopping" if name != "busy" else "ready", "address": "x:1",
                "cpu": 1.0, "memory_bytes": 1, "gpus": []}))
        assert await state.replica_holders(redis, now) == ["busy", "cooling"]
        assert await redis.zscore(_keys.COOLING, "long-gone") is None  # pruned
        assert await redis.zscore(_keys.COOLING, "cooling") is not None
        everyone = await state.all_replicas(redis, everyone=True)
        assert set(everyone) == set(names)  # a lost host's replicas: none missed
    finally:
        await redis.delete(_keys.DEPLOYMENTS, _keys.ACTIVE, _keys.COOLING,
                           *(_keys.replicas(n) for n in names))
        await redis.aclose()
