"""A replica's slots: a direct call over the limit is held for a slot, briefly and first
come first served, before it is refused as busy (`Slots.acquire_within`); and the activator
keeps one call more than the limit in flight on a replica that holds one."""

from __future__ import annotations

import asyncio

import pytest

from lowtide.activator.routes import ReplicaRoute
from lowtide.limiter import ADMIT_HEADER, HOLD_HEADER, LIMIT_HEADER
from lowtide.workers.slots import Slots


async def test_a_held_call_takes_the_next_freed_slot_in_order() -> None:
    slots = Slots(1)
    assert await slots.acquire_within(1.0)  # free: at once
    first = asyncio.ensure_future(slots.acquire_within(5.0))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(slots.acquire_within(5.0))
    await asyncio.sleep(0)
    assert slots.held() == 2 and not first.done()
    slots.release()  # handed to the first at once: never free for a stream puller
    assert slots.free() == 0 and slots.in_use == 1
    assert await first and not second.done()
    assert not slots.try_acquire()  # a newcomer cannot overtake the one still held
    slots.release()
    assert await second and slots.held() == 0


async def test_a_call_held_past_its_bound_is_refused_and_leaves_the_queue() -> None:
    slots = Slots(1)
    slots.acquire()
    assert not await slots.acquire_within(0.01)
    assert not await slots.acquire_within(0.0)  # no hold: refused at once
    assert slots.held() == 0 and slots.in_use == 1
    slots.release()
    assert slots.free() == 1  # nobody was handed the slot


async def test_a_slot_handed_to_a_caller_that_went_away_passes_on() -> None:
    slots = Slots(1)
    slots.acquire()
    gone = asyncio.ensure_future(slots.acquire_within(5.0))
    await asyncio.sleep(0)
    nxt = asyncio.ensure_future(slots.acquire_within(5.0))
    await asyncio.sleep(0)
    slots.release()  # taken for `gone`...
    gone.cancel()  # ...whose caller disconnected before it ran
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await nxt and slots.in_use == 1 and slots.held() == 0


async def test_a_grown_limit_lets_held_calls_in() -> None:
    slots = Slots(1)
    slots.acquire()
    held = asyncio.ensure_future(slots.acquire_within(5.0))
    await asyncio.sleep(0)
    slots.set_limit(2)
    assert await held and slots.in_use == 2


def test_the_activator_keeps_one_more_in_flight_on_a_replica_that_holds() -> None:
    replica = ReplicaRoute("r1", "h:1", 4, in_flight=4)
    assert replica.room() == 0 and replica.slots() == 4
    replica.observe({LIMIT_HEADER.lower(): "4", HOLD_HEADER.lower(): "12.5"})
    assert replica.room() == 1  # held there until a slot frees, no round trip idle
    assert replica.slots() == 5  # what an expected wait divides by
    # re-probing: it admits one call at a time, the learned limit stands for the wait
    replica.observe({LIMIT_HEADER.lower(): "4", HOLD_HEADER.lower(): "12.5",
                     ADMIT_HEADER.lower(): "1"})
    assert replica.room() == 2 - 4 and replica.slots() == 5
    replica.observe({LIMIT_HEADER.lower(): "4", HOLD_HEADER.lower(): "0.000"})
    assert replica.room() == 0  # no hold known (nothing measured yet): the limit alone
