"""The prewarmed pool's restarts (fake clock, fake processes): a worker that dies before it
is ready is started again after a growing wait, not in a tight loop; a ready one resets it."""

from __future__ import annotations

import itertools
from typing import Any

from lowtide.workers.pool import FAILED_START_BACKOFF, PoolPolicy, PoolWorker, WarmPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Proc:
    """What the pool asks of a process: poll(), returncode, a pid (of no process)."""

    pid = 2**22 + 1  # above Linux's largest pid

    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def make_pool(clock: Clock) -> tuple[WarmPool, list[PoolWorker]]:
    spawned: list[PoolWorker] = []

    def spawn(packages: frozenset[str]) -> PoolWorker:
        w = PoolWorker(Proc(), f"127.0.0.1:{len(spawned)}", clock(),  # type: ignore[arg-type]
                       preload=packages)
        spawned.append(w)
        return w

    pool = WarmPool(spawn, PoolPolicy(max_idle=1), clock=clock)
    return pool, spawned


def die(w: PoolWorker) -> None:
    w.proc.returncode = 1  # type: ignore[misc]


def maintain_until(pool: WarmPool, clock: Clock, spawned: list[PoolWorker], n: int,
                   limit_s: float = 1000.0) -> float:
    """Call maintain each second (as the agent's heartbeat does) until the n-th start;
    return when it happened."""
    end = clock.now + limit_s
    while len(spawned) < n:
        assert clock.now < end, f"no start {n} within {limit_s:g} s"
        pool.maintain()
        if len(spawned) >= n:
            return clock.now
        clock.now += 1.0
    return clock.now


class Http:
    """The health probe: workers at the addresses in `idle` answer that they are idle."""

    def __init__(self) -> None:
        self.idle: set[str] = set()

    def get(self, url: str) -> Any:
        address = url.split("/")[2]
        status = "idle" if address in self.idle else "starting"

        class Response:
            status_code = 200

            def json(self) -> dict[str, str]:
                return {"status": status}

        return Response()


def test_failed_starts_back_off_and_a_ready_worker_resets_the_wait() -> None:
    clock = Clock()
    pool, spawned = make_pool(clock)
    http = pool._http = Http()  # type: ignore[assignment]
    first_s, max_s = FAILED_START_BACKOFF

    pool.maintain()
    assert len(spawned) == 1  # the agent's start counts as a cold start: one idle worker
    starts = [clock.now]
    for n in range(2, 9):
        die(spawned[-1])  # before it was ready
        starts.append(maintain_until(pool, clock, spawned, n))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= first_s
    assert all(b >= a for a, b in itertools.pairwise(gaps)), gaps  # growing
    assert gaps[-1] >= max_s and max(gaps) <= max_s + 1, gaps  # up to the cap

    http.idle.add(spawned[-1].address)  # this one comes up
    pool.maintain()
    assert spawned[-1].ready_at is not None
    die(spawned[-1])  # a ready worker that dies is no failed start: replaced at once
    n = len(spawned)
    pool.maintain()
    assert len(spawned) == n + 1
    die(spawned[-1])  # and the wait after the next failure starts from the first again
    before = clock.now
    after = maintain_until(pool, clock, spawned, n + 2)
    assert first_s <= after - before <= first_s + 1


def test_a_healthy_pool_starts_without_waiting() -> None:
    clock = Clock()
    pool, spawned = make_pool(clock)
    pool.maintain()
    assert len(spawned) == 1
