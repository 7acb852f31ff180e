"""A replica keeps nothing per answered request. (BentoML's timeout middleware kept each
request's future, context and tracing span alive for the whole `traffic.timeout`, an hour:
about 5 KB per request, and a tail latency that grew with the collector's work.)"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import psutil
import pytest
from redis import Redis

from lowtide import Client, _keys

pytestmark = pytest.mark.integration

WARMUP = 500
MEASURED = 4000
LEAK_BYTES_PER_REQUEST = 5000  # what the middleware kept
ALLOWED_GROWTH = MEASURED * LEAK_BYTES_PER_REQUEST // 3


async def _hammer(url: str, n: int, concurrency: int = 4) -> None:
    left = iter(range(n))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in left:
            while True:
                async with session.post(url, json={"x": i}) as resp:
                    if resp.status == 503:  # over the replica's learned limit: nothing ran
                        assert (await resp.json())["error"] == "busy"
                        await asyncio.sleep(0.001)
                        continue
                    assert resp.status == 200, await resp.text()
                    assert await resp.json() == 2 * i
                    break

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def test_a_replica_does_not_grow_with_the_requests_it_answered(
    client: Client, redis: Redis, unique_name: str
) -> None:
    ep = client.deploy(lambda x: x * 2, name=unique_name, min_replicas=1, max_replicas=1)
    assert ep(1) == 2
    replica = client.status(unique_name)["replicas"]["items"][0]
    worker = psutil.Process(json.loads(redis.get(_keys.replica_alive(replica["id"])))["pid"])
    # BentoML's per-request tracing spans are off unless the agent's environment asks
    assert worker.environ().get("OTEL_SDK_DISABLED") == "true"
    url = f"http://{replica['address']}/lt/invoke"
    await _hammer(url, WARMUP)  # buffers, pools and caches reach their size
    before = worker.memory_info().rss
    await _hammer(url, MEASURED)
    grown = worker.memory_info().rss - before
    assert grown < ALLOWED_GROWTH, (
        f"the replica grew by {grown / 1e6:.1f} MB over {MEASURED} requests "
        f"({grown / MEASURED:.0f} bytes per request)")
    ep.delete()
