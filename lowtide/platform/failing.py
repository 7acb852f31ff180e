"""Start-up failures of endpoints: counted and backed off (pure), recorded in Redis and
answered to the callers waiting in the endpoint's stream (thin I/O).

`StartFailures` keeps, per endpoint, the consecutive failed starts of its current version:
each one pushes the next try back (10, 20, 40... s, at most 300 s). A new version (redeploy)
or a new endpoint of the same name (delete and deploy) starts from zero; a ready replica
clears it. What it returns is the `Failing` the activators answer with (`lowtide._failing`).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .. import _keys
from .._failing import START, Failing, start_backoff_s
from .._protocol import Result

FIELD = "failing"  # in the deployment's hash
ANSWER_BATCH = 500
PLATFORM_CONSUMER = "platform"  # the consumer that takes queued entries to answer them


class StartFailures:
    def __init__(self, first_backoff_s: float = 10.0, cap_s: float = 300.0) -> None:
        self.first_backoff_s = first_backoff_s
        self.cap_s = cap_s
        self._last: dict[str, Failing] = {}

    def failed(self, name: str, version: int, reason: str, now: float) -> Failing:
        before = self.current(name, version)
        n = (before.failures if before is not None else 0) + 1
        failing = Failing(START, reason, version, n,
                          now + start_backoff_s(n, self.first_backoff_s, self.cap_s))
        self._last[name] = failing
        return failing

    def current(self, name: str, version: int) -> Failing | None:
        """The failures of this version (those of an older version are forgotten)."""
        last = self._last.get(name)
        if last is not None and last.version != version:
            del self._last[name]
            return None
        return last

    def may_start(self, name: str, version: int, now: float) -> bool:
        last = self.current(name, version)
        return last is None or now >= last.until

    def until(self, name: str) -> float:
        """When the next start may happen (0: at once), as last backed off."""
        last = self._last.get(name)
        return 0.0 if last is None else last.until

    def succeeded(self, name: str) -> bool:
        """A replica became ready: start afresh. True when there were failures."""
        return self._last.pop(name, None) is not None

    def forget(self, name: str) -> None:
        self._last.pop(name, None)


async def mark(redis: Redis, name: str, failing: Failing) -> None:
    """Record it where the activators and status read it, and tell the activators now;
    only while the endpoint exists (a delete racing with it leaves nothing behind)."""
    key = _keys.deployment(name)
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        if not await pipe.exists(key):
            return
        pipe.multi()
        pipe.hset(key, FIELD, failing.to_json())
        pipe.publish(_keys.ROUTES_CHANNEL, name)
        await pipe.execute()


async def clear(redis: Redis, name: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(_keys.deployment(name), FIELD)
        pipe.publish(_keys.ROUTES_CHANNEL, name)
        await pipe.execute()


async def read(redis: Redis, name: str) -> Failing | None:
    return Failing.from_json(await redis.hget(_keys.deployment(name), FIELD))


async def answer_queued(redis: Redis, name: str, result: Result) -> int:
    """Answer every request of the stream no replica has taken yet with `result` (stored,
    acknowledged, deleted and published to its waiting activator, like a replica's
    answer); entries a replica holds are left to it. Returns how many were answered."""
    stream = _keys.stream(name)
    answered = 0
    while True:
        try:
            reply = await redis.xreadgroup(_keys.STREAM_GROUP, PLATFORM_CONSUMER,
                                           {stream: ">"}, count=ANSWER_BATCH)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return answered
            raise
        entries = reply[0][1] if reply else []
        async with redis.pipeline(transaction=True) as pipe:
            for entry_id, fields in entries:
                rid = fields.get(b"id", b"").decode()
                reply_to = fields.get(b"reply", b"").decode()
                if rid:
                    pipe.hset(_keys.result(rid), mapping=result.to_fields())
                    pipe.expire(_keys.result(rid), _keys.RESULT_TTL_S)
                    if reply_to:
                        pipe.publish(_keys.reply_channel(reply_to), result.to_message(rid))
                pipe.xack(stream, _keys.STREAM_GROUP, entry_id)
                pipe.xdel(stream, entry_id)
            pipe.xgroup_delconsumer(stream, _keys.STREAM_GROUP, PLATFORM_CONSUMER)
            await pipe.execute()
        answered += len(entries)
        if len(entries) < ANSWER_BATCH:
            return answered
