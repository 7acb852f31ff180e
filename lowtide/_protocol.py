"""Wire formats shared by the activator and the replicas.

- A buffered request is a stream entry with the fields of `QueuedRequest`.
- An answer is a `Result` (status, content type, body). It is stored as a hash under
  `_keys.result(id)` and published to the waiting activator as one message.
- Every error body is JSON `{"error": ..., "detail": ...}` (see `error_result`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON = "application/json"
OCTETS = "application/octet-stream"

REQUEST_ID_HEADER = "X-Lowtide-Request-Id"
DEADLINE_HEADER = "X-Lowtide-Deadline"  # absolute, seconds since the epoch
REPLICA_HEADER = "X-Lowtide-Replica"


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


@dataclass(frozen=True)
class QueuedRequest:
    """One entry of an endpoint's request stream."""

    id: str
    content_type: str
    body: bytes
    deadline: float
    reply_to: str  # activator id whose reply channel waits for it; "" for async requests

    def to_fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ct": self.content_type,
            "body": self.body,
            "deadline": repr(self.deadline),
            "reply": self.reply_to,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> QueuedRequest:
        return cls(
            id=fields[b"id"].decode(),
            content_type=fields[b"ct"].decode(),
            body=fields[b"body"],
            deadline=float(fields[b"deadline"]),
            reply_to=fields[b"reply"].decode(),
        )
