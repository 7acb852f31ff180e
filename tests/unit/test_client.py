"""The SDK's call encoding and answer decoding, on in-memory httpx responses (no network)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from lowtide._protocol import error_result
from lowtide.sdk import (
    BadInput,
    DeadlineExceeded,
    EndpointNotFound,
    FunctionError,
    InvocationError,
    LowtideError,
    Overloaded,
)
from lowtide.sdk._codec import decode_result, encode_call
from lowtide.sdk._pickling import parameter_names
from lowtide.workers import runtime

JSON = "application/json"
OCTETS = "application/octet-stream"


# ---- encode_call ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "args", "kwargs", "content_type", "payload"),
    [
        pytest.param(["x", "y"], (), {}, JSON, {}, id="no-args"),
        pytest.param(["x", "y"], (1,), {}, JSON, {"x": 1}, id="one-positional"),
        pytest.param(["x", "y"], (1, [2]), {}, JSON, {"x": 1, "y": [2]}, id="all-positional"),
        pytest.param(["x", "y"], (1,), {"y": 2}, JSON, {"x": 1, "y": 2}, id="mixed"),
        pytest.param(["x"], (), {"x": 1, "opt": True}, JSON, {"x": 1, "opt": True},
                     id="keywords-only"),
        pytest.param(None, (), {"a": 1}, JSON, {"a": 1}, id="star-args-keywords"),
        pytest.param(["x"], ({"k": "v"},), {}, JSON, {"x": {"k": "v"}}, id="dict-positional"),
    ],
)
def test_encode_call_json(params: list[str] | None, args: tuple[Any, ...],
                          kwargs: dict[str, Any], content_type: str,
                          payload: dict[str, Any]) -> None:
    ct, body = encode_call(params, args, kwargs)
    assert ct == content_type
    assert json.loads(body) == payload


@pytest.mark.parametrize("value", [b"\x00\xff", bytearray(b"ab"), memoryview(b"cd"), b""])
@pytest.mark.parametrize("params", [["data"], None, []], ids=["one-param", "star-args", "none"])
def test_encode_call_single_bytes_is_octet_stream(value: Any, params: list[str] | None) -> None:
    assert encode_call(params, (value,), {}) == (OCTETS, bytes(value))


@pytest.mark.parametrize(
    ("params", "args", "kwargs", "message"),
    [
        pytest.param(["x", "y"], (1,), {"x": 2}, "multiple values for argument 'x'",
                     id="conflict"),
        pytest.param(["x", "y"], (1, 2), {"y": 3}, "multiple values for argument 'y'",
                     id="conflict-second"),
        pytest.param(["x"], (1, 2), {}, r"takes 1 positional argument\(s\) but 2 were given",
                     id="too-many"),
        pytest.param([], (1, 2), {}, r"takes 0 positional argument\(s\) but 2 were given",
                     id="no-positional-params"),
        pytest.param(None, (1, 2), {}, r"takes \*args", id="star-args-positional"),
        pytest.param(None, (1,), {"a": 2}, r"takes \*args", id="star-args-mixed"),
    ],
)
def test_encode_call_refuses(params: list[str] | None, args: tuple[Any, ...],
                             kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        encode_call(params, args, kwargs)


def test_encode_call_bytes_with_keywords_is_not_silently_dropped() -> None:
    with pytest.raises(BadInput):  # bytes cannot ride inside a JSON object
        encode_call(["data", "mode"], (b"raw",), {"mode": "fast"})


def test_encode_call_star_args_single_value() -> None:
    assert encode_call(None, ([1, 2],), {}) == (JSON, b"[1, 2]")


# ---- the SDK's encoding and the replica's decoding agree --------------------------------
def f_plain(x: int, y: int = 10) -> int:
    return x * y


def f_kwonly(x: int, *, scale: int = 1) -> int:
    return x * scale


def f_kwargs(x: int, **extra: int) -> int:
    return x + sum(extra.values())


def f_bytes(data: bytes) -> int:
    return len(data)


def f_pos_only(x: int, /) -> int:
    return x + 1


def call_through_the_wire(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """SDK encode -> replica parse, check and call; no HTTP in between."""
    content_type, body = encode_call(parameter_names(fn), args, kwargs)
    call_args, call_kwargs = runtime.parse_arguments(content_type, body)
    loaded = runtime.LoadedFunction(fn, inspect.signature(fn), False)
    call_args, call_kwargs = runtime.bind_arguments(loaded, call_args, call_kwargs)
    return fn(*call_args, **call_kwargs)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "expected"),
    [
        pytest.param(f_plain, (3,), {}, 30, id="positional"),
        pytest.param(f_plain, (3, 2), {}, 6, id="two-positional"),
        pytest.param(f_plain, (3,), {"y": 3}, 9, id="mixed"),
        pytest.param(f_plain, (), {"x": 2, "y": 2}, 4, id="keywords"),
        pytest.param(f_kwonly, (3,), {"scale": 5}, 15, id="keyword-only"),
        pytest.param(f_kwargs, (1,), {"a": 2, "b": 3}, 6, id="var-keywords"),
        pytest.param(f_bytes, (b"\x00\x01\x02",), {}, 3, id="bytes"),
    ],
)
def test_sdk_and_runtime_agree(fn: Callable[..., Any], args: tuple[Any, ...],
                               kwargs: dict[str, Any], expected: Any) -> None:
    assert call_through_the_wire(fn, *args, **kwargs) == expected


def test_sdk_and_runtime_agree_on_positional_only() -> None:
    assert call_through_the_wire(f_pos_only, 1) == 2


# ---- decode_result --------------------------------------------------------------------
def response(status: int, body: bytes, content_type: str | None = JSON) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    return httpx.Response(status, content=body, headers=headers)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (JSON, b'{"y": [1, 2]}', {"y": [1, 2]}),
        (JSON, b"null", None),
        ("application/json; charset=utf-8", b'"h\xc3\xa9"', "hé"),
        (None, b"42", 42),  # no content type: JSON, like the runtime
        (OCTETS, b"\x00\xff{not json", b"\x00\xff{not json"),
        ("application/octet-stream; x=1", b"", b""),
    ],
)
def test_decode_result_200(content_type: str | None, body: bytes, expected: Any) -> None:
    assert decode_result(response(200, body, content_type)) == expected


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadInput),
        (404, EndpointNotFound),
        (429, Overloaded),
        (500, FunctionError),
        (503, Overloaded),
        (504, DeadlineExceeded),
        (502, InvocationError),
    ],
)
def test_decode_result_error_statuses(status: int, error_type: type[InvocationError]) -> None:
    result = error_result(status, "some error", "what happened")
    with pytest.raises(error_type) as exc:
        decode_result(response(status, result.body))
    err = exc.value
    assert type(err) is error_type
    assert isinstance(err, LowtideError)
    assert (err.status, err.error, err.detail) == (status, "some error", "what happened")
    assert str(err) == f"{status} some error: what happened"


def test_decode_result_500_carries_the_exception_type_from_the_replica() -> None:
    sent = runtime.raised(ZeroDivisionError("division by zero"))  # what a replica answers
    with pytest.raises(FunctionError) as exc:
        decode_result(response(sent.status, sent.body, sent.content_type))
    assert exc.value.exc_type == "ZeroDivisionError"
    assert exc.value.detail == "ZeroDivisionError: division by zero"


def test_decode_result_404_names_the_error() -> None:
    body = error_result(404, "endpoint not found", "no endpoint 'nope'").body
    with pytest.raises(EndpointNotFound, match="no endpoint 'nope'"):
        decode_result(response(404, body))


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"<html>bad gateway</html>", "<html>bad gateway</html>"),
        (b'"just a string"', "just a string"),
        (b"", ""),
    ],
)
def test_decode_result_error_body_not_an_error_object(body: bytes, detail: str) -> None:
    with pytest.raises(InvocationError) as exc:
        decode_result(response(502, body, "text/html"))
    assert (exc.value.status, exc.value.error, exc.value.detail) == (502, "error", detail)


def test_decode_result_function_error_without_type() -> None:
    with pytest.raises(FunctionError) as exc:
        decode_result(response(500, b'{"error": "boom"}'))
    assert exc.value.exc_type == ""


def test_encode_call_sends_numpy_as_json_lists_and_numbers() -> None:
    np = pytest.importorskip("numpy")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    _, body = encode_call(["x", "k", "flag"], (x, np.int64(3)), {"flag": np.bool_(True)})
    assert json.loads(body) == {"x": [[0, 1, 2], [3, 4, 5]], "k": 3, "flag": True}
    _, body = encode_call(None, (x[0],), {})
    assert json.loads(body) == [0.0, 1.0, 2.0]


def test_encode_call_sends_cpu_torch_tensors_as_lists() -> None:
    torch = pytest.importorskip("torch")
    _, body = encode_call(["t"], (torch.tensor([[1.5, 2.0]]),), {})
    assert json.loads(body) == {"t": [[1.5, 2.0]]}


def test_encode_call_refuses_what_json_cannot_carry_with_bad_input() -> None:
    with pytest.raises(BadInput, match="a set is not JSON"):
        encode_call(["x"], ({1, 2},), {})
