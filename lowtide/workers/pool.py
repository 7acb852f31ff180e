"""Prewarmed generic workers: BentoML servers already running, with the packages recent cold
starts needed already imported, waiting without a function. Specializing one (POST
/lt/specialize with an endpoint's artifact) turns it into a ready replica in milliseconds, so
a scale from zero pays neither interpreter and framework start-up nor `import torch`
(Fission's pools and OpenWhisk's stem cells, with the runtime learned per host).

`pool_policy` (pure) decides the size, the packages, the refill and which worker a start
takes; `WarmPool` (thin I/O) starts, probes, hands out and stops the processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
import psutil

from .._redis import Backoff
from .pool_policy import Candidate, ColdStart, PoolPolicy, choose, covers
from .procs import stop_group

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 0.5
WAIT_POLL_S = 0.05  # a start waiting for a worker still starting probes it this often
# a worker that dies before it is ready (a broken environment, a bad BentoML config) is not
# restarted in a tight loop: the next start waits 2 s, 4 s, ... up to a minute
FAILED_START_BACKOFF = (2.0, 60.0)
START_EWMA = 0.3  # weight of the newest measured spawn-to-idle time

__all__ = ["FAILED_START_BACKOFF", "ColdStart", "PoolPolicy", "PoolWorker", "WarmPool"]


@dataclass
class PoolWorker:
    proc: subprocess.Popen[bytes]
    address: str  # host:port the agent reaches it on
    started_at: float
    ready_at: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
    preload: frozenset[str] = frozenset()  # packages it imports before it has a function
    claimed: bool = False  # a start waits for this one (still starting)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def memory_bytes(self) -> int:
        try:
            root = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0


Spawn = Callable[[frozenset[str]], PoolWorker]  # the packages it is to import


class WarmPool:
    """Thread-safe: the agent's heartbeat calls `maintain`, rq jobs call `take`."""

    def __init__(self, spawn: Spawn, policy: PoolPolicy | None = None,
                 clock: Callable[[], float] = time.time, stop_grace_s: float = 5.0,
                 cpus: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._spawn = spawn
        self.policy = policy or PoolPolicy()
        self._clock = clock
        self._grace_s = stop_grace_s
        self._cpus = cpus or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._sleep = sleep
        self.workers: list[PoolWorker] = []
        # the agent's start counts as a cold start: be ready at once
        self.cold_starts: list[ColdStart] = [ColdStart(clock())]
        self._worker_bytes: dict[frozenset[str], int] = {}
        self._start_s: dict[frozenset[str], float] = {}  # EWMA of spawn to idle, by kind
        self._http = httpx.Client(timeout=PROBE_TIMEOUT_S)
        self._failed_starts = Backoff(*FAILED_START_BACKOFF)
        self._next_start_at = 0.0

    def note_cold_start(self, packages: Iterable[str] = ()) -> None:
        with self._lock:
            now = self._clock()
            self.cold_starts = [s for s in self.cold_starts
                                if now - s.at <= self.policy.horizon_s]
            self.cold_starts.append(ColdStart(now, frozenset(packages)))

    def wanted(self) -> frozenset[str]:
        """The packages idle workers import now."""
        with self._lock:
            return self.policy.preload(self.cold_starts, self._clock())

    # ---- handing out ------------------------------------------------------------------
    def take(self, packages: Iterable[str] = (), wait: bool = True) -> PoolWorker | None:
        """An idle worker, removed from the pool: a ready one (with `packages` imported if
        one has them), else, with `wait`, one still starting when it will be ready sooner
        than a full start would be."""
        needed = frozenset(packages)
        with self._lock:
            worker = self._pick_ready(needed)
            if worker is not None or not wait:
                return worker
            waiting = self._claim_starting(needed)
            if waiting is None:
                return None
            worker, deadline = waiting
        return self._wait_for(worker, deadline)

    def _pick_ready(self, needed: frozenset[str]) -> PoolWorker | None:
        ready = [w for w in self.workers
                 if w.ready_at is not None and not w.claimed and w.alive()]
        i = choose([Candidate(w.preload, True) for w in ready], needed)
        if i is None:
            return None
        self.workers.remove(ready[i])
        return ready[i]

    def _claim_starting(self, needed: frozenset[str]) -> tuple[PoolWorker, float] | None:
        now = self._clock()
        starting = [w for w in self.workers
                    if w.ready_at is None and not w.claimed and w.alive()]
        if not starting:
            return None
        # the soonest ready, those with the packages first
        worker = min(starting, key=lambda w: (not covers(w.preload, needed),
                                              w.started_at + self._expected_start_s(w.preload)))
        remaining = max(0.0, worker.started_at + self._expected_start_s(worker.preload) - now)
        full_s = self._expected_start_s(needed)
        if not self.policy.wait_for_starting(remaining, full_s):
            return None
        worker.claimed = True
        log.info("no idle pool worker: waiting for %s (ready in about %.1f s; a new server "
                 "takes about %.1f s)", worker.address, remaining, full_s)
        # later than that, a full start had won (and the command thread is held no longer)
        return worker, now + remaining + min(full_s, self.policy.max_wait_s)

    def _wait_for(self, worker: PoolWorker, deadline: float) -> PoolWorker | None:
        while worker.alive() and self._clock() < deadline:
            self._probe_one(worker)
            with self._lock:
                if worker.ready_at is not None:
                    if worker in self.workers:
                        self.workers.remove(worker)
                    return worker
            self._sleep(WAIT_POLL_S)
        with self._lock:
            worker.claimed = False
        log.warning("pool worker %s was not ready in time; taking the full path",
                    worker.address)
        return None

    def _expected_start_s(self, kind: frozenset[str]) -> float:
        """A worker's spawn to idle: measured for this kind, else the slowest measured kind
        that imports less (it can only be slower), else the default."""
        if kind in self._start_s:
            return self._start_s[kind]
        known = [s for k, s in self._start_s.items() if k <= kind]
        return max(known) if known else self.policy.default_start_s

    # ---- upkeep -----------------------------------------------------------------------
    def maintain(self) -> None:
        """Probe starting workers, drop dead ones, and start or stop to the target: the
        planned number of workers with the wanted packages; others stay until those are
        ready (a start may still take them)."""
        self._probe()
        idle_bytes = self.idle_memory_bytes()
        with self._lock:
            self._drop_dead()
            now = self._clock()
            kind = self.policy.preload(self.cold_starts, now)
            target = self.policy.target(self.cold_starts, now,
                                        psutil.virtual_memory().available + idle_bytes,
                                        self._bytes_of(kind))
            fit = [w for w in self.workers if covers(w.preload, kind)]
            stale = [w for w in self.workers if not covers(w.preload, kind)]
            fit_ready = sum(1 for w in fit if w.ready_at is not None)
            extra = [w for w in fit[target:] if not w.claimed]
            if fit_ready >= target:  # replaced: the others go
                extra += [w for w in stale if not w.claimed]
            starting = sum(1 for w in self.workers if w.ready_at is None)
            spawn = self.policy.starts_now(target - len(fit), starting, self._cpus)
            if now < self._next_start_at:
                spawn = 0
            for w in extra:
                self.workers.remove(w)
        for w in extra:
            stop_group(w.proc, self._grace_s)
        for _ in range(spawn):
            worker = self._spawn(kind)
            worker.preload = kind
            with self._lock:
                self.workers.append(worker)

    def _drop_dead(self) -> None:
        for w in [w for w in self.workers if not w.alive()]:
            self.workers.remove(w)
            if w.ready_at is None:
                wait_s = self._failed_starts.next_s()
                self._next_start_at = self._clock() + wait_s
                log.warning("pool worker %s exited with code %s before it was ready; "
                            "next start in %g s (its output is in the agent's log)",
                            w.address, w.proc.returncode, wait_s)
            else:
                log.warning("pool worker %s exited with code %s", w.address,
                            w.proc.returncode)

    def _bytes_of(self, kind: frozenset[str]) -> int:
        if kind in self._worker_bytes:
            return self._worker_bytes[kind]
        known = [b for k, b in self._worker_bytes.items() if k <= kind]
        return max(known) if known else 0

    def _probe(self) -> None:
        with self._lock:
            starting = [w for w in self.workers if w.ready_at is None and w.alive()]
        for w in starting:
            self._probe_one(w)

    def _probe_one(self, w: PoolWorker) -> None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = self._http.get(f"http://{w.address}/lt/healthz")
            if r.status_code != 200 or r.json().get("status") != "idle":
                return
            memory = w.memory_bytes()
            with self._lock:
                if w.ready_at is not None:
                    return
                w.ready_at = self._clock()
                took = w.ready_at - w.started_at
                self._failed_starts.reset()
                self._worker_bytes[w.preload] = max(self._worker_bytes.get(w.preload, 0),
                                                    memory)
                old = self._start_s.get(w.preload)
                self._start_s[w.preload] = took if old is None else (
                    START_EWMA * took + (1 - START_EWMA) * old)
            log.info("pool worker %s idle after %.1f s (preloaded: %s)", w.address, took,
                     ", ".join(sorted(w.preload)) or "nothing learned")

    def idle_memory_bytes(self) -> int:
        with self._lock:
            workers = list(self.workers)
        return sum(w.memory_bytes() for w in workers)

    def size(self) -> tuple[int, int]:
        """(ready, starting) idle workers."""
        with self._lock:
            ready = sum(1 for w in self.workers if w.ready_at is not None)
            return ready, len(self.workers) - ready

    def ready_packages(self) -> list[str]:
        """Packages some ready idle worker has imported."""
        with self._lock:
            return sorted({p for w in self.workers if w.ready_at is not None
                           for p in w.preload})

    def stop_all(self) -> None:
        with self._lock:
            workers, self.workers = self.workers, []
        threads = [threading.Thread(target=stop_group, args=(w.proc, self._grace_s))
                   for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._http.close()
