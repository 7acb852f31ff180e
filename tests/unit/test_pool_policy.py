"""The prewarmed pool matches the runtime and bursts (fake clock, fake processes): it keeps
as many idle workers as the largest recent burst of cold starts, imports the packages recent
cold starts referenced, replaces workers of an old kind only once new ones are ready, hands
out the worker with the endpoint's packages, and a start that finds only a worker still
starting waits for it when it will be ready sooner than a new server."""

from __future__ import annotations

from typing import Any

import pytest

from lowtide.workers import pool as pool_module
from lowtide.workers.pool import PoolWorker, WarmPool
from lowtide.workers.pool_policy import Candidate, ColdStart, PoolPolicy, choose
from tests.unit.test_pool import Clock, Http, Proc

GI = 2**30
TORCH = frozenset({"torch"})


def starts(*at: float, packages: frozenset[str] = frozenset()) -> list[ColdStart]:
    return [ColdStart(t, packages) for t in at]


# ---- pure decisions -------------------------------------------------------------------
def test_the_pool_is_sized_for_the_largest_recent_burst() -> None:
    p = PoolPolicy(max_idle=4, burst_s=10, busy_window_s=60)
    assert p.burst(starts(0, 1, 2, 30), now=40) == 3
    assert p.target(starts(0, 1, 2, 30), 40, 64 * GI, GI) == 3
    assert p.target(starts(0, 30), 40, 64 * GI, GI) == 1  # one at a time: one worker
    assert p.target(starts(*range(10)), 10, 64 * GI, GI) == 4  # at most max_idle
    assert p.target(starts(0, 1, 2), 100, 64 * GI, GI) == 1  # burst out of the window
    assert p.target(starts(0, 1, 2), 603, 64 * GI, GI) == 0  # quiet for the horizon
    assert p.target([], 0, 64 * GI, GI) == 0


def test_the_pool_stays_within_its_memory_share() -> None:
    p = PoolPolicy(max_idle=4, memory_fraction=0.25)
    burst = starts(0, 1, 2, 3)
    assert p.target(burst, 5, 8 * GI, GI) == 2  # a quarter of 8 GiB holds two 1 GiB workers
    assert p.target(burst, 5, 2 * GI, GI) == 0  # not even one fits
    assert p.target(burst, 5, 8 * GI, 0) == 4  # unmeasured: the default size (300 MiB)


def test_preload_is_what_recent_cold_starts_referenced_most_used_first() -> None:
    p = PoolPolicy(max_preload=2, horizon_s=600)
    history = [ColdStart(0, frozenset({"sklearn"})), ColdStart(10, frozenset({"torch"})),
               ColdStart(20, frozenset({"torch", "sentence_transformers"})),
               ColdStart(30, frozenset({"numpy"}))]
    assert p.preload(history, 40) == {"torch", "numpy"}  # torch twice; numpy most recent
    assert p.preload(history, 615) == {"numpy", "sentence_transformers"}  # sklearn aged out
    assert p.preload([], 0) == frozenset()


def test_refills_run_in_parallel_where_cores_allow() -> None:
    p = PoolPolicy(max_parallel_starts=4)
    assert p.starts_now(missing=3, starting=0, cpus=2) == 1  # a small host: one at a time
    assert p.starts_now(missing=3, starting=0, cpus=16) == 3
    assert p.starts_now(missing=3, starting=2, cpus=8) == 2
    assert p.starts_now(missing=0, starting=0, cpus=16) == 0
    assert p.starts_now(missing=-2, starting=0, cpus=16) == 0


def test_a_start_waits_for_a_starting_worker_only_when_it_is_sooner() -> None:
    p = PoolPolicy()
    assert p.wait_for_starting(remaining_s=3.6, full_start_s=9.0)
    assert not p.wait_for_starting(remaining_s=9.5, full_start_s=9.0)
    assert not p.wait_for_starting(remaining_s=12.0, full_start_s=30.0)  # at most max_wait_s


def test_a_start_takes_the_worker_with_its_packages() -> None:
    base, torch = frozenset(), TORCH
    both = frozenset({"torch", "sklearn"})
    workers = [Candidate(base, True), Candidate(both, True), Candidate(torch, True)]
    assert choose(workers, {"torch"}) == 2  # has it, and imported least
    assert choose(workers, {"sklearn"}) == 1
    assert choose(workers, set()) == 0
    assert choose([Candidate(base, True), Candidate(torch, False)], {"torch"}) == 0  # ready
    assert choose([Candidate(torch, False)], {"torch"}) is None


