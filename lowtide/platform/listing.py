"""`GET /v1/deployments`: pages of endpoint summaries, by name, optionally by state.

The names are kept in a sorted set (`_keys.DEPLOYMENT_NAMES`, all scores 0, so ZRANGEBYLEX
walks them in name order) beside the plain set that the rest reads; a page is the `limit`
names after the cursor (the last name of the previous page), and its summaries are read by
one script call (a pipeline's per-command cost in the client was most of a page). The
cost of a page follows its size, not the number of endpoints. Endpoints whose desired
replicas are above zero are also in `_keys.ACTIVE`, written with each decision, so
`state=active` reads only those and `state=idle` skips them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from .. import _keys

STATES = ("active", "idle")
MAX_LIMIT = 1000
IDLE_SCAN_FACTOR = 10  # `state=idle` reads at most this many names per name returned


async def ensure_index(redis: Redis) -> int:
    """Put deployments made before the name index into it (a no-op once they are there);
    how many were added."""
    if await redis.zcard(_keys.DEPLOYMENT_NAMES) >= await redis.scard(_keys.DEPLOYMENTS):
        return 0
    names = list(await redis.smembers(_keys.DEPLOYMENTS))
    added = 0
    for i in range(0, len(names), 1000):
        added += int(await redis.zadd(_keys.DEPLOYMENT_NAMES,
                                      {n: 0 for n in names[i: i + 1000]}))
    return added


async def page(redis: Redis, cursor: str | None, limit: int, only: str | None
               ) -> tuple[list[str], str | None]:
    """Up to `limit` names after `cursor` in name order (of one state, if `only`), and the
    cursor of the next page (None: this was the last)."""
    if only == "active":
        names = sorted(n.decode() for n in await redis.smembers(_keys.ACTIVE))
        after = [n for n in names if cursor is None or n > cursor]
        return after[:limit], after[limit - 1] if len(after) > limit else None
    found: list[str] = []
    last, scanned = cursor, 0
    max_scan = limit * (IDLE_SCAN_FACTOR if only == "idle" else 1)
    while len(found) < limit and scanned < max_scan:
        want = limit - len(found) if only is None else limit
        raw = await redis.zrangebylex(_keys.DEPLOYMENT_NAMES, "-" if last is None
                                      else f"({last}", "+", start=0, num=want)
        names = [n.decode() for n in raw]
        kept = names
        if only == "idle" and names:
            active = await redis.smismember(_keys.ACTIVE, names)
            kept = [n for n, a in zip(names, active, strict=True) if not a]
        taken = kept[: limit - len(found)]
        found += taken
        if len(taken) < len(kept):  # the page ends inside this batch
            return found, found[-1]
        scanned += len(names)
        if len(names) < want:  # the end of the index
            return found, None
        last = names[-1]
    return found, last


# per endpoint (KEYS: its deployment hash, replicas hash, stream): what a summary needs
_READ_PAGE = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = {
    redis.call('HMGET', KEYS[i], 'spec', 'version', 'created_at', 'updated_at', 'desired'),
    redis.call('HVALS', KEYS[i + 1]),
    redis.call('XLEN', KEYS[i + 2])}
end
return out
"""


async def summaries(redis: Redis, names: Sequence[str], url_of: Callable[[str], str],
                    now: float) -> list[dict[str, Any]]:
    """What `lowtide ls` shows of each endpoint (`GET /v1/deployments/{name}` has the
    rest, its last decision included): one script call for the page, then the heartbeats
    of its replicas, if any."""
    if not names:
        return []
    keys = [k for n in names
            for k in (_keys.deployment(n), _keys.replicas(n), _keys.stream(n))]
    rows = await redis.register_script(_READ_PAGE)(keys=keys)
    deps, replicas, depths = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    records = [[json.loads(v) for v in values] for values in replicas]
    ids = [r["id"] for rs in records for r in rs]
    beats = dict(zip(ids, await redis.mget([_keys.replica_alive(i) for i in ids]),
                     strict=True)) if ids else {}
    items = []
    for name, (spec, version, created, updated, desired), rs, depth in zip(
            names, deps, records, depths, strict=True):
        if spec is None or version is None:  # deleted meanwhile
            continue
        version, desired = int(version), int(desired or 0)
        current = [r for r in rs if r.get("version") == version]
        items.append({
            "name": name, "url": url_of(name), "version": version,
            "state": "active" if desired > 0 else "idle",
            "spec": json.loads(spec), "created_at": float(created or 0),
            "updated_at": float(updated or 0),
            "replicas": {
                "ready": sum(1 for r in current
                             if r.get("state") == "ready" and beats.get(r["id"])),
                "desired": desired,
                "starting": sum(1 for r in current if r.get("state") == "starting"),
                "stopping": sum(1 for r in rs if r.get("state") == "stopping"),
            },
            "queue": {"depth": int(depth)},
        })
    return items
