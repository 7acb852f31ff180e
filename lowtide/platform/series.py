"""What the dashboard charts: per endpoint, a few numbers a second, downsampled into three
resolutions kept in Redis (bounded, so they survive a platform restart and never grow).

The scaler calls `SeriesRecorder.observe()` after each decision (memory only: the hook costs
the loop nothing); the recorder's own loop reads the activators' latency counts once a
second and writes each bucket when it closes. Downsampling is pure (`Accumulator`): every
resolution sums its own bucket from the one-second looks, so the 24 h chart's points are
means (rates, utilization), maxima (replicas, queue, latency quantiles of the merged counts)
or the last value (learned limit) over four minutes, not a thinned-out sample.

| window | step | points kept |
|---|---|---|
| 10m | 2 s | 300 |
| 1h | 10 s | 360 |
| 24h | 240 s | 360 |
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys, _latency
from .policy import Decision, Observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tier:
    name: str
    step_s: float
    keep: int


TIERS = (Tier("10m", 2.0, 300), Tier("1h", 10.0, 360), Tier("24h", 240.0, 360))
WINDOWS = {t.name: t for t in TIERS}
RECENT_S = 10.0  # the endpoints list's req/s and p50/p99: over this long
FORGET_S = 30.0  # an endpoint the scaler has not looked at for this long is forgotten here
# ... unless it was at zero: the scaler looks at an endpoint at zero only on events (a
# request, a deploy), so one unseen for UNSEEN_S is recorded as still at zero meanwhile
UNSEEN_S = 2.5

# how a bucket sums its looks at each gauge
MEAN, MAX, LAST = "mean", "max", "last"
GAUGES = {"rps": MEAN, "ready": MAX, "desired": MAX, "queued": MAX, "oldest_wait_s": MAX,
          "in_flight": MAX, "cpu": MEAN, "gpu": MEAN, "limit": LAST}
COLUMNS = ("t", *GAUGES, "p50_ms", "p99_ms", "calls")

# a closed bucket is written only while the endpoint exists (a write racing with a delete
# must not bring its series back)
_APPEND_IF_DEPLOYED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
end
return 0
"""


def gauges(obs: Observation, decision: Decision) -> dict[str, float | None]:
    """One look at an endpoint, as the scaler saw it."""
    return {"rps": round(obs.arrival_rate_per_s, 3), "ready": obs.ready,
            "desired": decision.desired, "queued": obs.queued,
            "oldest_wait_s": round(obs.oldest_wait_s, 3), "in_flight": obs.in_flight,
            "cpu": obs.cpu_utilization, "gpu": obs.gpu_utilization, "limit": obs.limit}


def at_zero(look: dict[str, float | None]) -> bool:
    """Nothing desired, running, queued or in flight."""
    return not any(look.get(k) for k in ("desired", "ready", "queued", "in_flight"))


@dataclass
class Bucket:
    """The looks and latency counts of one step of one resolution."""

    start: float
    looks: float = 0
    sums: dict[str, float] = field(default_factory=dict)
    counted: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)  # max or last, by GAUGES
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, look: dict[str, float | None], weight: float = 1) -> None:
        """One look, or `weight` identical ones (the seconds an endpoint sat at zero)."""
        self.looks += weight
        for key, how in GAUGES.items():
            value = look.get(key)
            if value is None:
                continue
            if how == MEAN:
                self.sums[key] = self.sums.get(key, 0.0) + value * weight
                self.counted[key] = self.counted.get(key, 0) + weight
            elif how == MAX:
                self.values[key] = max(value, self.values.get(key, value))
            else:
                self.values[key] = value

    def point(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.start}
        for key, how in GAUGES.items():
            if how == MEAN:
                n = self.counted.get(key, 0)
                out[key] = round(self.sums[key] / n, 3) if n else None
            else:
                out[key] = self.values.get(key)
        out.update(latency_summary(self.latency))
        return out


