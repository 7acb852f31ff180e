"""What the scaling loop observes of many endpoints, read in a few pipelined round trips.

`read_batch()` reads every endpoint of a pass together: the deployments, replica records,
stream lengths, request counters and the activators' waiters in one pipeline, then the
replicas' heartbeats and the non-empty streams' consumer groups in a second, then the
oldest waiting entry of those streams in a third: three round trips per pass, however many
endpoints it holds (before, a pass cost about ten round trips per endpoint).
`observation()` turns one endpoint's reads into the policy's `Observation`, without I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from .. import _keys
from . import state
from .policy import Observation
from .state import Deployment, QueueStats, ReplicaRecord, RequestStats

CPU_SETTLE_S = 10.0  # a replica's own start-up burns CPU: not a load signal


@dataclass
class Snapshot:
    """One endpoint as read at the start of a pass."""

    dep: Deployment | None
    replicas: list[ReplicaRecord]
    queue: QueueStats
    stats: RequestStats
    waiting: dict[bytes, bytes]  # the activators' flushed in-memory waiters
    learned: bytes | bool | None = False  # its saved learned state (False: not read)


@dataclass
class Batch:
    hosts: dict[str, Any]  # the live hosts
    endpoints: dict[str, Snapshot] = field(default_factory=dict)


async def read_batch(redis: Redis, names: Sequence[str], now: float,
                     learned: Sequence[str] = ()) -> Batch:
    """The endpoints' reads, with the saved learned state of those named in `learned`
    (whose policy is not in memory)."""
    hosts = await state.live_hosts(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for name in learned:
            pipe.get(_keys.learned(name))
        for name in names:
            pipe.hgetall(_keys.deployment(name))
            pipe.hgetall(_keys.replicas(name))
            pipe.xlen(_keys.stream(name))
            pipe.hmget(_keys.stats(name), ["requests", "last_request_at"])
            pipe.hgetall(_keys.waiting(name))
        first = await pipe.execute()
    saved = dict(zip(learned, first[: len(learned)], strict=True))
    first = first[len(learned):]
    batch = Batch(hosts)
    depths: dict[str, int] = {}
    records: list[ReplicaRecord] = []
    for i, name in enumerate(names):
        raw_dep, raw_replicas, depth, counted, waiting = first[5 * i: 5 * i + 5]
        replicas = sorted((ReplicaRecord.from_json(v) for v in raw_replicas.values()),
                          key=lambda r: r.created_at)
        records.extend(replicas)
        if int(depth):
            depths[name] = int(depth)
        batch.endpoints[name] = Snapshot(
            state.parse_deployment(raw_dep), replicas,
            state.queue_stats_from(0, None, None, waiting, now),
            RequestStats(int(counted[0] or 0), float(counted[1] or 0.0)), waiting,
            saved.get(name, False))
    await _read_beats_and_queues(redis, batch, records, depths, now)
    return batch


async def _read_beats_and_queues(redis: Redis, batch: Batch, records: list[ReplicaRecord],
                                 depths: dict[str, int], now: float) -> None:
    if not records and not depths:
        return
    queued = sorted(depths)
    async with redis.pipeline(transaction=False) as pipe:
        if records:
            pipe.mget([_keys.replica_alive(r.id) for r in records])
        for name in queued:
            pipe.xinfo_groups(_keys.stream(name))
        second = await pipe.execute(raise_on_error=False)
    if records:
        beats = second.pop(0)
        for record, beat in zip(records, beats, strict=True):
            record.alive = json.loads(beat) if beat else None
    groups = [g if not isinstance(g, Exception) else [] for g in second]
    if not queued:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for name, found in zip(queued, groups, strict=True):
            pipe.xrange(_keys.stream(name), min=b"(" + state.last_delivered(found), max="+",
                        count=1)
        oldest = await pipe.execute()
    for name, found, entry in zip(queued, groups, oldest, strict=True):
        snap = batch.endpoints[name]
        snap.queue = state.queue_stats_from(depths[name], found, entry, snap.waiting, now)


def observation(dep: Deployment, current: list[ReplicaRecord], snap: Snapshot,
                hosts: dict[str, Any], arrival_rate_per_s: float, now: float) -> Observation:
    """The policy's view of one endpoint: its current-version replicas and its reads."""
    q, counted = snap.queue, snap.stats
    ready = [r for r in current if r.state == "ready" and r.alive]
    beats = [r.alive for r in current if r.alive]
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
        arrival_rate_per_s=arrival_rate_per_s,
        cpu_utilization=cpu_utilization(settled, state.replica_cpu_cores(hosts), dep.spec.cpu),
        gpu_utilization=gpu_utilization(settled, state.replica_gpu_percent(hosts),
                                        dep.spec.gpu) if dep.spec.gpu else None,
    )


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
