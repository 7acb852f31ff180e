"""pick: power of two choices among healthy replicas that are below their limit."""

from __future__ import annotations

import asyncio
import random

import pytest

from lowtide.activator.routes import EndpointRoute, ReplicaRoute, pick


def endpoint(*replicas: ReplicaRoute) -> EndpointRoute:
    return EndpointRoute("double", 1, 60.0, {r.id: r for r in replicas})


def replica(rid: str, in_flight: int = 0, limit: int = 4, healthy: bool = True) -> ReplicaRoute:
    return ReplicaRoute(rid, f"127.0.0.1:{9000 + len(rid)}", limit, in_flight, healthy)


@pytest.mark.parametrize(
    "replicas",
    [
        pytest.param((), id="no-replicas"),
        pytest.param((replica("a", in_flight=4), replica("b", in_flight=4)), id="all-at-limit"),
        pytest.param((replica("a", in_flight=5, limit=4),), id="over-limit"),
        pytest.param((replica("a", healthy=False), replica("b", healthy=False)),
                     id="all-unhealthy"),
        pytest.param((replica("a", in_flight=4), replica("b", healthy=False)),
                     id="full-or-unhealthy"),
        pytest.param((replica("a", limit=0),), id="zero-limit"),
    ],
)
def test_pick_none_when_nothing_is_open(replicas: tuple[ReplicaRoute, ...]) -> None:
    assert pick(endpoint(*replicas), random.Random(0)) is None


@pytest.mark.parametrize(
    "others",
    [
        pytest.param((), id="alone"),
        pytest.param((replica("full", in_flight=4),), id="other-full"),
        pytest.param((replica("sick", healthy=False),), id="other-unhealthy"),
        pytest.param((replica("full", in_flight=4), replica("sick", healthy=False)), id="both"),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_pick_the_single_open_replica(others: tuple[ReplicaRoute, ...], seed: int) -> None:
    open_ = replica("open", in_flight=3)
    assert pick(endpoint(*others, open_), random.Random(seed)) is open_


@pytest.mark.parametrize("seed", range(20))
def test_pick_the_less_loaded_of_two(seed: int) -> None:
    busy, idle = replica("busy", in_flight=3), replica("idle", in_flight=1)
    assert pick(endpoint(busy, idle), random.Random(seed)) is idle


def test_pick_is_two_choices_not_global_least_loaded() -> None:
    loads = {"a": 0, "b": 1, "c": 2, "d": 3}
    ep = endpoint(*(replica(rid, in_flight=n) for rid, n in loads.items()))
    chosen = {pick(ep, random.Random(seed)).id for seed in range(50)}  # type: ignore[union-attr]
    assert "d" not in chosen  # the busiest loses every pair it is sampled into
    assert chosen == {"a", "b", "c"}  # but anyone else can win the pair it was sampled into


def test_pick_is_deterministic_for_a_seed_and_spreads_over_seeds() -> None:
    ep = endpoint(*(replica(rid) for rid in "abcd"))
    first = [pick(ep, random.Random(s)) for s in range(40)]
    again = [pick(ep, random.Random(s)) for s in range(40)]
    assert first == again
    assert {r.id for r in first if r is not None} == set("abcd")


def test_pick_does_not_count_the_request() -> None:
    a = replica("a", in_flight=1)
    pick(endpoint(a), random.Random(0))
    assert a.in_flight == 1  # the caller owns in-flight accounting


# ---- the view kept from Redis ---------------------------------------------------------
async def test_resync_and_route_events_keep_in_flight_counts_true(own_redis_url: str) -> None:
    """A request that started before a resync (or a route event) counts itself out of the
    replica's route when it ends; the view after the resync must see that, or the replica
    looks fuller at every resync until nothing goes to it directly."""
    import json

    from lowtide import _keys
    from lowtide._redis import async_redis
    from lowtide.activator.routes import Routes

    redis = async_redis(own_redis_url)
    try:
        await redis.hset(_keys.deployment("ep"),
                         mapping={"spec": json.dumps({"timeout_s": 30}), "version": 1})
        rec = {"id": "r1", "address": "127.0.0.1:9001", "state": "ready", "version": 1,
               "limit": 8}
        await redis.hset(_keys.replicas("ep"), "r1", json.dumps(rec))
        routes = Routes(redis)
        first = (await routes.get("ep")).replicas["r1"]  # type: ignore[union-attr]
        for change in (lambda: routes.refresh("ep"),  # the periodic resync
                       lambda: routes.invalidate("ep")):  # a route event
            first.in_flight += 3  # three requests start
            first.healthy = False  # and one of them found it unreachable
            await change()
            now = routes.endpoints["ep"].replicas["r1"]
            assert (now.in_flight, now.limit, now.healthy) == (3, 8, True)
            first.in_flight -= 3  # they end, on the route object they started on
            assert routes.endpoints["ep"].replicas["r1"].in_flight == 0
        # a replica that moved to another address is a new route
        await redis.hset(_keys.replicas("ep"), "r1",
                         json.dumps({**rec, "address": "127.0.0.1:9002"}))
        await routes.refresh("ep")
        assert routes.endpoints["ep"].replicas["r1"] is not first
    finally:
        await redis.aclose()


async def test_an_endpoint_without_replicas_leaves_the_view_when_unused(
        own_redis_url: str) -> None:
    """The table (and the resync's work) follows the endpoints in use."""
    import json

    from lowtide import _keys
    from lowtide._redis import async_redis
    from lowtide.activator import routes as routes_mod

    redis = async_redis(own_redis_url)
    try:
        for name in ("cold", "warm"):
            await redis.hset(_keys.deployment(name),
                             mapping={"spec": json.dumps({"timeout_s": 30}), "version": 1})
        await redis.hset(_keys.replicas("warm"), "r1", json.dumps(
            {"id": "r1", "address": "127.0.0.1:9001", "state": "ready", "version": 1}))
        routes = routes_mod.Routes(redis)
        assert await routes.get("cold") and await routes.get("warm")
        assert not routes.endpoints["cold"].unused(routes.endpoints["cold"].used_at + 1)
        later = routes.endpoints["cold"].used_at + routes_mod.UNUSED_FORGET_S + 1
        assert routes.endpoints["cold"].unused(later)
        assert not routes.endpoints["warm"].unused(later)  # it has a ready replica
        routes.endpoints["cold"].used_at -= routes_mod.UNUSED_FORGET_S + 1  # a minute ago
        stop = asyncio.Event()
        task = asyncio.create_task(routes.run(stop))  # subscribes, then resyncs
        for _ in range(200):
            if "cold" not in routes.endpoints:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert set(routes.endpoints) == {"warm"}
    finally:
        await redis.aclose()
