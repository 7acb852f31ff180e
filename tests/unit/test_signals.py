"""The scaler's signals: CPU utilization from the agents' heartbeats, arrival rates from the
activators' counters (pure helpers; the Redis reads against a real redis-server)."""

from __future__ import annotations

import pytest

from lowtide import _keys
from lowtide._redis import async_redis
from lowtide.platform import state
from lowtide.platform.scaler import Scaler, ScalerSettings
from lowtide.platform.snapshot import cpu_utilization
from lowtide.platform.state import ReplicaRecord


def ready(*ids: str) -> list[ReplicaRecord]:
    return [ReplicaRecord(id=i, version=1, state="ready") for i in ids]


@pytest.mark.parametrize(
    ("replicas", "cores_used", "requested", "expected"),
    [
        (ready(), {}, 1.0, None),
        (ready("a"), {}, 1.0, None),  # not measured yet
        (ready("a"), {"a": 0.5}, 1.0, 0.5),
        (ready("a", "b"), {"a": 1.0, "b": 0.0}, 1.0, 0.5),
        (ready("a", "b"), {"a": 3.0}, 2.0, 1.5),  # only measured replicas count
        (ready("a"), {"a": 0.5, "gone": 9.0}, 0.5, 1.0),
    ],
)
def test_cpu_utilization(replicas: list[ReplicaRecord], cores_used: dict[str, float],
                         requested: float, expected: float | None) -> None:
    assert cpu_utilization(replicas, cores_used, requested) == expected


def test_replica_cpu_cores_merges_hosts() -> None:
    hosts = {"h1": {"load": {"replica_cpu_cores": {"a": 0.2}}},
             "h2": {"load": {"replica_cpu_cores": {"b": 1.5}}},
             "h3": {"load": {}}, "h4": {}}
    assert state.replica_cpu_cores(hosts) == {"a": 0.2, "b": 1.5}


async def test_request_stats_and_arrival_rate(redis_url: str) -> None:
    redis = async_redis(redis_url)
    name = "t-signals"
    try:
        await redis.delete(_keys.stats(name))
        assert await state.request_stats(redis, name) == state.RequestStats(0, 0.0)
        await redis.hset(_keys.stats(name), mapping={"requests": 10, "last_request_at": 5.5})
        assert await state.request_stats(redis, name) == state.RequestStats(10, 5.5)

        scaler = Scaler(redis, None, ScalerSettings())  # type: ignore[arg-type]
        assert scaler._arrival_rate(name, 10, 100.0) == 0.0  # the first look: no rate yet
        assert scaler._arrival_rate(name, 30, 100.5) == 0.0  # under a second: kept
        assert scaler._arrival_rate(name, 40, 102.0) == pytest.approx(15.0)
        assert scaler._arrival_rate(name, 40, 102.5) == pytest.approx(15.0)
        assert scaler._arrival_rate(name, 40, 103.0) == 0.0
    finally:
        await redis.delete(_keys.stats(name))
        await redis.aclose()
