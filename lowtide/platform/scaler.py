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
from collections.abc import Callable, Sequence

from prometheus_client import Counter
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys
from .._redis import follow, pause
from . import state
from .hostwatch import HostWatcher
from .keepalive import KeepAlive, LearnedStateError
from .loop import ScalingLoop
from .policy import Autoscaler, Decision, Observation
from .replicas import ReplicaSupervisor
from .schedule import Look, next_look, policy_timers
from .settings import ScalerSettings
from .shards import RENEW_S, Gained, Shards, shard_of
from .snapshot import Batch, observation, read_batch
from .state import Deployment

log = logging.getLogger(__name__)

DECISIONS = Counter("lowtide_platform_scaling_decisions_total",
                    "Changes of an endpoint's desired replicas, by kind", ["kind"])

REDIS_STALL_S = 1.0  # a listing slower than this: Redis stalled, heartbeats may have lapsed
EVICT_IDLE_S = 120.0  # an endpoint idle at zero this long is kept in Redis only
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
        clock: Callable[[], float] = time.time, shards: Shards | None = None,
    ) -> None:
        self.redis = redis
        self.sync_redis = sync_redis
        self.settings = settings
        self.clock = clock
        self.shards = shards  # None: this platform scales every endpoint
        self.loop = ScalingLoop(self, clock, settings.tick_s)
        self.hosts = HostWatcher(redis, sync_redis, clock)
        self.replicas = ReplicaSupervisor(redis, sync_redis, settings, self.hosts, clock)
        self._policies: dict[str, Autoscaler] = {}
        self._fresh_text = _learned_text(Autoscaler(settings.policy()))  # nothing learned
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

    async def learned_policy(self, name: str, raw: bytes | bool | None = False) -> Autoscaler:
        """The endpoint's policy; the first time after a start (or an eviction), with what
        the platform had learned about the endpoint before (saved in Redis; `raw` when the
        caller read it already, False when not)."""
        if name in self._policies:
            return self._policies[name]
        if raw is False:
            raw = await self.redis.get(_keys.learned(name))
        if name in self._policies:  # restored by another caller meanwhile
            return self._policies[name]
        policy = self.policy(name)
        if raw is None or isinstance(raw, bool):  # nothing saved: nothing learned yet
            self._saved[name] = self._fresh_text
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

    async def view_policy(self, name: str) -> Autoscaler:
        """The endpoint's policy for a status view: the one in memory, else one read back
        from Redis and not kept (an idle endpoint's, another platform's shard's)."""
        if name in self._policies:
            return self._policies[name]
        policy = Autoscaler(self.settings.policy())
        raw = await self.redis.get(_keys.learned(name))
        if raw is not None:
            with contextlib.suppress(LearnedStateError, ValueError):
                policy.restore(json.loads(raw))
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
        """Decide for the endpoint at once (a deploy on this platform; others arrive as
        wake messages)."""
        self.loop.wake(name)

    # ---- loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if self.shards is not None:  # the first claim before the first pass
            await self._claim()
        tasks = {asyncio.create_task(self._listen_wakes(stop), name="wakes"),
                 asyncio.create_task(self.loop.run(stop), name="scaling-loop")}
        if self.shards is not None:
            tasks.add(asyncio.create_task(self._hold_leases(stop), name="shard-leases"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a dead listener or loop is an error, not silence
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError):
                    await task
            try:  # a clean shutdown keeps what was learned since the last save
                await asyncio.wait_for(self.save_all_learned(), SHUTDOWN_SAVE_S)
            except asyncio.TimeoutError:
                log.warning("saving the learned state took over %g s at shutdown; what was "
                            "learned since the last save is lost", SHUTDOWN_SAVE_S)

    async def _hold_leases(self, stop: asyncio.Event) -> None:
        assert self.shards is not None
        try:
            while not stop.is_set():
                await pause(stop, RENEW_S)
                await self._claim()
        finally:
            with contextlib.suppress(RedisError):  # the others take over at once
                await self.save_all_learned()
                await self.shards.release()

    async def _claim(self) -> None:
        assert self.shards is not None
        try:
            gained, lost = await self.shards.claim()
        except RedisError as exc:
            log.warning("renewing the shard leases failed (kept for up to their lease): %s",
                        exc)
            return
        if lost:
            log.info("platform %s no longer scales shard(s) %s", self.shards.id,
                     ", ".join(map(str, lost)))
            gone = set(lost)  # what was learned goes to Redis for the new leader
            for name in [n for n in self._policies if shard_of(n, self.shards.shards) in gone]:
                await self.save_learned(name, self.clock(), force=True)
        if gained or lost:
            self.loop.resync_soon()
        for g in gained:
            await self._say_gained(g)
        fresh = [g.shard for g in gained if not g.before]
        if fresh:  # one line, not sixteen, when a platform starts alone
            log.info("scaling of shard(s) %s led by platform %s", _spans(fresh),
                     self.shards.id)

    async def _say_gained(self, g: Gained) -> None:
        """Log a shard gained; a takeover also in the platform's events and in those of the
        shard's active endpoints (whose decisions this instance makes now)."""
        assert self.shards is not None
        text = g.describe(self.shards.id)
        takeover = bool(g.before) and not g.before.startswith("released:")
        if g.before:  # a fresh lease is said in one line for all (`_claim`)
            (log.warning if takeover else log.info)("%s", text)
        now = self.clock()
        await self.redis.xadd(_keys.PLATFORM_EVENTS, {"event": json.dumps({
            "at": now, "shard": g.shard, "leader": self.shards.id, "before": g.before,
            "reason": text})}, maxlen=1000, approximate=True)
        if not takeover:
            return
        for raw in await self.redis.smembers(_keys.ACTIVE):
            name = raw.decode()
            if shard_of(name, self.shards.shards) == g.shard:
                desired = int(await self.redis.hget(_keys.deployment(name), "desired") or 0)
                await state.record_event(self.redis, name, "takeover", text, frm=desired,
                                         to=desired, now=now)

    async def _listen_wakes(self, stop: asyncio.Event) -> None:
        async def wake(data: bytes) -> None:
            self.loop.wake(data.decode())

        await follow(self.redis, _keys.WAKE_CHANNEL, stop, wake, what="wake subscription",
                     on_subscribed=self._resync_soon)

    async def _resync_soon(self) -> None:  # wakes may have been missed meanwhile
        self.loop.resync_soon()

    # ---- the loop's reconciler --------------------------------------------------------
    def owns(self, name: str) -> bool:
        return self.shards is None or self.shards.owns(name)

    async def members(self) -> set[str]:
        names = {n.decode() for n in await self.redis.smembers(_keys.DEPLOYMENTS)}
        return {n for n in names if self.owns(n)}

    async def tick(self, now: float) -> None:
        if self.hosts.liveness_known(now):  # no host is lost to a Redis gap
            try:
                await self.hosts.watch(now)
            except RedisError as exc:
                self.hosts.redis_failed()
                log.warning("watching hosts failed: %s", exc)

    async def read(self, names: Sequence[str], now: float) -> Batch:
        asked = time.monotonic()
        try:
            batch = await read_batch(self.redis, names, now,
                                     learned=[n for n in names if n not in self._policies])
        except RedisError:
            self.hosts.redis_failed()
            raise
        if time.monotonic() - asked > REDIS_STALL_S:  # hung, then back
            self.hosts.redis_failed()
        return batch

    def forget(self, name: str) -> None:
        self._forget(name)

    # ---- one step ---------------------------------------------------------------------
    async def reconcile(self, name: str, batch: Batch | None = None,
                        now: float | None = None) -> Look | None:
        """One endpoint's step: observe, decide, record a change, converge; its next look
        (None: it is gone)."""
        if batch is None:
            batch = await self.read([name], self.clock())
        snap = batch.endpoints.get(name)
        dep = snap.dep if snap is not None else None
        if snap is None or dep is None:
            self._forget(name)
            return None
        self._check_born(name, dep.created_at)
        policy = await self.learned_policy(name, snap.learned)
        now = self.clock()
        hosts = batch.hosts
        replicas = await self.replicas.housekeep(dep, snap.replicas, hosts, now)
        current = [r for r in replicas if r.version == dep.version and r.state != "stopping"]
        before = len(current)
        obs = observation(dep, current, snap, hosts,
                          self._arrival_rate(name, snap.stats.requests, now), now)
        decision = policy.decide(obs, now)
        if self.observed is not None:
            self.observed(name, obs, decision, now)
        if decision.changed(dep.desired):
            await self._record(dep, decision, obs, now)
        await self.replicas.converge(dep, current, decision.desired, now)
        await self.save_learned(name, now)
        return await self._next_look(name, policy, decision.desired,
                                     len(replicas) + len(current) - before,
                                     snap.queue.depth + snap.queue.in_memory,
                                     obs.last_activity_at, now)

    async def _next_look(self, name: str, policy: Autoscaler, desired: int, replicas: int,
                         queued: int, last_activity_at: float, now: float) -> Look:
        timers = policy_timers(policy, last_activity_at, now)
        evict_at = last_activity_at + EVICT_IDLE_S
        ps = policy.settings
        quiet_at = last_activity_at + max(ps.stable_window_s, ps.scale_down_delay_s)
        backoff_until = self.replicas.backoff_until(name)
        look = next_look(desired=desired, replicas=replicas, queued=queued,
                         backoff_until=backoff_until, quiet_at=quiet_at,
                         timers=[*timers, (evict_at, "evict")], now=now)
        if not look.every_tick and now >= evict_at:  # idle long enough: keep it in Redis
            await self._evict(name, now)
            look = next_look(desired=desired, replicas=replicas, queued=queued,
                             backoff_until=backoff_until, quiet_at=quiet_at, timers=timers,
                             now=now)
        return look

    async def _evict(self, name: str, now: float) -> None:
        """Drop an idle endpoint's in-memory state once its learned state is in Redis; the
        next look reads it back."""
        await self.save_learned(name, now, force=True)
        policy = self._policies.get(name)
        if policy is not None and self._saved.get(name) == _learned_text(policy):
            self._forget(name)

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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(_keys.deployment(name), mapping={
                "desired": d.desired, "last_decision": json.dumps(event)})
            if d.desired > 0:  # the list's state=active
                pipe.sadd(_keys.ACTIVE, name)
            else:
                pipe.srem(_keys.ACTIVE, name)
                pipe.zadd(_keys.COOLING, {name: now})
            await pipe.execute()
        dep.desired = d.desired
        DECISIONS.labels(kind=d.kind).inc()
        log.info("%s: %s", name, d.reason)


def _spans(shards: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    for n in sorted(shards):
        if out and out[-1].rsplit("-", 1)[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _learned_text(policy: Autoscaler) -> str:
    return json.dumps(policy.learned(), separators=(",", ":"))

