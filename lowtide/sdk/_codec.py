"""How the SDK turns a call's arguments into a request body and an answer into a value:
JSON (numpy arrays and scalars and torch tensors as lists and numbers) or bytes as they are;
arguments that cannot be sent are `BadInput` before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import httpx

from .._jsonable import jsonable
from ._errors import BadInput, error_from_response

_JSON = "application/json"
_OCTETS = "application/octet-stream"
QUEUE_WAIT_ALLOWANCE_S = 180.0  # above the activator's default queue wait (120 s)


def encode_call(params: list[str] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[str, bytes]:
    """Arguments -> (content type, body): positional arguments bound to parameter names.
    numpy arrays and scalars and torch tensors become JSON lists and numbers. Arguments
    that cannot be sent raise BadInput before anything is sent."""
    if len(args) == 1 and not kwargs and isinstance(args[0], (bytes, bytearray, memoryview)):
        return _OCTETS, bytes(args[0])
    if args:
        if params is None:
            if len(args) == 1 and not kwargs and not isinstance(args[0], dict):
                return _JSON, _dumps(args[0])  # one JSON value, one argument
            raise _bad_input("this endpoint takes *args; pass keyword arguments or one JSON "
                             "value")
        if len(args) > len(params):
            raise _bad_input(f"takes {len(params)} positional argument(s) but {len(args)} "
                             f"were given (parameters: {', '.join(params) or 'none'})")
        for pname in params[: len(args)]:
            if pname in kwargs:
                raise _bad_input(f"got multiple values for argument {pname!r}")
        kwargs = {**dict(zip(params, args, strict=False)), **kwargs}
    return _JSON, _dumps(kwargs)


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, default=jsonable).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise _bad_input(f"the arguments cannot be sent as JSON: {exc}") from None


def _bad_input(detail: str) -> BadInput:
    """What the activator would answer; raised before sending."""
    return BadInput(400, "bad input", detail, {"error": "bad input", "detail": detail})


def _key_header(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def decode_result(response: httpx.Response) -> Any:
    if response.status_code != 200:
        raise error_from_response(response.status_code, response.content)
    media = response.headers.get("content-type", _JSON).split(";")[0].strip()
    if media == _OCTETS:
        return response.content
    if media == "application/x-ndjson":  # a stream's whole sequence (an async call's)
        return [json.loads(line) for line in response.content.splitlines() if line]
    return response.json()
