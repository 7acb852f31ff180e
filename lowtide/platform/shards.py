"""Several platforms against one Redis: the scaling work split into shards with a leader each.

Every endpoint belongs to one of `SHARDS` shards (`shard_of`, a CRC32 of its name). Each
platform instance scales the endpoints of the shards whose Redis lease it holds, and every
instance serves the whole API. Every `RENEW_S` an instance runs one script (`_CLAIM`) that
notes it alive, renews its own leases, gives back those above its fair share (shards /
live instances, rounded up; a newcomer thus gets its share within a couple of rounds) and
takes free ones up to that share. A lease not renewed for `LEASE_S` frees itself: the shards
of a killed instance are taken over by the others within `LEASE_S + RENEW_S`, and the new
leader looks at their endpoints at its next tick.

An instance that cannot reach Redis for `LEASE_S` stops scaling its shards (another may hold
them by then). A paused leader may still act for up to one tick after its lease lapsed:
lowtide has no fencing tokens on replica commands; a duplicate start is stopped again by the
next reconcile (more replicas than desired).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from .. import _keys

log = logging.getLogger(__name__)

SHARDS = 16
LEASE_S = 2.5
RENEW_S = 0.5

# KEYS: the SHARDS lease keys, then their "last leader" keys, then the instances' zset.
# ARGV: me, lease_ms, instance_ttl_ms. Returns {owned shard, its previous leader or ""}...
_CLAIM = """
local n = #KEYS
local shards = (n - 1) / 2
local me, lease_ms, ttl_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = KEYS[n]
redis.call('ZADD', live, now_ms, me)
redis.call('ZREMRANGEBYSCORE', live, '-inf', now_ms - ttl_ms)
local fair = math.ceil(shards / math.max(1, redis.call('ZCARD', live)))
local held = 0
local out = {}
for i = 1, shards do
  if redis.call('GET', KEYS[i]) == me then
    if held < fair then
      redis.call('PEXPIRE', KEYS[i], lease_ms)
      held = held + 1
      table.insert(out, i - 1)
      table.insert(out, me)
    else
      redis.call('DEL', KEYS[i])
      redis.call('SET', KEYS[shards + i], 'released:' .. me)
    end
  end
end
for i = 1, shards do
  if held >= fair then break end
  if redis.call('SET', KEYS[i], me, 'NX', 'PX', lease_ms) then
    held = held + 1
    local before = redis.call('GET', KEYS[shards + i]) or ''
    redis.call('SET', KEYS[shards + i], me)
    table.insert(out, i - 1)
    table.insert(out, before)
  end
end
return out
"""

_RELEASE = """
local shards = (#KEYS - 1) / 2
for i = 1, shards do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    redis.call('SET', KEYS[shards + i], 'released:' .. ARGV[1])
  end
end
redis.call('ZREM', KEYS[#KEYS], ARGV[1])
"""


def shard_of(name: str, shards: int = SHARDS) -> int:
    return zlib.crc32(name.encode()) % shards


def new_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


@dataclass(frozen=True)
class Gained:
    """A shard this instance just took, and who led it before ("" none; "released:ID" an
    instance that gave it back; else an instance whose lease ran out)."""

    shard: int
    before: str

    def describe(self, me: str) -> str:
        if self.before.startswith("released:"):
            return (f"scaling of shard {self.shard} handed over to platform {me} (by "
                    f"{self.before.split(':', 1)[1]}, rebalancing)")
        if self.before and self.before != me:
            return (f"scaling of shard {self.shard} taken over by platform {me}: "
                    f"{self.before} stopped renewing its lease (over {LEASE_S:g} s)")
        return f"scaling of shard {self.shard} led by platform {me}"


class Shards:
    def __init__(self, redis: Redis, instance_id: str, shards: int = SHARDS,
                 lease_s: float = LEASE_S, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.redis = redis
        self.id = instance_id
        self.shards = shards
        self.lease_s = lease_s
        self.clock = clock
        self.owned: frozenset[int] = frozenset()
        self._renewed_at = -math.inf
        self._keys = ([_keys.shard_lease(i) for i in range(shards)]
                      + [_keys.shard_leader(i) for i in range(shards)] + [_keys.PLATFORMS])

    def owns(self, name: str) -> bool:
        return shard_of(name, self.shards) in self.owned

    async def claim(self) -> tuple[list[Gained], list[int]]:
        """Renew, give back and take leases; the shards gained and lost by this round."""
        lease_ms = int(self.lease_s * 1000)
        try:
            raw = await self.redis.eval(_CLAIM, len(self._keys), *self._keys, self.id,
                                        lease_ms, lease_ms)
        except Exception:
            if self.clock() - self._renewed_at > self.lease_s:  # may be another's by now
                lost, self.owned = sorted(self.owned), frozenset()
                return [], lost
            raise
        self._renewed_at = self.clock()
        now = {int(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw), 2)}
        gained = [Gained(s, before) for s, before in sorted(now.items())
                  if s not in self.owned]
        lost = sorted(self.owned - now.keys())
        self.owned = frozenset(now)
        return gained, lost

    async def release(self) -> None:
        """On a clean shutdown: the others take the shards at their next round."""
        await self.redis.eval(_RELEASE, len(self._keys), *self._keys, self.id)
        self.owned = frozenset()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def describe(redis: Redis, shards: int = SHARDS, events: int = 20) -> dict[str, object]:
    """`GET /v1/platforms`: the live instances with the shards each leads, and the latest
    shard events (takeovers, hand-overs)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(_keys.PLATFORMS, 0, -1, withscores=True)
        for i in range(shards):
            pipe.get(_keys.shard_lease(i))
        pipe.xrevrange(_keys.PLATFORM_EVENTS, count=events)
        raw = await pipe.execute()
    seconds, micros = raw[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    leaders = [_text(v) if v is not None else None for v in raw[2: 2 + shards]]
    instances = [{"id": _text(member), "last_claim_age_s": round((now_ms - score) / 1000, 3),
                  "shards": [i for i, lead in enumerate(leaders) if lead == _text(member)]}
                 for member, score in raw[1]]
    return {"shards": shards, "instances": instances,
            "unled": [i for i, lead in enumerate(leaders) if lead is None],
            "events": [json.loads(fields[b"event"]) for _id, fields in raw[-1]]}


async def leader_of(redis: Redis, name: str, shards: int = SHARDS) -> dict[str, object]:
    shard = shard_of(name, shards)
    lead = await redis.get(_keys.shard_lease(shard))
    return {"shard": shard, "leader": None if lead is None else _text(lead)}
