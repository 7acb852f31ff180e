"""Wire formats shared by the activator and the replicas.

- A buffered request is a stream entry with the fields of `QueuedRequest`.
- An answer is a `Result` (status, content type, body). It is stored as a hash under
  `_keys.result(id)` and published to the waiting activator as one message.
- Every error body is JSON `{"error": ..., "detail": ...}` (see `error_result`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

JSON = "application/json"
OCTETS = "application/octet-stream"

TIMEOUT_HEADER = "X-Lowtide-Timeout"  # seconds the function may run
METHOD_HEADER = "X-Lowtide-Method"  # a class deployment's method; absent: __call__
MAX_JSON_DEPTH = 64  # nesting of arrays and objects in an invoke body

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects more than `limit` deep, found before parsing
    it (a deep document would make the parser recurse). Every step runs in C: drop strings
    (brackets inside them do not nest), keep only the brackets, then remove the innermost
    pairs, one nesting level per pass, at most `limit` passes. Malformed nesting is left to
    the parser."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"")
        if not shorter or shorter == brackets:
            return False
        brackets = shorter
    return True


@dataclass(frozen=True)
class Result:
    status: int
    content_type: str
    body: bytes

    def to_fields(self) -> dict[str, Any]:
        return {"status": self.status, "content_type": self.content_type, "body": self.body}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Result:
        return cls(
            status=int(fields[b"status"]),
            content_type=fields[b"content_type"].decode(),
            body=fields[b"body"],
        )

    def to_message(self, request_id: str) -> bytes:
        head = f"{request_id}\n{self.status}\n{self.content_type}\n".encode()
        return head + self.body

    @classmethod
    def from_message(cls, message: bytes) -> tuple[str, Result]:
        request_id, status, content_type, body = message.split(b"\n", 3)
        return request_id.decode(), cls(int(status), content_type.decode(), body)


def error_result(status: int, error: str, detail: str = "", **extra: Any) -> Result:
    payload = {"error": error, "detail": detail, **extra}
    return Result(status, JSON, json.dumps(payload).encode())


def timeout_result(timeout_s: float) -> Result:
    return error_result(504, "deadline exceeded",
                        f"the function did not return within its timeout of {timeout_s:g} s")


@dataclass(frozen=True)
class QueuedRequest:
    """One entry of an endpoint's request stream."""

    id: str
    content_type: str
    body: bytes
    start_by: float  # seconds since the epoch; a request still queued then is answered 504
    timeout_s: float  # how long the function may run once started
    reply_to: str  # activator id whose reply channel waits for it; "" for async requests
    method: str = ""  # a class deployment's method; "" calls __call__ (or the function)

    def to_fields(self) -> dict[str, Any]:
        fields = {
            "id": self.id,
            "ct": self.content_type,
            "body": self.body,
            "start_by": repr(self.start_by),
            "timeout": repr(self.timeout_s),
            "reply": self.reply_to,
        }
        if self.method:
            fields["method"] = self.method
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> QueuedRequest:
        return cls(
            id=fields[b"id"].decode(),
            content_type=fields[b"ct"].decode(),
            body=fields[b"body"],
            start_by=float(fields[b"start_by"]),
            timeout_s=float(fields[b"timeout"]),
            reply_to=fields[b"reply"].decode(),
            method=fields.get(b"method", b"").decode(),
        )
