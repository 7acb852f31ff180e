"""The learned per-replica concurrency limit with real replicas: no configuration, an
I/O-bound function takes many more concurrent requests than a CPU-bound one, and overload
waits in the activator's memory, counted as queued, every request answered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from lowtide import Client

from ..conftest import RunningCluster, wait_for

pytestmark = pytest.mark.integration


async def sleepy(x):
    import asyncio

    await asyncio.sleep(0.1)
    return x


def busy(x, ms=20):
    import time

    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return x


@contextmanager
def load(url: str, concurrency: int, body: dict[str, Any]) -> Iterator[list[int]]:
    """`concurrency` callers calling url in a loop, in a thread, until the block ends;
    yields the statuses seen so far."""
    statuses: list[int] = []
    stop = threading.Event()

    async def caller(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with session.post(url, json=body) as resp:
                await resp.read()
                statuses.append(resp.status)

    async def main() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            await asyncio.gather(*(caller(session) for _ in range(concurrency)))

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(150)


def replica_view(client: Client, name: str) -> dict[str, Any] | None:
    items = [r for r in client.status(name)["replicas"]["items"] if r["state"] == "ready"]
    return items[0] if items else None


def test_io_bound_takes_many_more_concurrent_requests_than_cpu_bound(
    client: Client, cluster: RunningCluster, unique_name: str
) -> None:
    learned = {}
    for kind, fn, body in (("io", sleepy, {"x": 1}), ("cpu", busy, {"x": 1})):
        ep = client.deploy(fn, name=f"{unique_name}-{kind}", min_replicas=1, max_replicas=1)
        assert ep(1) == 1
        with load(ep.url, 120, body) as statuses:
            if kind == "io":  # grows well past the initial limit, nobody said so
                wait_for(lambda name=ep.name: (replica_view(client, name) or {}).get(
                             "limit", 0) >= 40,
                         timeout_s=90, what="the I/O-bound replica's limit to grow",
                         interval_s=0.5)
            else:  # a few seconds of overload at its settled limit
                wait_for(lambda: len(statuses) >= 150, timeout_s=90, what="CPU-bound answers")
            view = replica_view(client, ep.name)
            assert view is not None
            learned[kind] = view
        assert statuses and set(statuses) == {200}
        ep.delete()
    assert learned["io"]["limit"] >= 40
    # one core's worth (the GIL); a snapshot under load may sit a few steps above it
    assert learned["cpu"]["limit"] <= 8
    assert learned["io"]["limit"] >= 5 * learned["cpu"]["limit"]
    assert learned["io"]["no_load_ms"] >= 90  # timers may fire a hair early
    assert 15 <= learned["cpu"]["no_load_ms"] < 100


def test_overload_waits_in_memory_answered_and_visible_as_queued(
    client: Client, cluster: RunningCluster, unique_name: str
) -> None:
    """Past the replica's limit requests wait in the activator's memory, not in the stream,
    and the platform counts them as queued with their age (what the autoscaler reads)."""
    ep = client.deploy(busy, name=unique_name, min_replicas=1, max_replicas=1)
    assert ep(0, ms=50) == 0
    limit = (replica_view(client, ep.name) or {})["limit"]

    def waiting_in_memory() -> dict[str, Any] | None:
        queue = client.status(ep.name)["queue"]
        return queue if queue["in_memory"] > 0 else None

    with load(ep.url, 6 * max(limit, 2), {"x": 1, "ms": 50}) as statuses:
        queue = wait_for(waiting_in_memory, 60, "requests waiting in the activator's memory")
    assert queue["queued"] >= queue["in_memory"] and queue["oldest_age_s"] > 0
    assert queue["depth"] == 0  # nothing went through the stream
    assert statuses and set(statuses) == {200}  # every one answered
