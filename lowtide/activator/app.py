"""The ingress: `POST /fn/{name}` and `GET /requests/{id}`.

Warm: proxy to a ready replica picked from memory (no Redis on this path). Every replica at
its limit: wait in this activator's memory for the first free slot while the expected wait
is short (`admission`, `waiters`: still no Redis). Cold, a long wait, the local queue at its
bound, or an async call: append to the endpoint's stream, wake the platform when the
endpoint has no replica, and wait for the answer until the deadline.

First come, first served: while the endpoint's stream holds requests no replica has taken
yet (as this activator last read it, `backlog.Backlog.queued`), new ones join them rather
than overtake them on the direct path or in memory (replicas pull from the stream as soon as
they have room, so the backlog drains at the replicas' full learned limit); once the
replicas have taken the queue, new requests go direct again.

The waiters in memory are demand the autoscaler must see: their number and the age of the
oldest are flushed with the request counters each second (`_keys.waiting`), and the
platform counts them as queued.

Before any of that, with no Redis command either: a key-protected endpoint's caller must
present one of its keys (digests cached with the route, `lowtide._auth`), the body must be
JSON no deeper than MAX_JSON_DEPTH (or bytes), and a request that would be buffered is
refused with 429 while the endpoint's queue is at its bound (`backlog.Backlog`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .. import _keys, _latency
from .._auth import check_invoke
from .._http import (
    BadRequest,
    NotFound,
    TooManyRequests,
    Unavailable,
    UnsupportedMediaType,
    add_health_routes,
    errors_middleware,
    json_response,
)
from .._methods import CALL, describe
from .._protocol import (
    JSON,
    MAX_JSON_DEPTH,
    METHOD_HEADER,
    OCTETS,
    TIMEOUT_HEADER,
    QueuedRequest,
    Result,
    error_result,
    json_too_deep,
    timeout_result,
)
from .._spec import NAME_PATTERN
from ..limiter import BUSY_HEADER
from ..openapi import add_openapi_route
from .admission import View, admit, requeue, share_after_answer, share_after_busy
from .backlog import RETRY_AFTER_S, Backlog
from .metrics import RoutesCollector
from .replies import ReplyHub
from .routes import EndpointRoute, ReplicaRoute, Routes
from .settings import ActivatorSettings
from .streams import Streamed, is_stream, respond
from .upstream import Response, UpstreamError, Upstreams
from .waiters import Waiters

log = logging.getLogger(__name__)

REPLY_MARGIN_S = 2.0  # beyond a request's own limits, for the answer to travel back
START_GRACE_S = 1.0  # past a request's latest start before it counts as never started
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
FLUSH_S = 1.0
_BUSY = BUSY_HEADER.lower()
_BUSY_ANSWER = error_result(503, "busy", "the replica was at its limit")  # never returned

REQUESTS = Counter("lowtide_activator_requests_total", "Requests answered",
                   ["endpoint", "path", "status"])
LATENCY = Histogram("lowtide_activator_request_seconds", "Time to answer", ["path"],
                    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
FIRST_BYTE = Histogram("lowtide_activator_stream_first_byte_seconds",
                       "Time from a streamed call's arrival to the first bytes of its body "
                       "sent to the caller", ["endpoint", "path"],
                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10,
                                30, 60, 120))


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def check_body(content_type: str, body: bytes) -> None:
    """Refuse what no function can take, before it is buffered or proxied."""
    media = _media(content_type)
    if media == OCTETS:
        return
    if media not in ("", JSON) and not media.endswith("+json"):
        raise UnsupportedMediaType(f"content type {media!r} is not accepted: send "
                                   "application/json or application/octet-stream")
    if body.strip():
        if json_too_deep(body, MAX_JSON_DEPTH):
            raise BadRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            json.loads(body)
        except RecursionError:  # unbalanced, so json_too_deep left it to the parser
            raise BadRequest(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
                             ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None


def check_method(endpoint: EndpointRoute, method: str) -> str:
    """The method a call names ("" for __call__ or a function); 404 naming the endpoint's
    methods when it has no such one."""
    if method in ("", CALL):
        if endpoint.methods is not None and CALL not in endpoint.methods:
            raise NotFound(f"{endpoint.name!r} has no __call__; call one of its methods at "
                           f"/fn/{endpoint.name}/METHOD: {describe(sorted(endpoint.methods))}")
        return ""
    if endpoint.methods is None:
        raise NotFound(f"{endpoint.name!r} is a function, it has no method {method[:100]!r}; "
                       f"call it at /fn/{endpoint.name}")
    if method not in endpoint.methods:
        public = sorted(endpoint.methods - {CALL})
        raise NotFound(f"{endpoint.name!r} has no method {method[:100]!r}; its methods: "
                       f"{describe(public)}" + (f" (and __call__ at /fn/{endpoint.name})"
                                                if CALL in endpoint.methods else ""))
    return method


@dataclass(frozen=True)
class Call:
    content_type: str
    body: bytes
    timeout_s: float  # how long the function may run
    start_by: float  # latest start, seconds since the epoch (bounds the wait in the queue)
    arrived_at: float = 0.0  # seconds since the epoch (orders waiters against the stream)
    # the caller's Accept when it asks for server-sent events (passed to the replica)
    accept: dict[str, str] = field(default_factory=dict)
    method: str = ""  # a class deployment's method; "" is __call__ (or the function)


class Activator:
    def __init__(self, settings: ActivatorSettings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.id = uuid.uuid4().hex
        self.routes = Routes(redis)
        self.replies = ReplyHub(redis, self.id)
        self.upstreams = Upstreams()  # keep-alive connections to replicas, by address
        self._arrivals: dict[str, int] = defaultdict(int)
        self._latencies: dict[str, dict[int, int]] = {}  # name -> bucket -> answered calls
        self.waiting: dict[str, int] = defaultdict(int)  # buffered, answer not back yet
        self.backlog = Backlog(settings.max_queued)
        self.waiters = Waiters(settings.wait, self.routes.endpoints,
                               self.backlog.oldest_queued_at)
        self.routes.on_change = self.waiters.dispatch  # new replicas, grown limits
        self.backlog.on_reading = self.waiters.dispatch  # the stream's older entries taken
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RoutesCollector(self.routes, self.waiting, self.waiters))

    # ---- background -------------------------------------------------------------------
    async def flush_stats(self, stop: asyncio.Event) -> None:
        """Per-endpoint counters to Redis about once a second (off the request path); the
        connections to replicas that left the routes are closed on the same beat."""
        while not stop.is_set():
            await asyncio.sleep(FLUSH_S)
            self.upstreams.keep_only({r.address for e in self.routes.endpoints.values()
                                      for r in e.replicas.values()})
            self.waiters.forget(set(self.routes.endpoints))
            await self._flush_once()

    async def _flush_once(self) -> None:
        arrivals, self._arrivals = self._arrivals, defaultdict(int)
        latencies, self._latencies = self._latencies, {}
        if not arrivals and not latencies and not self.waiters.to_report():
            return
        now = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, n in arrivals.items():
                    pipe.hincrby(_keys.stats(name), "requests", n)
                    pipe.hset(_keys.stats(name), "last_request_at", now)
                for name, counts in latencies.items():
                    for bucket, n in counts.items():
                        pipe.hincrby(_keys.latency(name), str(bucket), n)
                self.waiters.report(pipe, self.id, now)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not flush request counters: %s", exc)
            for name, n in arrivals.items():
                self._arrivals[name] += n
            for name, counts in latencies.items():
                _latency.merge(self._latencies.setdefault(name, {}), counts)

    # ---- handlers ---------------------------------------------------------------------
    async def invoke(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        name = request.match_info["name"]
        endpoint = await self._endpoint(name)
        check_invoke(endpoint.access, request.headers.get("Authorization"), name)
        method = check_method(endpoint, request.match_info.get("method", ""))
        body = await request.read()
        content_type = request.headers.get("Content-Type", "") or JSON
        check_body(content_type, body)
        failing = endpoint.failing_now(time.time())
        if failing is not None:  # its replicas cannot start: say why now, not at a deadline
            REQUESTS.labels(name, "failing", "503").inc()
            answer = failing.result(name, time.time())
            return web.Response(status=answer.status, body=answer.body, headers={
                "Content-Type": answer.content_type,
                "Retry-After": failing.retry_after_header(time.time())})
        now = time.time()
        accept = request.headers.get("Accept", "")
        call = Call(content_type, body, self._timeout_s(request, endpoint),
                    start_by=now + self.settings.max_queue_wait_s, arrived_at=now,
                    accept={"Accept": accept} if "event-stream" in accept else {},
                    method=method)
        self._arrivals[name] += 1
        if request.query.get("async") in ("1", "true", "yes"):
            request_id, _ = await self._buffer(endpoint, call, reply_to="")
            status_url = f"{self._base_url(request)}/requests/{request_id}"
            REQUESTS.labels(name, "async", "202").inc()
            return json_response({"id": request_id, "status_url": status_url}, status=202,
                                 headers={"Location": status_url})
        path = "warm"
        result = await self._served_here(endpoint, call)
        if result is None:
            path = "buffered"
            result = await self._buffer_and_wait(endpoint, call)
        REQUESTS.labels(name, path, str(result.status)).inc()
        elapsed_s = time.perf_counter() - started  # a stream's: to its head
        LATENCY.labels(path).observe(elapsed_s)
        counts = self._latencies.setdefault(name, {})
        bucket = _latency.bucket_of(elapsed_s)
        counts[bucket] = counts.get(bucket, 0) + 1
        if is_stream(result):  # a generator's answer: sent as it comes
            first_byte = FIRST_BYTE.labels(name, path)
            return await respond(request, self.redis, result, call.timeout_s, lambda: (
                first_byte.observe(time.perf_counter() - started)))
        return web.Response(status=result.status, body=result.body,
                            headers={"Content-Type": result.content_type})

    async def request_status(self, request: web.Request) -> web.Response:
        request_id = request.match_info["id"]
        if not REQUEST_ID.match(request_id):
            raise NotFound(f"no request with id {request_id!r}")
        try:
            await self._check_request_access(request, request_id)
            result = await self.replies.stored(request_id)
            if result is not None:
                return web.Response(status=result.status, body=result.body,
                                    headers={"Content-Type": result.content_type})
            if await self.redis.exists(_keys.request(request_id)):
                return json_response({"id": request_id, "status": "pending"}, status=202,
                                     headers={"Retry-After": "1"})
        except RedisError as exc:
            raise Unavailable(f"Redis is unreachable: {exc}", headers={"Retry-After": "1"}
                              ) from None
        raise NotFound(f"no request with id {request_id!r} (results are kept "
                       f"{_keys.RESULT_TTL_S} s)")

    # ---- pieces -----------------------------------------------------------------------
    async def _check_request_access(self, request: web.Request, request_id: str) -> None:
        """The result of a key endpoint's request needs a key of that endpoint, while the
        request is known (REQUEST_TTL_S); past that the id itself is the capability."""
        name = await self.redis.get(_keys.request(request_id))
        endpoint = await self.routes.get(name.decode()) if name else None
        if endpoint is not None:
            check_invoke(endpoint.access, request.headers.get("Authorization"), endpoint.name)

    async def _endpoint(self, name: str) -> EndpointRoute:
        if not NAME_PATTERN.fullmatch(name):
            raise NotFound(f"no endpoint named {name!r}")
        try:
            endpoint = await self.routes.get(name)
        except RedisError as exc:
            raise Unavailable(f"Redis is unreachable: {exc}", headers={"Retry-After": "1"}
                              ) from None
        if endpoint is None:
            raise NotFound(f"no endpoint named {name!r}; deploy it with lowtide.deploy(fn, "
                           f"name={name!r}) or list endpoints with `lowtide ls`")
        return endpoint

    def _timeout_s(self, request: web.Request, endpoint: EndpointRoute) -> float:
        raw = request.headers.get(TIMEOUT_HEADER)
        limit = min(endpoint.timeout_s, self.settings.max_timeout_s)
        if raw is None:
            return limit
        try:
            value = float(raw)
        except ValueError:
            raise BadRequest(f"{TIMEOUT_HEADER}={raw[:40]!r} is not a number of seconds"
                             ) from None
        if not 0 < value <= limit:
            raise BadRequest(f"{TIMEOUT_HEADER}={raw[:40]} must be seconds in (0, {limit:g}] "
                             "(at most the endpoint's timeout)")
        return value

    def _base_url(self, request: web.Request) -> str:
        return (self.settings.public_url or f"{request.scheme}://{request.host}").rstrip("/")

    async def _served_here(self, endpoint: EndpointRoute, call: Call) -> Result | None:
        """Run the call on a replica through this activator: at once when one has room,
        after a wait in memory when all are at their limit and the wait is short
        (`admission`). None: the request goes to the stream."""
        name = endpoint.name
        decision = admit(self._view(endpoint), self.settings.wait)
        refusals = 0
        while True:
            replica = await self.waiters.take_slot(endpoint, decision, call.arrived_at,
                                                   call.start_by, front=refusals > 0)
            if replica is None:
                return None
            result = await self._proxy(endpoint, replica, call)
            if result is not _BUSY_ANSWER:
                return result
            refusals += 1
            endpoint = self.routes.endpoints.get(name, endpoint)
            decision = requeue(self._view(endpoint), refusals, self.settings.wait)

    def _view(self, endpoint: EndpointRoute) -> View:
        return self.waiters.view(endpoint, self.backlog.queued(endpoint.name))

    async def _proxy(self, endpoint: EndpointRoute, replica: ReplicaRoute, call: Call
                     ) -> Result | None:
        """Call the replica directly, its slot taken for the call (given back here, to the
        next waiter); None when it cannot be reached (the caller buffers), _BUSY_ANSWER
        when it was at its limit (other work filled it: nothing ran)."""
        started = time.perf_counter()
        headers = {"Content-Type": call.content_type, TIMEOUT_HEADER: repr(call.timeout_s)}
        if call.method:
            headers[METHOD_HEADER] = call.method
        try:
            resp = await self.upstreams.get(replica.address).post(
                {**headers, **call.accept}, call.body, call.timeout_s + REPLY_MARGIN_S)
        except asyncio.TimeoutError:
            self.waiters.release(endpoint.name, replica)
            return timeout_result(call.timeout_s)
        except UpstreamError as exc:
            log.warning("replica %s of %s unreachable (%s); buffering instead", replica.id,
                        endpoint.name, exc)
            replica.healthy = False
            self.waiters.release(endpoint.name, replica)
            return None
        except BaseException:
            self.waiters.release(endpoint.name, replica)
            raise
        result = self._answered(endpoint.name, replica, resp, time.perf_counter() - started)
        self.waiters.release(endpoint.name, replica)
        return result

    def _answered(self, name: str, replica: ReplicaRoute, resp: Response, latency_s: float
                  ) -> Result:
        """Learn from a replica's answer (its limit; this activator's share of it; the
        endpoint's service time) before its slot goes to the next waiter."""
        replica.observe(resp.headers)
        if resp.status == 503 and _BUSY in resp.headers:
            replica.share = share_after_busy(replica.in_flight - 1)  # the others it ran
            return _BUSY_ANSWER
        replica.share = share_after_answer(replica.share, replica.limit)
        replica.requests += 1
        self.waiters.observe(name, latency_s)  # a stream's: the time to its first value
        if resp.stream is not None:
            return Streamed(resp.status, resp.headers.get("content-type", JSON), b"",
                            resp.stream)
        return Result(resp.status, resp.headers.get("content-type", JSON), resp.body)

    async def _buffer(self, endpoint: EndpointRoute, call: Call, reply_to: str,
                      request_id: str = "") -> tuple[str, bytes]:
        """Append the request to the endpoint's stream; wake the platform when it is cold.
        Returns the request id and the stream entry id."""
        if self.backlog.full(endpoint.name):
            raise TooManyRequests(
                f"{endpoint.name!r} has about {self.backlog.depth(endpoint.name)} requests "
                f"queued, the limit is {self.settings.max_queued}; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)})
        request_id = request_id or uuid.uuid4().hex
        entry = QueuedRequest(request_id, call.content_type, call.body, call.start_by,
                              call.timeout_s, reply_to, call.method)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(_keys.request(request_id), endpoint.name, ex=_keys.REQUEST_TTL_S)
                pipe.xadd(_keys.stream(endpoint.name), entry.to_fields())
                if not endpoint.ready():
                    pipe.publish(_keys.WAKE_CHANNEL, endpoint.name)
                replies = await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"cannot buffer the request, Redis is unreachable: {exc}",
                              headers={"Retry-After": "1"}) from None
        self.backlog.add(endpoint.name)
        return request_id, replies[1]

    async def _buffer_and_wait(self, endpoint: EndpointRoute, call: Call) -> Result:
        request_id = uuid.uuid4().hex
        fut = self.replies.expect(request_id)  # before the entry exists: no answer is missed
        self.waiting[endpoint.name] += 1
        try:
            _, entry_id = await self._buffer(endpoint, call, self.id, request_id)
            # first until the latest start: a request no replica took by then never runs
            # (a replica answers a late entry without running it), so it is answered now
            # rather than after the function's timeout as well
            result = await self.replies.wait(
                request_id, fut, call.start_by + START_GRACE_S - time.time())
            if result is None and await self._never_started(endpoint.name, entry_id):
                return self._not_started(endpoint, request_id)
            if result is None:
                wait_s = call.start_by + call.timeout_s + REPLY_MARGIN_S - time.time()
                result = await self.replies.wait(request_id, fut, wait_s)
        finally:
            self.replies.forget(request_id)
            self.waiting[endpoint.name] -= 1
        if result is None:
            return error_result(504, "deadline exceeded",
                                "no answer within the queue limit "
                                f"({self.settings.max_queue_wait_s:g} s) plus the function's "
                                f"timeout ({call.timeout_s:g} s)", request_id=request_id)
        return result

    async def _never_started(self, name: str, entry_id: bytes) -> bool:
        """True when no replica took the entry (it is then removed from the stream): a
        replica that takes it after this answers it as expired without running it."""
        stream = _keys.stream(name)
        try:
            try:
                taken = await self.redis.xpending_range(stream, _keys.STREAM_GROUP,
                                                        min=entry_id, max=entry_id, count=1)
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                taken = []  # no replica ever read the stream (replicas create the group)
            if taken:
                return False
            return bool(await self.redis.xdel(stream, entry_id))
        except RedisError as exc:
            log.warning("could not check queued request %s of %s: %s", entry_id, name, exc)
            return False  # keep waiting for an answer until the full deadline

    def _not_started(self, endpoint: EndpointRoute, request_id: str) -> Result:
        wait = f"{self.settings.max_queue_wait_s:g} s"
        if not endpoint.ready():
            return error_result(
                503, "unavailable", f"no replica of {endpoint.name!r} became ready within "
                f"{wait}; `lowtide status {endpoint.name}` says why", request_id=request_id)
        return error_result(504, "deadline exceeded", f"no replica of {endpoint.name!r} had "
                            f"room for the request within {wait}", request_id=request_id)


def build_app(activator: Activator) -> web.Application:
    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=activator.settings.max_body_bytes)
    app["redis"] = activator.redis
    app["max_body_bytes"] = activator.settings.max_body_bytes
    app.router.add_post("/fn/{name}", activator.invoke)
    app.router.add_post("/fn/{name}/{method}", activator.invoke)
    app.router.add_get("/requests/{id}", activator.request_status)
    add_health_routes(app, "activator", extra_registry=activator.registry)
    add_openapi_route(app, "activator")
    return app

