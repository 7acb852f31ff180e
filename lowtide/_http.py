"""HTTP plumbing shared by the platform API and the activator: one exception tree mapped to
JSON error bodies in one middleware, so no handler builds an error response by hand."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class HTTPError(Exception):
    """An error with its HTTP status and a message for the caller."""

    status = 500
    error = "internal error"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class BadRequest(HTTPError):
    status, error = 400, "bad request"


class Unauthorized(HTTPError):
    status, error = 401, "unauthorized"


class Forbidden(HTTPError):
    status, error = 403, "forbidden"


class NotFound(HTTPError):
    status, error = 404, "not found"


class Conflict(HTTPError):
    status, error = 409, "conflict"


class PayloadTooLarge(HTTPError):
    status, error = 413, "payload too large"


class UnsupportedMediaType(HTTPError):
    status, error = 415, "unsupported media type"


class TooManyRequests(HTTPError):
    status, error = 429, "too many requests"


class Unavailable(HTTPError):
    status, error = 503, "unavailable"


def json_error(status: int, error: str, detail: str = "", headers: dict[str, str] | None = None,
               **extra: Any) -> web.Response:
    body = json.dumps({"error": error, "detail": detail, **extra})
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        return json_error(exc.status, exc.error, exc.detail, exc.headers, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        if exc.status == 413:
            detail = f"the body is larger than the limit of {request.app['max_body_bytes']} bytes"
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # on 405
        return json_error(exc.status, exc.reason.lower(), detail, allow)
    except RedisError as exc:  # the shared state is out of reach: a retryable 503
        log.warning("%s %s: Redis is unreachable: %s", request.method, request.path, exc)
        return json_error(503, "unavailable", f"Redis is unreachable ({type(exc).__name__}); "
                          "retry shortly", {"Retry-After": "1"})
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error", f"{type(exc).__name__} (see the server log)")


def add_health_routes(app: web.Application, component: str,
                      extra_registry: CollectorRegistry | None = None) -> None:
    """GET /healthz (Redis reachable: 200, else 503) and GET /metrics (Prometheus text) for a
    component whose app holds its Redis client under app["redis"]."""

    async def healthz(request: web.Request) -> web.Response:
        try:
            await request.app["redis"].ping()
        except RedisError as exc:
            raise Unavailable(f"Redis is unreachable: {exc}") from None
        return json_response({"status": "ok", "component": component})

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        if extra_registry is not None:
            body += generate_latest(extra_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(status=status, body=json.dumps(data), content_type="application/json",
                        headers=headers)
