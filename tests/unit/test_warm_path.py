"""The pieces of the warm path that decide without I/O: the activator's view of a replica's
limit, picking, the replica's slots and its limiter settings, the per-replica metrics."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lowtide.activator.metrics import RoutesCollector
from lowtide.activator.routes import EndpointRoute, ReplicaRoute, Routes, pick
from lowtide.activator.settings import ActivatorSettings
from lowtide.limiter import LIMIT_HEADER, NO_LOAD_HEADER
from lowtide.workers.replica_settings import _limiter_config
from lowtide.workers.slots import Slots

_LIMIT, _NO_LOAD = LIMIT_HEADER.lower(), NO_LOAD_HEADER.lower()  # as upstream.Response has them


@pytest.mark.parametrize(("headers", "limit", "no_load_ms"), [
    ({_LIMIT: "37", _NO_LOAD: "20.5"}, 37, 20.5),
    ({_LIMIT: "1"}, 1, None),
    ({_LIMIT: "0"}, 4, None),        # nonsense is ignored
    ({_LIMIT: "-3"}, 4, None),
    ({_LIMIT: "many", _NO_LOAD: "x"}, 4, None),
    ({}, 4, None),                          # an older replica: keep what we had
])
def test_replica_route_observes_reported_limit(headers: dict[str, str], limit: int,
                                               no_load_ms: float | None) -> None:
    r = ReplicaRoute("r1", "127.0.0.1:1", limit=4)
    r.observe(headers)
    assert (r.limit, r.no_load_ms) == (limit, no_load_ms)


def endpoint(*replicas: ReplicaRoute) -> EndpointRoute:
    return EndpointRoute("ep", 1, 60.0, {r.id: r for r in replicas})


def test_pick_skips_replicas_at_their_limit() -> None:
    full = ReplicaRoute("a", "h:1", limit=2, in_flight=2)
    room = ReplicaRoute("b", "h:2", limit=300, in_flight=250)
    rng = random.Random(0)
    assert {pick(endpoint(full, room), rng).id for _ in range(50)} == {"b"}  # type: ignore[union-attr]
    assert pick(endpoint(full)) is None


def test_pick_prefers_fewer_outstanding() -> None:
    busy = ReplicaRoute("a", "h:1", limit=100, in_flight=50)
    idle = ReplicaRoute("b", "h:2", limit=100, in_flight=0)
    assert pick(endpoint(busy, idle), random.Random(1)) is idle


def test_slots_follow_a_moving_limit() -> None:
    slots = Slots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()  # a direct call over the limit is refused
    slots.set_limit(3)
    assert slots.free() == 1 and slots.try_acquire()
    slots.set_limit(1)  # shrinking does not evict: in-flight drains below the limit
    assert slots.in_use == 3 and slots.free() == 0
    with pytest.raises(ValueError, match="at least 1"):
        slots.set_limit(0)


@pytest.mark.parametrize(("raw", "fixed"), [(None, None), ("", None), ("1", 1), ("1000", 1000)])
def test_replica_limiter_is_learned_unless_fixed(raw: str | None, fixed: int | None) -> None:
    config = _limiter_config(raw)
    if fixed is None:
        assert config.min_limit < config.max_limit
    else:
        assert config.min_limit == config.initial_limit == config.max_limit == fixed


@pytest.mark.parametrize("raw", ["0", "-1", "lots", "20000"])
def test_fixed_concurrency_is_validated(raw: str) -> None:
    with pytest.raises(RuntimeError, match="LOWTIDE_FIXED_CONCURRENCY"):
        _limiter_config(raw)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"workers": 0}, "workers=0"),
    ({"workers": 65}, "workers=65"),
    ({"workers": 2, "port": 0}, "fixed port"),
])
def test_activator_workers_are_validated(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActivatorSettings(redis_url="redis://x", **kwargs)  # type: ignore[arg-type]


def test_metrics_show_each_replica_and_forget_gone_ones() -> None:
    routes = Routes(redis=None)  # type: ignore[arg-type]  # never touched by the collector
    r = ReplicaRoute("r1", "h:1", limit=37, in_flight=5, no_load_ms=20.0, requests=9)
    routes.endpoints["ep"] = endpoint(r)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoutesCollector(routes, {"ep": 3}))
    text = generate_latest(registry).decode()
    assert 'lowtide_replica_limit{endpoint="ep",replica="r1"} 37.0' in text
    assert 'lowtide_replica_in_flight{endpoint="ep",replica="r1"} 5.0' in text
    assert 'lowtide_replica_no_load_latency_seconds{endpoint="ep",replica="r1"} 0.02' in text
    assert 'lowtide_replica_direct_requests_total{endpoint="ep",replica="r1"} 9.0' in text
    assert 'lowtide_endpoint_buffered_waiting{endpoint="ep"} 3.0' in text
    routes.endpoints["ep"].replicas.clear()
    assert 'replica="r1"' not in generate_latest(registry).decode()
