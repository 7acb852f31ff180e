"""The host agent: registers the host, runs rq jobs from its queue (build, start and stop
replicas), supervises replica processes, captures their output, and heartbeats.

Threads, not asyncio: rq jobs are synchronous. The main thread owns the heartbeat and the
supervision loop; rq runs in one worker thread; each replica has one log-pump thread.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.timeouts import TimerDeathPenalty

from .. import _keys
from .._redis import Backoff, sync_redis
from .._redisserver import free_port
from . import bento, replica_log
from .health import serve_health
from .pool import PoolPolicy, PoolWorker, WarmPool
from .procs import die_with_parent_hook, stop_group
from .resources import Gpus, ReplicaSampler, host_capacity, host_usage

log = logging.getLogger(__name__)

REPLICAS = Gauge("lowtide_agent_replicas", "Replica processes running on this host")
STARTS = Counter("lowtide_agent_replica_starts_total", "Replicas started", ["path"])
CRASHES = Counter("lowtide_agent_replica_crashes_total", "Replicas that exited unasked")

HEARTBEAT_S = 1.0
HOST_ALIVE_TTL_S = _keys.HOST_ALIVE_TTL_S
LOG_STREAM_MAXLEN = 5000
ORPHAN_AGE_S = 10.0  # a starting record with no start job yet, older than this: lost
TAIL_LINES = 5  # a crashed replica's last output lines, kept for its crash report
ORPHAN_CHECK_S = 5.0
ORPHAN_GRACE_S = 15.0  # a replica this old whose record is gone was dropped by the platform
# BentoML records an OpenTelemetry span per request even when it samples none: about a fifth
# of a trivial function's CPU in the replica. Off unless the agent's environment turns it on
# (OTEL_SDK_DISABLED=false, with BentoML's tracing configured).
WORKER_ENV_DEFAULTS = {"OTEL_SDK_DISABLED": "true"}


@dataclass(frozen=True)
class AgentSettings:
    redis_url: str
    home: Path
    host_id: str = field(default_factory=lambda: socket.gethostname())
    advertise_address: str = "127.0.0.1"
    bind_host: str = "127.0.0.1"
    stop_grace_s: float = 10.0
    port: int = 8082  # /healthz and /metrics; 0 picks a free port
    pool: bool = True  # keep prewarmed generic workers for fast cold starts
    labels: dict[str, str] = field(default_factory=dict)
    # schedulable cores = cores x this: CPU time is shared (replicas learn their concurrency
    # and the autoscaler watches CPU), memory and GPUs are never overcommitted
    cpu_overcommit: float = 4.0
    gpus: bool = True  # probe GPUs with NVML; False: a CPU host whatever is installed

    def __post_init__(self) -> None:
        if not 1.0 <= self.cpu_overcommit <= 64.0:
            raise ValueError(f"cpu_overcommit={self.cpu_overcommit!r} must be in [1, 64] "
                             "(LOWTIDE_CPU_OVERCOMMIT / --cpu-overcommit)")

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"


@dataclass
class ReplicaProcess:
    endpoint: str
    version: int
    replica_id: str
    address: str
    proc: subprocess.Popen[bytes]
    started_at: float
    gpus: tuple[int, ...] = ()
    stopping: bool = False
    pump: threading.Thread | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


class _ThreadWorker(SimpleWorker):
    """rq's SimpleWorker run in a thread: no signal handlers, timer-based job timeouts."""

    death_penalty_class = TimerDeathPenalty
    max_connection_wait_time = 5.0  # back within seconds of Redis, not rq's minute

    def _install_signal_handlers(self) -> None:
        pass


