"""The scaling loop: observes each endpoint, asks the policy, and converges replicas.

`run()` owns the ticker and a wake subscription (a wake pokes one endpoint for an immediate
decision, as Knative's autoscaler is poked on scale from zero). `reconcile()` is one step
for one endpoint: observe, decide (policy.py), record a changed decision, converge. Host
liveness is `hostwatch.HostWatcher`'s; the endpoint's replicas are kept true and converged
by `replicas.ReplicaSupervisor` (commands to hosts go through their rq queues).

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
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys
from .._redis import follow
from . import state
from .hostwatch import HostWatcher
from .keepalive import KeepAlive, LearnedStateError
from .policy import Autoscaler, Decision, Observation
from .replicas import ReplicaSupervisor
from .settings import ScalerSettings
from .state import Deployment, ReplicaRecord

log = logging.getLogger(__name__)

DECISIONS = Counter("lowtide_platform_scaling_decisions_total",
                    "Changes of an endpoint's desired replicas, by kind", ["kind"])

REDIS_STALL_S = 1.0  # a listing slower than this: Redis stalled, heartbeats may have lapsed
CPU_SETTLE_S = 10.0  # a replica's own start-up burns CPU: not a load signal
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
        self.hosts = HostWatcher(redis, sync_redis, clock)
        self.replicas = ReplicaSupervisor(redis, sync_redis, settings, self.hosts, clock)
        self._policies: dict[str, Autoscaler] = {}
        self._arrivals: dict[str, tuple[float, int, float]] = {}  # name -> (at, count, rate)
        self._born: dict[str, float] = {}  # name -> created_at of the deployment its policy is for
        self._saved: dict[str, str] = {}  # name -> learned state as last written (or read)
        self._save_due: dict[str, float] = {}  # name -> when its learned state is looked at
        # told every look at an endpoint (the dashboard's series recorder); memory only
        self.observed: Callable[[str, Observation, Decision, float], None] | None = None

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
        for memory in (self._policies, self._arrivals, self._born, self._saved, self._save_due):
            memory.pop(name, None)
        self.replicas.forget(name)

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
        return self.replicas.unplaced(name)

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
                        self.hosts.redis_failed()
                    if self.hosts.liveness_known(self.clock()):  # no host is lost to a Redis gap
                        try:
                            await self.hosts.watch(self.clock())
                        except RedisError as exc:
                            self.hosts.redis_failed()
                            log.warning("watching hosts failed: %s", exc)
                for name in sorted(names):
                    try:
                        await self.reconcile(name)
                        await self.save_learned(name, self.clock())
                    except RedisError as exc:
                        self.hosts.redis_failed()
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
            self.hosts.redis_failed()
            log.warning("cannot list deployments: %s", exc)
            return set()

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
        replicas = await self.replicas.housekeep(dep, await state.load_replicas(self.redis, name),
                                         hosts, now)
        current = [r for r in replicas if r.version == dep.version and r.state != "stopping"]
        obs = await self._observe(dep, current, hosts, now)
        decision = policy.decide(obs, now)
        if self.observed is not None:
            self.observed(name, obs, decision, now)
        if decision.changed(dep.desired):
            await self._record(dep, decision, obs, now)
        await self.replicas.converge(dep, current, decision.desired, now)
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

