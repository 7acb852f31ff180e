"""The stream puller against a real Redis: deliveries whose reply never reached the replica
(the connection broke, Redis restarted) are served, not left pending on a live consumer."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from lowtide import _keys
from lowtide._protocol import JSON, QueuedRequest, Result
from lowtide._redis import async_redis
from lowtide.workers.puller import StreamPuller, ensure_group
from lowtide.workers.slots import Slots

pytestmark = pytest.mark.integration


async def test_an_entry_delivered_while_its_reply_was_lost_is_served(redis_url: str) -> None:
    redis = async_redis(redis_url)
    name = f"t-lost-{uuid.uuid4().hex[:8]}"
    stream = _keys.stream(name)
    await ensure_group(redis, stream)
    requests = [QueuedRequest(uuid.uuid4().hex, JSON, str(i).encode(), time.time() + 60, 10, "")
                for i in range(3)]
    for r in requests:
        await redis.xadd(stream, r.to_fields())
    consumer = "r-test.1"
    # Redis hands two entries to this consumer, but the replica never sees the reply
    await redis.xreadgroup(_keys.STREAM_GROUP, consumer, {stream: ">"}, count=2)

    served: list[str] = []

    async def handler(req: QueuedRequest) -> Result:
        served.append(req.id)
        return Result(200, JSON, req.body)

    puller = StreamPuller(redis, name, consumer, handler, Slots(1))  # one at a time
    stop = asyncio.Event()
    task = asyncio.create_task(puller.run(stop))
    try:
        deadline = time.monotonic() + 20
        while len(served) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sorted(served) == sorted(r.id for r in requests)
    for r in requests:
        stored = await redis.hgetall(_keys.result(r.id))
        assert Result.from_fields(stored).body == r.body
    assert (await redis.xpending(stream, _keys.STREAM_GROUP))["pending"] == 0
    await redis.aclose()
