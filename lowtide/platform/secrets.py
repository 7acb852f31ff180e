"""Secrets: named sets of environment variables kept apart from deployment specs.

`PUT /v1/secrets/{name}` {"values": {KEY: value}} creates or replaces one, `GET /v1/secrets`
lists names, key names and when each was set, `DELETE /v1/secrets/{name}` removes it. A
deployment names the secrets it uses (`secrets=[...]`); the agent that starts one of its
replicas reads the values and gives them to that replica's process as environment
variables. No answer, error body, event or log line of the platform carries a value: the
API answers with names only, and validation errors name the variable, not its value.
Values sit in Redis in plain text; see the README on what can read Redis.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from .. import _keys
from .._http import BadRequest, Conflict, NotFound, json_response
from .._spec import SpecError, check_env, check_name

MAX_SECRET_BODY_BYTES = 128 * 1024


def _secret_name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return check_name(name)
    except SpecError:
        if request.method == "PUT":  # the caller's input, not a lookup
            raise BadRequest(f"{name[:80]!r} is not a secret name; names are like "
                             "'hf-token'") from None
        raise NotFound(f"no secret named {name[:80]!r}; names are like 'hf-token'") from None


async def _values(request: web.Request) -> dict[str, str]:
    raw = await request.content.read(MAX_SECRET_BODY_BYTES + 1)
    if len(raw) > MAX_SECRET_BODY_BYTES:
        raise BadRequest(f"the body is over {MAX_SECRET_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest('send {"values": {"KEY": "value", ...}}') from None  # no echo
    if not isinstance(body, dict) or set(body) != {"values"}:
        raise BadRequest('send {"values": {"KEY": "value", ...}}')
    try:
        values = check_env(body["values"], "secret")
    except SpecError as exc:
        raise BadRequest(str(exc)) from None
    if not values:
        raise BadRequest("a secret needs at least one KEY=value")
    return values


async def put_secret(request: web.Request) -> web.Response:
    redis: Redis = request.app["redis"]
    name = _secret_name(request)
    values = await _values(request)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(_keys.secret(name))
        pipe.hset(_keys.secret(name), mapping=values)
        pipe.hset(_keys.secret_meta(name), mapping={"updated_at": repr(time.time())})
        pipe.sadd(_keys.SECRETS, name)
        await pipe.execute()
    return json_response({"name": name, "keys": sorted(values),
                          "note": "replicas get it at their next start"})


async def list_secrets(request: web.Request) -> web.Response:
    redis: Redis = request.app["redis"]
    names = sorted(n.decode() for n in await redis.smembers(_keys.SECRETS))
    out: list[dict[str, Any]] = []
    for name in names:
        keys = sorted(k.decode() for k in await redis.hkeys(_keys.secret(name)))
        at = await redis.hget(_keys.secret_meta(name), "updated_at")
        out.append({"name": name, "keys": keys, "updated_at": float(at) if at else None})
    return json_response({"secrets": out})


async def delete_secret(request: web.Request) -> web.Response:
    redis: Redis = request.app["redis"]
    name = _secret_name(request)
    users = await users_of(redis, name)
    if users:
        raise Conflict(f"secret {name!r} is used by {', '.join(users)}; redeploy them without "
                       "it (or delete them) first")
    async with redis.pipeline(transaction=True) as pipe:
        pipe.srem(_keys.SECRETS, name)
        pipe.delete(_keys.secret(name), _keys.secret_meta(name))
        removed, *_ = await pipe.execute()
    if not removed:
        raise NotFound(f"no secret named {name!r}; `lowtide secrets ls` lists them")
    return json_response({"deleted": name})


async def users_of(redis: Redis, secret: str) -> list[str]:
    """Deployments whose current spec names `secret`."""
    users = []
    for raw in await redis.smembers(_keys.DEPLOYMENTS):
        name = raw.decode()
        spec = await redis.hget(_keys.deployment(name), "spec")
        if spec and secret in (json.loads(spec).get("secrets") or []):
            users.append(name)
    return sorted(users)


async def missing(redis: Redis, names: list[str]) -> list[str]:
    """The names among `names` that are not secrets (a deployment using them is refused)."""
    if not names:
        return []
    known = await redis.smismember(_keys.SECRETS, names)
    return [n for n, ok in zip(names, known, strict=True) if not ok]


def add_secret_routes(app: web.Application) -> None:
    app.router.add_get("/v1/secrets", list_secrets)
    app.router.add_put("/v1/secrets/{name}", put_secret)
    app.router.add_delete("/v1/secrets/{name}", delete_secret)
