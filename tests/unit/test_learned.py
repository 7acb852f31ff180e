"""The autoscaler's learned state survives a restart: saved, restored, same decisions."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest

from lowtide import _keys
from lowtide._redis import async_redis
from lowtide._redisserver import free_port
from lowtide.platform.keepalive import (
    DailyArrivals,
    IdleGaps,
    KeepAliveSettings,
    LearnedStateError,
)
from lowtide.platform.policy import (
    LEARNED_VERSION,
    Autoscaler,
    AutoscalerSettings,
    Observation,
)
from lowtide.platform.scaler import Scaler, ScalerSettings
from lowtide.platform.settings import PlatformSettings

DAY_S = 86400.0
MIDNIGHT = 19_000 * DAY_S  # a UTC midnight, the fake clock's start


@dataclass
class Endpoint:
    """Feeds each decision back as the next observation, as the scaler does; the requests
    that arrive within a tick are served within it (queued at zero, in flight otherwise)."""

    policy: Autoscaler
    desired: int = 0
    last_request: float = 0.0
    last_activity: float = MIDNIGHT

    def run(self, arrivals: list[tuple[float, int]], start: float, end: float,
            tick_s: float) -> list[tuple[Any, ...]]:
        pending = sorted(a for a in arrivals if start <= a[0] < end)
        out, t, i = [], start, 0
        while t < end:
            n = 0
            while i < len(pending) and pending[i][0] < t + tick_s:
                self.last_request = self.last_activity = pending[i][0]
                n, i = n + pending[i][1], i + 1
            seen = Observation(desired=self.desired, ready=self.desired, starting=0,
                               queued=0 if self.desired else n, oldest_wait_s=0.0,
                               in_flight=n if self.desired else 0,
                               last_activity_at=self.last_activity, limit=4,
                               last_request_at=self.last_request, arrival_rate_per_s=n / tick_s)
            d = self.policy.decide(seen, t)
            out.append((t, d.desired, d.kind, d.reason, self.policy.keep_alive(),
                        self.policy.expected(t)))
            self.desired = d.desired
            t += tick_s
        return out


def round_trip(policy: Autoscaler) -> Autoscaler:
    """What a restarted platform has: the saved JSON, read back into a fresh policy."""
    restored = Autoscaler(policy.settings)
    restored.restore(json.loads(json.dumps(policy.learned())))
    return restored


def every(period_s: float, start: float, end: float, size: int = 1) -> list[tuple[float, int]]:
    out, t = [], start
    while t < end:
        out.append((t, size))
        t += period_s
    return out


def office_days(days: int) -> list[tuple[float, int]]:
    """A request every 10 minutes from 06:00 to 20:00 UTC; idle nights."""
    return [a for d in range(days)
            for a in every(600, MIDNIGHT + d * DAY_S + 6 * 3600, MIDNIGHT + d * DAY_S + 20 * 3600)]


def irregular() -> list[tuple[float, int]]:
    t, out = MIDNIGHT, []
    for gap_s in (100, 3000, 250, 1700, 4000, 500, 2200, 900, 1300):
        out.append((t, 1))
        t += gap_s
    return out


# (name, arrivals, restart at, run until, tick): each restart falls in an idle period over a
# stable window long, so the windows that are not saved hold nothing either way
SCENARIOS = [
    ("timer every 15 min: pre-warm learned", every(900, MIDNIGHT, MIDNIGHT + 12 * 900),
     MIDNIGHT + 7 * 900 + 450, MIDNIGHT + 12 * 900, 10.0),
    ("irregular gaps: fixed window", irregular(), MIDNIGHT + 6000, MIDNIGHT + 16000, 10.0),
    ("batches of 12 at limit 4: instance keep-alive", [(MIDNIGHT, 12), (MIDNIGHT + 300, 12),
                                                      (MIDNIGHT + 900, 12)],
     MIDNIGHT + 500, MIDNIGHT + 2500, 10.0),
    ("office hours: daily pre-warm", office_days(6), MIDNIGHT + 4 * DAY_S + 3 * 3600,
     MIDNIGHT + 5 * DAY_S + 12 * 3600, 60.0),
    ("restart before any traffic", every(900, MIDNIGHT + 3600, MIDNIGHT + 3 * 3600),
     MIDNIGHT + 600, MIDNIGHT + 3 * 3600, 10.0),
]


@pytest.mark.parametrize(("arrivals", "restart_at", "end", "tick_s"),
                         [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_a_restored_policy_decides_as_the_one_that_was_saved(
        arrivals: list[tuple[float, int]], restart_at: float, end: float, tick_s: float) -> None:
    before = Endpoint(Autoscaler())
    before.run(arrivals, MIDNIGHT, restart_at, tick_s)
    after = copy.copy(before)
    after.policy = round_trip(before.policy)
    assert after.policy.keep_alive() == before.policy.keep_alive()
    assert after.policy.expected(restart_at) == before.policy.expected(restart_at)
    went_on = before.run(arrivals, restart_at, end, tick_s)
    assert after.run(arrivals, restart_at, end, tick_s) == went_on
    assert len({d[1] for d in went_on}) > 1  # the scenario did scale after the restart


def test_the_scenarios_need_what_was_learned() -> None:
    """A fresh policy (what a restart gave before) decides differently: the test can fail."""
    for _, arrivals, restart_at, end, tick_s in SCENARIOS[:4]:
        before = Endpoint(Autoscaler())
        before.run(arrivals, MIDNIGHT, restart_at, tick_s)
        fresh = copy.copy(before)
        fresh.policy = Autoscaler()
        assert (fresh.run(arrivals, restart_at, end, tick_s)
                != before.run(arrivals, restart_at, end, tick_s))


def test_the_saved_state_is_plain_json_with_a_version() -> None:
    ep = Endpoint(Autoscaler())
    ep.run(every(900, MIDNIGHT, MIDNIGHT + 8 * 900), MIDNIGHT, MIDNIGHT + 8 * 900, 10.0)
    saved = ep.policy.learned()
    assert json.loads(json.dumps(saved)) == saved
    assert saved["version"] == LEARNED_VERSION
    assert len(saved["idle_gaps"]["gaps"]) == 7
    assert "pre-warm at" in round_trip(ep.policy).keep_alive().reason


def test_the_saved_state_does_not_change_while_the_endpoint_idles() -> None:
    """Once the instance keep-alive is over, the scaler has nothing to write for an idle
    endpoint."""
    ep = Endpoint(Autoscaler())
    ep.run([(MIDNIGHT, 12)], MIDNIGHT, MIDNIGHT + 100, 10.0)
    assert ep.policy.learned()["needs"] == [[MIDNIGHT, 3]]
    ep.run([], MIDNIGHT + 100, MIDNIGHT + 1000, 10.0)
    saved = ep.policy.learned()
    assert saved["needs"] == []
    ep.run([], MIDNIGHT + 1000, MIDNIGHT + 3000, 10.0)
    assert ep.policy.learned() == saved


def test_the_restored_state_is_bounded_by_the_settings() -> None:
    settings = KeepAliveSettings(history=10)
    gaps = IdleGaps.from_dict({"gaps": [100.0 + i for i in range(1000)]}, settings)
    assert list(gaps.gaps) == [100.0 + i for i in range(990, 1000)]
    assert not IdleGaps.from_dict({"gaps": [1.0, 59.0]}).gaps  # not idle gaps at 60 s bins
    wakeups = [MIDNIGHT + i * 3600 for i in range(1000)]
    daily = DailyArrivals.from_dict({"wakeups": wakeups})
    assert daily.wakeups.maxlen is not None and len(daily.wakeups) == daily.wakeups.maxlen
    assert list(daily.wakeups) == wakeups[-daily.wakeups.maxlen:]


def good() -> dict[str, Any]:
    ep = Endpoint(Autoscaler())
    ep.run(every(900, MIDNIGHT, MIDNIGHT + 8 * 900), MIDNIGHT, MIDNIGHT + 8 * 900, 10.0)
    ep.run([(MIDNIGHT + 8 * 900, 12)], MIDNIGHT + 8 * 900, MIDNIGHT + 8 * 900 + 30, 10.0)
    return ep.policy.learned()


def spoiled(path: str, value: Any) -> dict[str, Any]:
    data = good()
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "expected an object"),
        ([1, 2], "expected an object"),
        ({}, "version None"),
        (spoiled("version", 2), "version 2, this platform reads version 1"),
        (spoiled("version", "1"), "version '1'"),
        (spoiled("idle_gaps", KeyError), "idle gaps: expected an object"),
        (spoiled("idle_gaps.gaps", "600"), "idle gaps: expected a list"),
        (spoiled("idle_gaps.gaps", [600.0, float("nan")]), "nan is not a finite number"),
        (spoiled("idle_gaps.gaps", [600.0, -1]), "-1 is not a finite number"),
        (spoiled("idle_gaps.gaps", [True]), "True is not a finite number"),
        (spoiled("daily.wakeups", {"a": 1}), "daily wake-ups: expected a list"),
        (spoiled("needs", [[1.0, 2, 3]]), "instance needs: [1.0, 2, 3] is not [time, count]"),
        (spoiled("needs", [[1.0, 2.5]]), "is not [time, count]"),
        (spoiled("batch", [[2.0, 1], [1.0, 1]]), "last batch: times out of order"),
        (spoiled("seen", KeyError), "seen: expected an object"),
        (spoiled("seen.request_at", "yesterday"), "seen request_at: 'yesterday'"),
        (spoiled("service_s", float("inf")), "service_s: inf"),
        (spoiled("kept", -3), "kept: -3"),
    ],
)
def test_unusable_saved_state_is_refused_whole(data: Any, message: str) -> None:
    policy = Autoscaler()
    policy.idle_gaps.note_idle_gap(700.0)
    with pytest.raises(LearnedStateError) as raised:
        policy.restore(data)
    assert message in str(raised.value)
    assert list(policy.idle_gaps.gaps) == [700.0]  # nothing taken from it


def test_a_good_saved_state_restores() -> None:
    policy = Autoscaler()
    policy.restore(good())
    assert len(policy.idle_gaps.gaps) == 8 and policy.learned()["needs"]


def test_the_daily_pattern_in_words() -> None:
    policy = Autoscaler()
    assert policy.daily_pattern(MIDNIGHT) is None
    for day in range(5):
        policy.daily.note_wakeup(MIDNIGHT + day * DAY_S + 6 * 3600, 8 * 3600)
    assert (policy.daily_pattern(MIDNIGHT + 4 * DAY_S + 12 * 3600)
            == "arrivals expected around 06:00 UTC (5 of last 5 days)")
    forced = Autoscaler(AutoscalerSettings(keep_alive_s=60.0))
    forced.restore(policy.learned())
    assert forced.daily_pattern(MIDNIGHT + 4 * DAY_S + 12 * 3600) is None


# ---- the scaler keeps it in Redis (a real redis-server) ----------------------------------
def learned_scaler(redis: Any) -> Scaler:
    return Scaler(redis, None, ScalerSettings(learned_save_s=10.0))  # type: ignore[arg-type]


def timer_policy() -> Autoscaler:
    ep = Endpoint(Autoscaler())
    ep.run(every(900, MIDNIGHT, MIDNIGHT + 8 * 900), MIDNIGHT, MIDNIGHT + 8 * 900, 10.0)
    return ep.policy


async def test_the_scaler_saves_at_most_every_interval_and_a_restart_restores(
        redis_url: str) -> None:
    redis = async_redis(redis_url)
    name = "t-learned-save"
    try:
        await redis.hset(_keys.deployment(name), mapping={"version": 1})
        before = learned_scaler(redis)
        before._policies[name] = timer_policy()
        await before.save_learned(name, 100.0)
        saved = json.loads(await redis.get(_keys.learned(name)))
        assert len(saved["idle_gaps"]["gaps"]) == 7

        before._policies[name].idle_gaps.note_idle_gap(900.0)  # learned more
        await before.save_learned(name, 105.0)  # within the interval: not written yet
        assert json.loads(await redis.get(_keys.learned(name))) == saved
        await before.save_learned(name, 110.0)
        assert len(json.loads(await redis.get(_keys.learned(name)))["idle_gaps"]["gaps"]) == 8
        before._policies[name].idle_gaps.note_idle_gap(900.0)
        await before.save_all_learned()  # the way out does not wait for the interval
        assert len(json.loads(await redis.get(_keys.learned(name)))["idle_gaps"]["gaps"]) == 9

        after = learned_scaler(redis)  # a restarted platform
        restored = await after.learned_policy(name)
        assert restored.keep_alive() == before._policies[name].keep_alive()
        assert "pre-warm at" in restored.keep_alive().reason
        assert await after.learned_policy(name) is restored  # read once, then kept
    finally:
        await redis.delete(_keys.deployment(name), _keys.learned(name))
        await redis.aclose()


async def test_no_learned_state_is_written_for_a_deleted_endpoint(redis_url: str) -> None:
    redis = async_redis(redis_url)
    name = "t-learned-deleted"
    try:
        scaler = learned_scaler(redis)
        scaler._policies[name] = timer_policy()
        await scaler.save_learned(name, 100.0, force=True)
        assert await redis.get(_keys.learned(name)) is None
    finally:
        await redis.aclose()


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[]", b'{"version": 99}',
                                 b'{"version": 1, "idle_gaps": {"gaps": ["x"]}}'])
async def test_unusable_saved_state_starts_fresh_with_a_warning(
        redis_url: str, raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    redis = async_redis(redis_url)
    name = "t-learned-corrupt"
    try:
        await redis.set(_keys.learned(name), raw)
        policy = await learned_scaler(redis).learned_policy(name)
        assert not policy.idle_gaps.gaps
        assert "fixed 600 s" in policy.keep_alive().reason
        assert "saved learned state is unusable, the autoscaler starts fresh" in caplog.text
    finally:
        await redis.delete(_keys.learned(name))
        await redis.aclose()


async def test_a_redis_error_while_saving_is_logged_and_tried_again(
        caplog: pytest.LogCaptureFixture) -> None:
    redis = async_redis(f"redis://127.0.0.1:{free_port()}")  # nobody listens there
    try:
        scaler = learned_scaler(redis)
        scaler._policies["t"] = timer_policy()
        await scaler.save_learned("t", 100.0)  # does not raise
        assert "saving the learned state failed, kept in memory and tried again" in caplog.text
        assert "t" not in scaler._saved  # so the next look writes it
    finally:
        await redis.aclose()


def test_a_histogram_bin_of_zero_is_refused_with_the_key() -> None:
    with pytest.raises(ValueError, match="keep_alive_bin_s=0 must be > 0"):
        PlatformSettings(redis_url="redis://x", token_sha256="0" * 64, keep_alive_bin_s=0)


def test_an_endpoint_deleted_and_deployed_again_starts_fresh_a_redeploy_does_not() -> None:
    scaler = learned_scaler(None)
    scaler._policies["e"] = timer_policy()
    scaler._check_born("e", 1.0)
    scaler._check_born("e", 1.0)  # a redeploy keeps created_at
    assert "e" in scaler._policies
    scaler._check_born("e", 2.0)  # deleted, then created again
    assert "e" not in scaler._policies


async def test_a_clean_shutdown_saves_what_changed(redis_url: str) -> None:
    redis = async_redis(redis_url)
    name = "t-learned-shutdown"
    try:
        await redis.hset(_keys.deployment(name), mapping={"version": 1})
        scaler = learned_scaler(redis)
        scaler._policies[name] = timer_policy()
        scaler._save_due[name] = float("inf")  # not due: only the way out writes it
        stop = asyncio.Event()
        stop.set()
        await asyncio.wait_for(scaler.run(stop), 10)
        assert len(json.loads(await redis.get(_keys.learned(name)))["idle_gaps"]["gaps"]) == 7
    finally:
        await redis.delete(_keys.deployment(name), _keys.learned(name))
        await redis.aclose()