# ---- the pool, on a fake clock --------------------------------------------------------
class Pool:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, cpus: int = 2,
                 policy: PoolPolicy | None = None) -> None:
        self.clock = Clock()
        self.spawned: list[PoolWorker] = []
        self.stopped: list[PoolWorker] = []
        self.http = Http()
        monkeypatch.setattr(pool_module, "stop_group", self._stop)
        self.pool = WarmPool(self._spawn, policy or PoolPolicy(), clock=self.clock, cpus=cpus,
                             sleep=self._sleep)
        self.pool._http = self.http  # type: ignore[assignment]
        self.ready_after_s = 5.0  # a spawned worker answers idle this long after its spawn

    def _spawn(self, packages: frozenset[str]) -> PoolWorker:
        w = PoolWorker(Proc(), f"127.0.0.1:{len(self.spawned)}",  # type: ignore[arg-type]
                       self.clock(), preload=packages)
        self.spawned.append(w)
        return w

    def _stop(self, proc: Any, grace_s: float) -> int:
        self.stopped.extend(w for w in self.spawned if w.proc is proc)
        proc.returncode = -15
        return -15

    def _sleep(self, s: float) -> None:
        self.tick(s)

    def tick(self, s: float) -> None:
        self.clock.now += s
        for w in self.spawned:
            if self.clock.now - w.started_at >= self.ready_after_s:
                self.http.idle.add(w.address)

    def run(self, seconds: int) -> None:
        """The agent's heartbeat: maintain once a second."""
        for _ in range(seconds):
            self.pool.maintain()
            self.tick(1.0)
        self.pool.maintain()


def test_the_pool_learns_the_packages_and_replaces_old_workers_once_new_ones_are_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = Pool(monkeypatch)
    f.run(12)  # ready; the agent's start (a cold start) is no burst with the next ones
    assert [w.preload for w in f.pool.workers] == [frozenset()]  # nothing learned yet
    old = f.pool.workers[0]
    f.pool.note_cold_start(TORCH)  # a torch endpoint started (the old worker served it)
    assert f.pool.take(TORCH) is old
    f.pool.note_cold_start(TORCH)
    f.run(1)
    assert f.spawned[-1].preload == TORCH
    f.run(10)
    assert f.pool.ready_packages() == ["torch"]
    assert all(w.preload == TORCH for w in f.pool.workers)
    assert f.pool.take({"torch"}).preload == TORCH  # type: ignore[union-attr]


def test_a_stale_worker_serves_until_its_replacement_is_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = Pool(monkeypatch)
    f.run(12)  # ready; the agent's start (a cold start) is no burst with the next ones
    old = f.pool.workers[0]
    f.pool.note_cold_start(TORCH)
    f.run(1)  # a torch worker is starting; the old one stays meanwhile
    assert old in f.pool.workers and old not in f.stopped
    f.run(6)
    assert old in f.stopped and old not in f.pool.workers


def test_a_burst_of_cold_starts_grows_the_pool_and_refills_in_parallel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = Pool(monkeypatch, cpus=16)
    f.run(12)
    taken = []
    for _ in range(3):  # three endpoints cold at once: one idle worker for them
        f.pool.note_cold_start()
        taken.append(f.pool.take(wait=False))
    assert taken[0] is not None and taken[1:] == [None, None]
    f.pool.maintain()
    starting = [w for w in f.pool.workers if w.ready_at is None]
    assert len(starting) == 3  # sized for the burst, started together
    f.run(6)
    assert f.pool.size() == (3, 0)


def test_a_start_waits_for_a_worker_that_will_be_ready_sooner_than_a_new_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = Pool(monkeypatch)
    f.ready_after_s = 8.0
    f.run(9)  # one measured start: 8 s
    f.pool.note_cold_start()
    assert f.pool.take() is not None
    f.pool.maintain()  # the refill starts now
    f.tick(3.0)  # 5 s from ready; a new server takes about 8 s
    before = f.clock.now
    worker = f.pool.take()
    assert worker is f.spawned[-1]
    assert 4.9 <= f.clock.now - before <= 5.2  # it waited for that worker, no longer
    assert worker not in f.pool.workers


def test_a_start_does_not_wait_for_a_worker_a_new_server_would_beat(
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = Pool(monkeypatch)
    f.ready_after_s = 8.0
    f.run(9)
    assert f.pool.take() is not None
    f.pool.note_cold_start()
    f.pool.maintain()
    f.ready_after_s = 60.0  # this one hangs
    f.spawned[-1].started_at = f.clock.now + 1  # and is further away than a new server
    assert f.pool.take() is None  # the full path, at once


def test_a_waiting_start_gives_up_on_a_worker_that_dies(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    f = Pool(monkeypatch)
    f.ready_after_s = 8.0
    f.run(9)
    assert f.pool.take() is not None
    f.pool.maintain()
    f.ready_after_s = 60.0
    starting = f.spawned[-1]

    def dies(s: float) -> None:
        f.tick(s)
        starting.proc.returncode = 1  # type: ignore[misc]

    f.pool._sleep = dies
    before = f.clock.now
    assert f.pool.take() is None
    assert f.clock.now - before < 1.0
