"""Replica supervision: one endpoint's replica records kept true and converged.

`housekeep()` drops replicas that are lost (with their host, or silent past the heartbeat
grace), crashed, failed to start or linger after a stop, and stops those of stale versions;
a start failure backs the endpoint's next start off. `converge()` starts or stops replicas
towards the desired count: a start is placed on a host (placement.py) and sent to its agent
through the host's rq queue, a stop likewise.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq import Queue
from rq.job import Job, JobStatus

from .. import _keys
from .._failing import PLACEMENT, Failing
from . import failing, state
from .hostwatch import ALIVE_GRACE_S, HostWatcher
from .placement import Need, host_view, place
from .settings import ScalerSettings
from .startmetrics import StartMetrics
from .state import Deployment, ReplicaRecord

log = logging.getLogger(__name__)

# A ready replica without a heartbeat for ALIVE_GRACE_S is lost ... unless its host's agent
# sees its process alive and busy: many threads of a CPU-bound function can starve the
# replica's event loop (and so its heartbeat) of the GIL for seconds. Such a replica is
# given this long before it counts as lost (hung, not busy).
BUSY_SILENCE_S = 60.0
BUSY_CORES = 0.5  # a process using at least this much CPU is busy
STOPPING_FORGET_S = 60.0
START_JOB_TIMEOUT_S = 900
PLACEMENT_HOLD_S = 10.0  # an unplaceable endpoint's calls are answered at once this long


class ReplicaSupervisor:
    def __init__(self, redis: Redis, sync_redis: SyncRedis, settings: ScalerSettings,
                 hosts: HostWatcher, clock: Callable[[], float]) -> None:
        self.redis = redis
        self.sync_redis = sync_redis
        self.settings = settings
        self.hosts = hosts
        self.clock = clock
        self.starts = failing.StartFailures(settings.failure_backoff_s)  # failed starts
        self._unplaceable: dict[str, Failing] = {}  # endpoints no host could ever place
        self._said: dict[str, str] = {}
        self._silent_since: dict[str, float] = {}  # replica id -> first seen without heartbeat
        self.metrics = StartMetrics()

    def unplaced(self, name: str) -> str | None:
        """Why the endpoint's missing replicas cannot be placed now (None: nothing pending)."""
        return self._said.get(name)

    def forget(self, name: str) -> None:
        self._said.pop(name, None)
        self.metrics.forget(name)
        self._unplaceable.pop(name, None)
        self.starts.forget(name)

    def backoff_until(self, name: str) -> float:
        """No replica of the endpoint starts before this (after failed starts)."""
        return self.starts.until(name)

    # ---- housekeeping -----------------------------------------------------------------
    async def housekeep(self, dep: Deployment, replicas: list[ReplicaRecord],
                        hosts: dict[str, Any], now: float) -> list[ReplicaRecord]:
        """Drop replicas that are lost, failed to start or linger; stop stale versions."""
        kept = []
        for r in replicas:
            problem = await self.problem(r, hosts, now)
            if problem is not None:
                await self._drop(dep, r, problem, now, hosts)
                continue
            if r.version != dep.version and r.state != "stopping":
                await self.stop(dep.spec.name, r, hosts)
            kept.append(r)
        self.metrics.observe(dep.spec.name, dep.desired, kept)
        return kept

    async def problem(self, r: ReplicaRecord, hosts: dict[str, Any], now: float) -> str | None:
        """Why the replica must go (lost, crashed, failed to start, stopped), or None."""
        age_s = now - (r.ready_at or r.created_at)
        if r.state in ("crashed", "failed") and r.extra.get("error"):
            return f"replica {r.id} failed: {r.extra['error']}"  # the replica's own reason
        if r.state == "crashed":
            code, last = r.extra.get("exit_code"), r.extra.get("last_output") or "no output"
            return f"replica {r.id} failed: exited with code {code}: {last}"
        if (r.host and r.host not in hosts and r.state != "starting"
                and self.hosts.liveness_known(now)):
            return (f"replica {r.id} lost with its host {r.host} (no host heartbeat for over "
                    f"{_keys.HOST_ALIVE_TTL_S} s)")
        silent = self._silence(r, hosts, now, age_s)
        if silent:
            return silent
        stopping_since = float(r.extra.get("stopping_at", r.created_at))
        if r.state == "stopping" and now - stopping_since > STOPPING_FORGET_S and not r.alive:
            return f"replica {r.id} stopped"
        if r.state == "starting":
            if r.host not in hosts and self.hosts.liveness_known(now):  # not the function's
                return (f"replica {r.id} lost while starting: host {r.host!r} stopped "  # fault
                        "heartbeating")
            if age_s > self.settings.start_timeout_s:
                return (f"replica {r.id} failed to start within "
                        f"{self.settings.start_timeout_s:g} s")
            error = await asyncio.to_thread(self._start_job_error, r.id)
            if error:
                return f"replica {r.id} failed to start: {error}"
        return None

    def _silence(self, r: ReplicaRecord, hosts: dict[str, Any], now: float, age_s: float
                 ) -> str | None:
        """Why a ready replica without a heartbeat is lost, or None while it is not (yet)."""
        if r.alive or r.state != "ready":
            self._silent_since.pop(r.id, None)
            return None
        if age_s <= ALIVE_GRACE_S or not self.hosts.liveness_known(now):
            return None
        beat = (hosts.get(r.host) or {}).get("load") or {}
        cores = _busy_cores(beat, r.id, now)
        first = r.id not in self._silent_since
        silent_s = now - self._silent_since.setdefault(r.id, now) + ALIVE_GRACE_S
        if cores is not None and silent_s <= BUSY_SILENCE_S:
            if first:
                log.warning("replica %s sends no heartbeat but its process is busy (%.2f "
                            "cores): waiting up to %g s before replacing it", r.id, cores,
                            BUSY_SILENCE_S)
            return None
        if cores is not None:
            return (f"replica {r.id} lost: no heartbeat for over {BUSY_SILENCE_S:g} s "
                    f"although its process was busy ({cores:.2f} cores): hung")
        host_age = f"; host {r.host} last beat {now - beat['at']:.1f} s ago" if (
            "at" in beat and now - beat["at"] > 2) else ""
        return f"replica {r.id} lost: no heartbeat for over {ALIVE_GRACE_S:g} s{host_age}"

    def _start_job_error(self, replica_id: str) -> str | None:
        try:
            job = Job.fetch(f"start-{replica_id}", connection=self.sync_redis)
        except Exception:
            return None
        if job.get_status() != JobStatus.FAILED:
            return None
        result = job.latest_result()
        text = (result.exc_string if result is not None else "") or "the start job failed"
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "the start job failed"

    async def _drop(self, dep: Deployment, r: ReplicaRecord, why: str, now: float,
                    hosts: dict[str, Any]) -> None:
        name = dep.spec.name
        self._silent_since.pop(r.id, None)  # whatever the reason it goes
        await state.remove_replica(self.redis, name, r.id)
        if r.host in hosts:
            await self.enqueue(r.host, "stop_replica", name, r.id)
        if " lost" in why and r.host:  # the host may be found lost next: say so then
            self.hosts.note_loss(r.host, name, now)
        if "failed" in why:
            self.metrics.failed(name)
        if "failed" in why and r.version == dep.version:
            why += await self._start_failed(dep, _cause(why), now)
        if r.state != "stopping":
            await state.record_event(self.redis, name, "replica", why, frm=dep.desired,
                                     to=dep.desired, now=now)
            log.warning("%s: %s", name, why)

    async def _start_failed(self, dep: Deployment, cause: str, now: float) -> str:
        """Count a failed start of the current version and back off; until the next try
        the activators answer new calls at once with the cause, and the calls queued now
        are answered with it. Returns what to add to the event."""
        name = dep.spec.name
        failed = self.starts.failed(name, dep.version, cause, now)
        await failing.mark(self.redis, name, failed)
        answered = await failing.answer_queued(self.redis, name, failed.result(name, now))
        return (f"; {failed.summary(now)}"
                + (f"; {answered} waiting request(s) answered 503" if answered else ""))

    async def _check_placeable(self, dep: Deployment, hosts: dict[str, Any], need: Need,
                               now: float) -> None:
        """No live host could take a replica even empty (e.g. gpu=1 and no GPU host): say
        so to the callers at once instead of letting them wait for their deadline; checked
        again at every try, so a host that joins ends it."""
        name = dep.spec.name
        empty = place(need, [host_view(h) for h in hosts.values()])
        if empty.placed or not hosts:  # no host at all: an agent (re)starting, transient
            await self._placeable(name)
            return
        old = self._unplaceable.get(name)
        if (old is not None and old.reason == empty.reason
                and old.until - now > PLACEMENT_HOLD_S / 2):
            return  # said, and still in force
        marked = self._unplaceable[name] = Failing(PLACEMENT, empty.reason, dep.version, 0,
                                                   now + PLACEMENT_HOLD_S)
        await failing.mark(self.redis, name, marked)
        await failing.answer_queued(self.redis, name, marked.result(name, now))

    async def _placeable(self, name: str) -> None:
        if self._unplaceable.pop(name, None) is not None:
            await failing.clear(self.redis, name)

    # ---- converging -------------------------------------------------------------------
    async def converge(self, dep: Deployment, current: list[ReplicaRecord], desired: int,
                       now: float) -> None:
        name = dep.spec.name
        if any(r.state == "ready" for r in current) and self.starts.succeeded(name):
            await failing.clear(self.redis, name)
        missing = desired - len(current)
        if missing <= 0:
            self._said.pop(name, None)  # nothing waits for a host any more
        if missing > 0 and self.starts.may_start(name, dep.version, now):
            hosts = await state.live_hosts(self.redis)
            for _ in range(missing):
                if not await self._start(dep, current, hosts, now):
                    break
        elif missing < 0:
            hosts = await state.live_hosts(self.redis)
            # starting replicas serve nobody yet; then the least busy ready ones
            order = sorted(current, key=lambda r: (r.state != "starting",
                                                   int((r.alive or {}).get("in_flight", 0))))
            for r in order[: -missing]:
                await self.stop(name, r, hosts)

    async def _start(self, dep: Deployment, current: list[ReplicaRecord],
                     hosts: dict[str, Any], now: float) -> bool:
        name, spec = dep.spec.name, dep.spec
        per_host: dict[str, int] = {}
        for r in current:
            per_host[r.host] = per_host.get(r.host, 0) + 1
        held = state.allocated(await state.all_replicas(self.redis))  # fresh: one at a time
        need = Need(spec.cpu, spec.memory_bytes, spec.gpu, spec.gpu_memory_bytes)
        views = [host_view(h, held.get(h_id), per_host.get(h_id, 0))
                 for h_id, h in hosts.items()]
        # not where this endpoint's replicas just went silent, unless nothing else fits
        shunned = self.hosts.shunned(name, now)
        placement = place(need, [v for v in views if v.id not in shunned])
        if placement.host is None and shunned:
            placement = place(need, views)
        if placement.host is None:
            await self._say_once(dep, placement.reason)
            await self._check_placeable(dep, hosts, need, now)
            return False
        await self._placeable(name)
        if self._said.pop(name, None) is not None:
            log.info("%s: placement possible again", name)
        record = ReplicaRecord(id=f"r-{uuid.uuid4().hex[:10]}", version=dep.version,
                               state="starting", host=placement.host, created_at=now,
                               cpu=spec.cpu, memory_bytes=spec.memory_bytes,
                               gpus=list(placement.gpus))
        await state.save_replica(self.redis, name, record)
        gpus = [list(placement.gpus)] if placement.gpus else []  # an older agent takes none
        await self.enqueue(placement.host, "start_replica", name, dep.version, record.id,
                           *gpus, job_id=f"start-{record.id}")
        current.append(record)
        await state.record_event(self.redis, name, "replica",
                                 f"starting replica {record.id} {placement.reason}",
                                 frm=dep.desired, to=dep.desired, now=now)
        log.info("%s: starting replica %s v%d %s", name, record.id, dep.version,
                 placement.reason)
        return True

    async def stop(self, name: str, r: ReplicaRecord, hosts: dict[str, Any]) -> None:
        if r.host not in hosts:
            await state.remove_replica(self.redis, name, r.id)
            return
        r.state = "stopping"
        r.extra["stopping_at"] = self.clock()
        await state.save_replica(self.redis, name, r)
        await self.enqueue(r.host, "stop_replica", name, r.id)
        log.info("%s: stopping replica %s on %s", name, r.id, r.host)

    async def _say_once(self, dep: Deployment, text: str) -> None:
        if self._said.get(dep.spec.name) != text:
            self._said[dep.spec.name] = text
            await state.record_event(self.redis, dep.spec.name, "placement", text,
                                     frm=dep.desired, to=dep.desired)
            log.warning("%s: %s", dep.spec.name, text)

    async def enqueue(self, host: str, job: str, *args: Any, job_id: str | None = None) -> None:
        name = _keys.host_build_queue(host) if job == "build" else _keys.host_queue(host)
        queue = Queue(name, connection=self.sync_redis)
        await asyncio.to_thread(
            queue.enqueue, f"lowtide.workers.jobs.{job}", *args, job_id=job_id,
            job_timeout=START_JOB_TIMEOUT_S, result_ttl=600, failure_ttl=3600,
        )


def _cause(why: str) -> str:
    """What a caller is told of a failed start: the replica's reason without the replica
    ('replica r-1 failed: ModuleNotFoundError: ...' -> 'ModuleNotFoundError: ...')."""
    head, sep, rest = why.partition(": ")
    return rest if sep and head.startswith("replica ") else why


def _busy_cores(host_load: dict[str, Any], replica_id: str, now: float) -> float | None:
    """The CPU the replica's process uses by its host agent's fresh heartbeat, when that
    says it is alive and busy; else None."""
    if now - float(host_load.get("at", 0.0)) > 2 * ALIVE_GRACE_S:
        return None
    cores = (host_load.get("replica_cpu_cores") or {}).get(replica_id)
    return float(cores) if cores is not None and cores >= BUSY_CORES else None
