"""Wire formats between activator and replicas: every value survives the trip."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lowtide._protocol import JSON, OCTETS, QueuedRequest, Result, error_result


def as_redis_returns(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """What HGETALL / XREADGROUP hand back for a mapping that was written: all bytes."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


BODIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"x": 1}', id="json"),
    pytest.param(b"line one\nline two\n\n", id="newlines"),
    pytest.param(b"\n\n\n", id="only-newlines"),
    pytest.param(bytes(range(256)), id="every-byte"),
    pytest.param(b"\xff\xfe\x00\r\n\x80", id="invalid-utf8"),
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("content_type", [JSON, OCTETS, "application/json; charset=utf-8"])
def test_result_message_round_trip(body: bytes, content_type: str) -> None:
    result = Result(200, content_type, body)
    assert Result.from_message(result.to_message("req-123")) == ("req-123", result)


@pytest.mark.parametrize("status", [200, 400, 404, 500, 504])
def test_result_message_keeps_status(status: int) -> None:
    result = error_result(status, "boom", "detail\nwith a newline")
    request_id, back = Result.from_message(result.to_message("r"))
    assert (request_id, back) == ("r", result)


@pytest.mark.parametrize("body", BODIES)
def test_result_fields_round_trip(body: bytes) -> None:
    result = Result(504, OCTETS, body)
    assert Result.from_fields(as_redis_returns(result.to_fields())) == result


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("reply_to", ["activator-1", ""], ids=["sync", "async"])
def test_queued_request_round_trip(body: bytes, reply_to: str) -> None:
    request = QueuedRequest(id="0123abcd", content_type=OCTETS, body=body,
                            start_by=1_700_000_000.123456789, timeout_s=0.1 + 0.2,
                            reply_to=reply_to)
    assert QueuedRequest.from_fields(as_redis_returns(request.to_fields())) == request


def test_queued_request_times_are_exact() -> None:
    # repr() keeps every bit of a float; str(round(x, 3)) would shift start-by times
    request = QueuedRequest("i", JSON, b"{}", start_by=1_712_345_678.987654321,
                            timeout_s=1e-7, reply_to="a")
    back = QueuedRequest.from_fields(as_redis_returns(request.to_fields()))
    assert (back.start_by, back.timeout_s) == (request.start_by, request.timeout_s)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {"error": "bad input", "detail": "x is missing"}),
        ({"type": "ValueError"}, {"error": "bad input", "detail": "x is missing",
                                  "type": "ValueError"}),
    ],
)
def test_error_result_shape(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    result = error_result(400, "bad input", "x is missing", **extra)
    assert (result.status, result.content_type) == (400, JSON)
    assert json.loads(result.body) == expected


def test_error_result_detail_defaults_to_empty() -> None:
    assert json.loads(error_result(404, "not found").body) == {"error": "not found",
                                                               "detail": ""}


def test_error_result_body_is_valid_json_for_any_text() -> None:
    detail = 'quotes " and \\ backslashes\nand newlines, ünïcode'
    assert json.loads(error_result(500, "function raised", detail).body)["detail"] == detail
