"""Pages of `GET /v1/deployments` (a real redis-server of this module alone)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from lowtide import _keys
from lowtide._redis import async_redis
from lowtide._spec import DeploymentSpec
from lowtide.platform import listing
from lowtide.platform.state import ReplicaRecord

NAMES = [f"ep-{i:04d}" for i in range(250)]
ACTIVE = {n for i, n in enumerate(NAMES) if i % 7 == 0}


@pytest.fixture
async def redis(own_redis_url: str) -> AsyncIterator[object]:
    redis = async_redis(own_redis_url)
    await redis.flushall()
    async with redis.pipeline(transaction=False) as pipe:
        for name in NAMES:
            pipe.sadd(_keys.DEPLOYMENTS, name)  # as before the name index
            pipe.hset(_keys.deployment(name), mapping={
                "spec": json.dumps(DeploymentSpec(name=name).to_dict()), "version": 1,
                "created_at": 1.0, "updated_at": 2.0, "desired": 1 if name in ACTIVE else 0})
        pipe.sadd(_keys.ACTIVE, *sorted(ACTIVE))
        await pipe.execute()
    yield redis
    await redis.aclose()


async def all_pages(redis: object, limit: int, only: str | None) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        names, cursor = await listing.page(redis, cursor, limit, only)  # type: ignore[arg-type]
        pages.append(names)
        if cursor is None:
            return pages


async def test_pages_walk_every_name_once_in_order(redis: object) -> None:
    assert await listing.ensure_index(redis) == 250  # type: ignore[arg-type]
    assert await listing.ensure_index(redis) == 0  # type: ignore[arg-type]
    pages = await all_pages(redis, 100, None)
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [n for p in pages for n in p] == NAMES


@pytest.mark.parametrize(("only", "want"), [
    ("active", sorted(ACTIVE)), ("idle", [n for n in NAMES if n not in ACTIVE])])
async def test_pages_of_one_state(redis: object, only: str, want: list[str]) -> None:
    await listing.ensure_index(redis)  # type: ignore[arg-type]
    pages = await all_pages(redis, 16, only)
    assert [n for p in pages for n in p] == want
    assert all(len(p) == 16 for p in pages[:-1])


async def test_a_page_of_summaries(redis: object) -> None:
    name = NAMES[0]  # active
    ready = ReplicaRecord(id="r-1", version=1, state="ready", host="h")
    stale = ReplicaRecord(id="r-0", version=0, state="stopping", host="h")
    await redis.hset(_keys.replicas(name), mapping={  # type: ignore[attr-defined]
        "r-1": ready.to_json(), "r-0": stale.to_json()})
    await redis.set(_keys.replica_alive("r-1"), json.dumps({"in_flight": 0}))  # type: ignore[attr-defined]
    await redis.xadd(_keys.stream(name), {"id": "x"})  # type: ignore[attr-defined]
    items = await listing.summaries(redis, [name, NAMES[1], "deleted"],  # type: ignore[arg-type]
                                    lambda n: f"http://a/fn/{n}", time.time())
    assert [i["name"] for i in items] == [name, NAMES[1]]
    first = items[0]
    assert first["state"] == "active" and items[1]["state"] == "idle"
    assert first["replicas"] == {"ready": 1, "desired": 1, "starting": 0, "stopping": 1}
    assert first["queue"] == {"depth": 1} and first["url"] == f"http://a/fn/{name}"
