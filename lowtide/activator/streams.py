"""Streamed answers through the activator, sent to the caller as they come.

- Warm (`pass_through`): the replica frames the chunks; its body is copied through as it
  arrives, never buffered whole.
- Buffered (`from_redis`): the replica writes chunks to the request's short-lived Redis
  stream; they are read in order (and deleted once read, which lets a paused producer go
  on) and framed here for the caller's `Accept`.
Either way `on_first` is called once the first bytes of the body went to the caller (the
activator's time-to-first-byte histogram), and a caller that leaves stops the stream: the
replica's connection is closed (warm) or the request's cancel key is set (buffered), and
the replica closes the generator. A replica that sends nothing for the function's timeout
(plus a margin) ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .._http import Unavailable
from .._protocol import Result
from .._streaming import (
    CHUNKS_TTL_S,
    END_KIND,
    ERROR_KIND,
    STREAM_MARKER,
    Chunk,
    cancel_key,
    choose_media,
    chunks_key,
    error_chunk,
    frame,
    timeout_chunk,
)
from .upstream import BodyStream, UpstreamError

log = logging.getLogger(__name__)

MARGIN_S = 2.0  # beyond the function's timeout between two chunks
READ_COUNT = 64


@dataclass(frozen=True)
class Streamed(Result):
    """A replica's streamed direct answer: its head, and its body as it comes."""

    stream: BodyStream | None = None


def is_stream(result: Result) -> bool:
    return isinstance(result, Streamed) or result.content_type == STREAM_MARKER


def _no_op() -> None:
    pass


async def respond(request: web.Request, redis: Redis, result: Result, timeout_s: float,
                  on_first: Callable[[], None] = _no_op) -> web.StreamResponse:
    """Send a streamed answer (`is_stream(result)`) to the caller."""
    if isinstance(result, Streamed) and result.stream is not None:
        return await pass_through(request, result.status, result.content_type,
                                  result.stream, timeout_s, on_first)
    return await from_redis(request, redis, result.body.decode(), timeout_s, on_first)


def _headers(media: str) -> dict[str, str]:
    return {"Content-Type": media, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def pass_through(request: web.Request, status: int, media: str, body: BodyStream,
                       timeout_s: float, on_first: Callable[[], None] = _no_op
                       ) -> web.StreamResponse:
    out = web.StreamResponse(status=status, headers=_headers(media))
    first = True
    try:
        await out.prepare(request)
        while True:
            data = await body.read(timeout_s + MARGIN_S)
            if data is None:
                break
            await out.write(data)
            if first and data:
                first = False
                on_first()
        await out.write_eof()
    except ConnectionError:
        log.debug("caller left a stream; closing it at the replica")
    except (UpstreamError, asyncio.TimeoutError) as exc:
        log.warning("a replica's stream broke off: %s", exc or "no chunk in time")
        await _try_write_error(out, media, "replica lost", "the replica's stream broke off")
    finally:
        body.close()
    return out


async def from_redis(request: web.Request, redis: Redis, request_id: str, timeout_s: float,
                     on_first: Callable[[], None] = _no_op) -> web.StreamResponse:
    key = chunks_key(request_id)
    chunks = _read(redis, key, timeout_s)
    out: web.StreamResponse | None = None
    media = ""
    try:
        async for chunk in chunks:
            first = out is None
            if out is None:
                media = choose_media(request.headers.get("Accept", ""), chunk)
                out = web.StreamResponse(status=200, headers=_headers(media))
                await out.prepare(request)
            data = frame(media, chunk)
            if data is None:
                break  # this framing cannot say it: the stream breaks off
            await out.write(data)
            if first:
                on_first()
            if chunk.kind in (END_KIND, ERROR_KIND):
                await out.write_eof()
                break
    except ConnectionError:
        log.debug("caller left buffered stream %s; telling its replica", request_id)
        await _cancel(redis, request_id)
    except RedisError as exc:
        log.warning("reading buffered stream %s failed: %s", request_id, exc)
        if out is not None:
            await _try_write_error(out, media, "unavailable", f"Redis failed mid-stream: {exc}")
    finally:
        await chunks.aclose()
        with contextlib.suppress(RedisError):  # else it expires
            await redis.delete(key)
    if out is None:
        raise Unavailable("Redis failed before the stream started", headers={"Retry-After": "1"})
    return out


async def _read(redis: Redis, key: str, timeout_s: float) -> AsyncGenerator[Chunk, None]:
    """The request's chunks in order, each deleted once read; a timeout chunk when none
    comes within the function's timeout."""
    last: bytes | str = "0"
    while True:
        reply = await redis.xread({key: last}, count=READ_COUNT,
                                  block=int((timeout_s + MARGIN_S) * 1000))
        entries = reply[0][1] if reply else []
        if not entries:
            yield timeout_chunk(timeout_s)
            return
        last = entries[-1][0]
        await redis.xdel(key, *(entry_id for entry_id, _ in entries))
        for _, fields in entries:
            yield Chunk.from_fields(fields)


async def _cancel(redis: Redis, request_id: str) -> None:
    try:
        await redis.set(cancel_key(request_id), b"1", ex=CHUNKS_TTL_S)
    except RedisError as exc:
        log.warning("could not cancel stream %s: %s", request_id, exc)


async def _try_write_error(out: web.StreamResponse, media: str, error: str, detail: str
                           ) -> None:
    data = frame(media, error_chunk(error, detail, "ConnectionError"))
    try:
        if data is not None and out.prepared:
            await out.write(data)
            await out.write_eof()
    except ConnectionError:
        pass
