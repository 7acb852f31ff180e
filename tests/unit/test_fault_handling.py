"""Pure pieces of the fault handling: retry backoff, and the scaler's grace for heartbeats
that Redis could not take while it was away (fake clock, no Redis)."""

from __future__ import annotations

import pytest

from lowtide._redis import Backoff
from lowtide.platform.scaler import ALIVE_GRACE_S, Scaler, ScalerSettings
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
        scaler._redis_failed()
        clock.now += since_redis_failed_s
    silent = ReplicaRecord(id="r-1", version=1, state="ready", host="h", created_at=900.0,
                           ready_at=900.0, alive=None)
    problem = await scaler._problem(silent, {"h": {}}, clock.now)
    assert (problem is not None) == lost, problem
    if lost:
        assert "lost" in problem
