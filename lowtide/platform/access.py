"""Who may invoke an endpoint: its access mode (public or key) and its invoke keys
(`PATCH /v1/deployments/{name}`, `/v1/deployments/{name}/keys`). Keys are kept as digests;
the key itself is shown once, at creation. Each change tells the activators at once
(ROUTES_CHANNEL)."""

from __future__ import annotations

import json
import time

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import WatchError

from .. import _auth, _keys
from .._http import BadRequest, Conflict, NotFound, json_response
from .._spec import ACCESS_MODES, DeploymentSpec
from . import state
from .params import endpoint_name, json_object


async def set_access(request: web.Request) -> web.Response:
    """PATCH {"access": "public" | "key"}: change who may invoke, without a redeploy."""
    redis: Redis = request.app["redis"]
    name = endpoint_name(request)
    body = await json_object(request)
    unknown = sorted(set(body) - {"access"})
    if unknown or "access" not in body:
        raise BadRequest("send {\"access\": \"public\"} or {\"access\": \"key\"}; "
                         "other fields change with a redeploy")
    if body["access"] not in ACCESS_MODES:
        raise BadRequest(f"access={body['access']!r} must be one of "
                         f"{', '.join(ACCESS_MODES)}")
    dep = await state.load_deployment(redis, name)
    if dep is None:
        raise NotFound(f"no deployment named {name!r}")
    spec = DeploymentSpec.from_dict({**dep.spec.to_dict(), "access": body["access"]})
    try:
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.watch(_keys.deployment(name))  # a redeploy meanwhile wins
            if int(await pipe.hget(_keys.deployment(name), "version") or 0) != dep.version:
                raise WatchError
            pipe.multi()
            pipe.hset(_keys.deployment(name), "spec", json.dumps(spec.to_dict()))
            pipe.publish(_keys.ROUTES_CHANNEL, name)
            await pipe.execute()
    except WatchError:
        raise Conflict(f"{name!r} was redeployed or deleted meanwhile; retry") from None
    if spec.access != dep.spec.access:
        await state.record_event(redis, name, "access",
                                 f"invoke access {dep.spec.access} -> {spec.access}",
                                 frm=dep.desired, to=dep.desired)
    return json_response({"name": name, "access": spec.access})

async def create_key(request: web.Request) -> web.Response:
    redis: Redis = request.app["redis"]
    name = endpoint_name(request)
    body = await json_object(request)
    label = body.get("label", "")
    if set(body) - {"label"} or not isinstance(label, str) or (
            len(label) > _auth.MAX_LABEL_CHARS):
        raise BadRequest(f"send {{\"label\": \"...\"}} (at most {_auth.MAX_LABEL_CHARS} "
                         "characters) or an empty body")
    dep = await state.load_deployment(redis, name)
    if dep is None:
        raise NotFound(f"no deployment named {name!r}; keys belong to a deployment")
    if await redis.hlen(_keys.invoke_keys(name)) >= _auth.MAX_KEYS_PER_ENDPOINT:
        raise BadRequest(f"{name!r} already has {_auth.MAX_KEYS_PER_ENDPOINT} keys; revoke "
                         f"unused ones (`lowtide keys ls {name}`)")
    new, now = _auth.new_key(), time.time()
    record = {"id": new.id, "sha256": new.digest_hex, "label": label, "created_at": now}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(_keys.invoke_keys(name), new.id, json.dumps(record))
        pipe.publish(_keys.ROUTES_CHANNEL, name)
        await pipe.execute()
    note = ("store the key now: it is shown only this once" + (
        "" if dep.spec.access == "key" else f"; {name!r} is public until its access is "
        f"'key' (`lowtide access {name} key`)"))
    return json_response({"id": new.id, "key": new.key, "label": label, "created_at": now,
                          "endpoint": name, "access": dep.spec.access, "note": note},
                         status=201)

async def list_keys(request: web.Request) -> web.Response:
    redis: Redis = request.app["redis"]
    name = endpoint_name(request)
    if not await redis.exists(_keys.deployment(name)):
        raise NotFound(f"no deployment named {name!r}")
    items = []
    for raw in (await redis.hgetall(_keys.invoke_keys(name))).values():
        rec = json.loads(raw)
        items.append({"id": rec["id"], "label": rec.get("label", ""),
                      "created_at": rec.get("created_at"),
                      "hint": f"lt_{rec['id']}_..."})
    items.sort(key=lambda k: k["created_at"] or 0)
    return json_response({"name": name, "keys": items})

async def revoke_key(request: web.Request) -> web.Response:
    redis: Redis = request.app["redis"]
    name = endpoint_name(request)
    kid = request.match_info["key_id"]
    removed = 0
    if _auth.KEY_ID_PATTERN.fullmatch(kid):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(_keys.invoke_keys(name), kid)
            pipe.publish(_keys.ROUTES_CHANNEL, name)
            removed = (await pipe.execute())[0]
    if not removed:
        raise NotFound(f"no key {kid!r} for {name!r}; `lowtide keys ls {name}` lists them")
    return json_response({"name": name, "revoked": kid})


def add_access_routes(app: web.Application) -> None:
    app.router.add_patch("/v1/deployments/{name}", set_access)
    app.router.add_post("/v1/deployments/{name}/keys", create_key)
    app.router.add_get("/v1/deployments/{name}/keys", list_keys)
    app.router.add_delete("/v1/deployments/{name}/keys/{key_id}", revoke_key)
