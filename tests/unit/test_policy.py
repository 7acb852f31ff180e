"""The hybrid autoscaler: pure, driven by plain-float clocks, no sleeping."""

from __future__ import annotations

import dataclasses
import re

import pytest

from lowtide.platform.policy import (
    Autoscaler,
    AutoscalerSettings,
    Decision,
    Observation,
    capacity_ratio,
    clamp,
    demand_concurrency,
    replica_capacity,
    replicas_for,
    request_replicas,
    resource_replicas,
    smoothed,
    window_average,
    window_max,
)

KEEP_ALIVE_S = 300.0
T0 = 1_000_000.0  # an arbitrary "epoch" for the fake clock


def obs(**kw: object) -> Observation:
    """An observation of a quiet endpoint at T0; override what the case is about."""
    base: dict[str, object] = dict(desired=0, ready=0, starting=0, queued=0, oldest_wait_s=0.0,
                                   in_flight=0, last_activity_at=T0, limit=4)
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def fixed_keep_alive(**kw: object) -> Autoscaler:
    return Autoscaler(AutoscalerSettings(keep_alive_s=KEEP_ALIVE_S, **kw))  # type: ignore[arg-type]


# ---- named math -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("demand", "limit", "expected"),
    [(0, 4, 0), (-3, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (9, 4, 3), (7, 1, 7),
     (3, 0, 3),  # a zero limit counts as one per replica, never a division by zero
     (3, -2, 3)],
)
def test_replicas_for(demand: int, limit: int, expected: int) -> None:
    assert replicas_for(demand, limit) == expected


@pytest.mark.parametrize(
    ("n", "lo", "hi", "expected"),
    [(0, 0, None, 0), (5, 0, None, 5), (5, 0, 3, 3), (0, 2, None, 2), (1, 2, 5, 2),
     (9, 2, 5, 5), (2, 2, 2, 2)],
)
def test_clamp(n: int, lo: int, hi: int | None, expected: int) -> None:
    assert clamp(n, lo, hi) == expected


@pytest.mark.parametrize(
    ("limit", "target", "expected"),
    [(10, 0.7, 7.0), (4, 0.7, 2.8), (1, 0.7, 1.0),  # at least one request per replica
     (0, 0.7, 1.0), (100, 1.0, 100.0)],
)
def test_replica_capacity(limit: int, target: float, expected: float) -> None:
    assert replica_capacity(limit, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("concurrency", "limit", "target", "expected"),
    [(0, 10, 0.7, 0), (0.1, 10, 0.7, 1), (7, 10, 0.7, 1), (7.01, 10, 0.7, 2),
     (37, 6, 1.0, 7), (14, 10, 0.7, 2),  # exactly two replicas' worth, no float rounding up
     (3, 1, 0.7, 3)],
)
def test_request_replicas(concurrency: float, limit: int, target: float, expected: int) -> None:
    assert request_replicas(concurrency, limit, target) == expected


@pytest.mark.parametrize(
    ("concurrency", "limit", "ready", "expected"),
    [(0, 4, 1, 0.0), (5.6, 4, 1, 2.0), (3, 4, 1, 3 / 2.8), (5.6, 4, 2, 1.0),
     (5.6, 4, 0, 2.0)],  # nothing ready counts as one: a wake has its own fast path
)
def test_capacity_ratio(concurrency: float, limit: int, ready: int, expected: float) -> None:
    assert capacity_ratio(concurrency, limit, 0.7, ready) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ready", "utilization", "target", "expected"),
    [(2, None, 0.7, 0), (0, 0.9, 0.7, 0), (2, 0.0, 0.7, 0), (2, 0.35, 0.7, 1),
     (2, 0.7, 0.7, 2), (2, 0.95, 0.7, 3), (4, 1.0, 0.5, 8)],
)
def test_resource_replicas(ready: int, utilization: float | None, target: float,
                           expected: int) -> None:
    assert resource_replicas(ready, utilization, target) == expected


