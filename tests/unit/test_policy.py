"""The scaling decision: pure, driven by plain-float clocks, no sleeping."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lowtide.platform.policy import (
    BACKLOG_WAIT_S,
    Decision,
    Observation,
    clamp,
    decide,
    replicas_for,
)

KEEP_ALIVE_S = 300.0
T0 = 1_000_000.0  # an arbitrary "epoch" for the fake clock


def obs(**kw: object) -> Observation:
    """An observation of a quiet endpoint at T0; override what the case is about."""
    base: dict[str, object] = dict(desired=0, ready=0, starting=0, queued=0, oldest_wait_s=0.0,
                                   in_flight=0, last_activity_at=T0, limit=4)
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


# ---- named math -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("demand", "limit", "expected"),
    [
        (0, 4, 0),
        (-3, 4, 0),
        (1, 4, 1),
        (4, 4, 1),
        (5, 4, 2),
        (8, 4, 2),
        (9, 4, 3),
        (1, 1, 1),
        (7, 1, 7),
        (3, 0, 3),  # a zero limit counts as one per replica, never a division by zero
        (3, -2, 3),
    ],
)
def test_replicas_for(demand: int, limit: int, expected: int) -> None:
    assert replicas_for(demand, limit) == expected


@pytest.mark.parametrize(
    ("n", "lo", "hi", "expected"),
    [
        (0, 0, None, 0),
        (5, 0, None, 5),
        (5, 0, 3, 3),
        (0, 2, None, 2),
        (1, 2, 5, 2),
        (3, 2, 5, 3),
        (9, 2, 5, 5),
        (2, 2, 2, 2),
    ],
)
def test_clamp(n: int, lo: int, hi: int | None, expected: int) -> None:
    assert clamp(n, lo, hi) == expected


# ---- one decision per case ------------------------------------------------------------
# (id, observation, seconds after T0, expected desired, expected kind)
CASES = [
    # wake: straight to ceil(queued / limit), bounded, without waiting for the backlog timer
    ("wake-one", obs(queued=1), 0.0, 1, "wake"),
    ("wake-exact-limit", obs(queued=4), 0.0, 1, "wake"),
    ("wake-ceil", obs(queued=5), 0.0, 2, "wake"),
    ("wake-many", obs(queued=40), 0.0, 10, "wake"),
    ("wake-capped-by-max", obs(queued=40, max_replicas=3), 0.0, 3, "wake"),
    ("wake-raised-to-min", obs(queued=1, min_replicas=2), 0.0, 2, "wake"),
    ("wake-old-backlog", obs(queued=9, oldest_wait_s=30.0), 0.0, 3, "wake"),
    ("wake-limit-one", obs(queued=3, limit=1), 0.0, 3, "wake"),
    # backlog: only once the oldest request has waited BACKLOG_WAIT_S and nothing starts
    ("backlog-at-threshold",
     obs(desired=1, ready=1, in_flight=4, queued=4, oldest_wait_s=BACKLOG_WAIT_S), 0.0, 2,
     "backlog"),
    ("backlog-counts-in-flight",
     obs(desired=1, ready=1, in_flight=4, queued=5, oldest_wait_s=2.0), 0.0, 3, "backlog"),
    ("backlog-capped-by-max",
     obs(desired=1, ready=1, in_flight=4, queued=40, oldest_wait_s=5.0, max_replicas=4),
     0.0, 4, "backlog"),
    ("backlog-too-young",
     obs(desired=1, ready=1, in_flight=4, queued=4, oldest_wait_s=BACKLOG_WAIT_S - 0.01),
     0.0, 1, "steady"),
    ("backlog-while-starting",
     obs(desired=1, ready=0, starting=1, queued=8, oldest_wait_s=10.0), 0.0, 1, "steady"),
    ("backlog-while-one-of-many-starting",
     obs(desired=2, ready=1, starting=1, in_flight=4, queued=8, oldest_wait_s=10.0), 0.0, 2,
     "steady"),
    ("backlog-enough-replicas",
     obs(desired=3, ready=3, in_flight=4, queued=1, oldest_wait_s=5.0), 0.0, 3, "steady"),
    ("backlog-already-at-max",
     obs(desired=2, ready=2, in_flight=8, queued=30, oldest_wait_s=5.0, max_replicas=2),
     0.0, 2, "steady"),
    # idle: to min_replicas after keep-alive with zero demand, never while busy
    ("idle-at-keep-alive", obs(desired=2, ready=2), KEEP_ALIVE_S, 0, "idle"),
    ("idle-long-after", obs(desired=2, ready=2), 10 * KEEP_ALIVE_S, 0, "idle"),
    ("idle-to-min", obs(desired=3, ready=3, min_replicas=1), KEEP_ALIVE_S, 1, "idle"),
    ("idle-just-before", obs(desired=2, ready=2), KEEP_ALIVE_S - 0.001, 2, "steady"),
    ("idle-but-in-flight", obs(desired=2, ready=2, in_flight=1), 10 * KEEP_ALIVE_S, 2,
     "steady"),
    ("idle-but-queued", obs(desired=2, ready=2, queued=1, oldest_wait_s=0.1),
     10 * KEEP_ALIVE_S, 2, "steady"),
    ("idle-already-at-min", obs(desired=1, ready=1, min_replicas=1), 10 * KEEP_ALIVE_S, 1,
     "steady"),
    ("idle-activity-in-future", obs(desired=1, ready=1, last_activity_at=T0 + 50), 0.0, 1,
     "steady"),
    # bounds: a previous decision outside [min, max] is pulled back in
    ("bounds-above-max", obs(desired=5, ready=5, in_flight=1, max_replicas=3), 0.0, 3,
     "bounds"),
    ("bounds-below-min", obs(desired=0, min_replicas=2), 0.0, 2, "bounds"),
    ("bounds-min-raised", obs(desired=1, ready=1, in_flight=1, min_replicas=3), 0.0, 3,
     "bounds"),
    # steady
    ("steady-zero", obs(), 10 * KEEP_ALIVE_S, 0, "steady"),
    ("steady-busy", obs(desired=2, ready=2, in_flight=5), 0.0, 2, "steady"),
]


@pytest.mark.parametrize(
    ("observation", "after_s", "desired", "kind"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decide(observation: Observation, after_s: float, desired: int, kind: str) -> None:
    decision = decide(observation, T0 + after_s, KEEP_ALIVE_S)
    assert (decision.desired, decision.kind) == (desired, kind)


@pytest.mark.parametrize(
    ("observation", "after_s"), [pytest.param(*case[1:3], id=case[0]) for case in CASES]
)
def test_every_reason_names_the_transition(observation: Observation, after_s: float) -> None:
    decision = decide(observation, T0 + after_s, KEEP_ALIVE_S)
    assert re.match(rf"{observation.desired} -> {decision.desired}\b", decision.reason)
    assert decision.kind in decision.reason  # and says why, in words


def test_cases_cover_every_kind() -> None:
    kinds = {decide(c[1], T0 + c[2], KEEP_ALIVE_S).kind for c in CASES}
    assert kinds == {"wake", "backlog", "idle", "bounds", "steady"}


def test_idle_reason_reports_idle_time_and_keep_alive() -> None:
    decision = decide(obs(desired=2, ready=2), T0 + 301.0, KEEP_ALIVE_S)
    assert decision.reason == "2 -> 0: idle 301.0 s >= keep-alive 300 s"


def test_keep_alive_is_a_parameter_not_a_constant() -> None:
    idle_60_s = obs(desired=1, ready=1)
    assert decide(idle_60_s, T0 + 60, keep_alive_s=30.0).desired == 0
    assert decide(idle_60_s, T0 + 60, keep_alive_s=120.0).desired == 1


@pytest.mark.parametrize(("previous", "changed"), [(0, True), (1, False), (2, True)])
def test_decision_changed(previous: int, changed: bool) -> None:
    assert Decision(1, "steady", "1 -> 1: steady").changed(previous) is changed


def test_decision_is_frozen() -> None:
    decision = decide(obs(queued=1), T0, KEEP_ALIVE_S)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.desired = 7  # type: ignore[misc]


# ---- a scenario on a fake clock -------------------------------------------------------
class FakeEndpoint:
    """Feeds each decision back as the next observation's `desired`, like the scaler."""

    def __init__(self, keep_alive_s: float) -> None:
        self.keep_alive_s = keep_alive_s
        self.desired = 0
        self.last_activity_at = 0.0
        self.log: list[tuple[float, int, str]] = []

    def step(self, now: float, **seen: object) -> Decision:
        observation = obs(desired=self.desired, last_activity_at=self.last_activity_at, **seen)
        decision = decide(observation, now, self.keep_alive_s)
        self.desired = decision.desired
        self.log.append((now, decision.desired, decision.kind))
        return decision

    def activity(self, at: float) -> None:
        self.last_activity_at = at


