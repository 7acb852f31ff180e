"""The replica runtime: request -> arguments -> call -> Result, never raising."""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from lowtide._protocol import JSON, OCTETS, QueuedRequest, Result
from lowtide.workers.replica import Replica
from lowtide.workers.replica_settings import ReplicaSettings
from lowtide.workers.runtime import (
    BadInput,
    LoadedFunction,
    bind_arguments,
    encode_value,
    execute,
    parse_arguments,
    queue_expired_result,
)


def loaded(fn: Callable[..., Any]) -> LoadedFunction:
    """Load the way a replica does: from a cloudpickled artifact."""
    return LoadedFunction.from_artifact(cloudpickle.dumps(fn))


def direct(fn: Callable[..., Any]) -> LoadedFunction:
    """Without the pickle round trip, so closures still share state with the test."""
    return LoadedFunction(fn, inspect.signature(fn), inspect.iscoroutinefunction(fn))


def body_of(result: Result) -> Any:
    assert result.content_type == JSON
    return json.loads(result.body)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fn")
    yield pool
    pool.shutdown(wait=True)


# ---- parse_arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content_type", "body", "args", "kwargs"),
    [
        ("application/json", b'{"x": 1, "y": [2]}', (), {"x": 1, "y": [2]}),
        ("application/json", b"{}", (), {}),
        ("application/json", b"[1, 2]", ([1, 2],), {}),
        ("application/json", b"3", (3,), {}),
        ("application/json", b'"hi"', ("hi",), {}),
        ("application/json", b"null", (None,), {}),
        ("application/json", b"", (), {}),
        ("application/json", b"  \n", (), {}),
        ("Application/JSON; charset=utf-8", b'{"x": 1}', (), {"x": 1}),
        ("application/vnd.api+json", b'{"x": 1}', (), {"x": 1}),
        ("", b'{"x": 1}', (), {"x": 1}),  # no content type: JSON
        ("", b"", (), {}),
        ("application/octet-stream", b"\x00\xff\n{", (b"\x00\xff\n{",), {}),
        ("application/octet-stream", b"", (b"",), {}),
        ("application/octet-stream; x=y", b'{"x": 1}', (b'{"x": 1}',), {}),
    ],
)
def test_parse_arguments(content_type: str, body: bytes, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> None:
    assert parse_arguments(content_type, body) == (args, kwargs)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("text/plain", b"hello", "unsupported content type 'text/plain'"),
        ("multipart/form-data; boundary=x", b"--x", "unsupported content type"),
        ("application/json", b"{", "malformed JSON"),
        ("application/json", b"{'x': 1}", "malformed JSON"),
        ("application/json", b"\xff\xfe\x00", "malformed JSON"),
        ("", b"not json", "malformed JSON"),
    ],
)
def test_parse_arguments_bad_input(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_arguments(content_type, body)


# ---- bind_arguments ------------------------------------------------------------------
def two(a: int, b: int = 2, *, c: int = 3) -> int:
    return a + b + c


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((), {"a": 1}), ((), {"a": 1, "b": 2, "c": 3}), ((1, 2), {"c": 0})],
)
def test_bind_arguments_accepts(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    bind_arguments(loaded(two), args, kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing a required argument: 'a'"),
        ((), {"z": 1, "a": 1}, "got an unexpected keyword argument 'z'"),
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1,), {"a": 1}, "multiple values for argument 'a'"),
    ],
)
def test_bind_arguments_refuses(args: tuple[Any, ...], kwargs: dict[str, Any],
                                 message: str) -> None:
    with pytest.raises(BadInput, match=f"wrong arguments: {message}"):
        bind_arguments(loaded(two), args, kwargs)


def test_bind_arguments_without_signature_lets_the_call_decide() -> None:
    fn = LoadedFunction(two, None, False)
    bind_arguments(fn, (1, 2, 3, 4), {"nope": 1})  # no signature: nothing to check


def test_from_artifact_refuses_a_non_function() -> None:
    with pytest.raises(TypeError, match="artifact holds a dict, not a function"):
        LoadedFunction.from_artifact(cloudpickle.dumps({"not": "callable"}))


def test_from_artifact_notes_async() -> None:
    async def coro() -> None:
        return None

    assert loaded(coro).is_async and not loaded(two).is_async