@pytest.mark.parametrize(
    ("samples", "now", "span_s", "expected"),
    [([], 10.0, 6.0, 0.0), ([(10.0, 4.0)], 10.0, 6.0, 4.0),
     ([(3.0, 100.0), (5.0, 2.0), (10.0, 4.0)], 10.0, 6.0, 3.0),  # t=3 is outside (4, 10]
     ([(4.0, 100.0), (10.0, 4.0)], 10.0, 6.0, 4.0),  # the window's open end
     ([(11.0, 9.0)], 10.0, 6.0, 0.0)],  # not yet taken
)
def test_window_average(samples: list[tuple[float, float]], now: float, span_s: float,
                        expected: float) -> None:
    assert window_average(samples, now, span_s) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("samples", "now", "expected"),
    [([], 100.0, 0), ([(60.0, 9), (80.0, 2), (100.0, 1)], 100.0, 2), ([(95.0, 5)], 100.0, 5)],
)
def test_window_max(samples: list[tuple[float, int]], now: float, expected: int) -> None:
    assert window_max(samples, now, 30.0) == expected


@pytest.mark.parametrize(
    ("in_flight", "queued", "rate", "service_s", "expected"),
    [(4, 6, 0.0, None, 10.0),  # nothing learned: in flight + queued (Knative)
     (4, 0, 100.0, 0.2, 20.0),  # Little's law: 100/s x 0.2 s
     (30, 0, 100.0, 0.2, 30.0),  # never below what is in flight
     (40, 900, 200.0, 0.2, 40.0 + 900 * 0.2 / 10)],  # a backlog is drained, not held
)
def test_demand_concurrency(in_flight: int, queued: int, rate: float,
                            service_s: float | None, expected: float) -> None:
    assert demand_concurrency(in_flight, queued, rate, service_s, 10.0) == pytest.approx(
        expected)


@pytest.mark.parametrize(
    ("previous", "sample", "expected"), [(None, 3.0, 3.0), (1.0, 3.0, 1.2), (2.0, 2.0, 2.0)])
def test_smoothed(previous: float | None, sample: float, expected: float) -> None:
    assert smoothed(previous, sample, 0.1) == pytest.approx(expected)


# ---- one decision per case, on a fresh policy ------------------------------------------
# (id, observation, seconds after T0, expected desired, expected kind)
CASES = [
    # wake: straight to ceil(queued / limit), bounded, without waiting for any window
    ("wake-one", obs(queued=1), 0.0, 1, "wake"),
    ("wake-exact-limit", obs(queued=4), 0.0, 1, "wake"),
    ("wake-ceil", obs(queued=5), 0.0, 2, "wake"),
    ("wake-many", obs(queued=40), 0.0, 10, "wake"),
    ("wake-capped-by-max", obs(queued=40, max_replicas=3), 0.0, 3, "wake"),
    ("wake-raised-to-min", obs(queued=1, min_replicas=2), 0.0, 2, "wake"),
    ("wake-old-backlog", obs(queued=9, oldest_wait_s=30.0), 0.0, 3, "wake"),
    ("wake-limit-one", obs(queued=3, limit=1), 0.0, 3, "wake"),
    # request signal: panic when the 6 s window wants twice the ready capacity
    ("panic-on-backlog", obs(desired=1, ready=1, in_flight=4, queued=8, oldest_wait_s=2.0),
     0.0, 5, "panic"),
    ("panic-capped-by-max",
     obs(desired=1, ready=1, in_flight=4, queued=40, oldest_wait_s=5.0, max_replicas=4),
     0.0, 4, "panic"),
    ("panic-already-at-max",
     obs(desired=2, ready=2, in_flight=8, queued=30, oldest_wait_s=5.0, max_replicas=2),
     0.0, 2, "steady"),
    ("scale-up-below-panic", obs(desired=2, ready=2, in_flight=7), 0.0, 3, "scale-up"),
    ("no-scale-down-without-history", obs(desired=3, ready=3, in_flight=1), 0.0, 3,
     "steady"),
    ("enough-replicas", obs(desired=3, ready=3, in_flight=4, queued=1), 0.0, 3, "steady"),
    # resource signal: CPU over the target adds replicas even when requests do not ask
    ("cpu-hot", obs(desired=2, ready=2, in_flight=1, cpu_utilization=0.95), 0.0, 3,
     "scale-up"),
    ("gpu-hot", obs(desired=2, ready=2, in_flight=1, gpu_utilization=1.4), 0.0, 4,
     "scale-up"),
    ("cpu-cool", obs(desired=2, ready=2, in_flight=1, cpu_utilization=0.3), 0.0, 2,
     "steady"),
    # idle: to min_replicas after keep-alive with zero demand, never while busy
    ("idle-at-keep-alive", obs(desired=2, ready=2), KEEP_ALIVE_S, 0, "idle"),
    ("idle-long-after", obs(desired=2, ready=2), 10 * KEEP_ALIVE_S, 0, "idle"),
    ("idle-to-min", obs(desired=3, ready=3, min_replicas=1), KEEP_ALIVE_S, 1, "idle"),
    ("idle-just-before", obs(desired=2, ready=2), KEEP_ALIVE_S - 0.001, 2, "steady"),
    ("idle-but-in-flight", obs(desired=2, ready=2, in_flight=1), 10 * KEEP_ALIVE_S, 2,
     "steady"),
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
    ("steady-busy", obs(desired=2, ready=2, in_flight=3), 0.0, 2, "steady"),
]


