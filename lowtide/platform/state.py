"""Reads and writes of the control plane's state in Redis (thin I/O, no decisions)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .. import _keys
from .._spec import DeploymentSpec
from .placement import Allocation, allocations

DECISIONS_MAXLEN = 1000
DEFAULT_LIMIT = 16


@dataclass
class ReplicaRecord:
    id: str
    version: int
    state: str  # starting | ready | stopping
    host: str = ""
    address: str = ""
    created_at: float = 0.0
    ready_at: float | None = None
    limit: int = DEFAULT_LIMIT
    cpu: float = 0.0  # what placement reserved for it on its host
    memory_bytes: int = 0
    gpus: list[int] = field(default_factory=list)  # pinned GPU indices
    alive: dict[str, Any] | None = None  # the replica's latest heartbeat, if any
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ReplicaRecord:
        data = json.loads(raw)
        known = {k: data.pop(k) for k in list(data) if k in cls.__dataclass_fields__}
        return cls(**known, extra=data)

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k not in ("alive", "extra")}
        return json.dumps({**self.extra, **data})


@dataclass
class Deployment:
    spec: DeploymentSpec
    version: int
    created_at: float
    updated_at: float
    desired: int
    last_decision: dict[str, Any] | None


async def load_deployment(redis: Redis, name: str) -> Deployment | None:
    return parse_deployment(await redis.hgetall(_keys.deployment(name)))


def parse_deployment(raw: dict[bytes, bytes]) -> Deployment | None:
    """The deployment from its hash as HGETALL returns it (None: no such deployment)."""
    if not raw or b"spec" not in raw:
        return None
    return Deployment(
        spec=DeploymentSpec.from_dict(json.loads(raw[b"spec"])),
        version=int(raw[b"version"]),
        created_at=float(raw.get(b"created_at", 0)),
        updated_at=float(raw.get(b"updated_at", 0)),
        desired=int(raw.get(b"desired", 0)),
        last_decision=json.loads(raw[b"last_decision"]) if b"last_decision" in raw else None,
    )


async def load_replicas(redis: Redis, name: str) -> list[ReplicaRecord]:
    raw = await redis.hgetall(_keys.replicas(name))
    records = [ReplicaRecord.from_json(v) for v in raw.values()]
    if records:
        alive = await redis.mget([_keys.replica_alive(r.id) for r in records])
        for record, beat in zip(records, alive, strict=True):
            record.alive = json.loads(beat) if beat else None
    return sorted(records, key=lambda r: r.created_at)


async def save_replica(redis: Redis, name: str, record: ReplicaRecord) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(_keys.replicas(name), record.id, record.to_json())
        pipe.publish(_keys.ROUTES_CHANNEL, name)
        await pipe.execute()


async def remove_replica(redis: Redis, name: str, replica_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(_keys.replicas(name), replica_id)
        pipe.publish(_keys.ROUTES_CHANNEL, name)
        await pipe.execute()


@dataclass(frozen=True)
class QueueStats:
    depth: int  # entries in the stream: waiting or being run
    queued: int  # waiting, not yet taken by a replica (in the stream or an activator's memory)
    oldest_wait_s: float
    in_memory: int = 0  # of `queued`, those waiting in activators' memory for a slot


def _stream_id_seconds(entry_id: bytes) -> float:
    return int(entry_id.split(b"-", 1)[0]) / 1000.0


def queue_stats_from(depth: int, groups: Any, first: Any, waiting: dict[bytes, bytes],
                     now: float) -> QueueStats:
    """QueueStats from XLEN, XINFO GROUPS, the first undelivered entry (XRANGE) and the
    activators' flushed waiters (HGETALL of `_keys.waiting`)."""
    in_memory, memory_oldest_s = waiting_in_memory(waiting, now)
    pending = 0
    for group in groups or ():
        if group["name"] in (_keys.STREAM_GROUP, _keys.STREAM_GROUP.encode()):
            pending = int(group["pending"])
    oldest = max(0.0, now - _stream_id_seconds(first[0][0])) if first else 0.0
    return QueueStats(depth, max(0, depth - pending) + in_memory,
                      max(oldest, memory_oldest_s), in_memory)


def last_delivered(groups: Any) -> bytes:
    for group in groups or ():
        if group["name"] in (_keys.STREAM_GROUP, _keys.STREAM_GROUP.encode()):
            found = group["last-delivered-id"]
            return found.encode() if isinstance(found, str) else found
    return b"0-0"


