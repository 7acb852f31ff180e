"""One replica: a deployed function loaded in a BentoML worker, serving direct calls and
pulling buffered requests from the endpoint's stream.

Life cycle: `start()` loads the artifact and, for a class deployment, builds its one
instance (the constructor loads the model; `target.py`), then marks the replica ready in
Redis and starts the heartbeat and the stream puller: a replica is routable, counted ready
and ends its cold start only once the constructor returned. A load or constructor that
raises is recorded as the replica's failure (`fail()`, state "failed" with the reason), for
the platform to answer the endpoint's callers with it. `stop()` stops pulling, lets
in-flight work finish for a grace period, runs the class's stop hooks and removes the
replica from routing.

Concurrency: the replica learns its own limit (`lowtide.limiter`) from the latency of every
request it runs, direct or pulled, so one learner sees the replica's whole load whatever
number of activators feed it. The limit gates stream pulls and refuses direct calls over it
(503 with `X-Lowtide-Busy`: the activator buffers those); it travels to the activators in
the headers of every direct answer and in the replica record (`limit`, the autoscaler's
input), and the heartbeat carries it with in-flight and the no-load latency. Batched
functions and methods (one batcher each) and generators (streamed answers) are per callable
(`features.Features`); with batched callables the limit counts items across the replica.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError

from .. import _keys
from .._protocol import QueuedRequest, Result
from .._redis import Backoff, async_redis
from ..limiter import ADMIT_HEADER, HOLD_HEADER, LIMIT_HEADER, NO_LOAD_HEADER, GradientLimiter
from .blobcache import use_model_store
from .features import Features
from .fence import ROUTES_MARKER
from .puller import StreamPuller
from .replica_settings import ReplicaSettings
from .runtime import execute, queue_expired_result
from .slots import Slots
from .streaming import ChunkStream, open_direct, relay_queued
from .target import Target, load_artifact
from .threads import fit_threads

log = logging.getLogger(__name__)

# the packages this process imported as a pool worker before it had a function (set by
# `replica_app.enter_pool`), reported with the start-up phases
PRELOADED: list[str] = []

HEARTBEAT_S = 1.0
ALIVE_TTL_S = 3
FAIL_REPORT_TIMEOUT_S = 5.0
HOLD_SERVICE_TIMES = 4.0  # a direct call over the limit waits this many service times here




class Replica:
    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        if settings.model_store is not None:  # before user code runs (unpickling included)
            use_model_store(settings.model_store)
        self.target: Target | None = None  # set by load()
        self.phases: dict[str, float] = {"load_s": 0.0, "setup_s": 0.0}
        self._started = False  # registered as ready (stop() deregisters only then)
        self._first_done = False
        self.limiter = GradientLimiter(settings.limiter, now=time.monotonic())
        # threads start on demand; enough for a sync function at the largest limit
        self.executor = ThreadPoolExecutor(settings.limiter.max_limit, thread_name_prefix="fn")
        # per callable: a batcher for each batched one, which ones stream (set by load_target)
        self.features = Features({}, frozenset(), plain=True)
        self.slots = Slots(self._admit_limit())
        self._recorded_limit = 0  # the limit last written to the replica record
        self.redis: Redis = async_redis(settings.redis_url)
        self.consumer = f"{settings.replica_id}.{os.getpid()}"
        self.puller = StreamPuller(
            self.redis, settings.endpoint, self.consumer, self._run_queued, self.slots
        )
        self.last_done_at = time.time()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # ---- life cycle -------------------------------------------------------------------
    async def load_target(self) -> Target:
        """Unpickle the artifact, then build the target (a class's constructor), both off
        the event loop: a model load of minutes leaves the server answering health checks."""
        started = time.time()
        fit_threads(self.settings.cpu)  # before the user's code imports torch
        obj = await asyncio.to_thread(load_artifact, self.settings.artifact_path)
        built = time.time()
        self.phases["load_s"] = built - started
        self.target = await asyncio.to_thread(Target.build, obj)
        self.phases["setup_s"] = time.time() - built
        # batched callables' limits count items and come from their batch policies
        self.features = Features.build(self.target.methods, bool(self.target.class_name),
                                       self.executor, self.settings.endpoint,
                                       self.settings.batch_fixed_wait_s)
        self.slots.set_limit(self._admit_limit())
        if self.target.class_name:
            log.info("built %s in %.3f s", self.target.class_name, self.phases["setup_s"])
        return self.target

    async def start(self) -> None:
        """Load, then register as ready; while Redis is away, wait for it (with backoff)
        rather than exit: a replica starting during a Redis restart comes up when Redis
        does. What the load raises is raised here (see `start_or_fail`)."""
        await self.load_target()
        backoff = Backoff()
        while True:
            try:
                await self._heartbeat_once()
                await self._set_state("ready")
                self._started = True
                break
            except RedisError as exc:
                wait_s = backoff.next_s()
                log.warning("replica %s cannot register (%s); retrying in %.1f s",
                            self.settings.replica_id, exc, wait_s)
                await asyncio.sleep(wait_s)
        # the function, its model and the frameworks live as long as the replica: keep them
        # out of the collector's generations, so collections under load walk only garbage
        gc.freeze()
        self._tasks = [
            asyncio.create_task(self.puller.run(self._stop), name="puller"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)
        log.info("replica %s of %s v%d ready at %s", self.settings.replica_id,
                 self.settings.endpoint, self.settings.version, self.settings.address)

    async def fail(self, reason: str) -> None:
        """Record why this replica cannot start (state "failed"), for the platform to
        answer the endpoint's waiting callers with it; best effort, bounded."""
        try:
            await asyncio.wait_for(self._record_failure(reason), FAIL_REPORT_TIMEOUT_S)
        except (RedisError, asyncio.TimeoutError) as exc:
            log.warning("could not record the start failure of %s: %s",
                        self.settings.replica_id, exc)

    async def _record_failure(self, reason: str) -> None:
        s = self.settings
        key = _keys.replicas(s.endpoint)
        raw = await self.redis.hget(key, s.replica_id)
        if raw is None:
            return  # the platform dropped it meanwhile (stopped, or its endpoint deleted)
        record = json.loads(raw)
        record.update(state="failed", error=reason, failed_at=time.time(),
                      startup=self._startup(record))
        await self.redis.hset(key, s.replica_id, json.dumps(record))
        announce_routes()

    async def stop(self) -> None:
        s = self.settings
        if not self._started:  # never ready: nothing to drain or deregister
            await self.redis.aclose()
            self.executor.shutdown(wait=False, cancel_futures=True)
            return
        try:
            await self._set_state("stopping")  # out of routing first, where Redis allows
        except RedisError as exc:
            log.warning("could not mark replica %s stopping: %s", s.replica_id, exc)
        self._stop.set()
        await self.puller.drain(s.drain_s)
        await self.slots.wait_idle(s.drain_s)
        await self.features.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.target is not None:
            await self.target.shutdown(self.executor)
        try:
            await self._leave_group()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(_keys.replicas(s.endpoint), s.replica_id)
                pipe.delete(_keys.replica_alive(s.replica_id))
                await pipe.execute()
            announce_routes()
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
    @property
    def ready(self) -> bool:
        return self._started

    async def run_direct(self, content_type: str, body: bytes, timeout_s: float,
                         method: str = "") -> Result | None:
        """Run a direct call; None when the replica stayed at its limit for longer than it
        holds a call for a slot (`hold_s`; nothing ran)."""
        if not await self.slots.acquire_within(self.hold_s()):
            return None
        try:
            return await self._measured(method, content_type, body, timeout_s)
        finally:
            self.slots.release()

    async def _run_queued(self, request: QueuedRequest) -> Result:
        late_s = time.time() - request.start_by
        if late_s > 0:
            return queue_expired_result(late_s)
        fn = self.target.get(request.method) if self.target is not None else None
        if fn is not None and self.features.streams(request.method):
            return await relay_queued(self.redis, fn, request, self.executor)
        return await self._measured(request.method, request.content_type, request.body,
                                    request.timeout_s, time.monotonic() - late_s)

    async def _measured(self, method: str, content_type: str, body: bytes, timeout_s: float,
                        start_by: float | None = None) -> Result:
        """Execute one call (its slot already taken) and feed its latency to the limiter;
        a batched callable's item joins its batches (its policy learns from whole batches)."""
        assert self.target is not None, "called before the replica was ready"
        fn = self.target.get(method)
        if fn is None:
            return self.target.not_found(method)
        batcher = self.features.batcher(method)
        in_flight = self.slots.in_use
        started = time.monotonic()
        try:
            if batcher is not None:
                result = await batcher.submit(content_type, body, timeout_s, start_by)
            else:
                result = await execute(fn, content_type, body, timeout_s, self.executor)
        finally:
            self.last_done_at = time.time()
        if batcher is None and result.status != 400:  # refused input says nothing of load
            now = time.monotonic()
            self.limiter.on_sample(now - started, in_flight, now)
        self.slots.set_limit(self._admit_limit())
        if not self._first_done:
            await self._note_first_response()
        return result

    def streams(self, method: str) -> bool:
        """Whether a call of `method` ("" for __call__ or the function) streams."""
        return self.features.streams(method)

    async def open_stream(self, content_type: str, body: bytes, timeout_s: float,
                          accept: str, method: str = "") -> Result | ChunkStream | None:
        """Start a direct streamed call of a generator (None: at the limit); the time to
        its first chunk is the limiter's sample."""
        assert self.target is not None, "called before the replica was ready"
        fn = self.target.get(method)
        if fn is None:
            return self.target.not_found(method)
        in_flight = self.slots.in_use + 1

        def first(latency_s: float) -> None:
            now = time.monotonic()
            self.last_done_at = time.time()
            self.limiter.on_sample(latency_s, in_flight, now)
            self.slots.set_limit(self._admit_limit())

        return await open_direct(fn, self.slots, self.executor, content_type, body,
                                 timeout_s, accept, self.load_headers(hold=False), first)

    def _limit(self) -> int:
        return self.features.limit(self.limiter.limit)

    def _admit_limit(self) -> int:
        return self.features.limit(self.limiter.admit_limit)

    def hold_s(self) -> float:
        """How long a direct call over the limit waits here for a slot: a few service times
        (the latency of recent calls, else the no-load latency; 0 before any is known)."""
        lim = self.limiter
        latency_s = lim.recent_s if lim.recent_s is not None else lim.no_load_s
        return 0.0 if latency_s is None else HOLD_SERVICE_TIMES * latency_s

    def load_headers(self, hold: bool = True) -> dict[str, str]:
        """The learned limit, for the activator that proxied a direct call; the limit it
        admits now when lower (1 while re-probing its no-load latency: an activator that
        kept the learned limit in flight meanwhile would have most of it refused as busy);
        and how long this replica holds a call over it (the activator then keeps one more
        in flight; 0 for a generator's call, which is refused at once over the limit)."""
        headers = {LIMIT_HEADER: str(self._limit()),
                   HOLD_HEADER: f"{self.hold_s() * 1000:.3f}" if hold else "0"}
        admit = self._admit_limit()
        if admit < self._limit():
            headers[ADMIT_HEADER] = str(admit)
        if self.limiter.no_load_s is not None:
            headers[NO_LOAD_HEADER] = f"{self.limiter.no_load_s * 1000:.3f}"
        return headers

    def load(self) -> dict[str, object]:
        """The heartbeat's view of the load: in flight, learned limit, latencies."""
        lim = self.limiter
        return {"pid": os.getpid(), "in_flight": self.slots.in_use, "limit": self._limit(),
                "admit_limit": self._admit_limit(), "probing": lim.probing,
                **self.features.view(),
                "no_load_ms": None if lim.no_load_s is None else round(lim.no_load_s * 1000, 3),
                "recent_ms": None if lim.recent_s is None else round(lim.recent_s * 1000, 3),
                "limit_reason": self.features.limit_reason(lim.reason),
                "last_done_at": self.last_done_at, "at": time.time()}

    # ---- registration -----------------------------------------------------------------
    async def _set_state(self, state: str) -> None:
        s = self.settings
        key = _keys.replicas(s.endpoint)
        raw = await self.redis.hget(key, s.replica_id)
        record = json.loads(raw) if raw else {"id": s.replica_id, "version": s.version}
        record.update(state=state, address=s.address, pid=os.getpid())
        event = None
        if state == "ready":
            record["ready_at"] = time.time()
            record["limit"] = self._recorded_limit = self._limit()
            record["startup"] = startup = self._startup(record)
            event = {"at": record["ready_at"], "kind": "replica", "from": None, "to": None,
                     "reason": startup_reason(s.replica_id, startup), "inputs": startup}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, s.replica_id, json.dumps(record))
            if event is not None:
                pipe.xadd(_keys.decisions(s.endpoint), {"event": json.dumps(event)},
                          maxlen=1000, approximate=True)
            await pipe.execute()
        announce_routes()

    def _startup(self, record: dict[str, Any]) -> dict[str, Any]:
        """Where the time to ready went: placement and queue wait (decision to the agent
        starting it), process start or specialization, function load (unpickling, with
        the imports it does), and a class's constructor (setup: the model load)."""
        s, now = self.settings, time.time()
        created = float(record.get("created_at") or s.spawned_at or now)
        spawned = s.spawned_at or created
        load_s, setup_s = self.phases["load_s"], self.phases["setup_s"]
        startup = {
            "path": s.start_path,
            "queue_s": round(max(0.0, spawned - created), 4),
            "start_s": round(max(0.0, now - spawned - load_s - setup_s), 4),
            "load_s": round(load_s, 4),
            "total_s": round(max(0.0, now - created), 4),
            **({"preloaded": sorted(PRELOADED)} if s.start_path == "pool" else {}),
        }
        if self.target is not None and self.target.class_name:
            startup["setup_s"] = round(setup_s, 4)
        return startup

    async def _note_first_response(self) -> None:
        """Record when the first answer left (the last start-up phase), once."""
        if self._first_done:
            return
        self._first_done = True
        s = self.settings
        key = _keys.replicas(s.endpoint)
        try:
            raw = await self.redis.hget(key, s.replica_id)
            if raw:
                record = json.loads(raw)
                ready_at = float(record.get("ready_at") or time.time())
                record.setdefault("startup", {})["first_response_s"] = round(
                    time.time() - ready_at, 4)
                await self.redis.hset(key, s.replica_id, json.dumps(record))
        except RedisError as exc:
            log.debug("could not record the first response: %s", exc)

    async def _record_limit(self) -> None:
        """Keep the record's `limit` current (read by activators' resync and the
        autoscaler); a watched transaction, as the agent writes the same record."""
        limit = self._limit()
        if limit == self._recorded_limit:
            return
        s = self.settings
        key = _keys.replicas(s.endpoint)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                raw = await pipe.hget(key, s.replica_id)
                if raw is None:
                    return
                record = json.loads(raw)
                if record.get("state") != "ready":
                    return
                record["limit"] = limit
                pipe.multi()
                pipe.hset(key, s.replica_id, json.dumps(record))
                await pipe.execute()
            except WatchError:
                return  # changed meanwhile: the next heartbeat tries again
        self._recorded_limit = limit

    async def _heartbeat_once(self) -> None:
        if self.limiter.tick(time.monotonic()):
            self.slots.set_limit(self._admit_limit())
        await self.redis.set(
            _keys.replica_alive(self.settings.replica_id), json.dumps(self.load()),
            ex=ALIVE_TTL_S
        )
        await self._record_limit()
        current = await self.redis.get(_keys.deployed_version(self.settings.endpoint))
        stale = current is None or int(current) != self.settings.version
        if stale and not self.puller.paused:
            log.info("replica %s is stale (deployment now at %s); no longer pulling",
                     self.settings.replica_id, current)
        self.puller.paused = stale

    async def _heartbeat(self) -> None:
        """Every HEARTBEAT_S while Redis answers; failures are logged (once per outage at
        WARNING) and retried at the same pace, so liveness returns within a beat."""
        failing = False
        while not self._stop.is_set():
            try:
                await self._heartbeat_once()
                if failing:
                    log.info("heartbeat restored")
                failing = False
            except RedisError as exc:
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "heartbeat failed (%s); retrying every %g s", exc, HEARTBEAT_S)
                failing = True
            except Exception:
                log.exception("heartbeat failed; retrying in %g s", HEARTBEAT_S)
            await asyncio.sleep(HEARTBEAT_S)


def announce_routes() -> None:
    """Have the agent publish this endpoint on ROUTES_CHANNEL (this replica's Redis user may
    not; `fence`): one line on the output the agent reads, written in one call."""
    try:
        os.write(2, f"{ROUTES_MARKER}\n".encode())
    except OSError as exc:  # activators still resync within seconds
        log.warning("could not announce a route change: %s", exc)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("replica task %s died", task.get_name(), exc_info=task.exception())


def startup_reason(replica_id: str, startup: dict[str, Any]) -> str:
    how = "a prewarmed worker" if startup["path"] == "pool" else "a new server process"
    setup = f", setup {_seconds(startup['setup_s'])}" if "setup_s" in startup else ""
    return (f"replica {replica_id} ready in {_seconds(startup['total_s'])} via {how}: "
            f"queue {_seconds(startup['queue_s'])}, start {_seconds(startup['start_s'])}, "
            f"function load {_seconds(startup['load_s'])}{setup}")


def _seconds(value_s: float) -> str:
    """'163 ms' under ten seconds' worth of milliseconds, else '9.8 s'."""
    return f"{value_s * 1000:.0f} ms" if value_s < 1.0 else f"{value_s:.1f} s"


