"""Past the replicas' limits: wait in the activator's memory or spill to the stream
(`admission`, pure), and the in-memory queue that hands out freed slots (`waiters`), with a
fake clock and no Redis."""

from __future__ import annotations

import asyncio

import pytest

from lowtide.activator.admission import (
    Action,
    View,
    WaitConfig,
    admit,
    expected_wait_s,
    may_take_slot,
    requeue,
    share_after_answer,
    share_after_busy,
    usable,
    wait_bound_s,
)
from lowtide.activator.routes import EndpointRoute, ReplicaRoute
from lowtide.activator.waiters import Waiters

CONFIG = WaitConfig()


def view(**kw: object) -> View:
    base: dict[str, object] = dict(ready=1, capacity=4, open_slot=False, waiting=0,
                                   stream_queued=0, service_s=0.010)
    base.update(kw)
    return View(**base)  # type: ignore[arg-type]


# ---- the decision -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "action", "cause"),
    [
        ({"open_slot": True}, Action.DIRECT, "direct"),
        ({}, Action.WAIT, "wait"),  # all at their limit, a short wait
        ({"open_slot": True, "waiting": 3}, Action.WAIT, "wait"),  # no overtaking waiters
        ({"open_slot": True, "stream_queued": 2}, Action.WAIT, "wait"),  # nor the stream
        ({"ready": 0, "capacity": 0}, Action.SPILL, "cold"),
        ({"capacity": 0}, Action.SPILL, "cold"),  # every replica unhealthy
        ({"waiting": CONFIG.max_waiting}, Action.SPILL, "bound"),
        # 4 slots of a 2 s function (bound 8 s): the 16th in line waits 8 s, the 17th 8.5 s
        ({"service_s": 2.0, "waiting": 15}, Action.WAIT, "wait"),
        ({"service_s": 2.0, "waiting": 16}, Action.SPILL, "long-wait"),
        ({"service_s": 2.0, "waiting": 4, "stream_queued": 12}, Action.SPILL, "long-wait"),
    ],
)
def test_admit(kw: dict[str, object], action: Action, cause: str) -> None:
    decision = admit(view(**kw), CONFIG)
    assert (decision.action, decision.cause) == (action, cause), decision.reason


def test_the_bound_is_learned_from_the_service_time_above_its_floor() -> None:
    assert wait_bound_s(0.001, CONFIG) == CONFIG.min_bound_s  # a fast function: the floor
    assert wait_bound_s(10.0, CONFIG) == 40.0  # a slow one: four service times
    slow = view(service_s=10.0, capacity=1)
    assert admit(slow.__class__(**{**slow.__dict__, "waiting": 2}), CONFIG).action is Action.WAIT
    assert admit(slow.__class__(**{**slow.__dict__, "waiting": 4}), CONFIG).action is Action.SPILL


def test_a_long_wait_spills_with_its_figures() -> None:
    d = admit(view(service_s=1.0, capacity=1, waiting=10), WaitConfig(min_bound_s=0.5))
    assert d.action is Action.SPILL
    assert d.reason == "expected wait 11000 ms over the bound 4000 ms"
    assert (d.expected_wait_s, d.bound_s) == (11.0, 4.0)


@pytest.mark.parametrize(("position", "capacity", "service_s", "expected"),
                         [(1, 4, 0.1, 0.025), (8, 4, 0.1, 0.2), (1, 0, 0.1, float("inf")),
                          (3, 1, 0.0, 0.0)])
def test_expected_wait(position: int, capacity: int, service_s: float, expected: float
                       ) -> None:
    assert expected_wait_s(position, capacity, service_s) == pytest.approx(expected)


def test_a_busy_refusal_waits_again_then_spills() -> None:
    assert requeue(view(), 1, CONFIG).action is Action.WAIT
    assert requeue(view(), CONFIG.busy_retries, CONFIG).action is Action.WAIT
    d = requeue(view(), CONFIG.busy_retries + 1, CONFIG)
    assert (d.action, d.cause) == (Action.SPILL, "busy")
    assert requeue(view(ready=0, capacity=0), 1, CONFIG).cause == "cold"


@pytest.mark.parametrize(("arrived", "oldest", "ok"),
                         [(10.0, None, True), (10.0, 10.5, True), (10.0, 10.0, True),
                          (10.0, 9.9, False)])
def test_a_waiter_never_overtakes_an_older_stream_entry(arrived: float, oldest: float | None,
                                                          ok: bool) -> None:
    assert may_take_slot(arrived, oldest) is ok


def test_the_share_shrinks_on_busy_and_grows_back_to_the_whole_limit() -> None:
    share = share_after_busy(3)  # refused while 3 of ours ran there
    assert share == 3.0 and usable(8, share) == 3
    assert share_after_busy(0) == 1.0  # never below one slot
    answers = 0
    current: float | None = share
    while current is not None:
        current = share_after_answer(current, 8)
        answers += 1
    assert 10 < answers < 40  # additive: about limit^2/2 - share^2/2 answers, not one
    assert usable(8, None) == 8 and share_after_answer(None, 8) is None


def test_config_names_a_bad_value() -> None:
    with pytest.raises(ValueError, match="max_waiting=-1"):
        WaitConfig(max_waiting=-1)
    with pytest.raises(ValueError, match="smoothing=0"):
        WaitConfig(smoothing=0)


