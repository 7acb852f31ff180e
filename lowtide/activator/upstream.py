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
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple, cast

import httptools

IDLE_S = 4.0  # a pooled connection idle longer than this is closed, not reused (below
# the 5 s keep-alive of BentoML's worker, so the replica rarely closes one first)


class UpstreamError(Exception):
    """The replica could not be reached, or broke the connection before answering."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


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
        self._fail(UpstreamError(f"connection closed before the answer was complete"
                                 f"{f' ({exc})' if exc else ''}"))

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self.parser.should_keep_alive()
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
        if conn.reusable() and not self.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return response

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
