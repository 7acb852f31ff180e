"""Streamed answers: the chunk format shared by replicas and activators, and its framings.

A generator function's answer is a sequence of `Chunk`s: each yielded value encoded once
(`json`: its JSON text; `bytes`: the raw bytes), then at most one `error` (JSON `{"error",
"detail", "type"}`, the body a 500 would have: the function raised, with its remote
`traceback` then, or it produced nothing for its timeout). Framing for
the caller is chosen by its `Accept` header and the first value:
- a first value of bytes: `application/octet-stream`, the bytes as they come (an error,
  or a later value that is not bytes, can only break the connection);
- else with `text/event-stream` asked: server-sent events, `data: <json>` per value,
  `event: error` for an error and `event: end` at a clean end (EventSource would reconnect
  otherwise);
- else newline-delimited JSON (`application/x-ndjson`), one value per line, an error as a
  last line `{"error": ..., "detail": ..., "type": ...}`.

Warm calls are framed by the replica (the activator passes bytes through as they come);
buffered calls travel as chunks through a short-lived Redis stream per request
(`_keys`-style key `chunks_key(id)`), framed by the waiting activator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ._jsonable import jsonable
from ._protocol import OCTETS

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
STREAM_HEADER = "X-Lowtide-Stream"  # on a replica's answer: the body streams
# the content type of the placeholder answer of a buffered stream (its body: the request
# id); the chunks follow in chunks_key(id). Never sent to a caller.
STREAM_MARKER = "application/x-lowtide-stream"
CHUNKS_TTL_S = 300  # a relay's chunk stream outlives its last write by this much
MAX_UNREAD = 256  # a producer pauses while this many chunks wait unread
JSON_KIND, BYTES_KIND, ERROR_KIND, END_KIND = "json", "bytes", "error", "end"


def chunks_key(request_id: str) -> str:
    return f"lt:chunks:{request_id}"


def cancel_key(request_id: str) -> str:
    """Set by the activator when the caller left: the replica closes the generator."""
    return f"lt:chunks-cancel:{request_id}"


@dataclass(frozen=True)
class Chunk:
    kind: str
    data: bytes

    @classmethod
    def of(cls, value: Any) -> Chunk:
        """A yielded value, encoded; a value JSON cannot hold is an error chunk."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(BYTES_KIND, bytes(value))
        try:
            return cls(JSON_KIND, json.dumps(value, allow_nan=False, default=jsonable).encode())
        except (TypeError, ValueError) as exc:
            return error_chunk("value not JSON serializable",
                               f"the generator yielded a {type(value).__name__}: {exc}; "
                               "yield JSON-compatible values or bytes", "TypeError")

    def to_fields(self) -> dict[str, bytes]:
        return {"k": self.kind.encode(), "d": self.data}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Chunk:
        return cls(fields[b"k"].decode(), fields.get(b"d", b""))


def error_chunk(error: str, detail: str, exc_type: str) -> Chunk:
    return Chunk(ERROR_KIND, json.dumps({"error": error, "detail": detail,
                                         "type": exc_type}).encode())


def timeout_chunk(timeout_s: float) -> Chunk:
    return error_chunk("deadline exceeded", f"the generator produced nothing for its timeout "
                       f"of {timeout_s:g} s", "TimeoutError")


END = Chunk(END_KIND, b"")


def choose_media(accept: str, first: Chunk) -> str:
    if first.kind == BYTES_KIND:
        return OCTETS  # whatever was asked: events and JSON lines cannot carry bytes
    return SSE if SSE in accept.lower() else NDJSON


def frame(media: str, chunk: Chunk) -> bytes | None:
    """The chunk's bytes on the wire; None when this framing cannot carry it (an error or a
    JSON value in a bytes stream, bytes in a JSON stream): the stream must then break."""
    if media == OCTETS:
        return chunk.data if chunk.kind == BYTES_KIND else (
            b"" if chunk.kind == END_KIND else None)
    if chunk.kind == BYTES_KIND:
        return None if media == NDJSON else frame(media, error_chunk(
            "bytes in an event stream", "the generator yielded bytes; an event stream "
            "carries JSON values (ask without Accept: text/event-stream)", "TypeError"))
    if media == SSE:
        if chunk.kind == END_KIND:
            return b"event: end\ndata: \n\n"
        event = b"event: error\n" if chunk.kind == ERROR_KIND else b""
        return event + b"data: " + chunk.data + b"\n\n"
    return b"" if chunk.kind == END_KIND else chunk.data + b"\n"


def collected(chunks: list[Chunk]) -> tuple[str, bytes]:
    """A whole stream as one body (what `GET /requests/{id}` gives for an async call): its
    bytes when it yields bytes, else ndjson (an error as the last line)."""
    if chunks and chunks[0].kind == BYTES_KIND:
        return OCTETS, b"".join(c.data for c in chunks if c.kind == BYTES_KIND)
    return NDJSON, b"".join(frame(NDJSON, c) or b"" for c in chunks
                            if c.kind in (JSON_KIND, ERROR_KIND))
