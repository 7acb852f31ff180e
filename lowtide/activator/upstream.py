"""The activator's client for the replica hop: pooled HTTP/1.1 keep-alive connections, one
request per connection at a time, the response parsed by httptools (C, the parser uvicorn
uses).

The warm path only ever sends one kind of request to a replica (`POST /lt/invoke` with a
body of known length) and needs three things of the answer (status, a few headers, the
body), so a general client's per-request machinery (request and response objects, header
multidicts, tracing hooks, a stream reader) is most of what it costs. This one writes the
request in a single `transport.write` and reads the answer into a `Response` tuple.

A connection taken from the pool may have been closed by the replica meanwhile (its
keep-alive timeout): when a reused connection fails before any byte of the answer came
back, the request is sent again on a new one (the replica never read it). Every other
failure is an `UpstreamError` for the caller (the activator then buffers the request).
An answer must carry its length (Content-Length or chunked, as uvicorn's always do); one
delimited by closing the connection counts as broken.

Streamed answers (a generator function's, marked `X-Lowtide-Stream` by the replica) come
back as soon as their head is parsed, with a `BodyStream` the caller reads chunks from as
they arrive; the connection returns to the pool when the body is complete, and is closed
when the reader stops early (the replica then closes the generator). Reading pauses while
the reader falls behind. Every other answer takes the buffered path above, unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, cast

import httptools

IDLE_S = 4.0  # a pooled connection idle longer than this is closed, not reused (below
# the 5 s keep-alive of BentoML's worker, so the replica rarely closes one first)


class UpstreamError(Exception):
    """The replica could not be reached, or broke the connection before answering."""


STREAM_HEADER = "x-lowtide-stream"
PAUSE_CHUNKS = 64  # unread chunks of a streamed answer at which reading pauses


class BodyStream:
    """The body of a streamed answer, chunk by chunk as it arrives."""

    def __init__(self, transport: asyncio.Transport | None) -> None:
        self._transport = transport
        self._chunks: deque[bytes] = deque()
        self._arrived = asyncio.Event()
        self._paused = False
        self.complete = False
        self._error: Exception | None = None
        self._on_end: Callable[[bool], None] | None = None
        self._ended: bool | None = None  # how it ended: complete (True) or broken off

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._arrived.set()
        if len(self._chunks) >= PAUSE_CHUNKS and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    def end(self) -> None:
        self.complete = True
        self._arrived.set()
        self._finish(True)

    def fail(self, exc: Exception) -> None:
        self._error = exc
        self._arrived.set()
        self._finish(False)

    async def read(self, timeout_s: float) -> bytes | None:
        """What arrived since the last read (waiting up to timeout_s for something, else
        asyncio.TimeoutError); None at the end; UpstreamError when it broke off."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return None
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        data = b"".join(self._chunks)
        self._chunks.clear()
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def close(self) -> None:
        """Stop reading: an incomplete answer's connection is closed."""
        if not self.complete and self._transport is not None:
            self._transport.close()
        self._finish(False)

    def attach(self, on_end: Callable[[bool], None]) -> None:
        self._on_end = on_end
        if self._ended is not None:
            on_end(self._ended)

    def _finish(self, complete: bool) -> None:
        if self._ended is not None:
            return
        self._ended = complete
        if self._on_end is not None:
            self._on_end(complete)


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    stream: BodyStream | None = None  # a streamed answer's body (then `body` is empty)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received = False  # a byte of the current answer came back
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._keep_alive = True
        self._stream: BodyStream | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close our end too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = UpstreamError(f"connection closed before the answer was complete"
                              f"{f' ({exc})' if exc else ''}")
        self._fail(error)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.fail(error)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if STREAM_HEADER in self._headers:  # streamed: answer with the head, body follows
            self._stream = BodyStream(self.transport)
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(Response(self.parser.get_status_code(), self._headers, b"",
                                           self._stream))

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(body)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self.parser.should_keep_alive()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.end()
            return
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.parser.get_status_code(), self._headers,
                                       b"".join(self._body)))

    # -- use -------------------------------------------------------------------------------
    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.received = False
        self._headers, self._body, self._keep_alive = {}, [], True
        self.transport.write(request)
        return self.waiter

    def reusable(self) -> bool:
        return not self.closed and self._keep_alive and self.waiter is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """The answer is past its deadline: give up on it and on the connection."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(asyncio.TimeoutError())
        self.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class Upstream:
    """Keep-alive connections to one replica (`host:port`), used one request at a time."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._head = f"POST /lt/invoke HTTP/1.1\r\nHost: {address}\r\n".encode("latin-1")
        self._idle: list[_Connection] = []
        self.closed = False

    async def post(self, headers: dict[str, str], body: bytes, timeout_s: float) -> Response:
        """POST /lt/invoke with `body`, the answer within `timeout_s` (else
        asyncio.TimeoutError); UpstreamError when the replica cannot be reached or breaks the
        connection. A timeout or the caller's cancellation closes the connection (its answer,
        if it ever comes, belongs to nobody)."""
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if lines.count("\n") != len(headers) or "\r" in lines.replace("\r\n", ""):
            raise ValueError(f"a header holds a line break: {headers!r}")
        # aiohttp decoded the caller's header bytes as UTF-8 with surrogateescape: this
        # passes them on unchanged
        request = b"".join((self._head, lines.encode("utf-8", "surrogateescape"),
                            b"Content-Length: %d\r\n\r\n" % len(body), body))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conn = self._take()
        if conn is not None:
            try:
                return await self._exchange(conn, request, deadline)
            except UpstreamError:
                if conn.received:
                    raise
                # closed by the replica while idle, before it read this request: a new one
        try:
            conn = await asyncio.wait_for(self._connect(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: timed out"
                                ) from None
        return await self._exchange(conn, request, deadline)

    async def _exchange(self, conn: _Connection, request: bytes, deadline: float
                        ) -> Response:
        loop = asyncio.get_running_loop()
        timer = loop.call_at(deadline, conn.expire)
        try:
            response = await conn.send(request)
        except BaseException:
            conn.close()
            raise
        finally:
            timer.cancel()
        if response.stream is not None:
            response.stream.attach(lambda complete: self._release(conn, complete))
        else:
            self._release(conn, True)
        return response

    def _release(self, conn: _Connection, complete: bool) -> None:
        if complete and conn.reusable() and not self.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    def _take(self) -> _Connection | None:
        """The most recently used open connection (LIFO keeps few connections warm)."""
        stale = time.monotonic() - IDLE_S
        while self._idle:
            conn = self._idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < stale:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return conn

    def idle_connections(self) -> int:
        return sum(1 for c in self._idle if not c.closed)

    def close(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class Upstreams:
    """One `Upstream` per replica address, closed when the replica leaves the routes."""

    def __init__(self) -> None:
        self._by_address: dict[str, Upstream] = {}

    def get(self, address: str) -> Upstream:
        upstream = self._by_address.get(address)
        if upstream is None:
            upstream = self._by_address[address] = Upstream(address)
        return upstream

    def keep_only(self, addresses: set[str]) -> None:
        for address in list(self._by_address):
            if address not in addresses:
                self._by_address.pop(address).close()

    def close(self) -> None:
        for upstream in self._by_address.values():
            upstream.close()
        self._by_address.clear()