# ---- the queue --------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoint(*replicas: ReplicaRoute) -> EndpointRoute:
    return EndpointRoute("ep", 1, 60.0, {r.id: r for r in replicas})


def setup(limit: int = 1) -> tuple[Waiters, ReplicaRoute, Clock, dict[str, float | None]]:
    clock = Clock()
    replica = ReplicaRoute("r1", "h:1", limit, in_flight=limit)  # full
    stream: dict[str, float | None] = {"oldest": None}
    waiters = Waiters(CONFIG, {"ep": endpoint(replica)}, lambda name: stream["oldest"], clock)
    return waiters, replica, clock, stream


async def test_freed_slots_go_to_the_oldest_waiter_first() -> None:
    waiters, replica, clock, _ = setup()
    first = waiters.join("ep")
    clock.now += 1
    second = waiters.join("ep")
    assert waiters.count("ep") == 2 and waiters.oldest_age_s("ep") == 1.0
    waiters.release("ep", replica)  # one slot frees: taken for the first, at once
    assert first.future.result() is replica and not second.future.done()
    assert replica.in_flight == 1  # the slot is the waiter's already
    waiters.release("ep", replica)
    assert second.future.result() is replica and waiters.count("ep") == 0


async def test_order_of_service_under_a_mixed_backlog() -> None:
    """Waiters here and entries in the stream: whoever came first is served first."""
    waiters, replica, clock, stream = setup()
    early = waiters.join("ep")  # at 1000
    stream["oldest"] = 1001.0  # then a request was buffered in the stream
    clock.now = 1002.0
    late = waiters.join("ep")  # after it
    waiters.release("ep", replica)
    assert early.future.result() is replica  # older than the stream's entry: goes first
    waiters.release("ep", replica)
    assert not late.future.done()  # the stream's older entry gets the slot (a puller)
    assert replica.in_flight == 0
    stream["oldest"] = None  # a reading shows the stream's entry taken
    waiters.dispatch("ep")
    assert late.future.result() is replica


async def test_a_refused_request_keeps_its_place_at_the_head() -> None:
    waiters, replica, _, _ = setup()
    queued = waiters.join("ep")
    retry = waiters.join("ep", front=True, arrived_at=900.0)
    waiters.release("ep", replica)
    assert retry.future.result() is replica and not queued.future.done()


async def test_a_waiter_past_its_bound_leaves_the_queue() -> None:
    waiters, _, _, _ = setup()
    w = waiters.join("ep")
    assert await waiters.wait("ep", w, 0.01) is None  # the caller spills it
    assert waiters.count("ep") == 0


async def test_no_ready_replica_sends_every_waiter_to_the_stream() -> None:
    waiters, replica, _, _ = setup()
    ws = [waiters.join("ep") for _ in range(3)]
    replica.healthy = False
    waiters.dispatch("ep")
    assert [w.future.result() for w in ws] == [None, None, None]


async def test_a_caller_gone_after_its_slot_was_taken_hands_it_on() -> None:
    waiters, replica, _, _ = setup()
    gone = waiters.join("ep")
    task = asyncio.ensure_future(waiters.wait("ep", gone, 10))
    await asyncio.sleep(0)
    nxt = waiters.join("ep")
    waiters.release("ep", replica)  # taken for `gone`...
    task.cancel()  # ...whose caller disconnected before it ran
    with pytest.raises(asyncio.CancelledError):
        await task
    assert nxt.future.result() is replica and replica.in_flight == 1


async def test_service_time_learned_from_answers_else_no_load() -> None:
    waiters, replica, _, _ = setup()
    ep = waiters.endpoints["ep"]
    assert waiters.service_s(ep) == 0.0
    replica.no_load_ms = 20.0
    assert waiters.service_s(ep) == 0.020
    waiters.observe("ep", 0.100)
    waiters.observe("ep", 0.200)
    assert waiters.service_s(ep) == pytest.approx(0.110)


# ---- what the platform reads ------------------------------------------------------------
def test_the_platform_counts_fresh_waiters_of_every_activator() -> None:
    import json

    from lowtide.platform.state import waiting_in_memory

    now = 5000.0
    raw = {b"a1": json.dumps({"n": 7, "oldest_s": 0.4, "at": now - 0.5}).encode(),
           b"a2": json.dumps({"n": 3, "oldest_s": 2.0, "at": now - 1.0}).encode(),
           b"dead": json.dumps({"n": 50, "oldest_s": 9.0, "at": now - 30}).encode(),
           b"bad": b"{"}
    assert waiting_in_memory(raw, now) == (10, 3.0)  # ages advanced to now
    assert waiting_in_memory({}, now) == (0, 0.0)


def test_the_backlog_reading_gives_the_oldest_untaken_entry_time() -> None:
    from lowtide.activator.backlog import Backlog

    backlog = Backlog(100)
    backlog.observe("ep", length=5, added_before=0, pending=2, oldest_at=1234.5)
    assert backlog.queued("ep") == 3 and backlog.oldest_queued_at("ep") == 1234.5
    backlog.observe("ep", length=2, added_before=0, pending=2, oldest_at=None)
    assert backlog.queued("ep") == 0 and backlog.oldest_queued_at("ep") is None
