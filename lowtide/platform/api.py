"""The control-plane HTTP API: /v1/deployments and invoke keys (bearer token), /healthz,
/metrics, /openapi.json."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _auth, _keys
from .._failing import Failing
from .._http import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    add_health_routes,
    errors_middleware,
    json_response,
)
from .._manifest import Manifest, ManifestError
from .._protocol import error_result
from .._spec import (
    NAME_PATTERN,
    DeploymentSpec,
    SpecError,
    python_version,
)
from ..openapi import add_openapi_route
from ..workers.puller import ensure_group
from . import blobs, failing, listing, secrets, series, shards, state, ui, versions
from . import logs as replica_logs
from .access import add_access_routes
from .metrics import SeriesCollector
from .observe import add_observe_routes
from .overview import endpoint_state, last_failure
from .params import endpoint_name, int_query, json_object
from .replicas import BUSY_CORES
from .scaler import Scaler
from .series import SeriesRecorder
from .settings import PlatformSettings
from .ui import sessions

log = logging.getLogger(__name__)
DEPLOYS = Counter("lowtide_platform_deployments_total", "Deployments created or replaced")


DEPLOYED_BY = "X-Lowtide-Deployed-By"  # who deploys, as the client says ("alice@laptop")
PUBLIC_PATHS = frozenset({"/", "/healthz", "/metrics", "/openapi.json"})
# an artifact sent inside the deploy request instead of as a blob (curl, tests)
INLINE_ARTIFACT_BYTES = 16 * 2**20


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Everything but PUBLIC_PATHS needs the token (an unknown path too: no probing) or a
    dashboard session (its cookie; with the CSRF token to change state). The dashboard's
    pages check the session themselves (no session: the sign-in page)."""
    if (request.path in PUBLIC_PATHS or ui.is_ui_path(request.path)
            or request.path.startswith(blobs.HOST_PREFIX)):  # they check the host token
        return await handler(request)
    cookie = request.cookies.get(sessions.COOKIE)
    if cookie is not None and "Authorization" not in request.headers:
        session = await sessions.lookup(request.app["redis"], cookie)
        if session is None:
            raise Unauthorized("the dashboard session has expired; sign in again with "
                               "`lowtide dashboard`")
        sessions.check_csrf(request.method, request.host, request.headers.get("Origin"),
                            request.headers.get(sessions.CSRF_HEADER), session)
        request["session"] = session
        return await handler(request)
    _auth.check_token(request.headers.get("Authorization"), request.app["token_digest"])
    return await handler(request)


@dataclass
class _Upload:
    spec: Any = None
    manifest: Manifest | None = None
    artifact: bytes | None = None  # sent inline (curl, older SDKs) instead of as a blob


async def _read_upload(request: web.Request, max_inline_bytes: int) -> _Upload:
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send multipart/form-data with a 'spec' (JSON) and a 'manifest' "
                         "(JSON) or 'artifact' part; the SDK (lowtide.deploy) does this for you")
    try:
        upload = await _read_parts(request, max_inline_bytes)
    except (ValueError, HttpProcessingError) as exc:  # no boundary, a malformed part header
        if isinstance(exc, ManifestError):
            raise BadRequest(str(exc)) from None
        raise BadRequest(f"malformed multipart body ({type(exc).__name__}); the SDK "
                         "(lowtide.deploy) sends a well-formed one") from None
    if upload.spec is None or (upload.artifact is None) == (upload.manifest is None):
        raise BadRequest("a 'spec' part and either a 'manifest' or an 'artifact' part are "
                         "required")
    return upload