def latency_summary(counts: dict[int, int]) -> dict[str, Any]:
    p50, p99 = _latency.quantile(counts, 0.5), _latency.quantile(counts, 0.99)
    return {"p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "calls": sum(counts.values())}


class Accumulator:
    """One endpoint's open bucket per resolution; adding past a bucket's end closes it."""

    def __init__(self, tiers: tuple[Tier, ...] = TIERS) -> None:
        self.tiers = tiers
        self.open: dict[str, Bucket] = {}

    def _bucket(self, tier: Tier, now: float, closed: list[tuple[Tier, dict[str, Any]]]
                ) -> Bucket:
        start = now - now % tier.step_s
        bucket = self.open.get(tier.name)
        if bucket is None or bucket.start != start:
            if bucket is not None and bucket.looks:
                closed.append((tier, bucket.point()))
            bucket = self.open[tier.name] = Bucket(start)
        return bucket

    def add(self, now: float, look: dict[str, float | None]) -> list[tuple[Tier, dict[str, Any]]]:
        closed: list[tuple[Tier, dict[str, Any]]] = []
        for tier in self.tiers:
            self._bucket(tier, now, closed).add(look)
        return closed

    def add_latency(self, now: float, counts: dict[int, int]
                    ) -> list[tuple[Tier, dict[str, Any]]]:
        closed: list[tuple[Tier, dict[str, Any]]] = []
        for tier in self.tiers:
            _latency.merge(self._bucket(tier, now, closed).latency, counts)
        return closed

    def partial(self, tier: str) -> dict[str, Any] | None:
        bucket = self.open.get(tier)
        return bucket.point() if bucket is not None and bucket.looks else None


def columns(points: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Points as one list per column (what a chart takes), oldest first, one point per t."""
    by_t = {p["t"]: p for p in points}
    ordered = [by_t[t] for t in sorted(by_t)]
    return {c: [p.get(c) for p in ordered] for c in COLUMNS}


@dataclass
class _Endpoint:
    acc: Accumulator
    seen_at: float
    look: dict[str, float | None]
    recent: deque[tuple[float, float, dict[int, int]]]  # (at, rps, latency counts)
    latency_read: dict[int, int] | None = None  # the cumulative counts at the last read
    zero_from: float = 0.0  # parked: at zero since, no look added from then on
    close_at: float = 0.0  # parked: when its last open bucket ends (the heap's key)


class SeriesRecorder:
    """Thin I/O around `Accumulator`: the scaler's hook in, Redis lists out."""

    def __init__(self, redis: Redis, clock: Callable[[], float] = time.time,
                 interval_s: float = 1.0) -> None:
        self.redis = redis
        self.clock = clock
        self.interval_s = interval_s
        self._endpoints: dict[str, _Endpoint] = {}
        # endpoints at zero the scaler does not look at: nothing per step; their open
        # buckets are closed (filled with the seconds at zero) when the last one ends
        self._parked: dict[str, _Endpoint] = {}
        self._closing: list[tuple[float, str]] = []  # heap of (close_at, name)
        self._closed: list[tuple[str, Tier, dict[str, Any]]] = []

    def observe(self, name: str, obs: Observation, decision: Decision, now: float) -> None:
        """The scaler's hook: one look, in memory."""
        look = gauges(obs, decision)
        ep = self._endpoints.get(name)
        if ep is None and name in self._parked:
            ep = self._parked.pop(name)
            self._fill_zero(name, ep, now)
            self._endpoints[name] = ep
        if ep is None:
            ep = self._endpoints[name] = _Endpoint(Accumulator(), now, look, deque())
        ep.seen_at, ep.look = now, look
        self._closed.extend((name, tier, p) for tier, p in ep.acc.add(now, look))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.step(self.clock())
            except RedisError as exc:
                log.warning("recording the dashboard series failed (tried again in %g s): %s",
                            self.interval_s, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def step(self, now: float) -> None:
        """Read the latency counts of the endpoints in view, write the closed buckets.
        The cost follows the endpoints the scaler looks at: one at zero that it no longer
        looks at (until its next request) is parked, and costs nothing until its open
        buckets end; `read` draws the time at zero that follows."""
        names = []
        for name, ep in list(self._endpoints.items()):
            if now - ep.seen_at <= UNSEEN_S:
                names.append(name)
            elif at_zero(ep.look):
                self._park(name, ep, now)
            elif now - ep.seen_at > FORGET_S:
                del self._endpoints[name]
        while self._closing and self._closing[0][0] <= now:
            close_at, name = heapq.heappop(self._closing)
            parked = self._parked.get(name)
            if parked is not None and parked.close_at == close_at:
                self._fill_zero(name, parked, close_at)
                del self._parked[name]
        names.sort()
        if names:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(_keys.latency(name))
                reads = await pipe.execute()
            for name, raw in zip(names, reads, strict=True):
                self._add_latency(name, {int(k): int(v) for k, v in raw.items()}, now)
        await self._write()

    def _park(self, name: str, ep: _Endpoint, now: float) -> None:
        del self._endpoints[name]
        ends = [b.start + t.step_s for t in ep.acc.tiers
                if (b := ep.acc.open.get(t.name)) is not None and b.looks]
        if not ends:
            return
        ep.zero_from, ep.close_at = now, max(ends)
        self._parked[name] = ep
        heapq.heappush(self._closing, (ep.close_at, name))

    def _fill_zero(self, name: str, ep: _Endpoint, until: float) -> None:
        """Add the looks at zero from `ep.zero_from` to `until` (one per step, as if the
        recorder had looked) to the open buckets, and close those that ended: the buckets
        after them held nothing but zero, and are not written."""
        still = {**ep.look, "rps": 0.0, "oldest_wait_s": 0.0, "cpu": None, "gpu": None}
        for tier in ep.acc.tiers:
            bucket = ep.acc.open.get(tier.name)
            if bucket is None:
                continue
            end = bucket.start + tier.step_s
            looks = math.ceil((min(until, end) - ep.zero_from) / self.interval_s - 1e-9)
            if looks > 0:
                bucket.add(still, looks)
            if until >= end:
                if bucket.looks:
                    self._closed.append((name, tier, bucket.point()))
                del ep.acc.open[tier.name]
        ep.zero_from = until

    def _add_latency(self, name: str, cumulative: dict[int, int], now: float) -> None:
        ep = self._endpoints[name]
        counts = {} if ep.latency_read is None else _latency.delta(cumulative, ep.latency_read)
        ep.latency_read = cumulative
        ep.recent.append((now, float(ep.look.get("rps") or 0.0), counts))
        while ep.recent and now - ep.recent[0][0] > RECENT_S:
            ep.recent.popleft()
        self._closed.extend((name, tier, p) for tier, p in ep.acc.add_latency(now, counts))

    async def _write(self) -> None:
        closed, self._closed = self._closed, []
        if not closed:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, tier, point in closed:
                    pipe.eval(_APPEND_IF_DEPLOYED, 2, _keys.deployment(name),
                              _keys.series(name, tier.name),
                              json.dumps(point, separators=(",", ":")), tier.keep)
                await pipe.execute()
        except RedisError:
            self._closed[:0] = closed[-1000:]  # kept for the next try, bounded
            raise

    def recent(self, name: str) -> dict[str, Any]:
        """The endpoints list's live numbers: req/s and p50/p99 over the last RECENT_S."""
        ep = self._endpoints.get(name)
        if ep is None or not ep.recent:
            return {"rps": None, "p50_ms": None, "p99_ms": None, "calls": 0}
        merged: dict[int, int] = {}
        for _at, _rps, counts in ep.recent:
            _latency.merge(merged, counts)
        rps = sum(r for _at, r, _c in ep.recent) / len(ep.recent)
        return {"rps": round(rps, 3), **latency_summary(merged)}

    async def read(self, name: str, window: str) -> dict[str, Any]:
        """A window's points (stored, then the open bucket) as columns."""
        tier = WINDOWS[window]
        raw = await self.redis.lrange(_keys.series(name, tier.name), 0, -1)
        points = [json.loads(p) for p in raw]
        ep = self._endpoints.get(name)
        if ep is None:
            ep = self._parked.get(name)
        partial = ep.acc.partial(tier.name) if ep is not None else None
        if partial is not None:
            points.append(partial)
        points = at_zero_filled(points, tier, self.clock(), still=name not in self._endpoints)
        return {"window": tier.name, "step_s": tier.step_s, "columns": columns(points)}

    def looks(self) -> dict[str, dict[str, float | None]]:
        """The last look at each endpoint in view (parked ones included until their
        buckets close)."""
        return {name: ep.look for name, ep in [*self._endpoints.items(),
                                                 *self._parked.items()]}

    def stepped(self) -> int:
        """How many endpoints each step reads: those the scaler looks at."""
        return len(self._endpoints)

    def charted(self) -> int:
        """How many endpoints the recorder holds: stepped and parked."""
        return len(self._endpoints) + len(self._parked)

    def forget(self, name: str) -> None:
        self._endpoints.pop(name, None)
        self._parked.pop(name, None)


def at_zero_filled(points: list[dict[str, Any]], tier: Tier, now: float, still: bool
                   ) -> list[dict[str, Any]]:
    """The stored points with the steps at zero that were not written put back: after a
    point at zero, an endpoint stays at zero until its next point (a request would have
    brought the scaler's looks, hence points); after the last one, until now when `still`
    (the recorder is not looking at it). At most the tier's `keep` points."""
    ordered = sorted({p["t"]: p for p in points}.values(), key=lambda p: p["t"])
    first = now - now % tier.step_s - tier.step_s * tier.keep
    out: list[dict[str, Any]] = []
    for i, point in enumerate(ordered):
        out.append(point)
        if not at_zero(point):
            continue
        upto = ordered[i + 1]["t"] if i + 1 < len(ordered) else (now if still else point["t"])
        t = max(point["t"] + tier.step_s, first)
        while t + tier.step_s <= upto or (i + 1 < len(ordered) and t < upto):
            out.append(_zero_point(t, point))
            t += tier.step_s
    return out[-tier.keep:]


def _zero_point(t: float, like: dict[str, Any]) -> dict[str, Any]:
    return {"t": t, "rps": 0.0, "ready": 0, "desired": 0, "queued": 0, "oldest_wait_s": 0.0,
            "in_flight": 0, "cpu": None, "gpu": None, "limit": like.get("limit"),
            "p50_ms": None, "p99_ms": None, "calls": 0}


async def delete(redis: Redis, name: str) -> None:
    await redis.delete(_keys.latency(name), *(_keys.series(name, t.name) for t in TIERS))
