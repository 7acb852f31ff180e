"""Streamed answers in process: framing, stepping generators (sync and async), timeouts,
closing, the upstream's streaming read, and the SDK's event parser."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from lowtide._protocol import OCTETS
from lowtide._streaming import (
    END,
    NDJSON,
    SSE,
    Chunk,
    choose_media,
    collected,
    error_chunk,
    frame,
)
from lowtide.activator.upstream import BodyStream, UpstreamError
from lowtide.sdk._errors import FunctionError
from lowtide.sdk._stream import _Events, _value
from lowtide.workers.streaming import GeneratorRun


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


# ---- framing --------------------------------------------------------------------------
def test_framings() -> None:
    value, err = Chunk.of({"t": "hi"}), error_chunk("function raised", "ValueError: x",
                                                     "ValueError")
    assert frame(NDJSON, value) == b'{"t": "hi"}\n'
    assert json.loads(frame(NDJSON, err) or b"")["type"] == "ValueError"
    assert frame(NDJSON, END) == b""
    assert frame(SSE, value) == b'data: {"t": "hi"}\n\n'
    assert (frame(SSE, err) or b"").startswith(b"event: error\ndata: {")
    assert frame(SSE, END) == b"event: end\ndata: \n\n"
    assert frame(OCTETS, Chunk.of(b"ab")) == b"ab"
    assert frame(OCTETS, err) is None  # bytes streams can only break off
    assert frame(NDJSON, Chunk.of(b"ab")) is None


def test_media_follows_accept_and_the_first_value() -> None:
    assert choose_media("", Chunk.of(1)) == NDJSON
    assert choose_media("text/event-stream", Chunk.of(1)) == SSE
    assert choose_media("text/event-stream", Chunk.of(b"x")) == OCTETS


def test_unserializable_value_is_an_error_chunk_and_collected_bodies() -> None:
    assert Chunk.of(object()).kind == "error"
    assert collected([Chunk.of(1), Chunk.of(2), END]) == (NDJSON, b"1\n2\n")
    assert collected([Chunk.of(b"a"), Chunk.of(b"b"), END]) == (OCTETS, b"ab")


# ---- stepping generators ------------------------------------------------------------------
async def drain(run: GeneratorRun) -> list[Chunk]:
    chunks = [await run.next()]
    while chunks[-1].kind not in ("end", "error"):
        chunks.append(await run.next())
    await run.close()
    return chunks


def test_sync_and_async_generators_step_to_the_end(executor: ThreadPoolExecutor) -> None:
    def sync_gen() -> Iterator[int]:
        yield from range(3)

    async def async_gen() -> AsyncIterator[int]:
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    for gen in (sync_gen(), async_gen()):
        chunks = asyncio.run(drain(GeneratorRun(gen, 5.0, executor)))
        assert chunks == [Chunk.of(0), Chunk.of(1), Chunk.of(2), END]


def test_an_exception_mid_stream_is_the_last_chunk(executor: ThreadPoolExecutor) -> None:
    def deep_in_user_code() -> None:
        raise KeyError("gone")

    def gen() -> Iterator[int]:
        yield 1
        deep_in_user_code()

    chunks = asyncio.run(drain(GeneratorRun(gen(), 5.0, executor)))
    assert chunks[0] == Chunk.of(1)
    error = json.loads(chunks[1].data)
    assert chunks[1].kind == "error" and error["type"] == "KeyError"
    assert error["detail"] == "KeyError: 'gone'"
    # the remote traceback, as a 500 carries it: the user's frames, not the runner's
    trace = error["traceback"]
    assert trace.startswith("Traceback") and trace.endswith("KeyError: 'gone'")
    assert "in gen" in trace and "in deep_in_user_code" in trace
    assert "workers/streaming.py" not in trace and "concurrent" not in trace
    assert len(trace) <= 8000


def test_no_output_for_the_timeout_ends_with_a_timeout_error() -> None:
    async def slow() -> AsyncIterator[int]:
        yield 1
        await asyncio.sleep(10)
        yield 2

    chunks = asyncio.run(drain(GeneratorRun(slow(), 0.1, None)))
    assert chunks[0] == Chunk.of(1)
    assert json.loads(chunks[1].data)["error"] == "deadline exceeded"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_closing_early_runs_the_generators_finally(kind: str, executor: ThreadPoolExecutor
                                                    ) -> None:
    closed = threading.Event()

    def sync_gen() -> Iterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    async def async_gen() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0)
        finally:
            closed.set()

    async def scenario() -> None:
        run = GeneratorRun(sync_gen() if kind == "sync" else async_gen(), 5.0, executor)
        assert (await run.next()) == Chunk.of(1)
        await run.close()
        await run.close()  # idempotent

    asyncio.run(scenario())
    assert closed.wait(2)


def test_a_sync_step_running_past_the_timeout_is_closed_after_it_ends(
        executor: ThreadPoolExecutor) -> None:
    closed = threading.Event()

    def gen() -> Iterator[int]:
        try:
            time.sleep(0.3)
            yield 1
        finally:
            closed.set()

    async def scenario() -> Chunk:
        run = GeneratorRun(gen(), 0.05, executor)
        chunk = await run.next()
        await run.close()
        return chunk

    assert asyncio.run(scenario()).kind == "error"
    assert closed.wait(2)


# ---- the activator's streaming read ----------------------------------------------------------
def test_body_stream_reads_chunks_as_they_come_and_reports_its_end() -> None:
    async def scenario() -> tuple[list[bytes | None], list[bool]]:
        ends: list[bool] = []
        body = BodyStream(None)
        body.feed(b"a")
        got = [await body.read(1)]
        body.feed(b"b")
        body.feed(b"c")
        body.end()
        body.attach(ends.append)  # attached after the end: told at once
        got += [await body.read(1), await body.read(1)]
        return got, ends

    got, ends = asyncio.run(scenario())
    assert got == [b"a", b"bc", None] and ends == [True]


def test_body_stream_breaks_off_and_times_out() -> None:
    async def scenario() -> None:
        body = BodyStream(None)
        with pytest.raises(asyncio.TimeoutError):
            await body.read(0.01)
        body.fail(UpstreamError("lost"))
        with pytest.raises(UpstreamError):
            await body.read(1)

    asyncio.run(scenario())


# ---- the SDK's event parser --------------------------------------------------------------------
def test_sdk_parses_events_and_raises_error_events() -> None:
    events = _Events()
    lines = ["data: {\"a\": 1}", "", "event: error",
             'data: {"error": "function raised", "detail": "ValueError: x", "type": "ValueError",'
             ' "traceback": "Traceback (most recent call last):\\n  ...\\nValueError: x"}',
             ""]
    got: list[Any] = [e for e in map(events.feed, lines) if e is not None]
    assert _value(*got[0]) == {"a": 1}
    with pytest.raises(FunctionError) as info:
        _value(*got[1])
    assert info.value.exc_type == "ValueError"
    assert info.value.traceback.splitlines()[-1] == "ValueError: x"
    assert "Remote traceback" in str(info.value)