# ---- encode_value ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "content_type", "body"),
    [
        ({"y": [1, 2.5, None, True]}, JSON, b'{"y": [1, 2.5, null, true]}'),
        ("text", JSON, b'"text"'),
        (None, JSON, b"null"),
        ((1, 2), JSON, b"[1, 2]"),
        (b"\x00\x01", OCTETS, b"\x00\x01"),
        (bytearray(b"ab"), OCTETS, b"ab"),
        (memoryview(b"cd"), OCTETS, b"cd"),
        (b"", OCTETS, b""),
    ],
)
def test_encode_value(value: Any, content_type: str, body: bytes) -> None:
    assert encode_value(value) == Result(200, content_type, body)


@pytest.mark.parametrize(("value", "type_name"), [({1, 2}, "set"), (object(), "object")])
def test_encode_value_not_serializable_is_500_with_advice(value: Any, type_name: str) -> None:
    result = encode_value(value)
    assert result.status == 500
    payload = body_of(result)
    assert payload["error"] == "result not JSON serializable"
    assert f"the function returned a {type_name}" in payload["detail"]
    assert "return JSON-compatible values or bytes" in payload["detail"]


def test_encode_value_circular_is_500() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert encode_value(loop).status == 500


# ---- execute ----------------------------------------------------------------------------
TIMEOUT_S = 30.0


def add(x: int, y: int = 10) -> int:
    return x + y


async def add_async(x: int, y: int = 10) -> int:
    await asyncio.sleep(0)
    return x + y


def fails(x: int) -> int:
    raise ValueError(f"no good: {x}")


async def fails_async(x: int) -> int:
    raise KeyError("missing")


@pytest.mark.parametrize("fn", [add, add_async], ids=["sync", "async"])
async def test_execute_200(fn: Callable[..., Any], executor: ThreadPoolExecutor) -> None:
    result = await execute(loaded(fn), JSON, b'{"x": 1, "y": 2}', TIMEOUT_S, executor)
    assert result == Result(200, JSON, b"3")


async def test_execute_one_positional_json_value() -> None:
    result = await execute(loaded(add), JSON, b"5", TIMEOUT_S)
    assert result == Result(200, JSON, b"15")


async def test_execute_bytes_in_bytes_out() -> None:
    result = await execute(loaded(bytes.upper), OCTETS, b"abc\x00", TIMEOUT_S)
    assert result == Result(200, OCTETS, b"ABC\x00")


async def test_execute_runs_sync_functions_off_the_event_loop(
    executor: ThreadPoolExecutor,
) -> None:
    def where() -> str:
        return threading.current_thread().name

    result = await execute(loaded(where), JSON, b"", TIMEOUT_S, executor)
    assert body_of(result).startswith("fn")  # a thread of the executor, not the loop's


@pytest.mark.parametrize(
    ("content_type", "body", "detail"),
    [
        (JSON, b'{"x": 1, "z": 2}', "wrong arguments: got an unexpected keyword argument 'z'"),
        (JSON, b"{}", "wrong arguments: missing a required argument: 'x'"),
        (JSON, b"[1, 2, 3] x", "malformed JSON"),
        ("text/csv", b"1,2", "unsupported content type 'text/csv'"),
    ],
)
async def test_execute_400_without_calling(content_type: str, body: bytes, detail: str) -> None:
    calls = []

    def record(x: int, y: int = 0) -> None:
        calls.append((x, y))

    result = await execute(direct(record), content_type, body, TIMEOUT_S)
    assert result.status == 400
    payload = body_of(result)
    assert payload["error"] == "bad input"
    assert detail in payload["detail"]
    assert calls == []


@pytest.mark.parametrize(
    ("fn", "exc_type", "detail"),
    [(fails, "ValueError", "ValueError: no good: 1"),
     (fails_async, "KeyError", "KeyError: 'missing'")],
    ids=["sync", "async"],
)
async def test_execute_500_names_the_exception(fn: Callable[..., Any], exc_type: str,
                                               detail: str) -> None:
    result = await execute(loaded(fn), JSON, b'{"x": 1}', TIMEOUT_S)
    assert result.status == 500
    body = body_of(result)
    remote = body.pop("traceback")
    assert body == {"error": "function raised", "detail": detail, "type": exc_type}
    assert remote.startswith("Traceback (most recent call last):")
    assert f"in {fn.__name__}" in remote and remote.endswith(detail)
    assert "workers/runtime.py" not in remote and "concurrent" not in remote  # user frames