def test_scenario_deploy_wake_traffic_idle_wake_again() -> None:
    ep = FakeEndpoint(keep_alive_s=KEEP_ALIVE_S)
    ep.activity(0.0)  # deployed at t=0
    ep.step(0.0)
    ep.step(60.0)  # nobody calls: nothing to run

    ep.activity(100.0)  # first request: woken at once, no backlog timer
    ep.step(100.0, queued=1)
    ep.step(101.5, starting=1, queued=6, oldest_wait_s=1.5)  # starting: no pile-on
    ep.step(103.0, ready=1, in_flight=1)

    ep.activity(110.0)  # a burst: wait for the backlog to age before adding capacity
    ep.step(110.0, ready=1, in_flight=4, queued=6, oldest_wait_s=0.2)
    ep.step(111.0, ready=1, in_flight=4, queued=6, oldest_wait_s=1.2)
    ep.step(112.0, ready=1, starting=2, in_flight=4, queued=6, oldest_wait_s=2.2)

    ep.activity(120.0)  # burst served
    ep.step(120.0, ready=3)
    ep.step(120.0 + 299.0, ready=3)  # idle gap shorter than keep-alive: stays

    ep.activity(419.0)  # one call just in time resets the keep-alive
    ep.step(419.0, ready=3, in_flight=1)
    ep.step(419.0 + 299.0, ready=3)  # still within keep-alive of the last call
    ep.step(419.0 + 300.0, ready=3)  # keep-alive over: to zero
    ep.step(2000.0)  # and stays there

    ep.activity(2000.5)  # wake again
    ep.step(2000.5, queued=9)

    assert ep.log == [
        (0.0, 0, "steady"),
        (60.0, 0, "steady"),
        (100.0, 1, "wake"),
        (101.5, 1, "steady"),
        (103.0, 1, "steady"),
        (110.0, 1, "steady"),
        (111.0, 3, "backlog"),
        (112.0, 3, "steady"),
        (120.0, 3, "steady"),
        (419.0, 3, "steady"),
        (419.0, 3, "steady"),
        (718.0, 3, "steady"),
        (719.0, 0, "idle"),
        (2000.0, 0, "steady"),
        (2000.5, 3, "wake"),
    ]