async def queue_stats(redis: Redis, name: str, now: float) -> QueueStats:
    """The stream's depth and untaken entries, plus the requests the activators hold in
    memory for a slot (flushed each second; an activator silent for WAITING_FRESH_S counts
    for nothing), with the age of the oldest of all as the queue lag."""
    in_memory, memory_oldest_s = waiting_in_memory(
        await redis.hgetall(_keys.waiting(name)), now)
    stream = _keys.stream(name)
    depth = int(await redis.xlen(stream))
    if depth == 0:
        return QueueStats(0, in_memory, memory_oldest_s, in_memory)
    last_delivered = b"0-0"
    pending = 0
    try:
        for group in await redis.xinfo_groups(stream):
            if group["name"] in (_keys.STREAM_GROUP, _keys.STREAM_GROUP.encode()):
                last_delivered = group["last-delivered-id"]
                pending = int(group["pending"])
    except ResponseError:
        pass
    if isinstance(last_delivered, str):
        last_delivered = last_delivered.encode()
    first = await redis.xrange(stream, min=b"(" + last_delivered, max="+", count=1)
    oldest = max(0.0, now - _stream_id_seconds(first[0][0])) if first else 0.0
    return QueueStats(depth, max(0, depth - pending) + in_memory,
                      max(oldest, memory_oldest_s), in_memory)


def waiting_in_memory(raw: dict[bytes, bytes], now: float) -> tuple[int, float]:
    """Sum the activators' flushed waiters (`_keys.waiting`): how many, and the age of the
    oldest now; entries older than WAITING_FRESH_S are a dead activator's and count not."""
    total, oldest_s = 0, 0.0
    for value in raw.values():
        try:
            rec = json.loads(value)
            n, age_s, at = int(rec["n"]), float(rec["oldest_s"]), float(rec["at"])
        except (ValueError, KeyError, TypeError):
            continue
        if now - at > _keys.WAITING_FRESH_S or n <= 0:
            continue
        total += n
        oldest_s = max(oldest_s, age_s + max(0.0, now - at))
    return total, oldest_s


async def last_request_at(redis: Redis, name: str) -> float:
    return (await request_stats(redis, name)).last_request_at


@dataclass(frozen=True)
class RequestStats:
    """The activators' flushed counters of one endpoint."""

    requests: int  # arrivals since the endpoint was created
    last_request_at: float


async def request_stats(redis: Redis, name: str) -> RequestStats:
    raw = await redis.hmget(_keys.stats(name), ["requests", "last_request_at"])
    return RequestStats(int(raw[0] or 0), float(raw[1] or 0.0))


