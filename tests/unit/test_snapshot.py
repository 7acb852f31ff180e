"""The scaling loop's batched reads (a real redis-server of this module alone)."""

from __future__ import annotations

import json
import time

from lowtide import _keys
from lowtide._redis import async_redis
from lowtide._spec import DeploymentSpec
from lowtide.platform.snapshot import read_batch
from lowtide.platform.state import ReplicaRecord


async def test_one_batch_reads_deployments_replicas_queues_and_waiters(
        own_redis_url: str) -> None:
    redis = async_redis(own_redis_url)
    now = time.time()
    try:
        await redis.flushall()
        for name in ("busy", "idle"):
            await redis.hset(_keys.deployment(name), mapping={
                "spec": json.dumps(DeploymentSpec(name=name).to_dict()), "version": 1,
                "created_at": 1.0, "updated_at": 2.0, "desired": 1 if name == "busy" else 0})
            await redis.xgroup_create(_keys.stream(name), _keys.STREAM_GROUP, id="$",
                                      mkstream=True)
        r = ReplicaRecord(id="r-1", version=1, state="ready", host="h", created_at=5.0)
        await redis.hset(_keys.replicas("busy"), "r-1", r.to_json())
        await redis.set(_keys.replica_alive("r-1"), json.dumps({"in_flight": 2}))
        for i in range(3):
            await redis.xadd(_keys.stream("busy"), {"id": f"q{i}"})
        await redis.xreadgroup(_keys.STREAM_GROUP, "c", {_keys.stream("busy"): ">"}, count=1)
        await redis.hset(_keys.waiting("busy"), "act-1",
                         json.dumps({"n": 4, "oldest_s": 0.5, "at": now}))
        await redis.hset(_keys.stats("busy"), mapping={"requests": 9, "last_request_at": 7})

        batch = await read_batch(redis, ["busy", "idle", "gone"], now)
        busy, idle, gone = (batch.endpoints[n] for n in ("busy", "idle", "gone"))
        assert busy.dep is not None and busy.dep.desired == 1
        assert [(x.id, x.alive) for x in busy.replicas] == [("r-1", {"in_flight": 2})]
        assert (busy.queue.depth, busy.queue.queued, busy.queue.in_memory) == (3, 2 + 4, 4)
        assert busy.queue.oldest_wait_s >= 0.5
        assert (busy.stats.requests, busy.stats.last_request_at) == (9, 7.0)
        assert idle.dep is not None and not idle.replicas and idle.queue.queued == 0
        assert gone.dep is None
    finally:
        await redis.aclose()
