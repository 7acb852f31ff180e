"""Run a deployed function on one request: parse the input, call, encode the answer.

Pure of I/O except the call itself. `execute` never raises: every outcome is a `Result`
with the status of the public contract (400 bad input, 500 function raised, 504 timeout).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cloudpickle

from .._jsonable import jsonable
from .._protocol import JSON, OCTETS, Result, error_result, timeout_result
from . import tracebacks

CANCEL_GRACE_S = 1.0


class BadInput(ValueError):
    """The request cannot be turned into arguments of the function (answered with 400)."""


@dataclass(frozen=True)
class LoadedFunction:
    fn: Callable[..., Any]
    signature: inspect.Signature | None
    is_async: bool

    @classmethod
    def from_artifact(cls, artifact: bytes) -> LoadedFunction:
        fn = cloudpickle.loads(artifact)
        if not callable(fn):
            raise TypeError(f"artifact holds a {type(fn).__name__}, not a function")
        return cls.of(fn)

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> LoadedFunction:
        """A function, a bound method or any callable, with its signature when it has one."""
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        return cls(fn, signature, inspect.iscoroutinefunction(fn))


def parse_arguments(content_type: str, body: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A JSON object is keyword arguments; any other JSON value or raw bytes is one argument."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == OCTETS:
        return (body,), {}
    if media not in ("", JSON) and not media.endswith("+json"):
        raise BadInput(f"unsupported content type {media!r}: send application/json or "
                       f"application/octet-stream")
    if not body.strip():
        return (), {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"malformed JSON: {exc}") from None
    if isinstance(value, dict):
        return (), value
    return (value,), {}


def bind_arguments(fn: LoadedFunction, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Check the arguments fit the function; JSON keys naming positional-only parameters
    become positional arguments. Raises BadInput with the reason."""
    if fn.signature is None:
        return args, kwargs
    positional_only = [p.name for p in fn.signature.parameters.values()
                       if p.kind is p.POSITIONAL_ONLY]
    if positional_only and not args and positional_only[0] in kwargs:
        kwargs = dict(kwargs)
        moved = []
        for pname in positional_only:
            if pname not in kwargs:
                break
            moved.append(kwargs.pop(pname))
        args = tuple(moved)
    try:
        fn.signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadInput(f"wrong arguments: {exc}") from None
    return args, kwargs



def encode_value(value: Any) -> Result:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Result(200, OCTETS, bytes(value))
    try:
        return Result(200, JSON, json.dumps(value, allow_nan=False, default=jsonable).encode())
    except (TypeError, ValueError) as exc:
        return error_result(
            500, "result not JSON serializable",
            f"the function returned a {type(value).__name__}: {exc}; return JSON-compatible "
            "values or bytes",
        )


def raised(exc: BaseException) -> Result:
    """The 500 answer of a function that raised: type, message and the remote traceback
    (bounded), which also goes to the replica's output for `lowtide logs`."""
    text = tracebacks.format_remote(exc)
    tracebacks.log_remote(text)
    try:
        message = tracebacks.bound_text(tracebacks.redact(f"{type(exc).__name__}: {exc}"), 2000)
    except Exception:  # an exception whose __str__ raises
        message = type(exc).__name__
    return error_result(500, "function raised", message, type=type(exc).__name__,
                        traceback=text)


def queue_expired_result(late_s: float) -> Result:
    return error_result(504, "deadline exceeded",
                        f"the request waited in the queue past its limit (by {late_s:.1f} s); "
                        "no replica could take it in time")


async def execute(
    fn: LoadedFunction,
    content_type: str,
    body: bytes,
    timeout_s: float,
    executor: Executor | None = None,
) -> Result:
    """Run fn on one request, for at most timeout_s seconds."""
    try:
        args, kwargs = parse_arguments(content_type, body)
        args, kwargs = bind_arguments(fn, args, kwargs)
    except BadInput as exc:
        return error_result(400, "bad input", str(exc))
    try:
        if fn.is_async:
            call: asyncio.Future[Any] = asyncio.ensure_future(fn.fn(*args, **kwargs))
        else:
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(executor, lambda: fn.fn(*args, **kwargs))
        done, _ = await asyncio.wait({call}, timeout=timeout_s)
        if not done:  # our limit, not a TimeoutError the function raised itself
            call.cancel()  # a coroutine stops at its next await; a thread runs on, unheard
            if fn.is_async:
                await asyncio.wait({call}, timeout=CANCEL_GRACE_S)
            return timeout_result(timeout_s)
        value = call.result()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # SystemExit from sys.exit() in the function, too
        return raised(exc)
    return encode_value(value)
