"""Host liveness, as the scaling loop sees it.

A host is live while its agent's heartbeat key exists. `HostWatcher.watch()` says once when
a host is lost (its replicas are then dropped by the replica housekeeping, which sees their
host gone), voids the commands queued for it, and forgets it after `HOST_FORGET_S`.

Liveness is judged only while Redis has answered for a while: heartbeats cannot be written
while Redis is away, so a Redis restart must not read as every replica lost
(`redis_failed()` / `liveness_known()`). Replicas that went silent on a host are remembered
for `RECENT_LOSS_S` so that the host's loss event names them and placement avoids the host
meanwhile (`shunned()`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq import Queue

from .. import _keys
from . import state

log = logging.getLogger(__name__)

ALIVE_GRACE_S = 5.0  # a ready replica without a heartbeat for this long is lost
HOST_FORGET_S = 600.0  # a lost host stays visible (GET /v1/hosts "lost") this long
RECENT_LOSS_S = 30.0  # replicas lost this long before their host are blamed on it


class HostWatcher:
    def __init__(self, redis: Redis, sync_redis: SyncRedis, clock: Callable[[], float]) -> None:
        self.redis = redis
        self.sync_redis = sync_redis
        self.clock = clock
        self._lost_since: dict[str, float] = {}  # host id -> when it was found lost
        # host id -> endpoint -> when it last lost a replica there (its host may be next)
        self._lost_on: dict[str, dict[str, float]] = {}
        self._redis_failed_at = 0.0  # last Redis error seen by the loop

    def redis_failed(self) -> None:
        """Heartbeats could not be written while Redis was away: judge liveness again only
        ALIVE_GRACE_S after it answers (a Redis restart is not every replica lost)."""
        self._redis_failed_at = self.clock()

    def liveness_known(self, now: float) -> bool:
        return now - self._redis_failed_at > ALIVE_GRACE_S

    def note_loss(self, host: str, name: str, now: float) -> None:
        """One of the endpoint's replicas went silent on `host`: the host may be found lost
        next (say so then), and placement avoids it for a while."""
        lost_here = self._lost_on.setdefault(host, {})
        lost_here[name] = now
        for other, at in list(lost_here.items()):
            if now - at > RECENT_LOSS_S:
                del lost_here[other]

    def shunned(self, name: str, now: float) -> set[str]:
        """Hosts where the endpoint's replicas just went silent (such a host may be dying
        and still look live for a few seconds)."""
        return {h for h, lost in self._lost_on.items()
                if now - lost.get(name, -RECENT_LOSS_S) < RECENT_LOSS_S}

    async def watch(self, now: float) -> None:
        """Say once when a host is lost, void its queued commands, and forget it after
        HOST_FORGET_S."""
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
        for name, records in (await state.all_replicas(self.redis, everyone=True)).items():
            if any(r.host == host_id for r in records):
                endpoints.add(name)
        for name in sorted(endpoints):
            dep = await state.load_deployment(self.redis, name)
            desired = dep.desired if dep is not None else 0
            await state.record_event(self.redis, name, "replica", text, frm=desired,
                                     to=desired)