async def test_execute_bad_result_is_500() -> None:
    def gives_set() -> set[int]:
        return {1}

    result = await execute(loaded(gives_set), JSON, b"", TIMEOUT_S)
    assert (result.status, body_of(result)["error"]) == (500, "result not JSON serializable")


async def test_execute_504_when_a_sync_function_runs_past_its_timeout(
    executor: ThreadPoolExecutor,
) -> None:
    def slow() -> str:
        time.sleep(0.3)
        return "too late"

    started = time.monotonic()
    result = await execute(loaded(slow), JSON, b"", 0.05, executor)
    assert time.monotonic() - started < 0.25  # answered at the timeout, not at the return
    assert result.status == 504
    assert body_of(result)["error"] == "deadline exceeded"
    assert "timeout of 0.05 s" in body_of(result)["detail"]


async def test_execute_504_cancels_an_async_function_at_its_timeout() -> None:
    cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    started = time.monotonic()
    result = await execute(direct(slow), JSON, b"", 0.05)
    assert time.monotonic() - started < 0.25
    assert result.status == 504
    assert body_of(result)["error"] == "deadline exceeded"
    assert cancelled.is_set()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_execute_function_raising_timeout_error_is_500(is_async: bool) -> None:
    def sync_timeout() -> None:
        raise TimeoutError("upstream database timed out")

    async def async_timeout() -> None:
        raise TimeoutError("upstream database timed out")

    fn = async_timeout if is_async else sync_timeout
    result = await execute(loaded(fn), JSON, b"", TIMEOUT_S)
    assert (result.status, body_of(result).get("type")) == (500, "TimeoutError")


def test_execute_function_raising_system_exit_is_500() -> None:
    def exits() -> None:
        raise SystemExit(2)

    try:
        result = asyncio.run(execute(loaded(exits), JSON, b"", TIMEOUT_S))
    except BaseException as exc:  # turned into the failure that matters
        pytest.fail(f"execute raised {exc!r}")
    assert result.status == 500


# ---- a queued request that waited past its start-by time --------------------------------
def test_queue_expired_result_shape() -> None:
    result = queue_expired_result(2.25)
    assert result.status == 504
    assert body_of(result) == {
        "error": "deadline exceeded",
        "detail": "the request waited in the queue past its limit (by 2.2 s); no replica "
                  "could take it in time",
    }


CALLS: list[Any] = []


def record_call(**kw: Any) -> str:
    """Module level, so its pickle refers to it by name and shares CALLS with the test."""
    CALLS.append(kw)
    return "ran"


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    """A Replica around record_call; its Redis client is never connected."""
    CALLS.clear()
    artifact = tmp_path / "fn.pkl"
    artifact.write_bytes(cloudpickle.dumps(record_call))
    settings = ReplicaSettings(redis_url="redis://127.0.0.1:1/0", endpoint="double", version=1,
                               replica_id="r-test", address="127.0.0.1:1",
                               artifact_path=artifact)
    r = Replica(settings)
    await r.load_target()
    try:
        yield r
    finally:
        r.executor.shutdown(wait=True)
        await r.redis.aclose()
        CALLS.clear()


def queued(start_by: float) -> QueuedRequest:
    return QueuedRequest(id="q1", content_type=JSON, body=b"{}", start_by=start_by,
                         timeout_s=TIMEOUT_S, reply_to="")


@pytest.mark.parametrize("late_s", [0.001, 5.0, 3600.0])
async def test_queued_request_past_start_by_is_504_without_calling(
    replica: Replica, late_s: float,
) -> None:
    result = await replica._run_queued(queued(start_by=time.time() - late_s))
    assert result.status == 504
    assert "waited in the queue past its limit" in body_of(result)["detail"]
    assert CALLS == []


async def test_queued_request_in_time_runs(replica: Replica) -> None:
    result = await replica._run_queued(queued(start_by=time.time() + 60.0))
    assert result == Result(200, JSON, b'"ran"')
    assert CALLS == [{}]
