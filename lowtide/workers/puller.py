"""Pull buffered requests from an endpoint's Redis stream while the replica has room.

At-least-once: an entry is acknowledged (and deleted) in the same transaction that stores
its result, so a replica that dies mid-request leaves the entry pending. Consumers are named
`{replica_id}.{pid}`; entries pending on a consumer whose process no longer heartbeats are
claimed by a live replica and run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .. import _keys
from .._protocol import QueuedRequest, Result, error_result
from .._redis import Backoff, pause
from .slots import Slots

log = logging.getLogger(__name__)

Handler = Callable[[QueuedRequest], Awaitable[Result]]

BLOCK_MS = 1000
RECLAIM_EVERY_S = 1.0
CLAIM_MIN_IDLE_MS = 1000


async def ensure_group(redis: Redis, stream: str) -> None:
    try:
        await redis.xgroup_create(stream, _keys.STREAM_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class StreamPuller:
    def __init__(
        self, redis: Redis, endpoint: str, consumer: str, handler: Handler, slots: Slots
    ) -> None:
        self._redis = redis
        self._stream = _keys.stream(endpoint)
        self._consumer = consumer
        self._handler = handler
        self._slots = slots
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_reclaim = 0.0
        self._serving: set[bytes] = set()  # entry ids taken and not yet answered
        self._holding: set[bytes] = set()  # of those, the ones still holding a slot
        self._recover_from: bytes | None = b"0"  # re-read own pending entries from here
        self.paused = False

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until `stop`. Redis errors (gone, restarted, group lost) are logged and
        retried with backoff; this loop only ends when asked to."""
        backoff = Backoff()
        group_ok = False
        while not stop.is_set():
            try:
                if not group_ok:
                    await ensure_group(self._redis, self._stream)
                    group_ok = True
                await self._step()
                backoff.reset()
            except RedisError as exc:
                wait_s = backoff.next_s()
                log.warning("stream pull failed (%s); retrying in %.1f s", exc, wait_s)
                group_ok = group_ok and "NOGROUP" not in str(exc)
                self._recover_from = b"0"  # a delivery may have been lost with the reply
                await pause(stop, wait_s)
            except Exception:
                wait_s = backoff.next_s()
                log.exception("stream pull failed; retrying in %.1f s", wait_s)
                await pause(stop, wait_s)

    async def drain(self, timeout_s: float) -> None:
        """Wait for entries already taken to be answered."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout_s)

    async def _step(self) -> None:
        if self.paused or not await self._slots.wait_free(BLOCK_MS / 1000):
            if self.paused:
                await asyncio.sleep(BLOCK_MS / 1000)
            return
        now = time.monotonic()
        if now - self._last_reclaim >= RECLAIM_EVERY_S:
            self._last_reclaim = now
            await self._reclaim()
        if self._recover_from is not None:
            await self._recover_own()
        free = self._slots.free()
        if free <= 0:
            return
        reply = await self._redis.xreadgroup(
            _keys.STREAM_GROUP, self._consumer, {self._stream: ">"}, count=free, block=BLOCK_MS
        )
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._spawn(entry_id, fields)

    async def _recover_own(self) -> None:
        """Entries Redis delivered to this consumer while the reply was lost (the connection
        broke, Redis restarted) stay pending on a live consumer, which no other replica
        claims: read this consumer's own pending list back and serve what is not running."""
        assert self._recover_from is not None
        count = max(1, self._slots.free())
        reply = await self._redis.xreadgroup(
            _keys.STREAM_GROUP, self._consumer, {self._stream: self._recover_from}, count=count)
        entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            if entry_id not in self._serving:
                if self._slots.free() <= 0:
                    return  # the rest at the next step, from this entry on
                log.info("serving entry %r again: its delivery was lost", entry_id)
                self._spawn(entry_id, fields)
            self._recover_from = entry_id  # reads continue after it
        if len(entries) < count:
            self._recover_from = None

    async def _reclaim(self) -> None:
        summary = await self._redis.xpending(self._stream, _keys.STREAM_GROUP)
        for consumer in summary.get("consumers") or []:
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name == self._consumer or await self._consumer_alive(name):
                continue
            free = self._slots.free()
            if free <= 0:
                return
            pending = await self._redis.xpending_range(
                self._stream, _keys.STREAM_GROUP, min="-", max="+", count=free,
                consumername=name,
            )
            ids = [p["message_id"] for p in pending]
            if not ids:
                continue
            claimed = await self._redis.xclaim(
                self._stream, _keys.STREAM_GROUP, self._consumer, CLAIM_MIN_IDLE_MS, ids
            )
            log.info("reclaimed %d request(s) from dead replica %s", len(claimed), name)
            for entry_id, fields in claimed:
                self._spawn(entry_id, fields)
            if len(pending) < free:  # all of it taken over: forget the dead consumer
                await self._redis.xgroup_delconsumer(self._stream, _keys.STREAM_GROUP, name)

    async def _consumer_alive(self, consumer: str) -> bool:
        """Consumers are named `{replica_id}.{pid}`: alive while that replica heartbeats
        from that very process (a restarted worker process is a new consumer)."""
        replica_id, _, pid = consumer.rpartition(".")
        beat = await self._redis.get(_keys.replica_alive(replica_id or consumer))
        if beat is None:
            return False
        try:
            return str(json.loads(beat).get("pid")) == pid
        except ValueError:
            return False

    def _spawn(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        self._slots.acquire()
        self._serving.add(entry_id)
        self._holding.add(entry_id)
        task = asyncio.create_task(self._serve(entry_id, fields))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, entry_id))

    def _done(self, task: asyncio.Task[None], entry_id: bytes) -> None:
        self._tasks.discard(task)
        self._serving.discard(entry_id)
        self._free_slot(entry_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("serving a stream entry failed", exc_info=task.exception())

    async def _serve(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if not fields:  # deleted while pending: nothing to answer
            await self._finish(entry_id, None, None)
            return
        try:
            request = QueuedRequest.from_fields(fields)
        except (KeyError, ValueError):
            log.error("dropping malformed stream entry %r", entry_id)
            await self._finish(entry_id, None, None)
            return
        try:
            result = await self._handler(request)
        except Exception as exc:  # answered, never left pending on a live consumer
            log.exception("running stream entry %r failed", entry_id)
            result = error_result(500, "internal error",
                                  f"{type(exc).__name__} in the replica (see `lowtide logs`)")
        # the call is done: its slot goes to the next one while the result is stored (the
        # entry stays pending until that transaction, so nothing changes for delivery; a
        # slot held through it idled two Redis round trips per buffered call, about half
        # of a 20 ms function's throughput on a loaded machine)
        self._free_slot(entry_id)
        await self._finish(entry_id, request, result)

    def _free_slot(self, entry_id: bytes) -> None:
        if entry_id in self._holding:
            self._holding.discard(entry_id)
            self._slots.release()

    async def _finish(self, entry_id: bytes, request: QueuedRequest | None,
                      result: Result | None) -> None:
        """Store the result, acknowledge and delete the entry, and publish the answer, in one
        transaction; retried until Redis takes it (the entry stays pending meanwhile)."""
        backoff = Backoff()
        while True:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    if request is not None and result is not None:
                        key = _keys.result(request.id)
                        pipe.hset(key, mapping=result.to_fields())
                        pipe.expire(key, _keys.RESULT_TTL_S)
                    pipe.xack(self._stream, _keys.STREAM_GROUP, entry_id)
                    pipe.xdel(self._stream, entry_id)
                    if request is not None and result is not None and request.reply_to:
                        pipe.publish(
                            _keys.reply_channel(request.reply_to), result.to_message(request.id)
                        )
                    await pipe.execute()
                return
            except RedisError as exc:
                wait_s = backoff.next_s()
                log.warning("storing a result failed (%s); retrying in %.1f s", exc, wait_s)
                await asyncio.sleep(wait_s)

