"""Reading an endpoint's replica output (`GET /v1/deployments/{name}/logs`).

A follower long-polls: it asks for the lines after the last id it saw and waits up to
`wait_ms` for new ones. The wait is split into blocking reads shorter than the Redis
client's socket timeout, so a quiet endpoint is an empty page after `wait_ms`, never a
socket timeout; a Redis that is really gone raises RedisError (a 503 for the caller).
The caller's `after` id is checked here, so a malformed one is a 400 naming the id and
nothing Redis says is blamed on the caller.
"""

from __future__ import annotations

import re
import time
from typing import Any

from redis.asyncio import Redis

from .._redis import SOCKET_TIMEOUT_S

STREAM_ID = re.compile(r"\A\d{1,20}-\d{1,20}\Z")
BLOCK_SLICE_MS = int(SOCKET_TIMEOUT_S * 1000) // 2  # each XREAD returns well before the timeout


class BadLogId(ValueError):
    pass


def check_after(after: str) -> str:
    """A stream id `MS-SEQ` (as a page's `next` gives), or `0-0` for the start."""
    if not STREAM_ID.match(after):
        raise BadLogId(f"bad 'after' id {after[:40]!r}: pass a page's 'next' value "
                       "(MS-SEQ, e.g. 1700000000000-0), or 0-0 for the oldest line")
    return after


def block_slices_ms(wait_ms: int, slice_ms: int = BLOCK_SLICE_MS) -> list[int]:
    """The blocking reads a wait of `wait_ms` is made of: none for 0, else slices of at most
    `slice_ms` adding up to `wait_ms`."""
    full, rest = divmod(max(wait_ms, 0), slice_ms)
    return [slice_ms] * full + ([rest] if rest else [])


async def read_lines(redis: Redis, key: str, after: str, limit: int, wait_ms: int
                     ) -> list[dict[str, Any]]:
    """Up to `limit` lines after `after`, waiting up to `wait_ms` for the first one."""
    entries = await redis.xrange(key, min=f"({after}" if after != "0-0" else "-", count=limit)
    deadline = time.monotonic() + wait_ms / 1000
    for slice_ms in block_slices_ms(wait_ms):
        if entries:
            break
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            break
        reply = await redis.xread({key: after}, count=limit, block=min(slice_ms, left_ms))
        entries = reply[0][1] if reply else []
    return [{"id": i.decode(), "at": int(i.split(b"-")[0]) / 1000.0,
             "replica": f[b"replica"].decode(), "line": f[b"line"].decode(errors="replace")}
            for i, f in entries]
