"""The activator's in-memory view of endpoints and their ready replicas.

Kept current by route events from Redis (a replica became ready or went away, a
deployment changed) and by a periodic resync, so a missed event heals within seconds. An
endpoint enters the view when a request asks for it; one without ready replicas leaves it
after `UNUSED_FORGET_S` without requests, so the table and the resync's work follow the
endpoints in use, not every endpoint ever called.
Picking a replica reads only memory: power of two choices on outstanding requests,
skipping replicas at their limit.

A replica learns its own concurrency limit (`lowtide.limiter`) and reports it in the headers
of every direct answer (`observe`) and in its record (read on resync); this view holds the
latest value next to this activator's own in-flight count for the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from .. import _keys
from .._auth import Access
from .._failing import Failing
from .._redis import follow
from ..limiter import ADMIT_HEADER, HOLD_HEADER, LIMIT_HEADER, NO_LOAD_HEADER, LimiterConfig
from .admission import usable

log = logging.getLogger(__name__)

RESYNC_S = 2.0
UNUSED_FORGET_S = 60.0  # an endpoint without replicas and requests this long leaves the view
INITIAL_LIMIT = LimiterConfig().initial_limit  # for a record that names no limit
_LIMIT, _NO_LOAD, _HOLD = LIMIT_HEADER.lower(), NO_LOAD_HEADER.lower(), HOLD_HEADER.lower()
_ADMIT = ADMIT_HEADER.lower()


@dataclass
class ReplicaRoute:
    id: str
    address: str
    limit: int  # the replica's learned concurrency limit, as last reported
    in_flight: int = 0  # this activator's requests running on it
    healthy: bool = True
    no_load_ms: float | None = None  # the replica's no-load latency, as last reported
    requests: int = 0  # answered directly by it, through this activator
    share: float | None = None  # of its limit, learned from busy answers (admission.py)
    ahead: int = 0  # calls kept in flight past the limit: 1 while it holds one for a slot
    admit: int | None = None  # what it admits now, when below its limit (re-probing)

    def slots(self) -> int:
        """Calls this activator keeps in flight on it at most (what the expected wait
        divides by): its limit or share, and one more when the replica holds a call over
        it for a slot (that one starts as a slot frees, with no round trip through this
        activator in between)."""
        return usable(self.limit, self.share) + self.ahead

    def room(self) -> int:
        """Slots this activator may still fill on it now (fewer while it re-probes)."""
        if self.admit is not None:
            return min(self.slots(), self.admit + self.ahead) - self.in_flight
        return self.slots() - self.in_flight

    def observe(self, headers: Mapping[str, str]) -> None:
        """Take the limit a replica reported in the headers of a direct answer (names in
        lower case, as `upstream.Response` has them)."""
        raw = headers.get(_LIMIT)
        if raw is not None and raw.isdigit() and int(raw) >= 1:
            self.limit = int(raw)
        raw = headers.get(_NO_LOAD)
        if raw is not None:
            with contextlib.suppress(ValueError):
                self.no_load_ms = float(raw)
        raw = headers.get(_HOLD)
        if raw is not None:
            with contextlib.suppress(ValueError):
                self.ahead = 1 if float(raw) > 0 else 0
        raw = headers.get(_ADMIT)
        self.admit = int(raw) if raw is not None and raw.isdigit() and int(raw) >= 1 else None


@dataclass
class EndpointRoute:
    name: str
    version: int
    timeout_s: float
    replicas: dict[str, ReplicaRoute] = field(default_factory=dict)
    access: Access = field(default_factory=Access)  # who may invoke: mode and key digests
    used_at: float = field(default_factory=time.monotonic)  # the last request that asked
    methods: frozenset[str] | None = None  # a class deployment's methods; None: a function
    failing: Failing | None = None  # its replicas cannot start (set by the platform)

    def unused(self, now: float) -> bool:
        return not self.replicas and now - self.used_at > UNUSED_FORGET_S

    def ready(self) -> list[ReplicaRoute]:
        return [r for r in self.replicas.values() if r.healthy]

    def failing_now(self, now: float) -> Failing | None:
        """Why calls are answered at once instead of queued: the current version's
        replicas cannot start (until the platform's next try) and none is ready."""
        f = self.failing
        if f is None or not f.active(self.version, now) or self.ready():
            return None
        return f


def pick(endpoint: EndpointRoute, rng: random.Random | None = None) -> ReplicaRoute | None:
    """Power of two choices among healthy replicas below their limit (or this activator's
    share of it)."""
    open_ = [r for r in endpoint.replicas.values() if r.healthy and r.room() > 0]
    if not open_:
        return None
    if len(open_) == 1:
        return open_[0]
    a, b = (rng or random).sample(open_, 2)
    return a if a.in_flight <= b.in_flight else b


class Routes:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.endpoints: dict[str, EndpointRoute] = {}
        # told the name of an endpoint whose view was just read (replicas may have come,
        # gone or changed their limits): the activator hands freed slots to its waiters
        self.on_change: Callable[[str], None] | None = None

    async def get(self, name: str) -> EndpointRoute | None:
        found = self.endpoints.get(name)
        if found is None:
            found = await self.refresh(name)
        if found is not None:
            found.used_at = time.monotonic()
        return found

    async def refresh(self, name: str, previous: dict[str, ReplicaRoute] | None = None
                      ) -> EndpointRoute | None:
        """Read the endpoint's route from Redis. A replica already known (from `previous`,
        else the current view) keeps its route object: requests running on it count
        themselves out of that object's `in_flight` when they finish, so a copy would keep
        them in flight for good (and the replica would look full)."""
        dep = await self.redis.hmget(_keys.deployment(name), ["spec", "version", "failing"])
        if dep[0] is None or dep[1] is None:
            self.endpoints.pop(name, None)
            self._changed(name)
            return None
        spec = json.loads(dep[0])
        version = int(dep[1])
        raw = await self.redis.hgetall(_keys.replicas(name))
        if previous is None:
            old = self.endpoints.get(name)
            previous = old.replicas if old else {}
        replicas = {}
        for value in raw.values():
            rec = json.loads(value)
            if rec.get("state") != "ready" or int(rec.get("version", -1)) != version:
                continue
            limit = max(1, int(rec.get("limit") or INITIAL_LIMIT))
            route = previous.get(rec["id"])
            if route is not None and route.address == rec["address"]:
                route.limit, route.healthy = limit, True
            else:
                route = ReplicaRoute(rec["id"], rec["address"], limit)
            replicas[route.id] = route
        methods = spec.get("methods")
        endpoint = EndpointRoute(name, version, float(spec.get("timeout_s", 60.0)), replicas,
                                 await self._access(name, spec),
                                 methods=None if methods is None else frozenset(methods),
                                 failing=Failing.from_json(dep[2]))
        old = self.endpoints.get(name)
        if old is not None:
            endpoint.used_at = old.used_at
        self.endpoints[name] = endpoint
        self._changed(name)
        return endpoint

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)

    async def _access(self, name: str, spec: dict[str, object]) -> Access:
        """The endpoint's access mode and its keys' digests (read with the route, so a key
        check on the request path needs no Redis command)."""
        mode = str(spec.get("access") or "public")
        if mode == "public":
            return Access(mode)
        raw = await self.redis.hgetall(_keys.invoke_keys(name))
        keys = {}
        for kid, value in raw.items():
            try:
                keys[kid.decode()] = bytes.fromhex(json.loads(value)["sha256"])
            except (ValueError, KeyError, TypeError):  # refused like a revoked key
                log.warning("invoke key %r of %s is malformed; ignoring it", kid, name)
        return Access(mode, keys)

    async def invalidate(self, name: str) -> None:
        """Forget the cached view at once (a request meanwhile reads Redis), then reload."""
        old = self.endpoints.pop(name, None)
        if old is not None:
            await self.refresh(name, old.replicas)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow route events; resync every RESYNC_S seconds."""
        next_resync = 0.0

        async def event(data: bytes) -> None:
            await self.invalidate(data.decode())

        async def resync() -> None:
            nonlocal next_resync
            now = time.monotonic()
            for name, endpoint in list(self.endpoints.items()):
                if endpoint.unused(now):
                    self.endpoints.pop(name, None)
                else:
                    await self.refresh(name)
            next_resync = time.monotonic() + RESYNC_S

        async def maybe_resync() -> None:
            if time.monotonic() >= next_resync:
                await resync()

        await follow(self.redis, _keys.ROUTES_CHANNEL, stop, event, what="route events",
                     poll_s=0.5, on_subscribed=resync, on_poll=maybe_resync)