@pytest.mark.parametrize(
    ("observation", "after_s", "desired", "kind"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decide(observation: Observation, after_s: float, desired: int, kind: str) -> None:
    decision = fixed_keep_alive().decide(observation, T0 + after_s)
    assert (decision.desired, decision.kind) == (desired, kind), decision.reason


@pytest.mark.parametrize(
    ("observation", "after_s"), [pytest.param(*case[1:3], id=case[0]) for case in CASES]
)
def test_every_reason_names_the_transition(observation: Observation, after_s: float) -> None:
    decision = fixed_keep_alive().decide(observation, T0 + after_s)
    assert re.match(rf"{observation.desired} -> {decision.desired}\b", decision.reason)
    assert decision.kind in decision.reason  # and says why, in words
    assert "\n" not in decision.reason


def test_cases_cover_every_kind_but_prewarm_and_scale_down() -> None:
    kinds = {fixed_keep_alive().decide(c[1], T0 + c[2]).kind for c in CASES}
    assert kinds == {"wake", "panic", "scale-up", "idle", "bounds", "steady"}


def test_idle_reason_reports_idle_time_and_keep_alive() -> None:
    decision = fixed_keep_alive().decide(obs(desired=2, ready=2), T0 + 301.0)
    assert decision.reason == "2 -> 0: idle 301.0 s >= keep-alive 300 s (fixed by --keep-alive)"


def test_panic_reason_names_window_capacity_and_lag() -> None:
    decision = fixed_keep_alive().decide(
        obs(desired=1, ready=1, limit=6, in_flight=6, queued=31, oldest_wait_s=2.3), T0)
    assert decision.reason == ("1 -> 9: panic, 6 s concurrency 37 over 2 x capacity 4; "
                               "queue lag 2.3 s")


def test_keep_alive_is_a_setting_not_a_constant() -> None:
    idle_60_s = obs(desired=1, ready=1)
    assert Autoscaler(AutoscalerSettings(keep_alive_s=30.0)).decide(idle_60_s, T0 + 60).desired == 0
    assert Autoscaler(AutoscalerSettings(keep_alive_s=120.0)).decide(idle_60_s, T0 + 60
                                                                     ).desired == 1


def test_the_default_keep_alive_is_adaptive_and_starts_at_the_fixed_window() -> None:
    policy = Autoscaler()
    assert policy.keep_alive().keep_s == 600.0
    assert policy.decide(obs(desired=1, ready=1), T0 + 599).desired == 1
    assert policy.decide(obs(desired=1, ready=1), T0 + 600).desired == 0


@pytest.mark.parametrize(("previous", "changed"), [(0, True), (1, False), (2, True)])
def test_decision_changed(previous: int, changed: bool) -> None:
    assert Decision(1, "steady", "1 -> 1: steady").changed(previous) is changed


def test_decision_is_frozen_and_carries_its_signals() -> None:
    decision = fixed_keep_alive().decide(obs(queued=1), T0)
    assert decision.signals is not None and decision.signals.keep_alive_s == KEEP_ALIVE_S
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.desired = 7  # type: ignore[misc]


# ---- scenarios on a fake clock ----------------------------------------------------------
class FakeEndpoint:
    """Feeds each decision back as the next observation's `desired`, like the scaler; replicas
    are ready as soon as they are wanted (start-up time is not what these tests are about)."""

    def __init__(self, policy: Autoscaler) -> None:
        self.policy = policy
        self.desired = 0
        self.last_activity_at = T0
        self.last_request_at = 0.0
        self.log: list[tuple[float, int, str]] = []

    def step(self, after_s: float, **seen: object) -> Decision:
        seen.setdefault("ready", self.desired)
        observation = obs(desired=self.desired, last_activity_at=self.last_activity_at,
                          last_request_at=self.last_request_at, **seen)
        decision = self.policy.decide(observation, T0 + after_s)
        self.desired = decision.desired
        self.log.append((after_s, decision.desired, decision.kind))
        return decision

    def request(self, after_s: float, **seen: object) -> Decision:
        """A request arrives and is served within the tick."""
        self.last_activity_at = self.last_request_at = T0 + after_s
        return self.step(after_s, **seen)

    def run(self, start_s: int, end_s: int, **seen: object) -> None:
        for t in range(start_s, end_s):
            self.step(float(t), **seen)

    def changes(self) -> list[tuple[float, int, str]]:
        return [entry for entry in self.log if entry[2] != "steady"]


def test_panic_entry_hold_and_exit() -> None:
    ep = FakeEndpoint(fixed_keep_alive())
    ep.request(0, queued=2)  # wake: 1 replica
    ep.run(1, 30, in_flight=2)  # steady: 2 in flight fit one replica of 4 at 70 %
    assert ep.desired == 1
    ep.run(30, 33, in_flight=4, queued=20, oldest_wait_s=1.0)  # a burst: panic at once
    burst = ep.log[30:33]
    assert burst[0][2] == "panic" and burst[0][1] >= 3
    assert all(kind in ("panic", "steady") for _, _, kind in burst)
    peak = ep.desired
    assert ep.policy.panicking(T0 + 32)
    # the burst is over, but no scale down while in panic (a stable window after it)
    ep.run(33, 90, in_flight=1)
    assert ep.desired == peak and ep.policy.panicking(T0 + 89)
    assert not ep.policy.panicking(T0 + 32 + 60)
    ep.run(90, 200, in_flight=1)  # out of panic: down, slowly, to what the load needs
    downs = [e for e in ep.changes() if e[2] == "scale-down"]
    assert downs and all(t >= 30 + 60 for t, _, _ in downs)  # panic lasts a stable window
    assert ep.desired == 1


def test_panic_extends_while_the_short_window_still_wants_twice_the_capacity() -> None:
    ep = FakeEndpoint(fixed_keep_alive())
    ep.request(0, queued=2)
    ep.step(1, in_flight=4, queued=20, oldest_wait_s=1.0)
    for t in range(2, 60, 10):  # the burst comes back every 10 s
        ep.step(t, ready=1, in_flight=4, queued=40, oldest_wait_s=1.0)
    assert ep.policy.panicking(T0 + 52 + 59)
    assert not ep.policy.panicking(T0 + 52 + 60)


def test_scale_down_waits_for_the_delay_after_the_last_higher_want() -> None:
    ep = FakeEndpoint(fixed_keep_alive(panic_threshold=100.0))  # never panic: stable only
    ep.request(0, queued=1)
    ep.run(1, 61, in_flight=11)  # 11 in flight over 4 x 70 %: 4 replicas
    assert ep.desired == 4
    ep.run(61, 200, in_flight=1)
    first_down = next(t for t, _, kind in ep.log if kind == "scale-down")
    assert first_down >= 61 + 30  # the stable average and the 30 s delay both hold it
    assert ep.desired == 1


def test_fast_up() -> None:
    ep = FakeEndpoint(fixed_keep_alive(panic_threshold=100.0))
    ep.request(0, queued=1)
    decision = ep.step(1, in_flight=4, cpu_utilization=2.0)  # CPU says 3 at once
    assert (decision.desired, decision.kind) == (3, "scale-up")
    assert "utilization 200% over target 70%" in decision.reason


def test_bounds_hold_through_a_burst_and_idle() -> None:
    ep = FakeEndpoint(fixed_keep_alive())
    ep.request(0, queued=50, min_replicas=1, max_replicas=3)
    ep.run(1, 10, in_flight=12, queued=200, min_replicas=1, max_replicas=3)
    assert max(d for _, d, _ in ep.log) == 3
    ep.run(10, 10 + int(KEEP_ALIVE_S) + 100, min_replicas=1, max_replicas=3)
    assert ep.desired == 1  # idle: down to min_replicas, not to zero


def test_deploy_wake_traffic_idle_wake_again_with_a_fixed_keep_alive() -> None:
    ep = FakeEndpoint(fixed_keep_alive())
    ep.step(0)
    ep.step(60)  # nobody calls: nothing to run
    ep.request(100, queued=1)  # first request: woken at once
    ep.step(101, in_flight=1)
    ep.request(150)
    ep.step(150 + 299)  # within keep-alive of the last call
    ep.step(150 + 300)  # keep-alive over: to zero
    ep.step(2000)  # and stays there
    ep.request(2000.5, queued=9)  # wake again, for the whole backlog
    assert ep.changes() == [(100, 1, "wake"), (450, 0, "idle"), (2000.5, 3, "wake")]


def test_no_scale_up_right_after_scaling_to_zero() -> None:
    """The stable window still remembers the traffic when a short keep-alive runs out;
    that memory must not bring a replica back without a request (a flap seen live)."""
    ep = FakeEndpoint(Autoscaler(AutoscalerSettings(keep_alive_s=1.0)))
    ep.request(0, queued=1)
    ep.run(1, 3, in_flight=1)
    ep.last_activity_at = T0 + 3
    ep.run(3, 12)  # idle: to zero after the 1 s keep-alive, and it must stay there
    assert [e for e in ep.changes() if e[0] >= 3] == [(4.0, 0, "idle")]
    assert ep.desired == 0


def test_a_timer_endpoint_learns_to_unload_and_pre_warm() -> None:
    """Every 15 minutes one call: after a few gaps the policy unloads right after a call and
    pre-warms before the next, instead of idling 10 minutes and starting cold anyway."""
    ep = FakeEndpoint(Autoscaler())
    period_s, t = 900, 0
    for _ in range(8):
        ep.request(t, queued=1 if ep.desired == 0 else 0)
        ep.run(t + 1, t + period_s, in_flight=0)
        t += period_s
    late = [e for e in ep.changes() if e[0] >= 6 * period_s]
    kinds = [k for _, _, k in late]
    assert kinds == ["idle", "prewarm"] * 2, late  # no wake: every call found it warm
    unload_at, prewarm_at = late[0][0] % period_s, late[1][0] % period_s
    assert unload_at <= 61  # gone about a minute after the call
    assert period_s - 120 <= prewarm_at < period_s  # back shortly before the next
    assert "pre-warm at" in ep.policy.keep_alive().reason


def test_without_a_pattern_the_fixed_window_applies() -> None:
    ep = FakeEndpoint(Autoscaler())
    t = 0
    for gap_s in (100, 3000, 250, 1700, 4000, 500, 2200):  # irregular
        ep.request(t, queued=1 if ep.desired == 0 else 0)
        ep.run(t + 1, t + gap_s)
        t += gap_s
    ka = ep.policy.keep_alive()
    assert (ka.prewarm_s, ka.keep_s) == (0.0, 600.0), ka.reason
    assert not [e for e in ep.changes() if e[2] == "prewarm"]


def test_a_day_endpoint_goes_to_zero_at_night() -> None:
    ep = FakeEndpoint(Autoscaler())
    for t in range(0, 3600, 20):  # an hour of calls every 20 s
        ep.request(t, queued=1 if ep.desired == 0 else 0)
    ep.run(3600, 3600 + 1200, in_flight=0)  # night
    assert ep.desired == 0
    assert ep.changes()[-1][2] == "idle"


# ---- instance keep-alive ----------------------------------------------------------------
def drain_batch(ep: FakeEndpoint, start_s: int, size: int, drain_s: int) -> None:
    """A batch of `size` requests arrives at once (on warm replicas if any, else queued) and
    finishes one by one over `drain_s` seconds; no other request arrives."""
    if ep.desired:
        ep.request(start_s, in_flight=size, limit=8)
    else:
        ep.request(start_s, queued=size, limit=8)
    for t in range(start_s + 1, start_s + drain_s):
        left = size - (t - start_s) * size // drain_s
        ep.step(t, in_flight=left, limit=8)
    ep.last_activity_at = T0 + start_s + drain_s


@pytest.mark.parametrize(
    ("size", "keep_alive_s", "desired_at_next_batch"),
    [
        (16, 600.0, 2),  # two instances at the limit: both stay for the keep-alive
        (16, 100.0, 0),  # the keep-alive ran out before the next batch: all gone
        (4, 600.0, 1),  # one instance was enough: one stays
        (40, 600.0, 5),  # five
    ],
)
def test_instance_keep_alive_keeps_the_last_batch_warm(size: int, keep_alive_s: float,
                                                       desired_at_next_batch: int) -> None:
    ep = FakeEndpoint(Autoscaler(AutoscalerSettings(keep_alive_s=keep_alive_s)))
    drain_batch(ep, 0, size, 300)
    ep.run(300, 500, limit=8)
    assert ep.desired == desired_at_next_batch
    drain_batch(ep, 500, size, 300)
    woke = [e for e in ep.changes() if e[0] >= 500 and e[2] == "wake"]
    assert bool(woke) is (desired_at_next_batch == 0)  # a batch on warm replicas: no wake


def test_instance_keep_alive_does_not_hold_a_load_that_fell() -> None:
    """Sustained arrivals that fall from 16 to 2 in flight: the normal path scales down; the
    instance keep-alive holds only what the latest arrivals needed."""
    ep = FakeEndpoint(Autoscaler(AutoscalerSettings(panic_threshold=100.0)))
    ep.request(0, queued=16, limit=8)
    for t in range(1, 120):
        ep.request(t, in_flight=16, limit=8)
    for t in range(120, 400):
        ep.request(t, in_flight=2, limit=8)
    assert ep.desired == 1


def test_instance_keep_alive_reasons() -> None:
    ep = FakeEndpoint(Autoscaler(AutoscalerSettings(keep_alive_s=600.0)))
    drain_batch(ep, 0, 40, 300)
    decisions = [ep.step(t, limit=8) for t in range(300, 1000)]
    reasons = [d.reason for d in decisions if d.kind != "steady"]
    # each instance goes its keep-alive after it was last needed, one by one, and says so
    assert [r.split(":")[0] for r in reasons] == ["5 -> 4", "4 -> 3", "3 -> 2", "2 -> 1",
                                                  "1 -> 0"]
    assert "; keeps 4: instance keep-alive: the last batch needed 5 at the limit, 4 needed " \
           "9.0 min ago, keep 10.0 min" in reasons[0]
    assert reasons[3].endswith("instance keep-alive over: 2 last needed more than 10.0 min ago")
    assert reasons[4].startswith("1 -> 0: idle 600.0 s >= keep-alive 600 s")
    for d in decisions:
        if d.kind != "steady":
            assert re.match(rf"\d+ -> {d.desired}: {d.kind}\b", d.reason), d


def test_a_batch_endpoint_is_pre_warmed_with_the_instances_its_batches_need() -> None:
    """Every 15 minutes 16 requests at once (limit 8): once the gaps show the pattern, the
    policy unloads after a batch and pre-warms both instances before the next."""
    ep = FakeEndpoint(Autoscaler())
    period_s, t = 900, 0
    for _ in range(8):
        if ep.desired:
            ep.request(t, in_flight=16, limit=8)
        else:
            ep.request(t, queued=16, limit=8)
        ep.run(t + 1, t + period_s, limit=8)
        t += period_s
    late = [e for e in ep.changes() if e[0] >= 6 * period_s]
    assert [(d, k) for _, d, k in late] == [(0, "idle"), (2, "prewarm")] * 2, late
    prewarm = ep.policy.decide(obs(desired=0, limit=8, last_activity_at=T0 + t - period_s,
                                   last_request_at=T0 + t - period_s),
                               T0 + t - 60)
    assert prewarm.kind == "prewarm" and "the last batch needed 2" in prewarm.reason


# ---- daily pre-warm ---------------------------------------------------------------------
DAY_S = 86400.0
MIDNIGHT = 19_000 * DAY_S  # a UTC midnight


def run_days(arrivals: list[float], days: int, tick_s: float = 60.0
             ) -> list[tuple[float, int, Decision]]:
    """Steps a policy over whole days from MIDNIGHT; each arrival is served within its tick.
    Returns (time, desired before the decision, decision) for every tick."""
    policy, desired, log = Autoscaler(), 0, []
    last_request = last_activity = 0.0
    pending = sorted(arrivals)
    t = MIDNIGHT
    while t < MIDNIGHT + days * DAY_S:
        queued = 0
        while pending and pending[0] < t + tick_s:
            last_request = last_activity = pending.pop(0)
            queued += 1
        seen = Observation(desired=desired, ready=desired, starting=0,
                           queued=queued if desired == 0 else 0, oldest_wait_s=0.0,
                           in_flight=queued if desired else 0,
                           last_activity_at=last_activity or MIDNIGHT, limit=4,
                           last_request_at=last_request)
        decision = policy.decide(seen, t)
        log.append((t, desired, decision))
        desired = decision.desired
        t += tick_s
    return log


def at(day: int, hours: float) -> float:
    return MIDNIGHT + day * DAY_S + hours * 3600


def office_hours(days: int, first: list[float]) -> list[float]:
    """A request every 2 minutes from `first[day]` (hours) to 22:00; idle at night."""
    return [at(d, h / 60) for d in range(days) for h in range(int(first[d] * 60), 22 * 60, 2)]


def first_arrival_warm(log: list[tuple[float, int, Decision]], arrival: float) -> bool:
    return next(before for t, before, _ in log if t + 60 > arrival) > 0


def daily_prewarm_days(log: list[tuple[float, int, Decision]]) -> set[int]:
    return {int((t - MIDNIGHT) // DAY_S) for t, _, d in log
            if d.kind == "prewarm" and "daily pattern" in d.reason}


def test_a_day_endpoint_is_zero_at_night_and_warm_before_the_first_morning_request() -> None:
    firsts = [6.02, 6.05, 6.03, 6.04]  # 06:01, 06:03, 06:01, 06:02
    log = run_days(office_hours(4, firsts), 4)
    for day in range(1, 4):
        assert first_arrival_warm(log, at(day, firsts[day])), f"day {day}"
        night = [before for t, before, _ in log if at(day, 1) <= t < at(day, 5.5)]
        assert set(night) == {0}, f"day {day}: replicas during the night"
    assert not first_arrival_warm(log, at(0, firsts[0]))  # the first day: nothing to go by
    assert daily_prewarm_days(log) == {1, 2, 3}
    reasons = [d.reason for _, _, d in log if d.kind == "prewarm"]
    assert reasons[0] == ("0 -> 1: prewarm, arrivals expected around 06:01 UTC (daily "
                          "pattern, 1 of last 1 days)")
    assert reasons[-1].endswith("(daily pattern, 3 of last 3 days)")
    for _, before, d in log:  # every change says what changed, as the event log shows it
        if d.desired != before:
            assert re.match(rf"{before} -> {d.desired}: {d.kind}\b", d.reason), d


def random_arrivals(days: int, per_day: float, seed: int) -> list[float]:
    import random

    rng, t, out = random.Random(seed), MIDNIGHT, []
    while True:
        t += rng.expovariate(per_day / DAY_S)
        if t >= MIDNIGHT + days * DAY_S:
            return out
        out.append(t)


@pytest.mark.parametrize(
    ("arrivals", "no_prewarm_from_day"),
    [
        (random_arrivals(5, 6.0, seed=1), 0),  # several idle periods a day, random times
        (random_arrivals(5, 6.0, seed=2), 0),
        (random_arrivals(6, 1.0, seed=3), 2),  # about one a day at random: one guess at most
        (random_arrivals(6, 1.0, seed=4), 2),
        (random_arrivals(3, 2000.0, seed=5), 0),  # busy day and night: no wake-ups
    ],
)
def test_no_daily_prewarm_without_a_pattern(arrivals: list[float],
                                            no_prewarm_from_day: int) -> None:
    days = int((max(arrivals) - MIDNIGHT) // DAY_S) + 1
    prewarms = daily_prewarm_days(run_days(arrivals, days))
    assert not [d for d in prewarms if d >= no_prewarm_from_day], prewarms


def test_a_forced_keep_alive_has_no_daily_prewarm() -> None:
    policy = Autoscaler(AutoscalerSettings(keep_alive_s=KEEP_ALIVE_S))
    policy.daily.note_wakeup(at(0, 6), 8 * 3600)
    assert Autoscaler().daily.expected(at(1, 6)) is None
    assert policy.daily.expected(at(1, 5.99)) is not None
    assert policy.expected(at(1, 5.99)) is None
