"""Pure pieces of the fault handling: retry backoff, and the scaler's grace for heartbeats
that Redis could not take while it was away (fake clock, no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from lowtide._redis import Backoff
from lowtide.platform.hostwatch import ALIVE_GRACE_S
from lowtide.platform.replicas import BUSY_CORES, BUSY_SILENCE_S
from lowtide.platform.scaler import Scaler, ScalerSettings
from lowtide.platform.state import ReplicaRecord


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(first_s=0.1, max_s=1.0)
    assert [b.next_s() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    b.reset()
    assert b.next_s() == pytest.approx(0.1)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("since_redis_failed_s", "lost"), [
    (None, True),  # Redis never failed: a silent ready replica is lost
    (1.0, False),  # Redis just came back: its heartbeat may not have been written yet
    (ALIVE_GRACE_S - 0.1, False),
    (ALIVE_GRACE_S + 0.1, True),  # the grace is over and it still does not beat
])
async def test_a_replica_is_not_lost_for_heartbeats_redis_could_not_take(
    since_redis_failed_s: float | None, lost: bool
) -> None:
    clock = Clock(1000.0)
    scaler = Scaler(None, None, ScalerSettings(), clock=clock)  # type: ignore[arg-type]
    if since_redis_failed_s is not None:
        clock.now -= since_redis_failed_s
        scaler.hosts.redis_failed()
        clock.now += since_redis_failed_s
    silent = ReplicaRecord(id="r-1", version=1, state="ready", host="h", created_at=900.0,
                           ready_at=900.0, alive=None)
    problem = await scaler.replicas.problem(silent, {"h": {}}, clock.now)
    assert (problem is not None) == lost, problem
    if lost:
        assert "lost" in problem


def _silent_replica() -> ReplicaRecord:
    return ReplicaRecord(id="r-1", version=1, state="ready", host="h", created_at=900.0,
                         ready_at=900.0, alive=None)


@pytest.mark.parametrize(("cores", "silent_s", "lost"), [
    (1.0, 10.0, False),  # starved of the GIL by its own threads, but working
    (1.0, BUSY_SILENCE_S - ALIVE_GRACE_S - 1, False),  # (it was silent before it was seen)
    (1.0, BUSY_SILENCE_S + 1, True),  # that long without a beat: hung
    (0.0, 1.0, True),  # an idle process without heartbeat: lost at the usual grace
    (None, 1.0, True),  # the agent does not see its process
])
async def test_a_silent_replica_whose_process_is_busy_gets_longer(
    cores: float | None, silent_s: float, lost: bool
) -> None:
    clock = Clock(1000.0)
    scaler = Scaler(None, None, ScalerSettings(), clock=clock)  # type: ignore[arg-type]
    r = _silent_replica()

    def hosts() -> dict[str, Any]:
        usage = {} if cores is None else {"r-1": cores}
        return {"h": {"load": {"at": clock.now - 0.5, "replica_cpu_cores": usage}}}

    first = await scaler.replicas.problem(r, hosts(), clock.now)  # first seen without a beat
    if cores is None or cores < BUSY_CORES:
        assert first is not None and "lost" in first
        return
    assert first is None
    clock.now += silent_s
    problem = await scaler.replicas.problem(r, hosts(), clock.now)
    assert (problem is not None) == lost, problem
    if lost:
        assert "hung" in problem


async def test_a_busy_replica_is_only_spared_while_its_host_reports_it() -> None:
    clock = Clock(1000.0)
    scaler = Scaler(None, None, ScalerSettings(), clock=clock)  # type: ignore[arg-type]
    r = _silent_replica()
    busy = {"h": {"load": {"at": clock.now, "replica_cpu_cores": {"r-1": 1.0}}}}
    assert await scaler.replicas.problem(r, busy, clock.now) is None
    clock.now += 15.0  # the host's last beat is now stale: no one vouches for the process
    problem = await scaler.replicas.problem(r, busy, clock.now)
    assert problem is not None and "no heartbeat" in problem
