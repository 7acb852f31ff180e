"""The dashboard's series: latency buckets and quantiles, downsampling with a fake clock, and
the recorder against a real Redis (bounded, survives a new recorder, gone with the endpoint)."""

from __future__ import annotations

import json

import pytest

from lowtide import _keys, _latency
from lowtide._redis import async_redis
from lowtide.platform import series
from lowtide.platform.overview import endpoint_state, last_failure
from lowtide.platform.policy import Decision, Observation
from lowtide.platform.series import Accumulator, SeriesRecorder, Tier


@pytest.mark.parametrize("seconds", [0.00005, 0.001, 0.0123, 0.25, 1.0, 7.5, 120.0])
def test_a_bucket_holds_its_latency_within_one_growth_step(seconds: float) -> None:
    index = _latency.bucket_of(seconds)
    assert _latency.upper_s(index) >= seconds * (1 - 1e-9)
    assert index == 0 or _latency.upper_s(index - 1) < seconds


def test_quantiles_of_counted_latencies() -> None:
    counts: dict[int, int] = {}
    for ms in range(1, 101):  # 1..100 ms, one each
        b = _latency.bucket_of(ms / 1000)
        counts[b] = counts.get(b, 0) + 1
    p50, p99 = _latency.quantile(counts, 0.5), _latency.quantile(counts, 0.99)
    assert p50 is not None and 0.050 <= p50 <= 0.050 * _latency.GROWTH
    assert p99 is not None and 0.099 <= p99 <= 0.099 * _latency.GROWTH
    assert _latency.quantile({}, 0.5) is None


def test_delta_between_reads_and_after_a_reset() -> None:
    assert _latency.delta({1: 5, 2: 3}, {1: 2, 2: 3}) == {1: 3}
    assert _latency.delta({1: 2}, {1: 9}) == {1: 2}  # the counter restarted


def look(**kw: float | None) -> dict[str, float | None]:
    base: dict[str, float | None] = {"rps": 0.0, "ready": 0, "desired": 0, "queued": 0,
                                     "oldest_wait_s": 0.0, "in_flight": 0, "cpu": None,
                                     "gpu": None, "limit": 16}
    return {**base, **kw}


def test_a_bucket_averages_rates_keeps_peaks_and_the_last_limit() -> None:
    acc = Accumulator((Tier("t", 10.0, 5),))
    closed = []
    for i, (rps, ready, limit) in enumerate([(2.0, 1, 8), (4.0, 3, 12), (6.0, 2, 10)]):
        closed += acc.add(100.0 + i, look(rps=rps, ready=ready, limit=limit, cpu=0.5))
    acc.add_latency(103.0, {_latency.bucket_of(0.01): 99, _latency.bucket_of(1.0): 1})
    assert closed == []
    (_tier, point), = acc.add(110.0, look())  # the next bucket closes this one
    assert point["t"] == 100.0
    assert (point["rps"], point["ready"], point["limit"], point["cpu"]) == (4.0, 3, 10, 0.5)
    assert point["gpu"] is None and point["calls"] == 100
    assert 10 <= point["p50_ms"] <= 12 and 10 <= point["p99_ms"] <= 12
    assert acc.partial("t")["t"] == 110.0


def test_each_resolution_has_its_own_buckets() -> None:
    acc = Accumulator()
    closed = []
    for s in range(0, 250):
        closed += acc.add(1000.0 * 240 + s, look(rps=1.0))
    steps = {}
    for tier, _p in closed:
        steps[tier.name] = steps.get(tier.name, 0) + 1
    assert steps == {"10m": 124, "1h": 24, "24h": 1}


def test_columns_are_ordered_and_deduplicated() -> None:
    cols = series.columns([{"t": 4, "rps": 2}, {"t": 2, "rps": 1}, {"t": 4, "rps": 3}])
    assert cols["t"] == [2, 4] and cols["rps"] == [1, 3] and set(cols) == set(series.COLUMNS)


@pytest.mark.parametrize(("desired", "ready", "starting", "unplaced", "failure", "state"), [
    (0, 0, 0, None, None, "cold"),
    (2, 0, 2, None, None, "starting"),
    (3, 1, 2, None, None, "scaling"),
    (1, 2, 0, None, None, "scaling"),
    (2, 2, 0, None, None, "warm"),
    (1, 0, 0, "needs 1 GPU; no host has a free GPU", None, "failing"),
    (1, 0, 1, None, "replica r-1 failed to start: boom", "failing"),
    (1, 1, 0, None, "replica r-1 failed to start: boom", "warm"),
])
def test_endpoint_state(desired: int, ready: int, starting: int, unplaced: str | None,
                        failure: str | None, state: str) -> None:
    assert endpoint_state(desired, ready, starting, unplaced, failure).state == state


def test_only_a_recent_failed_start_counts() -> None:
    events = [{"at": 990.0, "kind": "replica", "reason": "replica r-2 failed: exited"},
              {"at": 500.0, "kind": "replica", "reason": "replica r-1 failed: exited"}]
    assert last_failure(events, 1000.0) == "replica r-2 failed: exited"
    assert last_failure(events, 990.0 + 121) is None


def obs(rate: float) -> Observation:
    return Observation(desired=1, ready=1, starting=0, queued=0, oldest_wait_s=0.0,
                       in_flight=2, last_activity_at=0.0, limit=8, arrival_rate_per_s=rate)


