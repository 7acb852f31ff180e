"""The host agent: registers the host, heartbeats its capacity and load, and runs rq jobs
from its queues (build, start and stop replicas) on its `ReplicaSupervisor`
(workers/supervisor.py), which owns the replica processes.

Threads, not asyncio: rq jobs are synchronous. The main thread owns the heartbeat and the
supervision loop; rq runs in two worker threads (commands, builds).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.timeouts import TimerDeathPenalty

from .. import _keys
from .._redis import Backoff, sync_redis
from . import replica_user
from .health import serve_health
from .resources import Gpus, ReplicaSampler, host_capacity, host_usage
from .settings import AgentSettings
from .supervisor import ReplicaSupervisor

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
HOST_ALIVE_TTL_S = _keys.HOST_ALIVE_TTL_S
ORPHAN_AGE_S = 10.0  # a starting record with no start job yet, older than this: lost
ORPHAN_CHECK_S = 5.0

__all__ = ["Agent", "AgentSettings", "current"]


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
        self._rq: list[tuple[_RqSlot, threading.Thread]] = []
        self.gpus = Gpus.open() if settings.gpus else Gpus.none()
        self._sampler = ReplicaSampler(self.gpus)
        self._host: dict[str, object] = {}
        self._stopping = False
        self.supervisor = ReplicaSupervisor(settings, self.redis, self.gpus)
        self.supervisor.user = replica_user.resolve(settings.replica_user, settings.home)
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
                self.supervisor.reap()
                self.supervisor.maintain_pool()
                self._heartbeat()
                self._reconcile_users()
                if time.monotonic() >= next_orphan_check:
                    next_orphan_check = time.monotonic() + ORPHAN_CHECK_S
                    self.supervisor.stop_orphans()
        finally:
            self.shutdown()
            health.shutdown()

    def _health(self) -> dict[str, object]:
        count = self.supervisor.count()
        rq_ok = bool(self._rq) and all(thread.is_alive() for _, thread in self._rq)
        return {"status": "ok" if rq_ok else "degraded", "component": "agent",
                "host_id": self.settings.host_id, "replicas": count,
                "pool": self.supervisor.pool_status()}

    def shutdown(self) -> None:
        self._stopping = True
        for slot, _ in self._rq:
            if slot.worker is not None:
                slot.worker._stop_requested = True
        self.supervisor.shutdown()  # refuses start jobs from now on
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
                        self.supervisor.forget(endpoint, record["id"])
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
            # who user code runs as, and why not the unprivileged default
            "replica_user": self.supervisor.user.name,
            "replica_uid": self.supervisor.user.uid,  # the first of many when per process
            "replica_uid_per_process": self.supervisor.user.per_process,
            **({"replica_user_problem": self.supervisor.user.problem}
               if self.supervisor.user.problem else {}),
            "started_at": time.time(),
            "pid": os.getpid(),
            "health_port": getattr(self, "http_port", None),
        }
        self.supervisor.fence.check()  # refuses a Redis that cannot fence user code
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
        pids = self.supervisor.replica_pids()
        use = self._sampler.sample(pids)
        load = {
            "at": time.time(),
            **host_usage(self.gpus),
            "replicas": len(pids),
            "pool": self.supervisor.pool_status(),
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

    def _reconcile_users(self) -> None:
        try:
            self.supervisor.fence.reconcile()
        except RedisError as exc:
            log.warning("cannot check the replicas' Redis users: %s", exc)

    # ---- jobs (lowtide.workers.jobs) ---------------------------------------------------
    def prepare_version(self, endpoint: str, version: int) -> str:
        return self.supervisor.prepare_version(endpoint, version)

    def start_replica(self, endpoint: str, version: int, replica_id: str,
                      gpus: list[int] | None = None) -> str:
        return self.supervisor.start_replica(endpoint, version, replica_id, gpus)

    def stop_replica(self, endpoint: str, replica_id: str) -> bool:
        return self.supervisor.stop_replica(endpoint, replica_id)


_current: Agent | None = None


def current() -> Agent:
    if _current is None:
        raise RuntimeError("no agent is running in this process")
    return _current
