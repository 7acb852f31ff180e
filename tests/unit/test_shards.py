"""Shard leases between platform instances (a real redis-server of this module, short
leases; the takeover with real processes is tests/integration/test_shards.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lowtide._redis import async_redis
from lowtide.platform import shards
from lowtide.platform.shards import Shards, shard_of

LEASE_S = 0.3


@pytest.fixture
async def redis(own_redis_url: str) -> AsyncIterator[Any]:
    redis = async_redis(own_redis_url)
    await redis.flushall()
    yield redis
    await redis.aclose()


async def test_a_second_instance_gets_its_share_and_a_silent_one_is_taken_over(
        redis: Any) -> None:
    a, b = Shards(redis, "a", lease_s=LEASE_S), Shards(redis, "b", lease_s=LEASE_S)
    gained, _ = await a.claim()
    assert len(a.owned) == 16 and {g.before for g in gained} == {""}
    assert (await b.claim())[0] == [] and not b.owned  # all held: b waits
    _, lost = await a.claim()  # two live instances: a gives back what is over its share
    assert len(a.owned) == 8 and len(lost) == 8
    gained, _ = await b.claim()
    assert len(b.owned) == 8 and not a.owned & b.owned
    assert "handed over to platform b (by a, rebalancing)" in gained[0].describe("b")
    name = next(f"ep-{i}" for i in range(100) if shard_of(f"ep-{i}") in a.owned)
    assert a.owns(name) and not b.owns(name)

    await asyncio.sleep(LEASE_S + 0.1)  # a stops renewing (killed)
    gained, _ = await b.claim()
    assert len(b.owned) == 16 and b.owns(name)
    taken = [g for g in gained if g.before == "a"]
    assert len(taken) == 8
    assert "taken over by platform b: a stopped renewing its lease" in taken[0].describe("b")
    view = await shards.describe(redis)
    assert [(i["id"], len(i["shards"])) for i in view["instances"]] == [("b", 16)]


async def test_a_clean_shutdown_hands_the_shards_over_at_once(redis: Any) -> None:
    a, b = Shards(redis, "a", lease_s=60.0), Shards(redis, "b", lease_s=60.0)
    await a.claim()
    await b.claim()
    await a.release()
    gained, _ = await b.claim()
    assert len(b.owned) == 16 and {g.before for g in gained} == {"released:a"}


async def test_an_instance_cut_off_from_redis_stops_scaling_after_its_lease() -> None:
    from lowtide._redisserver import free_port

    now = [0.0]
    cut = async_redis(f"redis://127.0.0.1:{free_port()}")  # nobody listens there
    s = Shards(cut, "a", lease_s=LEASE_S, clock=lambda: now[0])
    s.owned, s._renewed_at = frozenset({1, 2}), 0.0
    try:
        with pytest.raises(Exception):  # noqa: B017 - the Redis error, within the lease
            await s.claim()
        assert s.owned == {1, 2}
        now[0] = LEASE_S + 0.1
        assert await s.claim() == ([], [1, 2])
        assert not s.owned
    finally:
        await cut.aclose()


def test_fresh_shards_are_logged_as_spans() -> None:
    from lowtide.platform.scaler import _spans

    assert _spans(list(range(16))) == "0-15"
    assert _spans([5, 0, 1, 2]) == "0-2, 5"
    assert _spans([1, 3, 4, 10, 11, 12]) == "1, 3-4, 10-12"