def replica_cpu_cores(hosts: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Cores in use per replica id, from the host agents' heartbeats."""
    used: dict[str, float] = {}
    for host in hosts.values():
        used.update(host.get("load", {}).get("replica_cpu_cores", {}))
    return used


def replica_gpu(hosts: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """GPU memory_bytes and utilization_percent (summed over its GPUs) per replica id, from
    the heartbeats of GPU hosts."""
    used: dict[str, dict[str, float]] = {}
    for host in hosts.values():
        used.update((host.get("load") or {}).get("replica_gpu") or {})
    return used


def replica_gpu_percent(hosts: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {rid: float(use.get("utilization_percent") or 0.0)
            for rid, use in replica_gpu(hosts).items()}


async def record_event(
    redis: Redis, name: str, kind: str, reason: str, *, frm: int, to: int,
    inputs: dict[str, Any] | None = None, now: float | None = None,
) -> dict[str, Any]:
    event = {"at": time.time() if now is None else now, "kind": kind, "from": frm, "to": to,
             "reason": reason, "inputs": inputs or {}}
    await redis.xadd(_keys.decisions(name), {"event": json.dumps(event)},
                     maxlen=DECISIONS_MAXLEN, approximate=True)
    return event


async def read_events(redis: Redis, name: str, limit: int = 100) -> list[dict[str, Any]]:
    entries = await redis.xrevrange(_keys.decisions(name), count=limit)
    return [json.loads(fields[b"event"]) for _id, fields in entries]


async def all_hosts(redis: Redis) -> dict[str, dict[str, Any]]:
    """Every registered host with `state` live (its agent heartbeats, `load` is its latest
    beat) or lost (no heartbeat for HOST_ALIVE_TTL_S; `load` is None)."""
    hosts = {k.decode(): json.loads(v) for k, v in (await redis.hgetall(_keys.HOSTS)).items()}
    if not hosts:
        return {}
    beats = await redis.mget([_keys.host_alive(h) for h in hosts])
    for host, beat in zip(hosts.values(), beats, strict=True):
        host["load"] = json.loads(beat) if beat else None
        host["state"] = "live" if beat else "lost"
    return hosts


async def live_hosts(redis: Redis) -> dict[str, dict[str, Any]]:
    return {h: host for h, host in (await all_hosts(redis)).items() if host["state"] == "live"}


async def forget_host(redis: Redis, host_id: str) -> None:
    await redis.hdel(_keys.HOSTS, host_id)


HOLDERS_WINDOW_S = 3600.0  # an endpoint at zero this long has no replica record left


async def replica_holders(redis: Redis, now: float | None = None) -> list[str]:
    """The endpoints that may have replica records: those with desired replicas, and those
    that went to zero (or were deleted) within HOLDERS_WINDOW_S (their replicas stop). Not
    the thousands idle for longer: what reads replica records per start follows activity."""
    cutoff = (time.time() if now is None else now) - HOLDERS_WINDOW_S
    async with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(_keys.ACTIVE)
        pipe.zrangebyscore(_keys.COOLING, cutoff, "+inf")
        pipe.zremrangebyscore(_keys.COOLING, "-inf", f"({cutoff}")
        active, cooling, _ = await pipe.execute()
    return sorted({n.decode() for n in active} | {n.decode() for n in cooling})


async def all_replicas(redis: Redis, everyone: bool = False) -> dict[str, list[ReplicaRecord]]:
    """endpoint -> its replica records (without heartbeats): of the `replica_holders`, or
    of every deployment (`everyone`: a lost host's, which must miss none)."""
    names = (sorted(n.decode() for n in await redis.smembers(_keys.DEPLOYMENTS)) if everyone
             else await replica_holders(redis))
    if not names:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(_keys.replicas(name))
        raws = await pipe.execute()
    return {name: [ReplicaRecord.from_json(v) for v in raw.values()]
            for name, raw in zip(names, raws, strict=True)}


def allocated(replicas: dict[str, list[ReplicaRecord]]) -> dict[str, Allocation]:
    """host id -> what the replica records hold there."""
    return allocations({"host": r.host, "cpu": r.cpu, "memory_bytes": r.memory_bytes,
                        "gpus": r.gpus} for records in replicas.values() for r in records)


def describe_hosts(hosts: dict[str, dict[str, Any]], replicas: dict[str, list[ReplicaRecord]],
                   now: float) -> list[dict[str, Any]]:
    """The hosts view of the API and `lowtide status`: per host its kind, capacity, what is
    allocated, what is used and its replicas."""
    held = allocated(replicas)
    on_host: dict[str, list[dict[str, Any]]] = {}
    for name, records in replicas.items():
        for r in records:
            on_host.setdefault(r.host, []).append({"endpoint": name, "id": r.id,
                                                   "state": r.state, "gpus": r.gpus})
    views = []
    for host_id in sorted(hosts):
        host = hosts[host_id]
        load = host.get("load") or {}
        cores, gpu_use = load.get("replica_cpu_cores", {}), load.get("replica_gpu", {})
        items = on_host.get(host_id, [])
        for item in items:
            item["cpu_cores"] = cores.get(item["id"])
            item.update({f"gpu_{k}": v for k, v in gpu_use.get(item["id"], {}).items()})
        a = held.get(host_id, Allocation())
        views.append({
            "id": host_id,
            "state": host.get("state", "live"),
            "kind": host.get("kind") or ("gpu" if host.get("gpus") else "cpu"),
            "address": host.get("address"),
            "labels": host.get("labels", {}),
            "python": host.get("python"),
            "last_heartbeat_age_s": round(now - load["at"], 3) if "at" in load else None,
            "capacity": {"cpus": host.get("cpus"),
                         "cpu_schedulable": host.get("cpu_capacity", host.get("cpus")),
                         "memory_bytes": host.get("memory_bytes"),
                         "gpus": host.get("gpus", [])},
            "allocated": {"cpu": round(a.cpu, 3), "memory_bytes": a.memory_bytes,
                          "gpus": sorted(a.gpus)},
            "utilization": {"cpu_percent": load.get("cpu_percent"),
                            "memory_used_bytes": load.get("memory_used_bytes"),
                            "gpus": load.get("gpus", [])},
            "replicas": items,
            "load": load,  # the latest heartbeat as the agent sent it (pool included)
        })
    return views
