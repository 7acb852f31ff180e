"""One replica: a deployed function loaded in a BentoML worker, serving direct calls and
pulling buffered requests from the endpoint's stream.

Life cycle: `start()` loads the artifact, marks the replica ready in Redis and starts the
heartbeat and the stream puller; `stop()` stops pulling, lets in-flight work finish for a
grace period, and removes the replica from routing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import _keys
from .._protocol import TIMEOUT_HEADER, QueuedRequest, Result
from .._redis import async_redis
from .puller import StreamPuller
from .runtime import LoadedFunction, execute, queue_expired_result
from .slots import Slots

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
ALIVE_TTL_S = 3
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ReplicaSettings:
    redis_url: str
    endpoint: str
    version: int
    replica_id: str
    address: str
    artifact_path: Path
    concurrency: int = 16
    drain_s: float = 10.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ReplicaSettings:
        e = dict(os.environ if env is None else env)
        missing = [k for k in ("LOWTIDE_REDIS_URL", "LOWTIDE_ENDPOINT", "LOWTIDE_VERSION",
                               "LOWTIDE_REPLICA_ID", "LOWTIDE_ADDRESS", "LOWTIDE_ARTIFACT")
                   if not e.get(k)]
        if missing:
            raise RuntimeError(f"replica started without {', '.join(missing)}; replicas are "
                               "started by `lowtide agent`, not by hand")
        return cls(
            redis_url=e["LOWTIDE_REDIS_URL"],
            endpoint=e["LOWTIDE_ENDPOINT"],
            version=int(e["LOWTIDE_VERSION"]),
            replica_id=e["LOWTIDE_REPLICA_ID"],
            address=e["LOWTIDE_ADDRESS"],
            artifact_path=Path(e["LOWTIDE_ARTIFACT"]),
            concurrency=int(e.get("LOWTIDE_CONCURRENCY") or 16),
        )


class Replica:
    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.fn = LoadedFunction.from_artifact(settings.artifact_path.read_bytes())
        self.slots = Slots(settings.concurrency)
        self.executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="fn")
        self.redis: Redis = async_redis(settings.redis_url)
        self.consumer = f"{settings.replica_id}.{os.getpid()}"
        self.puller = StreamPuller(
            self.redis, settings.endpoint, self.consumer, self._run_queued, self.slots
        )
        self.last_done_at = time.time()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self._heartbeat_once()
        await self._set_state("ready")
        self._tasks = [
            asyncio.create_task(self.puller.run(self._stop), name="puller"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)
        log.info("replica %s of %s v%d ready at %s", self.settings.replica_id,
                 self.settings.endpoint, self.settings.version, self.settings.address)

    async def stop(self) -> None:
        s = self.settings
        await self._set_state("stopping")
        self._stop.set()
        await self.puller.drain(s.drain_s)
        await self.slots.wait_idle(s.drain_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._leave_group()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(_keys.replicas(s.endpoint), s.replica_id)
                pipe.delete(_keys.replica_alive(s.replica_id))
                pipe.publish(_keys.ROUTES_CHANNEL, s.endpoint)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not deregister replica %s: %s", s.replica_id, exc)
        await self.redis.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _leave_group(self) -> None:
        """Remove this consumer from the stream's group unless it still holds entries
        (those stay pending, to be claimed by another replica)."""
        stream = _keys.stream(self.settings.endpoint)
        pending = await self.redis.xpending_range(
            stream, _keys.STREAM_GROUP, min="-", max="+", count=1, consumername=self.consumer)
        if not pending:
            await self.redis.xgroup_delconsumer(stream, _keys.STREAM_GROUP, self.consumer)

    # ---- serving ----------------------------------------------------------------------
    async def run_direct(self, content_type: str, body: bytes, timeout_s: float) -> Result:
        self.slots.acquire()
        try:
            return await execute(self.fn, content_type, body, timeout_s, self.executor)
        finally:
            self.slots.release()
            self.last_done_at = time.time()

    async def _run_queued(self, request: QueuedRequest) -> Result:
        late_s = time.time() - request.start_by
        if late_s > 0:
            return queue_expired_result(late_s)
        try:
            return await execute(
                self.fn, request.content_type, request.body, request.timeout_s, self.executor
            )
        finally:
            self.last_done_at = time.time()

    # ---- registration -----------------------------------------------------------------
    async def _set_state(self, state: str) -> None:
        s = self.settings
        key = _keys.replicas(s.endpoint)
        raw = await self.redis.hget(key, s.replica_id)
        record = json.loads(raw) if raw else {"id": s.replica_id, "version": s.version}
        record.update(state=state, address=s.address, pid=os.getpid())
        if state == "ready":
            record["ready_at"] = time.time()
            record["limit"] = s.concurrency
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, s.replica_id, json.dumps(record))
            pipe.publish(_keys.ROUTES_CHANNEL, s.endpoint)
            await pipe.execute()

    async def _heartbeat_once(self) -> None:
        load = {"pid": os.getpid(), "in_flight": self.slots.in_use, "limit": self.slots.limit,
                "last_done_at": self.last_done_at, "at": time.time()}
        await self.redis.set(
            _keys.replica_alive(self.settings.replica_id), json.dumps(load), ex=ALIVE_TTL_S
        )
        current = await self.redis.hget(_keys.deployment(self.settings.endpoint), "version")
        stale = current is None or int(current) != self.settings.version
        if stale and not self.puller.paused:
            log.info("replica %s is stale (deployment now at %s); no longer pulling",
                     self.settings.replica_id, current)
        self.puller.paused = stale

    async def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                await self._heartbeat_once()
            except RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_S)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("replica task %s died", task.get_name(), exc_info=task.exception())


_current: Replica | None = None


def current() -> Replica:
    global _current
    if _current is None:
        _current = Replica(ReplicaSettings.from_env())
    return _current


async def _invoke(request: Request) -> Response:
    replica = current()
    body = await request.body()
    try:
        timeout_s = float(request.headers.get(TIMEOUT_HEADER) or DEFAULT_TIMEOUT_S)
    except ValueError:
        timeout_s = DEFAULT_TIMEOUT_S
    result = await replica.run_direct(request.headers.get("content-type", ""), body, timeout_s)
    return Response(result.body, status_code=result.status, media_type=result.content_type)


async def _health(_: Request) -> Response:
    r = current()
    return JSONResponse({"status": "ok", "in_flight": r.slots.in_use, "limit": r.slots.limit})


invoke_app = Starlette(routes=[
    Route("/invoke", _invoke, methods=["POST"]),
    Route("/healthz", _health, methods=["GET"]),
])
