"""Generator functions in a replica: each yielded value goes out as it is yielded.

- `GeneratorRun` steps one call's generator from the event loop (a sync generator's steps
  run in the replica's threads), each step bounded by the function's timeout, and closes it
  (its `finally` runs) whenever the stream ends early.
- Direct calls (`open_direct`): the first chunk is produced before the answer starts, so a
  function that fails before its first yield is an ordinary 500/504; then `ChunkStream`
  sends the framed chunks and stops, closing the generator and freeing the slot, when the
  caller disconnects.
- Buffered calls (`relay_queued`): the chunks go to a short-lived Redis stream per request,
  read by the waiting activator; a placeholder answer (`STREAM_MARKER`) tells it to read
  there. The producer pauses while `MAX_UNREAD` chunks wait unread and stops when the
  activator says its caller left. An async call (`?async=1`) gets the whole sequence stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from redis.asyncio import Redis
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .. import _keys
from .._protocol import JSON, QueuedRequest, Result, error_result
from .._streaming import (
    CHUNKS_TTL_S,
    END,
    END_KIND,
    ERROR_KIND,
    MAX_UNREAD,
    SSE,
    STREAM_HEADER,
    STREAM_MARKER,
    Chunk,
    cancel_key,
    choose_media,
    chunks_key,
    collected,
    frame,
    timeout_chunk,
)
from .runtime import (
    CANCEL_GRACE_S,
    BadInput,
    LoadedFunction,
    bind_arguments,
    parse_arguments,
    raised,
)
from .slots import Slots

log = logging.getLogger(__name__)

PAUSE_POLL_S = 0.02
_DONE = object()


def is_streaming(fn: LoadedFunction) -> bool:
    f = fn.fn
    return inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f)


def raised_chunk(exc: BaseException) -> Chunk:
    """The error that ends a stream whose generator raised: the body a plain call's 500
    has (type, message and the remote traceback, bounded), also printed to the replica's
    output for `lowtide logs`."""
    return Chunk(ERROR_KIND, raised(exc).body)


def _step(gen: Any) -> Any:
    try:
        return next(gen)
    except StopIteration:
        return _DONE


class GeneratorRun:
    def __init__(self, gen: Any, timeout_s: float, executor: Executor | None) -> None:
        self._gen = gen
        self._async = inspect.isasyncgen(gen)
        self._timeout_s = timeout_s
        self._executor = executor
        self._running: asyncio.Future[Any] | None = None  # the step in progress
        self._thread_step: concurrent.futures.Future[Any] | None = None
        self.finished = False
        self._closed = False

    async def next(self) -> Chunk:
        """The next chunk: a value, END, or an error (which also ends the run)."""
        if self.finished:
            return END
        if self._async:
            step: asyncio.Future[Any] = asyncio.ensure_future(self._gen.__anext__())
        else:  # in a thread: its concurrent future can close the generator when it ends
            self._thread_step = (self._executor or _default_executor()).submit(_step,
                                                                               self._gen)
            step = asyncio.wrap_future(self._thread_step)
        self._running = step
        done, _ = await asyncio.wait({step}, timeout=self._timeout_s)
        if not done:
            self.finished = True
            return timeout_chunk(self._timeout_s)
        self._running = None
        try:
            value = step.result()
        except StopAsyncIteration:
            value = _DONE
        except BaseException as exc:  # the generator raised (it is finished then)
            self.finished = True
            return raised_chunk(exc)
        if value is _DONE:
            self.finished = True
            return END
        chunk = Chunk.of(value)
        self.finished = chunk.kind == ERROR_KIND
        return chunk

    async def close(self) -> None:
        """Close the generator so its `finally` runs; idempotent. A sync step still running
        in a thread (after a timeout) is left to end first."""
        if self._closed:
            return
        self._closed = True
        running, self._running = self._running, None
        if self._async:
            if running is not None and not running.done():
                running.cancel()
                await asyncio.wait({running}, timeout=CANCEL_GRACE_S)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._gen.aclose(), CANCEL_GRACE_S)
            return
        thread_step = self._thread_step
        if running is not None and thread_step is not None and not thread_step.done():
            # still in next() in its thread: close it there once next() returns
            thread_step.add_done_callback(lambda _: _quiet_close(self._gen))
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(BaseException):
            await loop.run_in_executor(self._executor, _quiet_close, self._gen)


_fallback: ThreadPoolExecutor | None = None


def _default_executor() -> Executor:
    global _fallback
    if _fallback is None:
        _fallback = ThreadPoolExecutor(thread_name_prefix="gen")
    return _fallback


def _quiet_close(gen: Any) -> None:
    with contextlib.suppress(BaseException):
        gen.close()


def start(fn: LoadedFunction, content_type: str, body: bytes, timeout_s: float,
          executor: Executor | None) -> GeneratorRun:
    """Raises BadInput when the request does not fit the function."""
    args, kwargs = bind_arguments(fn, *parse_arguments(content_type, body))
    return GeneratorRun(fn.fn(*args, **kwargs), timeout_s, executor)


def failed_result(chunk: Chunk) -> Result:
    """An error before the first value: an ordinary error answer."""
    status = 504 if json.loads(chunk.data).get("error") == "deadline exceeded" else 500
    return Result(status, JSON, chunk.data)


class ChunkStream(Response):
    """The answer of a direct streamed call (an ASGI response)."""

    def __init__(self, run: GeneratorRun, first: Chunk, media: str, headers: dict[str, str],
                 on_close: Callable[[], None]) -> None:
        # not Response.__init__: it would add `content-length: 0` for the empty body
        self.status_code = 200
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in
                            {**headers, "content-type": media, STREAM_HEADER: "1",
                             "cache-control": "no-cache"}.items()]
        self.run, self.first, self.media, self.on_close = run, first, media, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            producer = asyncio.ensure_future(self._produce(send))
            left = asyncio.ensure_future(_disconnected(receive))
            done, pending = await asyncio.wait({producer, left},
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if producer in done:
                producer.result()  # a stream that cannot go on breaks the connection
        finally:
            await self.run.close()
            self.on_close()

    async def _produce(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        chunk = self.first
        while True:
            data = frame(self.media, chunk)
            if data is None:
                raise RuntimeError(f"a {chunk.kind} chunk cannot go into a {self.media} "
                                   "stream: the connection is broken off")
            if chunk.kind == END_KIND:
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
            await send({"type": "http.response.body", "body": data, "more_body": True})
            if chunk.kind == ERROR_KIND:
                await send({"type": "http.response.body", "body": frame(self.media, END)
                            if self.media == SSE else b"", "more_body": False})
                return
            chunk = await self.run.next()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def open_direct(fn: LoadedFunction, slots: Slots, executor: Executor | None,
                      content_type: str, body: bytes, timeout_s: float, accept: str,
                      headers: dict[str, str], on_first: Callable[[float], None]
                      ) -> Result | ChunkStream | None:
    """Start a direct streamed call; None when the replica is at its limit. The slot is
    held until the stream ends; `on_first` gets the time to the first chunk."""
    if not slots.try_acquire():
        return None
    loop = asyncio.get_running_loop()
    started = loop.time()
    run: GeneratorRun | None = None
    try:
        run = start(fn, content_type, body, timeout_s, executor)
        first = await run.next()
        on_first(loop.time() - started)
        if first.kind == ERROR_KIND:
            return failed_result(first)
        stream = ChunkStream(run, first, choose_media(accept, first), headers, slots.release)
        run = None  # the stream owns it now
        return stream
    except BadInput as exc:
        return error_result(400, "bad input", str(exc))
    except Exception as exc:  # calling the function raised before it made a generator
        return failed_result(raised_chunk(exc))
    finally:
        if run is not None:
            await run.close()
            slots.release()


async def relay_queued(redis: Redis, fn: LoadedFunction, request: QueuedRequest,
                       executor: Executor | None) -> Result:
    """Run a buffered streamed call (its slot held by the puller)."""
    try:
        run = start(fn, request.content_type, request.body, request.timeout_s, executor)
    except BadInput as exc:
        return error_result(400, "bad input", str(exc))
    except Exception as exc:
        return failed_result(raised_chunk(exc))
    try:
        first = await run.next()
        if first.kind == ERROR_KIND:
            return failed_result(first)
        if not request.reply_to:  # async: the whole sequence is the stored answer
            chunks = [first]
            while chunks[-1].kind not in (END_KIND, ERROR_KIND):
                chunks.append(await run.next())
            return Result(200, *collected(chunks))
        marker = Result(200, STREAM_MARKER, request.id.encode())
        await _announce(redis, request, marker)
        await _write_chunks(redis, request, run, first)
        return marker
    finally:
        await run.close()


async def _announce(redis: Redis, request: QueuedRequest, marker: Result) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(_keys.result(request.id), mapping=marker.to_fields())
        pipe.expire(_keys.result(request.id), _keys.RESULT_TTL_S)
        pipe.publish(_keys.reply_channel(request.reply_to), marker.to_message(request.id))
        await pipe.execute()


async def _write_chunks(redis: Redis, request: QueuedRequest, run: GeneratorRun,
                        chunk: Chunk) -> None:
    key, cancel = chunks_key(request.id), cancel_key(request.id)
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, chunk.to_fields())
            pipe.expire(key, CHUNKS_TTL_S)
            pipe.xlen(key)
            pipe.exists(cancel)
            _, _, unread, cancelled = await pipe.execute()
        if cancelled or chunk.kind in (END_KIND, ERROR_KIND):
            return
        if unread >= MAX_UNREAD and not await _drained(redis, key, cancel, request.timeout_s):
            log.info("stream of request %s: no reader for %g s; closing it", request.id,
                     request.timeout_s)
            return
        chunk = await run.next()


async def _drained(redis: Redis, key: str, cancel: str, timeout_s: float) -> bool:
    """Wait until the reader took half the unread chunks; False when it does not within
    timeout_s or the caller left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        await asyncio.sleep(PAUSE_POLL_S)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(key)
            pipe.exists(cancel)
            unread, cancelled = await pipe.execute()
        if cancelled:
            return False
        if unread < MAX_UNREAD // 2:
            return True
    return False
