"""The activator's client for the replica hop (`lowtide.activator.upstream`) against real
sockets: small servers in this process that answer byte for byte as a test needs (keep-alive,
chunked bodies, a replica closing an idle connection, breaking mid-answer, never answering)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from lowtide.activator.upstream import Upstream, UpstreamError, Upstreams

Reply = Callable[[bytes, int], Awaitable[bytes | None]]  # (request, n on this conn) -> bytes


class Server:
    """Reads one request at a time (head + Content-Length body) and writes what `reply`
    returns; None closes the connection without answering, and so does every answer when
    `close_after` is set."""

    def __init__(self, reply: Reply, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                n += 1
                answer = await self.reply(request, n)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(reply: Reply, close_after: bool = False) -> Server:
        s = Server(reply, close_after)
        s.server = await asyncio.start_server(s.handle, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


async def echo(request: bytes, n: int) -> bytes:
    return ok(request.split(b"\r\n\r\n", 1)[1], "X-Lowtide-Limit: 7")


async def test_round_trip_reuses_one_connection(serve) -> None:
    server = await serve(echo)
    up = Upstream(server.address)
    for i in range(3):
        resp = await up.post({"Content-Type": "application/json", "X-Lowtide-Timeout": "5.0"},
                             b'{"x": %d}' % i, timeout_s=5)
        assert (resp.status, resp.body) == (200, b'{"x": %d}' % i)
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["x-lowtide-limit"] == "7"
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /lt/invoke HTTP/1.1"
    assert f"Host: {server.address}".encode() in head
    assert b"X-Lowtide-Timeout: 5.0" in head and b"Content-Length: 8" in head
    up.close()


async def test_header_bytes_pass_through_unchanged(serve) -> None:
    server = await serve(echo)
    raw = "application/json; note=caf\u00e9".encode()  # as a caller sent it
    up = Upstream(server.address)
    await up.post({"Content-Type": raw.decode("utf-8", "surrogateescape")}, b"{}", 5)
    await up.post({"Content-Type": b"x/y; a=\xff".decode("utf-8", "surrogateescape")}, b"", 5)
    assert b"Content-Type: " + raw + b"\r\n" in server.requests[0]
    assert b"Content-Type: x/y; a=\xff\r\n" in server.requests[1]
    up.close()


async def test_concurrent_requests_each_take_a_connection(serve) -> None:
    async def slow(request: bytes, n: int) -> bytes:
        await asyncio.sleep(0.05)
        return await echo(request, n)

    server = await serve(slow)
    up = Upstream(server.address)
    bodies = [b"%d" % i for i in range(5)]
    answers = await asyncio.gather(*(up.post({}, b, 5) for b in bodies))
    assert [a.body for a in answers] == bodies
    assert server.connections == 5 and up.idle_connections() == 5
    await up.post({}, b"again", 5)
    assert server.connections == 5  # pooled
    up.close()


async def test_chunked_answer_is_decoded(serve) -> None:
    async def chunked(request: bytes, n: int) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    server = await serve(chunked)
    up = Upstream(server.address)
    resp = await up.post({}, b"", 5)
    assert resp.body == b"hello world"
    assert (await up.post({}, b"", 5)).body == b"hello world"
    assert server.connections == 1  # the connection survives a chunked answer
    up.close()


async def test_connection_closed_while_idle_is_replaced_and_the_request_sent_again(
        serve) -> None:
    # the replica's keep-alive timer closes the connection as the next request goes out:
    # it never read that request, so the client sends it again on a new connection
    async def once_per_connection(request: bytes, n: int) -> bytes | None:
        return await echo(request, n) if n == 1 else None

    server = await serve(once_per_connection)
    up = Upstream(server.address)
    assert (await up.post({}, b"first", 5)).body == b"first"
    assert (await up.post({}, b"second", 5)).body == b"second"
    assert server.connections == 2
    assert [r.split(b"\r\n\r\n")[1] for r in server.requests] == [b"first", b"second",
                                                                   b"second"]
    up.close()


async def test_idle_connections_past_their_time_are_not_reused(serve, monkeypatch) -> None:
    server = await serve(echo)
    up = Upstream(server.address)
    await up.post({}, b"a", 5)
    monkeypatch.setattr("lowtide.activator.upstream.IDLE_S", 0.0)
    await up.post({}, b"b", 5)
    assert server.connections == 2


async def test_broken_mid_answer_is_an_error_not_a_retry(serve) -> None:
    async def half(request: bytes, n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"

    server = await serve(half, close_after=True)
    up = Upstream(server.address)
    with pytest.raises(UpstreamError, match="before the answer was complete"):
        await up.post({}, b"x", 5)
    assert len(server.requests) == 1  # the function may have run: never sent again
    assert up.idle_connections() == 0


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped(serve) -> None:
    async def first_hangs(request: bytes, n: int) -> bytes:
        if len(server.requests) == 1:
            await asyncio.sleep(30)
        return await echo(request, n)

    server = await serve(first_hangs)
    up = Upstream(server.address)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await up.post({}, b"slow", timeout_s=0.2)
    assert loop.time() - started < 5
    assert up.idle_connections() == 0  # its late answer must never reach the next caller
    assert (await up.post({}, b"next", 5)).body == b"next"
    assert server.connections == 2


async def test_cancelled_caller_leaves_no_connection_behind(serve) -> None:
    async def hang(request: bytes, n: int) -> bytes:
        await asyncio.sleep(30)
        return b""

    server = await serve(hang)
    up = Upstream(server.address)
    task = asyncio.create_task(up.post({}, b"x", 60))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert up.idle_connections() == 0


async def test_connection_close_answer_is_not_pooled(serve) -> None:
    async def closing(request: bytes, n: int) -> bytes:
        return ok(b"{}", "Connection: close")

    server = await serve(closing)
    up = Upstream(server.address)
    await up.post({}, b"", 5)
    await up.post({}, b"", 5)
    assert server.connections == 2 and up.idle_connections() == 0


async def test_malformed_answer_is_an_upstream_error(serve) -> None:
    async def garbage(request: bytes, n: int) -> bytes:
        return b"SPDY/9 banana\r\n\r\n"

    server = await serve(garbage)
    with pytest.raises(UpstreamError, match="malformed"):
        await Upstream(server.address).post({}, b"", 5)


async def test_nothing_listening_is_an_upstream_error_at_once(serve) -> None:
    server = await serve(echo)
    address = server.address
    assert server.server is not None
    server.server.close()
    await server.server.wait_closed()
    with pytest.raises(UpstreamError, match="cannot connect"):
        await Upstream(address).post({}, b"", 5)


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/json\r\nX-Injected: 1"},
    {"Content-Type": "application/json\nX-Injected: 1"},
    {"Content-Type": "a\rb"},
    {"X-A\r\nX-B": "1"},
])
async def test_line_breaks_in_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line break"):
        await Upstream("127.0.0.1:1").post(headers, b"", 5)


async def test_upstreams_close_what_left_the_routes(serve) -> None:
    server = await serve(echo)
    ups = Upstreams()
    up = ups.get(server.address)
    assert ups.get(server.address) is up
    await up.post({}, b"", 5)
    assert up.idle_connections() == 1
    ups.keep_only(set())
    assert up.closed and up.idle_connections() == 0
    assert ups.get(server.address) is not up
    ups.close()


@pytest.mark.parametrize(("address", "host", "port"), [
    ("127.0.0.1:8001", "127.0.0.1", 8001),
    ("[::1]:9000", "::1", 9000),
    ("host-a.internal:80", "host-a.internal", 80),
])
def test_address_parsing(address: str, host: str, port: int) -> None:
    up = Upstream(address)
    assert (up.host, up.port) == (host, port)
