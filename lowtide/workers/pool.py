"""Prewarmed generic workers: BentoML servers already running, with the common imports
loaded, waiting without a function. Specializing one (POST /lt/specialize with an endpoint's
artifact) turns it into a ready replica in milliseconds, so a scale from zero does not pay
for interpreter and framework start-up (Fission's pools and OpenWhisk's stem cells).

`PoolPolicy.target` (pure) sizes the pool from the host's recent cold starts and its free
memory; `WarmPool` (thin I/O) starts, probes, hands out and stops the processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import psutil

from .._redis import Backoff
from .procs import stop_group

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 0.5
# a worker that dies before it is ready (a broken environment, a bad BentoML config) is not
# restarted in a tight loop: the next start waits 2 s, 4 s, ... up to a minute
FAILED_START_BACKOFF = (2.0, 60.0)


@dataclass(frozen=True)
class PoolPolicy:
    max_idle: int = 2
    busy_window_s: float = 60.0  # cold starts counted over this window set the pool size
    horizon_s: float = 600.0  # no cold start for this long: keep no idle worker
    memory_fraction: float = 0.25  # of the host's available memory idle workers may hold
    default_worker_bytes: int = 300 * 2**20  # until one is measured

    def target(self, cold_starts: Sequence[float], now: float, available_bytes: int,
               worker_bytes: int) -> int:
        """How many idle workers to keep: at least one while cold starts happen, one more
        per cold start in the busy window, none after a quiet horizon, within memory."""
        if not cold_starts or now - max(cold_starts) > self.horizon_s:
            return 0
        recent = sum(1 for t in cold_starts if now - t <= self.busy_window_s)
        want = min(self.max_idle, max(1, recent))
        per_worker = worker_bytes or self.default_worker_bytes
        fits = math.floor(available_bytes * self.memory_fraction / per_worker)
        return max(0, min(want, fits))


@dataclass
class PoolWorker:
    proc: subprocess.Popen[bytes]
    address: str  # host:port the agent reaches it on
    started_at: float
    ready_at: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def memory_bytes(self) -> int:
        try:
            root = psutil.Process(self.proc.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0


Spawn = Callable[[], PoolWorker]


class WarmPool:
    """Thread-safe: the agent's heartbeat calls `maintain`, rq jobs call `take`."""

    def __init__(self, spawn: Spawn, policy: PoolPolicy | None = None,
                 clock: Callable[[], float] = time.time, stop_grace_s: float = 5.0) -> None:
        self._spawn = spawn
        self.policy = policy or PoolPolicy()
        self._clock = clock
        self._grace_s = stop_grace_s
        self._lock = threading.Lock()
        self.workers: list[PoolWorker] = []
        self.cold_starts: list[float] = [clock()]  # the agent's start counts: be ready at once
        self._worker_bytes = 0
        self._http = httpx.Client(timeout=PROBE_TIMEOUT_S)
        self._failed_starts = Backoff(*FAILED_START_BACKOFF)
        self._next_start_at = 0.0

    def note_cold_start(self) -> None:
        with self._lock:
            now = self._clock()
            self.cold_starts = [t for t in self.cold_starts
                                if now - t <= self.policy.horizon_s] + [now]

    def take(self) -> PoolWorker | None:
        """An idle worker that answers its health probe, removed from the pool."""
        with self._lock:
            ready = [w for w in self.workers if w.ready_at is not None and w.alive()]
            if not ready:
                return None
            worker = ready[0]
            self.workers.remove(worker)
        return worker

    def maintain(self) -> None:
        """Probe starting workers, drop dead ones, and start or stop to the target size."""
        self._probe()
        with self._lock:
            dead = [w for w in self.workers if not w.alive()]
            for w in dead:
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
            target = self.policy.target(self.cold_starts, self._clock(),
                                        psutil.virtual_memory().available, self._worker_bytes)
            missing = target - len(self.workers)
            extra = self.workers[target:] if missing < 0 else []
            # one start at a time: a burst of server starts would starve a small host
            if (any(w.ready_at is None for w in self.workers)
                    or self._clock() < self._next_start_at):
                missing = min(missing, 0)
            for w in extra:
                self.workers.remove(w)
        for w in extra:
            stop_group(w.proc, self._grace_s)
        if missing > 0:
            worker = self._spawn()
            with self._lock:
                self.workers.append(worker)

    def _probe(self) -> None:
        with self._lock:
            starting = [w for w in self.workers if w.ready_at is None and w.alive()]
        for w in starting:
            with contextlib.suppress(httpx.HTTPError):
                r = self._http.get(f"http://{w.address}/lt/healthz")
                if r.status_code == 200 and r.json().get("status") == "idle":
                    w.ready_at = self._clock()
                    self._failed_starts.reset()
                    self._worker_bytes = max(self._worker_bytes, w.memory_bytes())
                    log.info("pool worker %s idle after %.1f s", w.address,
                             w.ready_at - w.started_at)

    def idle_memory_bytes(self) -> int:
        with self._lock:
            workers = list(self.workers)
        return sum(w.memory_bytes() for w in workers)

    def size(self) -> tuple[int, int]:
        """(ready, starting) idle workers."""
        with self._lock:
            ready = sum(1 for w in self.workers if w.ready_at is not None)
            return ready, len(self.workers) - ready

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
