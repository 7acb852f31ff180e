"""The scaling loop: observes each endpoint, asks the policy, and converges replicas.

`run()` owns the ticker and a wake subscription (a wake pokes one endpoint for an immediate
decision, as Knative's autoscaler is poked on scale from zero). `reconcile()` is one step
for one endpoint; commands to hosts go through their rq queues.

What each endpoint's policy learned is kept in Redis (`_keys.learned`): read back the first
time the endpoint is seen after a start, written when it changed (at most every
`learned_save_s`) and on the way out, only while the endpoint exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job, JobStatus

from .. import _keys
from .._redis import follow
from . import state
from .keepalive import KeepAlive, KeepAliveSettings, LearnedStateError
from .placement import Need, host_view, place
from .policy import Autoscaler, AutoscalerSettings, Decision, Observation
from .state import Deployment, ReplicaRecord

log = logging.getLogger(__name__)

DECISIONS = Counter("lowtide_platform_scaling_decisions_total",
                    "Changes of an endpoint's desired replicas, by kind", ["kind"])

ALIVE_GRACE_S = 5.0  # a ready replica without a heartbeat for this long is lost
# ... unless its host's agent sees its process alive and busy: many threads of a CPU-bound
# function can starve the replica's event loop (and so its heartbeat) of the GIL for
# seconds. Such a replica is given this long before it counts as lost (hung, not busy).
BUSY_SILENCE_S = 60.0
BUSY_CORES = 0.5  # a process using at least this much CPU is busy
REDIS_STALL_S = 1.0  # a listing slower than this: Redis stalled, heartbeats may have lapsed
STOPPING_FORGET_S = 60.0
CPU_SETTLE_S = 10.0  # a replica's own start-up burns CPU: not a load signal
START_JOB_TIMEOUT_S = 900
HOST_FORGET_S = 600.0  # a lost host stays visible (GET /v1/hosts "lost") this long
RECENT_LOSS_S = 30.0  # replicas lost this long before their host are blamed on it
SHUTDOWN_SAVE_S = 5.0  # saving the learned state on the way out waits no longer than this

# the learned state is written only while the endpoint still exists: a save racing with a
# delete must not leave it behind
_SAVE_IF_DEPLOYED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class ScalerSettings:
    keep_alive_s: float | None = None  # None: the platform's policy
    tick_s: float = 1.0
    start_timeout_s: float = 600.0
    failure_backoff_s: float = 5.0
    learned_save_s: float = 10.0  # an endpoint's learned state is written at most this often
    keep_alive_bin_s: float = 60.0  # the idle-gap histogram's resolution

    def policy(self) -> AutoscalerSettings:
        return AutoscalerSettings(keep_alive_s=self.keep_alive_s,
                                  keep_alive=KeepAliveSettings(bin_s=self.keep_alive_bin_s))


class Scaler:
    def __init__(
        self, redis: Redis, sync_redis: SyncRedis, settings: ScalerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.sync_redis = sync_redis
        self.settings = settings
        self.clock = clock
        self._poked: set[str] = set()
        self._poke = asyncio.Event()
        self._backoff_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._said: dict[str, str] = {}
        self._policies: dict[str, Autoscaler] = {}
        self._arrivals: dict[str, tuple[float, int, float]] = {}  # name -> (at, count, rate)
        self._lost_since: dict[str, float] = {}  # host id -> when it was found lost
        # host id -> endpoint -> when it last lost a replica there (its host may be next)
        self._lost_on: dict[str, dict[str, float]] = {}
        self._redis_failed_at = 0.0  # last Redis error seen by the loop
        self._born: dict[str, float] = {}  # name -> created_at of the deployment its policy is for
        self._saved: dict[str, str] = {}  # name -> learned state as last written (or read)
        self._save_due: dict[str, float] = {}  # name -> when its learned state is looked at
        self._silent_since: dict[str, float] = {}  # replica id -> first seen without heartbeat

    def policy(self, name: str) -> Autoscaler:
        if name not in self._policies:
            self._policies[name] = Autoscaler(self.settings.policy())
        return self._policies[name]

    async def learned_policy(self, name: str) -> Autoscaler:
        """The endpoint's policy; the first time after a start, with what the platform had
        learned about the endpoint before (saved in Redis)."""
        if name in self._policies:
            return self._policies[name]
        raw = await self.redis.get(_keys.learned(name))
        if name in self._policies:  # restored by another caller meanwhile
            return self._policies[name]
        policy = self.policy(name)
        if raw is None:
            return policy
        try:
            policy.restore(json.loads(raw))
        except (LearnedStateError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
            log.warning("%s: the saved learned state is unusable, the autoscaler starts fresh "
                        "(it is overwritten at the next save): %s", name, exc)
            return policy
        self._saved[name] = _learned_text(policy)  # nothing new to write yet
        log.info("%s: learned state restored: %s", name, policy.keep_alive().reason)
        return policy

    async def save_learned(self, name: str, now: float, force: bool = False) -> None:
        """Write the endpoint's learned state when it changed, at most every
        `learned_save_s` (or now, with `force`); a Redis error is logged and the next
        look tries again."""
        policy = self._policies.get(name)
        if policy is None or (not force and now < self._save_due.get(name, 0.0)):
            return
        self._save_due[name] = now + self.settings.learned_save_s
        text = _learned_text(policy)
        if text == self._saved.get(name):
            return
        try:
            await self.redis.eval(_SAVE_IF_DEPLOYED, 2, _keys.deployment(name),
                                  _keys.learned(name), text)
        except RedisError as exc:
            log.warning("%s: saving the learned state failed, kept in memory and tried again "
                        "in %g s: %s", name, self.settings.learned_save_s, exc)
            return
        self._saved[name] = text

    async def save_all_learned(self) -> None:
        """On the way out: what changed since the last save, for every endpoint."""
        now = self.clock()
        for name in sorted(self._policies):
            await self.save_learned(name, now, force=True)

    def _forget(self, name: str) -> None:
        for memory in (self._policies, self._arrivals, self._said, self._born, self._saved,
                       self._save_due):
            memory.pop(name, None)

    def _check_born(self, name: str, created_at: float) -> None:
        """An endpoint deleted and deployed again (a new created_at; a redeploy keeps it) is
        a new endpoint: what was learned about the old one is forgotten here too."""
        if self._born.setdefault(name, created_at) != created_at:
            self._forget(name)
            self._born[name] = created_at

    def keep_alive(self, name: str) -> KeepAlive:
        """The endpoint's current keep-alive window and why (for status)."""
        return self.policy(name).keep_alive()

    def unplaced(self, name: str) -> str | None:
        """Why the endpoint's missing replicas cannot be placed now (None: nothing pending)."""
        return self._said.get(name)

    def poke(self, name: str) -> None:
        self._poked.add(name)
        self._poke.set()

    # ---- loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        wakes = asyncio.create_task(self._listen_wakes(stop), name="wakes")
        next_full = 0.0
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self.settings.tick_s)
                self._poke.clear()
                names, self._poked = self._poked, set()
                if time.monotonic() >= next_full:
                    next_full = time.monotonic() + self.settings.tick_s
                    asked = time.monotonic()
                    names |= {n.decode() for n in await self._members()}
                    if time.monotonic() - asked > REDIS_STALL_S:  # hung, then back
                        self._redis_failed()
                    if self._liveness_known(self.clock()):  # no host is lost to a Redis gap
                        try:
                            await self.watch_hosts(self.clock())
                        except RedisError as exc:
                            self._redis_failed()
                            log.warning("watching hosts failed: %s", exc)
                for name in sorted(names):
                    try:
                        await self.reconcile(name)
                        await self.save_learned(name, self.clock())
                    except RedisError as exc:
                        self._redis_failed()
                        log.warning("reconcile %s failed: %s", name, exc)
                    except Exception:  # one endpoint's bad state must not stop the loop
                        log.exception("reconcile %s failed", name)
                if wakes.done():
                    wakes.result()  # a dead listener is an error, not silence
        finally:
            wakes.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await wakes
            try:  # a clean shutdown keeps what was learned since the last save
                await asyncio.wait_for(self.save_all_learned(), SHUTDOWN_SAVE_S)
            except asyncio.TimeoutError:
                log.warning("saving the learned state took over %g s at shutdown; what was "
                            "learned since the last save is lost", SHUTDOWN_SAVE_S)

    async def _members(self) -> set[bytes]:
        try:
            return set(await self.redis.smembers(_keys.DEPLOYMENTS))
        except RedisError as exc:
            self._redis_failed()
            log.warning("cannot list deployments: %s", exc)
            return set()

    async def watch_hosts(self, now: float) -> None:
        """Say once when a host is lost (its replicas are dropped by reconcile, which sees
        their host gone), void its queued commands, and forget it after HOST_FORGET_S."""
        hosts = await state.all_hosts(self.redis)
        for host_id, host in hosts.items():
            if host["state"] == "live":
                if self._lost_since.pop(host_id, None) is not None:
                    log.info("host %s is back", host_id)
                continue
            if host_id not in self._lost_since:
                self._lost_since[host_id] = now
                await self._host_lost(host_id, now)
            elif now - self._lost_since[host_id] > HOST_FORGET_S:
                await state.forget_host(self.redis, host_id)
                self._lost_since.pop(host_id, None)
                log.info("forgot host %s, lost for over %g s", host_id, HOST_FORGET_S)

    async def _host_lost(self, host_id: str, now: float) -> None:
        text = (f"host {host_id} lost: no heartbeat for over {_keys.HOST_ALIVE_TTL_S} s; its "
                "replicas are out of routing and replaced on other hosts, and the requests "
                "they held are run again")
        log.warning("%s", text)
        for queue_name in (_keys.host_queue(host_id), _keys.host_build_queue(host_id)):
            queue = Queue(queue_name, connection=self.sync_redis)
            await asyncio.to_thread(queue.empty)  # void; a returning agent stops the
        recent = self._lost_on.pop(host_id, {})  # replicas it still runs
        endpoints = {name for name, at in recent.items() if now - at <= RECENT_LOSS_S}
        for name, records in (await state.all_replicas(self.redis)).items():
            if any(r.host == host_id for r in records):
                endpoints.add(name)
        for name in sorted(endpoints):
            dep = await state.load_deployment(self.redis, name)
            desired = dep.desired if dep is not None else 0
            await state.record_event(self.redis, name, "replica", text, frm=desired,
                                     to=desired)

    def _redis_failed(self) -> None:
        """Heartbeats could not be written while Redis was away: judge liveness again only
        ALIVE_GRACE_S after it answers (a Redis restart is not every replica lost)."""
        self._redis_failed_at = self.clock()

    def _liveness_known(self, now: float) -> bool:
        return now - self._redis_failed_at > ALIVE_GRACE_S

    async def _listen_wakes(self, stop: asyncio.Event) -> None:
        async def wake(data: bytes) -> None:
            self.poke(data.decode())

        await follow(self.redis, _keys.WAKE_CHANNEL, stop, wake, what="wake subscription")

    # ---- one step ---------------------------------------------------------------------
    async def reconcile(self, name: str) -> Decision | None:
        dep = await state.load_deployment(self.redis, name)
        if dep is None:
            self._forget(name)
            return None
        self._check_born(name, dep.created_at)
        policy = await self.learned_policy(name)
        now = self.clock()
        hosts = await state.live_hosts(self.redis)
        replicas = await self._housekeep(dep, await state.load_replicas(self.redis, name),
                                         hosts, now)
        current = [r for r in replicas if r.version == dep.version and r.state != "stopping"]
        obs = await self._observe(dep, current, hosts, now)
        decision = policy.decide(obs, now)
        if decision.changed(dep.desired):
            await self._record(dep, decision, obs, now)
        await self._converge(dep, current, decision.desired, now)
        return decision

    async def _observe(self, dep: Deployment, current: list[ReplicaRecord],
                       hosts: dict[str, Any], now: float) -> Observation:
        name = dep.spec.name
        q = await state.queue_stats(self.redis, name, now)
        ready = [r for r in current if r.state == "ready" and r.alive]
        beats = [r.alive for r in current if r.alive]
        counted = await state.request_stats(self.redis, name)
        last_activity = max(
            [counted.last_request_at, dep.updated_at]
            + [float(b.get("last_done_at", 0)) for b in beats]
        )
        settled = [r for r in ready if now - (r.ready_at or now) >= CPU_SETTLE_S]
        limits = [int(r.alive.get("limit", r.limit)) for r in ready if r.alive] or [
            state.DEFAULT_LIMIT]
        return Observation(
            desired=dep.desired,
            ready=len(ready),
            starting=sum(1 for r in current if r.state == "starting"),
            queued=q.queued,
            oldest_wait_s=q.oldest_wait_s,
            in_flight=sum(int(b.get("in_flight", 0)) for b in beats),
            last_activity_at=last_activity,
            limit=min(limits),
            min_replicas=dep.spec.min_replicas,
            max_replicas=dep.spec.max_replicas,
            last_request_at=counted.last_request_at,
            arrival_rate_per_s=self._arrival_rate(name, counted.requests, now),
            cpu_utilization=cpu_utilization(settled, state.replica_cpu_cores(hosts),
                                            dep.spec.cpu),
            gpu_utilization=gpu_utilization(settled, state.replica_gpu_percent(hosts),
                                            dep.spec.gpu) if dep.spec.gpu else None,
        )

    def _arrival_rate(self, name: str, requests: int, now: float) -> float:
        """Arrivals per second since the previous look (the activators flush every second)."""
        then, before, rate = self._arrivals.get(name, (now, requests, 0.0))
        if now - then >= 1.0:
            rate = max(0, requests - before) / (now - then)
            then, before = now, requests
        self._arrivals[name] = (then, before, rate)
        return rate

    async def _record(self, dep: Deployment, d: Decision, obs: Observation, now: float) -> None:
        name = dep.spec.name
        inputs = {k: v for k, v in obs.__dict__.items() if k not in ("min_replicas",)}
        if d.signals is not None:
            inputs.update(d.signals.__dict__)
        event = await state.record_event(self.redis, name, d.kind, d.reason, frm=dep.desired,
                                         to=d.desired, inputs=inputs, now=now)
        await self.redis.hset(_keys.deployment(name), mapping={
            "desired": d.desired, "last_decision": json.dumps(event)})
        dep.desired = d.desired
        DECISIONS.labels(kind=d.kind).inc()
        log.info("%s: %s", name, d.reason)

    # ---- housekeeping -----------------------------------------------------------------
    async def _housekeep(self, dep: Deployment, replicas: list[ReplicaRecord],
                         hosts: dict[str, Any], now: float) -> list[ReplicaRecord]:
        """Drop replicas that are lost, failed to start or linger; stop stale versions."""
        kept = []
        for r in replicas:
            problem = await self._problem(r, hosts, now)
            if problem is not None:
                await self._drop(dep, r, problem, now, hosts)
                continue
            if r.version != dep.version and r.state != "stopping":
                await self.stop(dep.spec.name, r, hosts)
            kept.append(r)
        return kept

    async def _problem(self, r: ReplicaRecord, hosts: dict[str, Any], now: float) -> str | None:
        age_s = now - (r.ready_at or r.created_at)
        if r.state == "crashed":
            code, last = r.extra.get("exit_code"), r.extra.get("last_output") or "no output"
            return f"replica {r.id} failed: exited with code {code}: {last}"
        if (r.host and r.host not in hosts and r.state != "starting"
                and self._liveness_known(now)):
            return (f"replica {r.id} lost with its host {r.host} (no host heartbeat for over "
                    f"{_keys.HOST_ALIVE_TTL_S} s)")
        silent = self._silence(r, hosts, now, age_s)
        if silent:
            return silent
        stopping_since = float(r.extra.get("stopping_at", r.created_at))
        if r.state == "stopping" and now - stopping_since > STOPPING_FORGET_S and not r.alive:
            return f"replica {r.id} stopped"
        if r.state == "starting":
            if r.host not in hosts and self._liveness_known(now):  # not the function's fault
                return (f"replica {r.id} lost while starting: host {r.host!r} stopped "
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
        if age_s <= ALIVE_GRACE_S or not self._liveness_known(now):
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
            lost_here = self._lost_on.setdefault(r.host, {})
            lost_here[name] = now
            for other, at in list(lost_here.items()):
                if now - at > RECENT_LOSS_S:
                    del lost_here[other]
        if "failed" in why:
            n = self._failures[name] = self._failures.get(name, 0) + 1
            backoff_s = min(300.0, self.settings.failure_backoff_s * 2 ** (n - 1))
            self._backoff_until[name] = now + backoff_s
        if r.state != "stopping":
            await state.record_event(self.redis, name, "replica", why, frm=dep.desired,
                                     to=dep.desired, now=now)
            log.warning("%s: %s", name, why)

    # ---- converging -------------------------------------------------------------------
    async def _converge(self, dep: Deployment, current: list[ReplicaRecord], desired: int,
                        now: float) -> None:
        name = dep.spec.name
        if any(r.state == "ready" for r in current):
            self._failures.pop(name, None)
        missing = desired - len(current)
        if missing <= 0:
            self._said.pop(name, None)  # nothing waits for a host any more
        if missing > 0 and now >= self._backoff_until.get(name, 0.0):
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
        # not where this endpoint's replicas just went silent (that host may be dying and
        # still look live for a few seconds), unless nothing else fits
        shunned = {h for h, lost in self._lost_on.items()
                   if now - lost.get(name, -RECENT_LOSS_S) < RECENT_LOSS_S}
        placement = place(need, [v for v in views if v.id not in shunned])
        if placement.host is None and shunned:
            placement = place(need, views)
        if placement.host is None:
            await self._say_once(dep, placement.reason)
            return False
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



def _learned_text(policy: Autoscaler) -> str:
    return json.dumps(policy.learned(), separators=(",", ":"))


def cpu_utilization(ready: list[ReplicaRecord], cores_used: dict[str, float],
                    cores_requested: float) -> float | None:
    """Mean CPU utilization of the ready replicas that were measured (1.0 = requested cores
    busy); None when none was."""
    measured = [cores_used[r.id] for r in ready if r.id in cores_used]
    if not measured:
        return None
    return round(sum(measured) / len(measured) / max(cores_requested, 0.01), 3)


def gpu_utilization(ready: list[ReplicaRecord], percent_used: dict[str, float],
                    gpus_requested: int) -> float | None:
    """Mean GPU utilization of the ready replicas that were measured (1.0 = all their GPUs
    busy; NVML's per-process SM utilization summed over the replica's processes and GPUs);
    None when none was."""
    measured = [percent_used[r.id] for r in ready if r.id in percent_used]
    if not measured or gpus_requested < 1:
        return None
    return round(sum(measured) / len(measured) / (100.0 * gpus_requested), 3)


def _busy_cores(host_load: dict[str, Any], replica_id: str, now: float) -> float | None:
    """The CPU the replica's process uses by its host agent's fresh heartbeat, when that
    says it is alive and busy; else None."""
    if now - float(host_load.get("at", 0.0)) > 2 * ALIVE_GRACE_S:
        return None
    cores = (host_load.get("replica_cpu_cores") or {}).get(replica_id)
    return float(cores) if cores is not None and cores >= BUSY_CORES else None