@dataclass
class _RqSlot:
    """One job thread's queue and its current rq worker (replaced after Redis losses)."""

    label: str
    queue_name: str
    worker: _ThreadWorker | None = None


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.redis = sync_redis(settings.redis_url)
        self.replicas: dict[str, ReplicaProcess] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[tuple[str, int], threading.Lock] = {}
        self._rq: list[tuple[_RqSlot, threading.Thread]] = []
        self.gpus = Gpus.open() if settings.gpus else Gpus.none()
        self._sampler = ReplicaSampler(self.gpus)
        self._host: dict[str, object] = {}
        self._stopping = False
        self.pool = WarmPool(self._spawn_pool_worker, PoolPolicy()) if settings.pool else None
        os.environ["BENTOML_HOME"] = str(settings.bentoml_home)
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

    # ---- main loop --------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        global _current
        _current = self
        health = serve_health(self.settings.bind_host, self.settings.port, self._health)
        self.http_port = health.server_address[1]
        self._register_when_redis_answers(stop)
        self._forget_orphans()  # before any job of ours runs
        self._start_rq()
        log.info("agent %s ready (queue %s, health on port %d)", self.settings.host_id,
                 _keys.host_queue(self.settings.host_id), self.http_port)
        next_orphan_check = time.monotonic() + ORPHAN_CHECK_S
        try:
            while not stop.wait(HEARTBEAT_S):
                if any(not thread.is_alive() for _, thread in self._rq):
                    raise RuntimeError("an rq worker thread died; see the log above")
                self._reap()
                if self.pool is not None and not self._stopping:
                    self.pool.maintain()
                self._heartbeat()
                if time.monotonic() >= next_orphan_check:
                    next_orphan_check = time.monotonic() + ORPHAN_CHECK_S
                    self._stop_orphans()
        finally:
            self.shutdown()
            health.shutdown()

    def _health(self) -> dict[str, object]:
        with self._lock:
            count = len(self.replicas)
        rq_ok = bool(self._rq) and all(thread.is_alive() for _, thread in self._rq)
        return {"status": "ok" if rq_ok else "degraded", "component": "agent",
                "host_id": self.settings.host_id, "replicas": count,
                "pool": self._pool_status()}

    def _pool_status(self) -> dict[str, int]:
        if self.pool is None:
            return {"ready": 0, "starting": 0, "idle_memory_bytes": 0}
        ready, starting = self.pool.size()
        return {"ready": ready, "starting": starting,
                "idle_memory_bytes": self.pool.idle_memory_bytes()}

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True  # from now on start jobs are refused
            replicas = list(self.replicas.values())
        for slot, _ in self._rq:
            if slot.worker is not None:
                slot.worker._stop_requested = True
        if self.pool is not None:
            self.pool.stop_all()
        threads = [threading.Thread(target=self._stop_process, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._reap()
        for _, thread in self._rq:
            thread.join(timeout=1)  # a daemon blocked in a dequeue; jobs are done
        try:
            self.redis.hdel(_keys.HOSTS, self.settings.host_id)
            self.redis.delete(_keys.host_alive(self.settings.host_id))
        except RedisError as exc:
            log.warning("could not deregister host: %s", exc)
        self.gpus.close()
        log.info("agent %s stopped", self.settings.host_id)

    def _start_rq(self) -> None:
        """Two job threads: replica commands, and Bento builds (slow; a start must not wait
        behind one: the pool path does not need the Bento)."""
        host = self.settings.host_id
        for label, queue_name in (("commands", _keys.host_queue(host)),
                                  ("builds", _keys.host_build_queue(host))):
            slot = _RqSlot(label, queue_name)
            thread = threading.Thread(target=self._run_rq, args=(slot,), name=f"rq-{label}",
                                      daemon=True)
            thread.start()
            self._rq.append((slot, thread))

    def _run_rq(self, slot: _RqSlot) -> None:
        """One rq worker after another until the agent stops: rq's `work()` returns (or
        raises) when Redis goes away outside its dequeue retry; a new worker, under a new
        name, takes over after a backoff."""
        host, backoff, n = self.settings.host_id, Backoff(first_s=0.5), 0
        while not self._stopping:
            n += 1
            started = time.monotonic()
            try:  # even creating a worker talks to Redis
                worker = _ThreadWorker([Queue(slot.queue_name, connection=self.redis)],
                                       connection=self.redis, worker_ttl=16,
                                       name=f"agent-{host}-{os.getpid()}-{slot.label}-{n}")
                slot.worker = worker
                if self._stopping:
                    return
                worker.work(logging_level="WARNING")
                why = "stopped"
            except Exception as exc:
                why = f"failed: {type(exc).__name__}: {exc}"
            if self._stopping:
                return
            if time.monotonic() - started > 30:  # it worked a while: a new failure
                backoff.reset()
            wait_s = backoff.next_s()
            log.warning("rq worker for %s %s; a new one starts in %.1f s", slot.queue_name, why,
                        wait_s)
            time.sleep(wait_s)

    def _register_when_redis_answers(self, stop: threading.Event) -> None:
        """Started while Redis is away: wait for it (with backoff) instead of exiting."""
        backoff = Backoff(first_s=0.5)
        while not stop.is_set():
            try:
                self._register()
                return
            except RedisError as exc:
                wait_s = backoff.next_s()
                log.warning("cannot register the host (%s); retrying in %.1f s", exc, wait_s)
                stop.wait(wait_s)

    def _forget_orphans(self) -> None:
        """Replicas a previous agent of this host was starting when it died: their start job
        ran (or was running) in the dead agent, and their process died with it, so nothing
        will ever make them ready. Out of the records, so the platform starts new ones now
        instead of waiting for its start timeout; a start job still queued is left alone."""
        try:
            for raw_name in self.redis.smembers(_keys.DEPLOYMENTS):
                endpoint = raw_name.decode()
                for raw in self.redis.hvals(_keys.replicas(endpoint)):
                    record = json.loads(raw)
                    if (record.get("host") == self.settings.host_id
                            and record.get("state") == "starting"
                            and self._start_was_lost(record)):
                        log.warning("replica %s of %s was being started by a previous agent "
                                    "of this host; forgetting it", record["id"], endpoint)
                        self._forget(endpoint, record["id"])
        except (RedisError, ValueError, KeyError) as exc:
            log.warning("could not check for replicas orphaned by a previous agent: %s", exc)

    def _start_was_lost(self, record: dict[str, object]) -> bool:
        try:
            status = Job.fetch(f"start-{record['id']}", connection=self.redis).get_status()
        except NoSuchJobError:  # enqueued right after the record: only an old one is lost
            return time.time() - float(str(record.get("created_at") or 0)) > ORPHAN_AGE_S
        return status not in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)

    def _register(self) -> None:
        """The host's description: capacity (cores, memory, GPUs), labels, address. Written
        again with every heartbeat, so a platform that forgot a lost host, or a Redis that
        lost its data, sees it again as soon as it beats."""
        s = self.settings
        capacity = host_capacity(self.gpus)
        self._host = {
            "id": s.host_id,
            "address": s.advertise_address,
            **capacity,
            "cpu_capacity": round(float(capacity["cpus"]) * s.cpu_overcommit, 3),
            "cpu_overcommit": s.cpu_overcommit,
            "labels": dict(s.labels),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "started_at": time.time(),
            "pid": os.getpid(),
            "health_port": getattr(self, "http_port", None),
        }
        self.redis.hset(_keys.HOSTS, s.host_id, json.dumps(self._host))
        self._warn_if_unreachable()
        self._heartbeat()

    def _warn_if_unreachable(self) -> None:
        """A loopback address serves other hosts' activators only on one machine."""
        mine = self.settings.advertise_address
        if not mine.startswith("127.") and mine not in ("localhost", "::1"):
            return
        others = [json.loads(v).get("address", "") for k, v in
                  self.redis.hgetall(_keys.HOSTS).items() if k.decode() != self.settings.host_id]
        remote = sorted({a for a in others if a and not a.startswith("127.")
                         and a not in ("localhost", "::1")})
        if remote:
            log.warning("this host advertises %s but other hosts are at %s: their "
                        "activators cannot reach these replicas; start the agent with "
                        "--advertise-address (LOWTIDE_ADVERTISE_ADDRESS) set to an address "
                        "they can reach", mine, ", ".join(remote))

    def _heartbeat(self) -> None:
        with self._lock:
            pids = {r.replica_id: r.proc.pid for r in self.replicas.values() if r.endpoint}
        use = self._sampler.sample(pids)
        load = {
            "at": time.time(),
            **host_usage(self.gpus),
            "replicas": len(pids),
            "pool": self._pool_status(),
            "replica_cpu_cores": {rid: u.cpu_cores for rid, u in use.items()},
            "replica_gpu": {rid: {"memory_bytes": u.gpu_memory_bytes,
                                  "utilization_percent": u.gpu_utilization_percent}
                            for rid, u in use.items() if self.gpus.info},
        }
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(_keys.host_alive(self.settings.host_id), json.dumps(load),
                         ex=HOST_ALIVE_TTL_S)
                pipe.hset(_keys.HOSTS, self.settings.host_id, json.dumps(self._host))
                pipe.execute()
        except RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    # ---- jobs -------------------------------------------------------------------------
    def build(self, endpoint: str, version: int) -> bento.BuiltBento:
        with self._lock:
            lock = self._build_locks.setdefault((endpoint, version), threading.Lock())
        with lock:
            found = bento.find_bento(endpoint, version)
            if found is not None:
                self.redis.set(_keys.build_state(endpoint, version, self.settings.host_id),
                               "ready", ex=86400)
                return found
            artifact = self.redis.get(_keys.artifact(endpoint, version))
            spec_raw = self.redis.hget(_keys.deployment(endpoint), "spec")
            if artifact is None or spec_raw is None:
                raise LookupError(f"deployment {endpoint} v{version} is gone")
            spec = json.loads(spec_raw)
            key = _keys.build_state(endpoint, version, self.settings.host_id)
            self.redis.set(key, "building", ex=86400)
            try:
                built = bento.build_bento(endpoint, version, artifact,
                                          spec.get("requirements", []))
            except Exception as exc:
                self.redis.set(key, f"failed: {type(exc).__name__}: {exc}", ex=86400)
                raise
            self.redis.set(key, "ready", ex=86400)
            return built

    def start_replica(self, endpoint: str, version: int, replica_id: str,
                      gpus: list[int] | None = None) -> str:
        """Start a replica; `gpus` are the indices placement assigned to it (pinned with
        CUDA_VISIBLE_DEVICES; such a replica takes the full path: pool workers see no GPU)."""
        if self._stopping:
            raise RuntimeError(f"agent {self.settings.host_id} is stopping")
        spawned_at = time.time()
        spec = json.loads(self.redis.hget(_keys.deployment(endpoint), "spec") or b"{}")
        requirements = spec.get("requirements", [])
        if gpus:
            known = {g.index for g in self.gpus.info}
            if not set(gpus) <= known:
                raise RuntimeError(f"host {self.settings.host_id} has no GPU "
                                   f"{sorted(set(gpus) - known)} (it has {sorted(known)})")
            return self._start_full(endpoint, version, replica_id, requirements, spawned_at,
                                    tuple(gpus))
        if self.pool is not None:
            self.pool.note_cold_start()
            if not bento.unsatisfied(requirements):
                worker = self.pool.take()
                if worker is not None:
                    return self._specialize(worker, endpoint, version, replica_id, spawned_at)
        return self._start_full(endpoint, version, replica_id, requirements, spawned_at)

    def _artifact_file(self, endpoint: str, version: int) -> Path:
        path = self.settings.home / "artifacts" / f"{endpoint}-v{version}.pkl"
        if not path.exists():
            artifact = self.redis.get(_keys.artifact(endpoint, version))
            if artifact is None:
                raise LookupError(f"deployment {endpoint} v{version} is gone")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(artifact)
            tmp.replace(path)
        return path

    def _specialize(self, worker: PoolWorker, endpoint: str, version: int, replica_id: str,
                    spawned_at: float) -> str:
        """Fast path: hand the function to a prewarmed worker."""
        rp = worker.extra["rp"]
        assert isinstance(rp, ReplicaProcess)
        rp.endpoint, rp.version, rp.replica_id = endpoint, version, replica_id
        body = {"redis_url": self.settings.redis_url, "endpoint": endpoint, "version": version,
                "replica_id": replica_id, "address": worker.address,
                "artifact": str(self._artifact_file(endpoint, version)),
                "spawned_at": spawned_at}
        with self._lock:
            self.replicas[replica_id] = rp
            REPLICAS.set(len(self.replicas))
        try:
            r = httpx.post(f"http://{worker.address}/lt/specialize", json=body, timeout=60)
        except httpx.HTTPError as exc:
            self._stop_process(rp)
            raise RuntimeError(f"specializing a pool worker failed: {exc}") from exc
        if r.status_code != 200:
            self._stop_process(rp)
            try:
                detail = r.json().get("detail") or r.text
            except ValueError:
                detail = r.text
            self._log_line(rp, f"[lowtide] the replica cannot start: {detail[:500]}")
            raise RuntimeError(detail[:500])
        STARTS.labels("pool").inc()
        log.info("specialized pool worker %s as replica %s of %s v%d in %.0f ms",
                 worker.address, replica_id, endpoint, version,
                 (time.time() - spawned_at) * 1000)
        return worker.address

    def _spawn_pool_worker(self) -> PoolWorker:
        s = self.settings
        port = free_port(s.bind_host)
        env = {**WORKER_ENV_DEFAULTS, **os.environ, "LOWTIDE_POOL": "1",
               "LOWTIDE_REDIS_URL": s.redis_url,
               "BENTOML_HOME": str(s.bentoml_home), "PYTHONUNBUFFERED": "1",
               **self._gpu_env(())}
        cmd = [sys.executable, "-m", "bentoml", "serve", "lowtide.workers.service:Worker",
               "--host", s.bind_host, "--port", str(port)]
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent_hook(),
            cwd=str(s.home),
        )
        address = f"{s.advertise_address}:{port}"
        rp = ReplicaProcess("", 0, "", address, proc, time.time())
        rp.pump = threading.Thread(target=self._pump_logs, args=(rp,), daemon=True,
                                   name=f"logs-pool-{port}")
        rp.pump.start()
        return PoolWorker(proc, address, time.time(), extra={"rp": rp})

    def _gpu_env(self, gpus: tuple[int, ...]) -> dict[str, str]:
        """Pin a replica to its GPUs (NVML's PCI order, which CUDA then follows); a replica
        without GPUs on a GPU host sees none, so whole GPUs stay whole."""
        if not gpus and not self.gpus.info:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    def _start_full(self, endpoint: str, version: int, replica_id: str,
                    requirements: list[str], spawned_at: float,
                    gpus: tuple[int, ...] = ()) -> str:
        """Full path: build the Bento (once per host and version) and serve it."""
        built = self.build(endpoint, version)
        python = bento.ensure_python(requirements, self.settings.home / "envs")
        s = self.settings
        port = free_port(s.bind_host)
        address = f"{s.advertise_address}:{port}"
        env = {
            **WORKER_ENV_DEFAULTS,
            **os.environ,
            "LOWTIDE_REDIS_URL": s.redis_url,
            "LOWTIDE_ENDPOINT": endpoint,
            "LOWTIDE_VERSION": str(version),
            "LOWTIDE_REPLICA_ID": replica_id,
            "LOWTIDE_ADDRESS": address,
            "LOWTIDE_ARTIFACT": str(built.artifact_path),
            "BENTOML_HOME": str(s.bentoml_home),
            "PYTHONUNBUFFERED": "1",
            "LOWTIDE_START_PATH": "full",
            "LOWTIDE_SPAWNED_AT": repr(spawned_at),
            **self._gpu_env(gpus),
        }
        cmd = [python, "-m", "bentoml", "serve", built.tag, "--host", s.bind_host,
               "--port", str(port)]
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent_hook(),
        )
        rp = ReplicaProcess(endpoint, version, replica_id, address, proc, time.time(), gpus)
        rp.pump = threading.Thread(target=self._pump_logs, args=(rp,), daemon=True,
                                   name=f"logs-{replica_id}")
        rp.pump.start()
        with self._lock:
            stopping = self._stopping
            self.replicas[replica_id] = rp
            REPLICAS.set(len(self.replicas))
        STARTS.labels("full").inc()
        if stopping:  # shutdown began while it was starting: it must not outlive us
            self._stop_process(rp)
            raise RuntimeError(f"agent {self.settings.host_id} is stopping")
        log.info("started replica %s of %s v%d on %s (pid %d%s)", replica_id, endpoint,
                 version, address, proc.pid, f", GPU {','.join(map(str, gpus))}" if gpus else "")
        return address

    def stop_replica(self, endpoint: str, replica_id: str) -> bool:
        with self._lock:
            rp = self.replicas.get(replica_id)
        if rp is None:
            self._forget(endpoint, replica_id)
            return False
        # drained and stopped off the job thread: a start queued behind must not wait for it;
        # the supervision loop reaps the process and removes it from routing
        rp.stopping = True
        threading.Thread(target=self._stop_process, args=(rp,), name=f"stop-{replica_id}",
                         daemon=True).start()
        return True

    # ---- supervision ------------------------------------------------------------------
    def _stop_orphans(self) -> None:
        """Stop replicas the platform no longer knows: it dropped them while this host was
        considered lost (no heartbeat), and their replacements run elsewhere."""
        now = time.time()
        with self._lock:
            old = [r for r in self.replicas.values()
                   if r.endpoint and not r.stopping and now - r.started_at > ORPHAN_GRACE_S]
        if not old:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for r in old:
                    pipe.hexists(_keys.replicas(r.endpoint), r.replica_id)
                known = pipe.execute()
        except RedisError as exc:
            log.warning("cannot check for orphaned replicas: %s", exc)
            return
        for r, exists in zip(old, known, strict=True):
            if not exists:
                log.warning("stopping replica %s of %s: the platform dropped it (this host "
                            "was considered lost)", r.replica_id, r.endpoint)
                self.stop_replica(r.endpoint, r.replica_id)

    def _stop_process(self, rp: ReplicaProcess) -> None:
        rp.stopping = True
        code = stop_group(rp.proc, self.settings.stop_grace_s)
        log.info("stopped replica %s (exit %s)", rp.replica_id, code)

    def _reap(self) -> None:
        with self._lock:
            exited = [r for r in self.replicas.values() if r.proc.poll() is not None]
            for r in exited:
                del self.replicas[r.replica_id]
            REPLICAS.set(len(self.replicas))
        for r in exited:
            if not r.stopping:
                CRASHES.inc()
                stop_group(r.proc, 0)  # the leader died: take the rest of its group down
                self._log_line(r, replica_log.exit_line(r.proc.returncode, r.tail))
                log.warning("replica %s of %s exited with code %s", r.replica_id, r.endpoint,
                            r.proc.returncode)
            if r.pump is not None:
                r.pump.join(timeout=1)
            if r.stopping or not r.endpoint:
                self._forget(r.endpoint, r.replica_id)
            else:
                self._report_crash(r)

    def _report_crash(self, r: ReplicaProcess) -> None:
        """Out of routing at once; the platform reads why, records it and backs off."""
        last = " | ".join(line.strip() for line in r.tail if line.strip())[-500:]
        try:
            key = _keys.replicas(r.endpoint)
            raw = self.redis.hget(key, r.replica_id)
            record = json.loads(raw) if raw else {"id": r.replica_id, "version": r.version,
                                                  "host": self.settings.host_id}
            record.update(state="crashed", exit_code=r.proc.returncode, last_output=last)
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, r.replica_id, json.dumps(record))
                pipe.delete(_keys.replica_alive(r.replica_id))
                pipe.publish(_keys.ROUTES_CHANNEL, r.endpoint)
                pipe.execute()
        except RedisError as exc:
            log.warning("could not report the crash of %s: %s", r.replica_id, exc)

    def _forget(self, endpoint: str, replica_id: str) -> None:
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(_keys.replicas(endpoint), replica_id)
                pipe.delete(_keys.replica_alive(replica_id))
                pipe.publish(_keys.ROUTES_CHANNEL, endpoint)
                pipe.execute()
        except RedisError as exc:
            log.warning("could not remove replica %s from routing: %s", replica_id, exc)

    def _pump_logs(self, rp: ReplicaProcess) -> None:
        assert rp.proc.stdout is not None
        chatter = replica_log.LogFilter()  # BentoML's hook lines, repeated tracebacks
        for raw in rp.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            rp.tail.append(line)
            for kept in chatter.feed(line):
                self._keep_line(rp, kept)
        for kept in chatter.flush():
            self._keep_line(rp, kept)

    def _keep_line(self, rp: ReplicaProcess, line: str) -> None:
        if rp.endpoint:
            self._log_line(rp, line)
        else:  # an idle pool worker: no endpoint to file it under yet
            log.debug("pool worker %s: %s", rp.address, line)

    def _log_line(self, rp: ReplicaProcess, line: str) -> None:
        try:
            self.redis.xadd(
                _keys.logs(rp.endpoint),
                {"replica": rp.replica_id, "host": self.settings.host_id, "line": line},
                maxlen=LOG_STREAM_MAXLEN, approximate=True,
            )
        except RedisError:
            log.debug("dropped a log line of %s", rp.replica_id)


_current: Agent | None = None


def current() -> Agent:
    if _current is None:
        raise RuntimeError("no agent is running in this process")
    return _current
