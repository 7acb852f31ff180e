"""Reading a streamed answer: `Endpoint.stream` and `Endpoint.astream`.

The SDK asks for server-sent events (unambiguous: an error is its own event type, a clean
end is `event: end`); a stream of bytes comes back as `application/octet-stream` and is
yielded in the pieces it arrives in. An error event raises the exception a plain call
would have (`FunctionError`, `DeadlineExceeded`...), after the values before it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ._errors import ConfigError, error_from_response

SSE = "text/event-stream"
OCTETS = "application/octet-stream"


class _Events:
    """Server-sent events from lines: `feed` answers (event type, data) when one ends."""

    def __init__(self) -> None:
        self.event, self.data = "message", []  # type: tuple[str, list[str]]

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            done = (self.event, "\n".join(self.data)) if self.data else None
            self.event, self.data = "message", []
            return done
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            self.data.append(line[5:].lstrip(" "))
        return None


def _value(event: str, data: str) -> Any:
    if event == "error":
        payload = json.loads(data)
        status = 504 if payload.get("error") == "deadline exceeded" else 500
        raise error_from_response(status, data.encode())
    return json.loads(data)


def _request(url: str, content_type: str, body: bytes, key: str | None, timeout_s: float
             ) -> dict[str, Any]:
    headers = {"Content-Type": content_type, "Accept": SSE}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return {"method": "POST", "url": url, "content": body, "headers": headers,
            "timeout": httpx.Timeout(30.0, read=timeout_s)}


def _media(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def stream(http: httpx.Client, url: str, content_type: str, body: bytes, key: str | None,
           timeout_s: float) -> Iterator[Any]:
    try:
        with http.stream(**_request(url, content_type, body, key, timeout_s)) as response:
            if response.status_code != 200:
                raise error_from_response(response.status_code, response.read())
            if _media(response) == OCTETS:
                yield from response.iter_bytes()
                return
            if _media(response) != SSE:  # a plain answer: one value
                yield json.loads(response.read())
                return
            events = _Events()
            for line in response.iter_lines():
                got = events.feed(line)
                if got is not None:
                    if got[0] == "end":
                        return
                    yield _value(*got)
    except httpx.TransportError as exc:
        raise ConfigError(f"the stream from {url} broke off: {exc}") from None


async def astream(url: str, content_type: str, body: bytes, key: str | None,
                  timeout_s: float) -> AsyncIterator[Any]:
    try:
        async with httpx.AsyncClient() as http, \
                http.stream(**_request(url, content_type, body, key, timeout_s)) as response:
            if response.status_code != 200:
                raise error_from_response(response.status_code, await response.aread())
            if _media(response) == OCTETS:
                async for piece in response.aiter_bytes():
                    yield piece
                return
            if _media(response) != SSE:
                yield json.loads(await response.aread())
                return
            events = _Events()
            async for line in response.aiter_lines():
                got = events.feed(line)
                if got is not None:
                    if got[0] == "end":
                        return
                    yield _value(*got)
    except httpx.TransportError as exc:
        raise ConfigError(f"the stream from {url} broke off: {exc}") from None