async def _read_parts(request: web.Request, max_inline_bytes: int) -> _Upload:
    upload = _Upload()
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "spec":
            try:
                upload.spec = json.loads(await part.read())
            except (ValueError, RecursionError) as exc:
                raise BadRequest(f"spec is not valid JSON: {exc}") from None
        elif part.name == "manifest":
            upload.manifest = Manifest.from_json(await part.read())
        elif part.name == "artifact":
            chunks, size = [], 0
            while chunk := await part.read_chunk(1 << 20):
                size += len(chunk)
                if size > max_inline_bytes:
                    raise PayloadTooLarge(
                        f"the inline artifact is over the limit of {max_inline_bytes} bytes; "
                        "upload it as a blob (PUT /v1/blobs/SHA256, then a 'manifest' part), "
                        "as the SDK does")
                chunks.append(chunk)
            upload.artifact = b"".join(chunks)
    return upload


class PlatformAPI:
    def __init__(self, settings: PlatformSettings, redis: Redis, scaler: Scaler,
                 recorder: SeriesRecorder, blob_store: blobs.BlobStore) -> None:
        self.settings = settings
        self.blob_store = blob_store
        self.redis = redis
        self.scaler = scaler
        self.recorder = recorder

    def url_of(self, name: str) -> str:
        return f"{self.settings.public_activator_url.rstrip('/')}/fn/{name}"

    # ---- deployments ------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.Response:
        upload = await _read_upload(request, INLINE_ARTIFACT_BYTES)
        try:
            spec = DeploymentSpec.from_dict(upload.spec)
            spec.check_new()
        except (SpecError, TypeError) as exc:
            raise BadRequest(str(exc)) from None
        unknown = await secrets.missing(self.redis, spec.secrets)
        if unknown:
            raise BadRequest(f"secret(s) {', '.join(map(repr, unknown))} do not exist; create "
                             f"with `lowtide secrets set {unknown[0]} KEY=VALUE`")
        manifest = await self._manifest(upload, spec)
        hosts = await state.live_hosts(self.redis)
        await self._check_python(spec, hosts)
        body = await self._install(spec, manifest.to_json(), hosts, "deploy",
                                   versions.clean_who(request.headers.get(DEPLOYED_BY)))
        return json_response(body, status=200 if body["replaced"] else 201)

    async def _install(self, spec: DeploymentSpec, manifest_json: str, hosts: dict[str, Any],
                       origin: str, who: str) -> dict[str, Any]:
        """Make (spec, manifest) the endpoint's new version: kept as a version, routed to at
        once (replicas of other versions stop taking requests and finish what they run)."""
        name, now = spec.name, time.time()
        version = int(await self.redis.incr(_keys.version_counter(name)))
        previous = await state.load_deployment(self.redis, name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(_keys.artifact(name, version), manifest_json)
            if previous is None:  # a fresh endpoint starts without keys (none of a deleted
                pipe.delete(_keys.invoke_keys(name))  # namesake's)
            pipe.hset(_keys.deployment(name), mapping={
                "spec": json.dumps(spec.to_dict()), "version": version,
                "created_at": previous.created_at if previous else now, "updated_at": now,
                "desired": previous.desired if previous else 0,
            })
            pipe.hdel(_keys.deployment(name), failing.FIELD)  # a new version starts afresh
            pipe.set(_keys.deployed_version(name), version)  # what its replicas watch
            pipe.sadd(_keys.DEPLOYMENTS, name)
            pipe.zadd(_keys.DEPLOYMENT_NAMES, {name: 0})
            pipe.publish(_keys.ROUTES_CHANNEL, name)
            await pipe.execute()
        await versions.record(self.redis, name, versions.VersionRecord(
            version, spec.to_dict(), manifest_json, who, now, origin))
        await ensure_group(self.redis, _keys.stream(name))
        if previous is not None:  # out of routing now: new requests go to the new version
            for r in await state.load_replicas(self.redis, name):
                if r.version != version and r.state != "stopping":
                    await self.scaler.replicas.stop(name, r, hosts)
        for host in hosts:
            await self.scaler.replicas.enqueue(host, "build", name, version)
        what = "deployed" if origin == "deploy" else f"deployed: {origin}"
        await state.record_event(self.redis, name, "deploy",
                                 f"version {version} {what}" + (" (replaces "
                                 f"v{previous.version})" if previous else "") + f" by {who}",
                                 frm=previous.desired if previous else 0,
                                 to=previous.desired if previous else 0)
        await self.redis.publish(_keys.WAKE_CHANNEL, name)  # to the platform that scales it
        DEPLOYS.inc()
        return {"name": name, "url": self.url_of(name), "version": version,
                "replaced": previous is not None}

    async def list_versions(self, request: web.Request) -> web.Response:
        name = endpoint_name(request)
        dep = await state.load_deployment(self.redis, name)
        if dep is None:
            raise NotFound(f"no deployment named {name!r}")
        kept = await versions.load_all(self.redis, name)
        return json_response({"name": name, "current": dep.version, "keep": versions.KEEP_VERSIONS,
                              "versions": [kept[v].view(dep.version)
                                           for v in sorted(kept, reverse=True)]})

    async def rollback(self, request: web.Request) -> web.Response:
        """POST {"to": N} (or {}: the version before the current one): deploy a kept
        version's spec and artifacts again, as a new version, without an upload."""
        name = endpoint_name(request)
        body = await json_object(request)
        to = body.get("to")
        if set(body) - {"to"} or not (to is None or (isinstance(to, int)
                                                     and not isinstance(to, bool))):
            raise BadRequest('send {"to": VERSION} (a number `lowtide versions NAME` lists), '
                             "or {} for the version before the current one")
        dep = await state.load_deployment(self.redis, name)
        if dep is None:
            raise NotFound(f"no deployment named {name!r}")
        kept = await versions.load_all(self.redis, name)
        try:
            target = kept[versions.rollback_target(list(kept), dep.version, to)]
        except LookupError as exc:
            raise NotFound(str(exc)) from None
        except ValueError as exc:
            raise Conflict(str(exc)) from None
        spec = DeploymentSpec.from_dict(target.spec)
        unknown = await secrets.missing(self.redis, spec.secrets)
        if unknown:
            raise BadRequest(f"version {target.version} uses secret(s) "
                             f"{', '.join(map(repr, unknown))}, which no longer exist; "
                             f"create them with `lowtide secrets set NAME KEY=VALUE`")
        hosts = await state.live_hosts(self.redis)
        result = await self._install(spec, target.manifest, hosts,
                                     f"rollback to v{target.version}",
                                     versions.clean_who(request.headers.get(DEPLOYED_BY)))
        return json_response({**result, "from": dep.version, "to": target.version})

    async def _manifest(self, upload: _Upload, spec: DeploymentSpec) -> Manifest:
        """The version's blobs, each already in the blob store (an inline artifact is put
        there now)."""
        store = self.blob_store
        if upload.manifest is None:
            assert upload.artifact is not None
            if spec.models:
                raise BadRequest("models need a 'manifest' part naming their files")
            ref = await blobs.store_inline(store, upload.artifact,
                                           self.settings.max_blob_bytes)
            return Manifest(ref)
        await blobs.check_manifest(store, upload.manifest, spec.models)
        return upload.manifest

    async def _check_python(self, spec: DeploymentSpec, hosts: dict[str, Any]) -> None:
        versions = {str(h.get("python")) for h in hosts.values()} or {python_version()}
        if spec.python not in versions:
            raise BadRequest(
                f"the function was pickled with Python {spec.python} but the workers run "
                f"Python {', '.join(sorted(versions))}; deploy from a Python "
                f"{sorted(versions)[0]} environment")

    async def list(self, request: web.Request) -> web.Response:
        """A page of endpoint summaries in name order: `limit` (100 by default), `cursor`
        (the previous page's `next_cursor`), `state` (active or idle)."""
        limit = int_query(request, "limit", 100, 1, listing.MAX_LIMIT)
        cursor = request.query.get("cursor") or None
        if cursor is not None and not NAME_PATTERN.fullmatch(cursor):
            raise BadRequest(f"cursor={cursor!r} is not a cursor; pass the previous page's "
                             "next_cursor")
        only = request.query.get("state") or None
        if only is not None and only not in listing.STATES:
            raise BadRequest(f"state={only!r} must be one of {', '.join(listing.STATES)}")
        names, next_cursor = await listing.page(self.redis, cursor, limit, only)
        items = await listing.summaries(self.redis, names, self.url_of, time.time())
        for item in items:  # this platform's recent view, from memory (the dashboard's list)
            item["traffic"] = self.recorder.recent(item["name"])
        return json_response({"deployments": items, "next_cursor": next_cursor,
                              "total": await self.redis.zcard(_keys.DEPLOYMENT_NAMES)})

    async def get(self, request: web.Request) -> web.Response:
        status = await self._status(endpoint_name(request))
        if status is None:
            raise NotFound(f"no deployment named {request.match_info['name']!r}; "
                           "`lowtide ls` lists them")
        return json_response(status)

    async def _status(self, name: str) -> dict[str, Any] | None:
        dep = await state.load_deployment(self.redis, name)
        if dep is None:
            return None
        now = time.time()
        replicas = await state.load_replicas(self.redis, name)
        q = await state.queue_stats(self.redis, name, now)
        current = [r for r in replicas if r.version == dep.version]
        hosts = await state.live_hosts(self.redis)
        builds = {}
        if hosts:
            values = await self.redis.mget([_keys.build_state(name, dep.version, h)
                                            for h in hosts])
            builds = {h: v.decode() for h, v in zip(hosts, values, strict=True) if v}
        policy = await self.scaler.view_policy(name)
        keep_alive = policy.keep_alive()
        daily = policy.daily_pattern(now)
        cpu, gpu = state.replica_cpu_cores(hosts), state.replica_gpu(hosts)
        ready = sum(1 for r in current if r.state == "ready" and r.alive)
        starting = sum(1 for r in current if r.state == "starting")
        now_state = endpoint_state(dep.desired, ready, starting, self.scaler.unplaced(name),
                                   last_failure(await state.read_events(self.redis, name, 5),
                                                now))
        failed = await failing.read(self.redis, name)
        return {
            "name": name,
            "url": self.url_of(name),
            "version": dep.version,
            "state": now_state.state,
            "state_reason": now_state.reason,
            "traffic": self.recorder.recent(name),
            "spec": dep.spec.to_dict(),
            "created_at": dep.created_at,
            "updated_at": dep.updated_at,
            "replicas": {
                "ready": ready,
                "desired": dep.desired,
                "starting": starting,
                "stopping": sum(1 for r in replicas if r.state == "stopping"),
                "items": [_replica_view(r, now, cpu.get(r.id), gpu.get(r.id))
                          for r in replicas],
            },
            "queue": {"depth": q.depth, "queued": q.queued, "oldest_age_s": q.oldest_wait_s,
                      "in_memory": q.in_memory},
            "builds": builds,
            "keep_alive_s": keep_alive.keep_s,
            "keep_alive": {"keep_s": keep_alive.keep_s, "prewarm_s": keep_alive.prewarm_s,
                           "reason": keep_alive.reason},
            "daily": None if daily is None else {"reason": daily,
                                                 "expected_now": policy.expected(now) is not None},
            "panic": policy.panicking(now),
            "placement": self.scaler.unplaced(name),
            "scaling": await shards.leader_of(self.redis, name),
            "failing": _failing_view(failed, dep.version, now),
            "last_decision": dep.last_decision,
        }

    async def delete(self, request: web.Request) -> web.Response:
        name = endpoint_name(request)
        dep = await state.load_deployment(self.redis, name)
        if dep is None:
            raise NotFound(f"no deployment named {name!r}")
        await versions.forget(self.redis, name)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(_keys.DEPLOYMENTS, name)
            pipe.zrem(_keys.DEPLOYMENT_NAMES, name)
            pipe.srem(_keys.ACTIVE, name)
            pipe.zadd(_keys.COOLING, {name: time.time()})  # its replicas are stopping
            pipe.delete(_keys.deployment(name), _keys.artifact(name, dep.version),
                        _keys.deployed_version(name), _keys.stats(name),
                        _keys.invoke_keys(name), _keys.learned(name))
            pipe.publish(_keys.ROUTES_CHANNEL, name)
            pipe.publish(_keys.WAKE_CHANNEL, name)  # its scaler forgets it
            await pipe.execute()
        hosts = await state.live_hosts(self.redis)
        for r in await state.load_replicas(self.redis, name):
            if r.host in hosts:
                await self.scaler.replicas.enqueue(r.host, "stop_replica", name, r.id)
            else:
                await state.remove_replica(self.redis, name, r.id)
        answered = await self._answer_queued(name)
        await series.delete(self.redis, name)
        self.recorder.forget(name)
        await state.record_event(self.redis, name, "delete",
                                 f"deleted; {answered} buffered request(s) answered 404",
                                 frm=dep.desired, to=0)
        return json_response({"deleted": name, "buffered_answered": answered})

    async def _answer_queued(self, name: str) -> int:
        stream = _keys.stream(name)
        entries = await self.redis.xrange(stream)
        result = error_result(404, "endpoint deleted", f"{name!r} was deleted while this "
                              "request waited")
        async with self.redis.pipeline(transaction=False) as pipe:
            for _id, fields in entries:
                rid, reply = fields.get(b"id", b"").decode(), fields.get(b"reply", b"").decode()
                if not rid:
                    continue
                pipe.hset(_keys.result(rid), mapping=result.to_fields())
                pipe.expire(_keys.result(rid), _keys.RESULT_TTL_S)
                if reply:
                    pipe.publish(_keys.reply_channel(reply), result.to_message(rid))
            pipe.delete(stream)
            await pipe.execute()
        return len(entries)

    async def events(self, request: web.Request) -> web.Response:
        name = endpoint_name(request)
        limit = int_query(request, "limit", 100, 1, 1000)
        if not await self.redis.exists(_keys.deployment(name), _keys.decisions(name)):
            raise NotFound(f"no deployment named {name!r}")
        return json_response({"name": name,
                              "events": await state.read_events(self.redis, name, limit)})

    async def logs(self, request: web.Request) -> web.Response:
        name = endpoint_name(request)
        after = request.query.get("after", "0-0")
        limit = int_query(request, "limit", 500, 1, 5000)
        wait_ms = int_query(request, "wait_ms", 0, 0, 30000)
        if not await self.redis.exists(_keys.deployment(name), _keys.logs(name)):
            raise NotFound(f"no deployment named {name!r}")
        try:
            replica_logs.check_after(after)
        except replica_logs.BadLogId as exc:
            raise BadRequest(str(exc)) from None
        lines = await replica_logs.read_lines(self.redis, _keys.logs(name), after, limit, wait_ms)
        return json_response({"name": name, "lines": lines,
                              "next": lines[-1]["id"] if lines else after})

    async def platforms(self, request: web.Request) -> web.Response:
        """The platform instances against this Redis, the shards each scales, and the
        latest takeovers."""
        return json_response(await shards.describe(self.redis))

    async def hosts(self, request: web.Request) -> web.Response:
        """Live hosts in `hosts`, lost ones (no heartbeat; forgotten after a while) in `lost`:
        per host its kind, capacity, allocated, utilization and replicas."""
        views = state.describe_hosts(await state.all_hosts(self.redis),
                                     await state.all_replicas(self.redis), time.time())
        return json_response({"hosts": [v for v in views if v["state"] == "live"],
                              "lost": [v for v in views if v["state"] != "live"]})


def _failing_view(failed: Failing | None, version: int, now: float) -> dict[str, Any] | None:
    """Why the endpoint's replicas cannot start, while calls are answered at once."""
    if failed is None or not failed.active(version, now):
        return None
    return {"kind": failed.kind, "reason": failed.reason, "failures": failed.failures,
            "next_try_in_s": round(failed.retry_in_s(now), 1),
            "summary": failed.summary(now)}


def _replica_view(r: state.ReplicaRecord, now: float, cpu_cores: float | None,
                  gpu_use: dict[str, float] | None = None) -> dict[str, Any]:
    beat = r.alive or {}
    status = r.state
    if not r.alive and r.state == "ready":  # silent: busy starving its heartbeat, or lost
        status = "unresponsive" if (cpu_cores or 0.0) >= BUSY_CORES else "lost"
    return {"id": r.id, "state": status,
            "version": r.version, "host": r.host, "address": r.address, "gpus": r.gpus,
            "in_flight": beat.get("in_flight", 0), "limit": beat.get("limit", r.limit),
            "no_load_ms": beat.get("no_load_ms"), "recent_ms": beat.get("recent_ms"),
            "limit_reason": beat.get("limit_reason"),
            **{k: beat[k] for k in ("batch", "batches") if k in beat},
            "cpu_cores": cpu_cores,
            "gpu_memory_bytes": (gpu_use or {}).get("memory_bytes"),
            "gpu_utilization_percent": (gpu_use or {}).get("utilization_percent"),
            "age_s": round(now - r.created_at, 3),
            "ready_after_s": round(r.ready_at - r.created_at, 3) if r.ready_at else None,
            "startup": r.extra.get("startup")}


async def _to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


def build_app(settings: PlatformSettings, redis: Redis, scaler: Scaler,
              recorder: SeriesRecorder | None = None,
              blob_store: blobs.BlobStore | None = None) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=INLINE_ARTIFACT_BYTES + (1 << 20),  # blobs are streamed, not read
    )
    app["token_digest"] = bytes.fromhex(settings.token_sha256)
    app["redis"] = redis
    app["max_body_bytes"] = INLINE_ARTIFACT_BYTES
    recorder = recorder or SeriesRecorder(redis)
    store = blob_store or blobs.FileBlobStore(settings.blob_dir)
    blobs.add_blob_routes(app, store, settings.max_blob_bytes)
    api = PlatformAPI(settings, redis, scaler, recorder, store)

    async def index_names(_app: web.Application) -> None:
        try:
            await listing.ensure_index(redis)
        except RedisError as exc:  # the next start indexes what is missing
            log.warning("could not index the deployment names (Redis: %s); `lowtide ls` may "
                        "miss deployments made before this version until the next start", exc)

    app.on_startup.append(index_names)
    app.router.add_post("/v1/deployments", api.create)
    app.router.add_get("/v1/deployments", api.list)
    app.router.add_get("/v1/deployments/{name}", api.get)
    app.router.add_delete("/v1/deployments/{name}", api.delete)
    add_access_routes(app)
    app.router.add_get("/v1/deployments/{name}/events", api.events)
    app.router.add_get("/v1/deployments/{name}/logs", api.logs)
    app.router.add_get("/v1/deployments/{name}/versions", api.list_versions)
    app.router.add_post("/v1/deployments/{name}/rollback", api.rollback)
    app.router.add_get("/v1/hosts", api.hosts)
    secrets.add_secret_routes(app)
    add_observe_routes(app, redis, recorder, scaler.settings.policy())
    ui.add_ui_routes(app, redis)
    app.router.add_get("/", _to_dashboard)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SeriesCollector(recorder))
    app.router.add_get("/v1/platforms", api.platforms)
    add_health_routes(app, "platform", registry)
    add_openapi_route(app)
    return app

