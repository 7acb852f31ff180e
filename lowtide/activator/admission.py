"""Where a synchronous request goes when it arrives: straight to a replica, into this
activator's memory to wait for a replica slot, or into the endpoint's Redis stream.

Pure: the caller passes what it sees (ready replicas and their room, how many wait here,
what the stream holds untaken as last read, the endpoint's service time) and gets a
`Admission` with its reason; nothing here reads a clock or does I/O.

- **Direct** when a replica has room and nobody waits ahead (in memory or in the stream).
- **Wait in memory** (Knative's breaker: a bounded queue, the first free slot goes to the
  oldest waiter) when the endpoint has ready replicas, all at their limit or with requests
  waiting untaken in the stream, and the expected wait is short. A synchronous caller
  gains nothing from a durable buffer for a short wait: if this activator dies, its
  caller's connection dies with it either way; and the Redis path's commands take CPU from
  the replicas at exactly the moment they are the bottleneck.
- **Spill to the stream** (durable, shared by every replica and activator) when there is no
  ready replica (cold or starting: the stream wakes the platform), when this activator's
  queue for the endpoint is at its bound, or when the expected wait is longer than the wait
  bound. Async calls always go to the stream (app.py never asks).

Expected wait (Little's law): the waiter's position (behind the waiters here and the
stream's untaken entries) times the service time, divided by the slots this activator may
use (the replicas' learned limits, or its learned share of them, plus the one call each
replica holds for a slot: the service time is measured here, hold included).

Wait bound: `service_times` times the endpoint's service time (the latency of its direct
calls through this activator, a moving average; the replicas' no-load latency before any),
and never below `min_bound_s`. For a function of a second or more the learned term decides
(a caller waits up to about four calls' time in memory); for a fast function the floor
does. A closed loop of 512 callers on one replica of a 1 ms function waits about 250 ms
per call however it is queued, and sending the part over a few milliseconds through the
stream instead (XADD, XREADGROUP, result, reply) cost the replica a quarter of its
throughput. The floor is about the autoscaler's panic window: demand that waits that long
has been seen (waiters are flushed as queued each second) and replicas are being added.

First come, first served with the stream (`may_take_slot`): a freed slot goes to the
oldest waiter here only if no entry in the stream waits untaken since before it arrived
(as last read, at most `backlog.QUEUED_REFRESH_S` old, by the entry id's time); otherwise
this activator leaves the slot to the replicas' stream pullers, which take the older
entries first. So neither queue overtakes the other by more than that staleness (and the
clock skew between Redis and the activator's host), and a backlog in the stream drains
while new arrivals wait in memory behind it, instead of every arrival joining the stream
for as long as it holds anything (the closed loop that kept saturated endpoints on the
buffered path). A waiter not served within its wait bound moves to the stream's tail.

Shared replicas (several activators, or `--workers N`): each activator counts only its own
requests on a replica, so it can find it full of others' work. A direct call the replica
refuses as busy (503 with X-Lowtide-Busy; nothing ran) cuts this activator's share of the
replica to what it had running there, and every answered call grows the share back by
1/share (additive increase, multiplicative decrease, as TCP shares a link); the refused
request waits again at the head of the queue, up to `busy_retries` times, then spills.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class WaitConfig:
    service_times: float = 4.0  # the wait bound, in service times of the endpoint
    min_bound_s: float = 5.0  # never spill a shorter expected wait (see the module doc)
    max_waiting: int = 1000  # waiters per endpoint in one activator; spill above
    smoothing: float = 0.1  # weight of a new latency sample in the service time
    busy_retries: int = 3  # refused as busy this often, a request spills

    def __post_init__(self) -> None:
        if not 1 <= self.service_times <= 1000:
            raise ValueError(f"service_times={self.service_times} must be in [1, 1000]")
        if not 0 <= self.min_bound_s <= 3600:
            raise ValueError(f"min_bound_s={self.min_bound_s} must be in [0, 3600]")
        if not 0 <= self.max_waiting <= 1_000_000:
            raise ValueError(f"max_waiting={self.max_waiting} must be in [0, 1000000]")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing={self.smoothing} must be in (0, 1]")
        if not 0 <= self.busy_retries <= 100:
            raise ValueError(f"busy_retries={self.busy_retries} must be in [0, 100]")


class Action(enum.Enum):
    DIRECT = "direct"
    WAIT = "wait"
    SPILL = "spill"


@dataclass(frozen=True)
class Admission:
    action: Action
    cause: str  # a short name for metrics: direct, wait, cold, backlog, bound, long-wait, busy
    reason: str
    expected_wait_s: float = 0.0
    bound_s: float = 0.0  # how long a waiter may wait in memory before it spills


@dataclass(frozen=True)
class View:
    """What the activator sees of an endpoint when a request arrives."""

    ready: int  # healthy replicas
    capacity: int  # slots this activator may use on them (limits, or its shares)
    open_slot: bool  # some replica has room now
    waiting: int  # requests waiting in this activator's memory for the endpoint
    stream_queued: int  # entries in the stream no replica had taken, as last read
    # (the direct path and the wait both stand behind them)
    service_s: float  # the endpoint's service time (seconds per call)


def expected_wait_s(position: int, capacity: int, service_s: float) -> float:
    """How long the `position`-th waiter waits for a slot when `capacity` slots each free
    up once per `service_s` (Little's law)."""
    if capacity <= 0:
        return float("inf")
    return position * service_s / capacity


def wait_bound_s(service_s: float, config: WaitConfig) -> float:
    return max(config.min_bound_s, config.service_times * service_s)


def admit(view: View, config: WaitConfig) -> Admission:
    if view.ready == 0 or view.capacity <= 0:
        return Admission(Action.SPILL, "cold", "no ready replica")
    if view.open_slot and view.waiting == 0 and view.stream_queued == 0:
        return Admission(Action.DIRECT, "direct", "a replica has room")
    if view.waiting >= config.max_waiting:
        return Admission(Action.SPILL, "bound", f"{view.waiting} request(s) wait here, the "
                         f"bound is {config.max_waiting}")
    bound = wait_bound_s(view.service_s, config)
    ahead = view.waiting + view.stream_queued
    expected = expected_wait_s(ahead + 1, view.capacity, view.service_s)
    if expected > bound:
        return Admission(Action.SPILL, "long-wait", f"expected wait {expected * 1000:.0f} ms "
                         f"over the bound {bound * 1000:.0f} ms", expected, bound)
    return Admission(Action.WAIT, "wait", f"{ahead} request(s) ahead, all {view.ready} "
                     f"replica(s) at their limit; expected wait {expected * 1000:.0f} ms",
                     expected, bound)


def may_take_slot(arrived_at: float, stream_oldest_at: float | None) -> bool:
    """Whether the oldest waiter here may take a freed slot: not while the stream holds an
    untaken entry added before it arrived (that one goes first, through a puller)."""
    return stream_oldest_at is None or arrived_at <= stream_oldest_at


def requeue(view: View, refusals: int, config: WaitConfig) -> Admission:
    """A request the replica refused as busy: wait again at the head of the queue (it keeps
    its place), unless there is nothing to wait for or it was refused too often."""
    if view.ready == 0 or view.capacity <= 0:
        return Admission(Action.SPILL, "cold", "no ready replica")
    if refusals > config.busy_retries:
        return Admission(Action.SPILL, "busy", f"refused as busy {refusals} times")
    bound = wait_bound_s(view.service_s, config)
    return Admission(Action.WAIT, "wait", "the replica was busy with other work", 0.0, bound)


# ---- what this activator learns per endpoint and per replica ---------------------------
def smoothed(previous_s: float | None, sample_s: float, config: WaitConfig) -> float:
    """The service time after one more direct call took `sample_s`."""
    if previous_s is None:
        return sample_s
    return previous_s + config.smoothing * (sample_s - previous_s)


def share_after_busy(in_flight: int) -> float:
    """The replica refused a call while this activator had `in_flight` others running
    there: that is all of it this activator can count on now (at least one slot)."""
    return float(max(1, in_flight))


def share_after_answer(share: float | None, limit: int) -> float | None:
    """One more answered call grows the share by 1/share; None once it reaches the
    replica's whole limit (no share: the limit alone bounds this activator)."""
    if share is None:
        return None
    grown = share + 1.0 / share
    return None if grown >= limit else grown


def usable(limit: int, share: float | None) -> int:
    """Slots of a replica this activator may fill: its limit, or its share when lower."""
    if share is None:
        return limit
    return max(1, min(limit, int(share)))
