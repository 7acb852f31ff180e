"""The scaling loop's work follows activity (fake clock, no Redis): idle endpoints are not
looked at per tick, timers fire pre-warms and backoff ends on time, and a wake is decided
while a long pass runs."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest

from lowtide.platform.loop import ScalingLoop
from lowtide.platform.policy import Autoscaler, Observation
from lowtide.platform.schedule import (
    MAX_IDLE_LOOK_S,
    Look,
    Schedule,
    next_look,
    policy_timers,
)

NOW = 1000.0
DAY_S = 86400.0
MIDNIGHT = 19_000 * DAY_S  # a UTC midnight


def every(period_s: float, start: float, end: float) -> list[tuple[float, int]]:
    return [(start + k * period_s, 1) for k in range(math.ceil((end - start) / period_s))]


def office_days(days: int) -> list[tuple[float, int]]:
    """A request every 10 minutes from 06:00 to 20:00 UTC; idle nights."""
    return [a for d in range(days)
            for a in every(600, MIDNIGHT + d * DAY_S + 6 * 3600, MIDNIGHT + d * DAY_S + 20 * 3600)]


@pytest.mark.parametrize(("desired", "replicas", "queued", "backoff", "quiet", "want"), [
    (0, 0, 0, 0.0, 0.0, Look(False, NOW + 50, "pre-warm")),  # idle: its timer
    (1, 0, 0, 0.0, 0.0, Look(True)),  # wants a replica
    (0, 1, 0, 0.0, 0.0, Look(True)),  # a replica still stops
    (0, 0, 3, 0.0, 0.0, Look(True)),  # requests wait
    (0, 0, 0, 0.0, NOW + 10, Look(True)),  # active within its windows
    (1, 0, 2, NOW + 20, 0.0, Look(False, NOW + 20, "start backoff ends")),
    (1, 1, 2, NOW + 20, 0.0, Look(True)),  # a replica runs: watched through the backoff
])
def test_next_look(desired: int, replicas: int, queued: int, backoff: float, quiet: float,
                   want: Look) -> None:
    timers = [(NOW + 50, "pre-warm"), (None, "daily window"), (NOW - 5, "past")]
    assert next_look(desired=desired, replicas=replicas, queued=queued, backoff_until=backoff,
                     quiet_at=quiet, timers=timers, now=NOW) == want


def test_an_idle_endpoint_without_timers_is_still_looked_at_now_and_then() -> None:
    look = next_look(desired=0, replicas=0, queued=0, backoff_until=0.0, quiet_at=0.0,
                     timers=[], now=NOW)
    assert look == Look(False, NOW + MAX_IDLE_LOOK_S, "idle look")


def test_the_schedule_fires_each_timer_once_and_keeps_the_active() -> None:
    s = Schedule()
    s.set("busy", Look(True))
    s.set("a", Look(False, 10.0))
    s.set("b", Look(False, 20.0))
    s.set("b", Look(False, 5.0))  # moved earlier: the old heap entry is stale
    assert s.due(4.0) == ["busy"]
    assert s.due(5.0) == ["b", "busy"]
    assert s.next_at() == 10.0
    assert s.due(30.0) == ["a", "busy"]
    assert s.due(40.0) == ["busy"] and s.next_at() is None
    s.set("busy", Look(False, None))  # idle with no timer: only an event looks again
    assert s.due(50.0) == [] and len(s) == 0


def test_stale_timers_do_not_pile_up() -> None:
    s = Schedule()
    for t in range(10_000):
        s.set("x", Look(False, float(t + 1)))
    assert len(s._heap) < 200
    assert s.due(9_999.0) == [] and s.due(10_000.0) == ["x"]


# ---- the loop shell with a fake reconciler -----------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeReconciler:
    """Endpoints whose looks are given; counts reconciles, optionally slowly."""

    def __init__(self, looks: dict[str, Look], delay_s: float = 0.0) -> None:
        self.looks = looks
        self.delay_s = delay_s
        self.seen: list[tuple[str, float]] = []
        self.reads = 0

    async def members(self) -> set[str]:
        return set(self.looks)

    def owns(self, name: str) -> bool:
        return True

    async def tick(self, now: float) -> None:
        pass

    async def read(self, names: Sequence[str], now: float) -> Any:
        self.reads += 1
        return None

    async def reconcile(self, name: str, batch: Any, now: float) -> Look | None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.seen.append((name, now))
        look = self.looks.get(name)
        if look is not None and look.at is not None and look.at <= now:  # its timer fired
            return Look(False, None)
        return look

    def forget(self, name: str) -> None:
        pass


async def test_idle_endpoints_are_not_reconciled_per_tick() -> None:
    looks = {f"idle-{i}": Look(False, NOW + MAX_IDLE_LOOK_S) for i in range(1000)}
    looks.update({"busy-1": Look(True), "busy-2": Look(True)})
    fake, clock = FakeReconciler(looks), Clock(NOW)
    loop = ScalingLoop(fake, clock, tick_s=1.0, batch_size=500)
    for _ in range(20):  # 20 ticks of a fake second
        await loop.step(clock.now)
        clock.now += 1.0
    assert loop.looks == 1002 + 2 * 19  # each once when first seen, then the busy ones
    assert fake.reads == 3 + 19  # in batches: 500 + 500 + 2, then one per tick


async def test_timers_fire_a_prewarm_and_a_backoff_end_on_time() -> None:
    fake, clock = FakeReconciler({"warm": Look(False, NOW + 300.0, "pre-warm"),
                                  "failing": Look(False, NOW + 5.0, "start backoff ends")}
                                 ), Clock(NOW)
    loop = ScalingLoop(fake, clock, tick_s=1.0)
    for _ in range(400):
        await loop.step(clock.now)
        clock.now += 1.0
    assert [t for n, t in fake.seen if n == "failing"] == [NOW, NOW + 5.0]
    assert [t for n, t in fake.seen if n == "warm"] == [NOW, NOW + 300.0]


async def test_a_wake_is_decided_while_a_long_pass_runs() -> None:
    looks = {f"busy-{i:03d}": Look(True) for i in range(100)}
    looks["cold"] = Look(False, None)
    fake, clock = FakeReconciler(looks, delay_s=0.005), Clock(NOW)
    loop = ScalingLoop(fake, clock, tick_s=1.0)
    await loop.step(clock.now)  # the first pass: everything seen once
    fake.seen.clear()
    stop = asyncio.Event()
    wakes = asyncio.create_task(loop.run_wakes(stop))
    long_pass = asyncio.create_task(loop.step(clock.now))  # 100 x 5 ms
    await asyncio.sleep(0.05)
    loop.wake("cold")
    while "cold" not in [n for n, _ in fake.seen]:
        await asyncio.sleep(0.001)
    done_before = [n for n, _ in fake.seen].index("cold")
    await long_pass
    stop.set()
    loop.wake("cold")  # lets the wake task see stop
    await wakes
    assert done_before < 50, f"the wake waited behind {done_before} of 100 endpoints"
    assert len(fake.seen) == 102  # the pass still looked at every busy endpoint


# ---- the policy's timers: sparse looks decide as every tick did --------------------------
def simulate(policy: Autoscaler, arrivals: list[tuple[float, int]], start: float, end: float,
             tick_s: float, sparse: bool) -> tuple[list[tuple[float, int, str]], int]:
    """The desired-count changes of an endpoint whose replicas follow its decisions, looked
    at every tick or only when the schedule says (arrivals wake it); and the looks."""
    pending = sorted(arrivals)
    desired, last_request, last_activity = 0, 0.0, start
    changes, looks, t, i = [], 0, start, 0
    look = Look(True)
    while t < end:
        n = 0
        while i < len(pending) and pending[i][0] < t + tick_s:
            last_request = last_activity = pending[i][0]
            n, i = n + pending[i][1], i + 1
        due = look.every_tick or (look.at is not None and look.at <= t)
        if not sparse or due or n:
            looks += 1
            obs = Observation(desired=desired, ready=desired, starting=0,
                              queued=0 if desired else n, oldest_wait_s=0.0,
                              in_flight=n if desired else 0, last_activity_at=last_activity,
                              limit=4, last_request_at=last_request,
                              arrival_rate_per_s=n / tick_s)
            d = policy.decide(obs, t)
            if d.desired != desired:
                changes.append((t, d.desired, d.kind))
            desired = d.desired
            s = policy.settings
            look = next_look(desired=desired, replicas=desired, queued=0, backoff_until=0.0,
                             quiet_at=last_activity + max(s.stable_window_s,
                                                          s.scale_down_delay_s),
                             timers=policy_timers(policy, last_activity, t), now=t)
        t += tick_s
    return changes, looks


@pytest.mark.parametrize(("arrivals", "end", "tick_s"), [
    (every(900, MIDNIGHT, MIDNIGHT + 16 * 900), MIDNIGHT + 16 * 900, 10.0),  # learned timer
    (office_days(6), MIDNIGHT + 6 * DAY_S, 60.0),  # daily pre-warm
])
def test_looking_only_when_asked_decides_as_looking_every_tick(
        arrivals: list[tuple[float, int]], end: float, tick_s: float) -> None:
    dense, dense_looks = simulate(Autoscaler(), arrivals, MIDNIGHT, end, tick_s, sparse=False)
    sparse, sparse_looks = simulate(Autoscaler(), arrivals, MIDNIGHT, end, tick_s, sparse=True)
    assert sparse == dense
    assert any(kind == "prewarm" for _, _, kind in sparse)  # the timers fired pre-warms
    assert sparse_looks < dense_looks / 2, (sparse_looks, dense_looks)


def test_the_daily_window_is_a_timer() -> None:
    policy = Autoscaler()
    for day in range(5):
        policy.daily.note_wakeup(MIDNIGHT + day * DAY_S + 6 * 3600, 8 * 3600)
    now = MIDNIGHT + 5 * DAY_S + 12 * 3600
    timers = dict((why, at) for at, why in policy_timers(policy, now - 3600, now))
    lead_s = policy.daily.settings.lead_s
    assert timers["daily window"] == pytest.approx(MIDNIGHT + 6 * DAY_S + 6 * 3600 - lead_s)
    assert policy.expected(timers["daily window"]) is not None
    assert policy.expected(timers["daily window"] - 1) is None
    assert not math.isinf(timers["daily window"])