async def test_the_recorder_writes_bounded_points_that_a_new_recorder_reads(
        own_redis_url: str) -> None:
    redis = async_redis(own_redis_url)
    try:
        await redis.hset(_keys.deployment("chart"), "spec", "{}")
        await redis.hset(_keys.latency("chart"), mapping={"10": 5})
        rec = SeriesRecorder(redis)
        t0 = 1_000_000.0
        for s in range(0, 700):  # ~350 closed 2 s buckets: kept to 300
            rec.observe("chart", obs(3.0), Decision(1, "steady", ""), t0 + s)
            if s % 50 == 0:
                await redis.hincrby(_keys.latency("chart"), "20", 7)
                await rec.step(t0 + s)
        await rec.step(t0 + 700)
        assert await redis.llen(_keys.series("chart", "10m")) == 300
        first = json.loads(await redis.lindex(_keys.series("chart", "10m"), 0))
        assert first["rps"] == 3.0 and first["limit"] == 8
        assert rec.recent("chart")["rps"] == 3.0
        fresh = await SeriesRecorder(redis).read("chart", "1h")  # a restarted platform
        assert len(fresh["columns"]["t"]) == 70 and fresh["step_s"] == 10.0
        assert sum(c or 0 for c in fresh["columns"]["calls"]) == 7 * 13  # not the first read
        await redis.delete(_keys.deployment("chart"))
        await series.delete(redis, "chart")
        rec.observe("chart", obs(3.0), Decision(1, "steady", ""), t0 + 800)
        await rec.step(t0 + 800)
        assert not await redis.exists(_keys.series("chart", "10m"))  # deleted stays deleted
    finally:
        await redis.aclose()


async def test_an_endpoint_at_zero_costs_nothing_per_step_and_stays_charted(
        own_redis_url: str) -> None:
    """Busy for a minute, then at zero and never looked at again: from then on no step
    reads or adds anything for it; its open buckets close with the seconds at zero counted
    (the 4-minute bucket's mean rate is a quarter of the busy minute's), and the chart
    still shows it at zero up to now."""
    redis = async_redis(own_redis_url)
    now = [0.0]
    try:
        await redis.hset(_keys.deployment("quiet"), "spec", "{}")
        rec = SeriesRecorder(redis, clock=lambda: now[0])
        t0 = 2_000_160.0  # a 240 s (24h tier) boundary
        zero = Observation(desired=0, ready=0, starting=0, queued=0, oldest_wait_s=0.0,
                           in_flight=0, last_activity_at=0.0, limit=8)
        for s in range(60):
            rec.observe("quiet", obs(2.0), Decision(1, "steady", ""), t0 + s)
            await rec.step(t0 + s)
        rec.observe("quiet", zero, Decision(0, "steady", ""), t0 + 60)
        for i in range(1000):  # deployed, looked at once, at zero since
            rec.observe(f"idle-{i}", zero, Decision(0, "steady", ""), t0 + 60)
        for s in range(61, 400):
            await rec.step(t0 + s)
            if s == 70:
                assert rec.stepped() == 0  # parked: nothing is read or added per step
                assert rec.charted() == 1001
        assert "quiet" not in rec.looks() and not rec.looks()  # closed and dropped
        assert rec.charted() == 0
        day = [json.loads(p) for p in await redis.lrange(_keys.series("quiet", "24h"), 0, -1)]
        assert len(day) == 1 and day[0]["t"] == t0 and 0.45 < day[0]["rps"] < 0.55
        stored = await redis.llen(_keys.series("quiet", "10m"))
        assert stored <= 32  # the busy minute's buckets, not one per step at zero
        now[0] = t0 + 400
        chart = (await rec.read("quiet", "10m"))["columns"]
        assert len(chart["t"]) >= 195 and chart["t"][-1] >= t0 + 396
        after = [i for i, t in enumerate(chart["t"]) if t >= t0 + 64]
        assert after and all(chart["rps"][i] == 0 and chart["ready"][i] == 0 for i in after)
        assert chart["rps"][0] == 2.0  # the busy minute is still there
        rec.observe("quiet", obs(1.0), Decision(1, "steady", ""), t0 + 400)  # woken again
        assert rec.looks()["quiet"]["rps"] == 1.0
    finally:
        await redis.delete(_keys.deployment("quiet"), _keys.series("quiet", "10m"),
                           _keys.series("quiet", "1h"), _keys.series("quiet", "24h"))
        await redis.aclose()


def test_at_zero_fill_follows_zero_points_only() -> None:
    tier = series.Tier("t", 10.0, 6)
    busy = {"t": 100.0, "rps": 1.0, "ready": 1, "desired": 1, "queued": 0, "in_flight": 1,
            "limit": 4}
    quiet = {**busy, "t": 110.0, "rps": 0.0, "ready": 0, "desired": 0, "in_flight": 0}
    again = {**busy, "t": 150.0}
    filled = series.at_zero_filled([busy, quiet, again], tier, 175.0, still=False)
    assert [p["t"] for p in filled] == [100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
    assert [p["rps"] for p in filled] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    # a gap after a point that was not at zero stays a gap (the platform was away)
    assert [p["t"] for p in series.at_zero_filled([busy, again], tier, 175.0, True)] == \
        [100.0, 150.0]
    # after the last point at zero, up to now while the recorder is not looking
    tail = series.at_zero_filled([quiet], tier, 175.0, still=True)
    assert [p["t"] for p in tail] == [110.0, 120.0, 130.0, 140.0, 150.0, 160.0]
    assert all(p["desired"] == 0 and p["limit"] == 4 for p in tail)
