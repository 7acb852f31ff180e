"""What the platform's handlers read from a request: the endpoint name in the path, a
JSON object body, a bounded integer query parameter; each malformed one is a 400 (or the
404 of a name that cannot exist) that says what to send."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .._http import BadRequest, NotFound
from .._spec import SpecError, check_name


def endpoint_name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return check_name(name)
    except SpecError:
        raise NotFound(f"no deployment named {name!r}") from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body is {}."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def int_query(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{key}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{key}={value} must be in [{lo}, {hi}]")
    return value
