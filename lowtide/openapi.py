"""The OpenAPI 3 description of lowtide's HTTP APIs, hand-written (not generated).

`GET /openapi.json` on the platform serves the whole document (control plane, and the invoke
API with the activator as its server); the activator serves its own part. A test keeps it
true: every route of both aiohttp apps is in it, and nothing else is.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ._auth import KEY_PATTERN
from ._manifest import MAX_MODELS
from ._protocol import MAX_JSON_DEPTH, TIMEOUT_HEADER
from ._spec import (
    ACCESS_MODES,
    MAX_PACKAGES,
    MAX_REQUIREMENT_CHARS,
    MAX_REQUIREMENTS,
    MAX_TIMEOUT_S,
    NAME_PATTERN,
)

ACTIVATOR_SERVER = {"url": "{activator}", "variables": {
    "activator": {"default": "http://127.0.0.1:8080", "description": "the activator's URL"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


NAME = {"name": "name", "in": "path", "required": True, "description": "endpoint name",
        "schema": {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"}}
AUTH_ERRORS = {"401": _error("no or malformed credentials (see WWW-Authenticate)"),
               "403": _error("credentials well formed but not allowed")}
SHA256_PARAM = {"name": "sha256", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
CONTROL = {"security": [{"token": []}, {"session": []}], "tags": ["control plane"]}
INVOKE = {"tags": ["invoke"], "servers": [ACTIVATOR_SERVER]}
COMMON = {"/healthz": {"get": {"summary": "Redis reachable", "security": [],
                               "responses": {"200": _ok("healthy"),
                                             "503": _error("Redis is unreachable")}}},
          "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
              "200": {"description": "Prometheus text",
                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
          "/openapi.json": {"get": {"summary": "this document", "security": [],
                                    "responses": {"200": _ok("OpenAPI 3 document")}}}}


def _control(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, **CONTROL, **extra,
            "responses": {**responses, **AUTH_ERRORS}}


CONTROL_PATHS: dict[str, Any] = {
    "/v1/deployments": {
        "post": _control("deploy (or replace) a function", {
            "200": _ok("replaced"), "201": _ok("created"),
            "400": _error("bad spec or manifest (names the field), a blob not uploaded, or "
                          "Python version mismatch"),
            "413": _error("inline artifact over the limit")},
            requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["spec"], "properties": {
                    "spec": {"$ref": "#/components/schemas/Spec"},
                    "manifest": {"$ref": "#/components/schemas/Manifest"},
                    "artifact": {"type": "string", "format": "binary",
                                 "description": "the cloudpickled function, inline (instead "
                                 "of a manifest naming its blob)"}}}}}}),
        "get": _control("a page of deployments in name order: deployments, next_cursor "
                        "(null on the last page), total", {
                            "200": _ok("deployments"), "400": _error("bad query")},
                        parameters=[
                            {"name": "limit", "in": "query", "schema": {
                                "type": "integer", "minimum": 1, "maximum": 1000}},
                            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                            {"name": "state", "in": "query", "schema": {
                                "enum": ["active", "idle"]}}]),
    },
    "/v1/deployments/{name}": {
        "parameters": [NAME],
        "get": _control("status: replicas, queue, limits, keep-alive",
                        {"200": _ok("status"), "404": _error("no such deployment")}),
        "delete": _control("delete; buffered requests are answered 404",
                           {"200": _ok("deleted"), "404": _error("no such deployment")}),
        "patch": _control("change invoke access without a redeploy", {
            "200": _ok("new access"), "400": _error("bad body"),
            "404": _error("no such deployment"),
            "409": _error("redeployed or deleted meanwhile; retry")},
            requestBody={"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["access"], "additionalProperties": False,
                "properties": {"access": {"enum": list(ACCESS_MODES)}}}}}}),
    },
    "/v1/deployments/{name}/events": {
        "parameters": [NAME],
        "get": _control("scaling decisions with their reasons, newest first", {
            "200": _ok("events"), "400": _error("bad limit"), "404": _error("no such deployment")},
            parameters=[{"name": "limit", "in": "query", "schema": {
                "type": "integer", "minimum": 1, "maximum": 1000}}]),
    },
    "/v1/deployments/{name}/logs": {
        "parameters": [NAME],
        "get": _control("replica output lines", {
            "200": _ok("lines"), "400": _error("bad query"), "404": _error("no such deployment")},
            parameters=[
                {"name": "after", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": 5000}},
                {"name": "wait_ms", "in": "query", "schema": {
                    "type": "integer", "minimum": 0, "maximum": 30000}}]),
    },
    "/v1/deployments/{name}/keys": {
        "parameters": [NAME],
        "post": _control("create an invoke key (shown once, only its hash is kept)", {
            "201": _ok("the new key", {"$ref": "#/components/schemas/NewKey"}),
            "400": _error("bad body, or too many keys"), "404": _error("no such deployment")},
            requestBody={"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"label": {"type": "string", "maxLength": 200}}}}}}),
        "get": _control("list invoke keys (ids and labels, never the keys)", {
            "200": _ok("keys"), "404": _error("no such deployment")}),
    },
    "/v1/deployments/{name}/versions": {
        "parameters": [NAME],
        "get": _control("kept versions, newest first: digests, spec, who, when, origin", {
            "200": _ok("versions"), "404": _error("no such deployment")}),
    },
    "/v1/deployments/{name}/rollback": {
        "parameters": [NAME],
        "post": _control("deploy a kept version again as a new version (no upload)", {
            "200": _ok("the new version, from and to"), "400": _error("bad body"),
            "404": _error("no such deployment or version"),
            "409": _error("that version is the current one")},
            requestBody={"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"to": {"type": "integer", "minimum": 1}}}}}}),
    },
    "/v1/secrets": {
        "get": _control("list secrets: names, key names and when set (never values)", {
            "200": _ok("secrets")}),
    },
    "/v1/secrets/{name}": {
        "parameters": [{**NAME, "description": "secret name"}],
        "put": _control("create or replace a secret; replicas get it at their next start", {
            "200": _ok("names of its keys"), "400": _error("bad body (never echoes a value)")},
            requestBody={"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["values"], "additionalProperties": False,
                "properties": {"values": {"type": "object", "minProperties": 1,
                                          "additionalProperties": {"type": "string"}}}}}}}),
        "delete": _control("remove a secret", {
            "200": _ok("removed"), "404": _error("no such secret"),
            "409": _error("an endpoint uses it")}),
    },
    "/v1/deployments/{name}/keys/{key_id}": {
        "parameters": [NAME, {"name": "key_id", "in": "path", "required": True,
                              "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}}],
        "delete": _control("revoke an invoke key (refused within about a second)", {
            "200": _ok("revoked"), "404": _error("no such key")}),
    },
    "/v1/deployments/{name}/series": {
        "parameters": [NAME],
        "get": _control("the dashboard's charts: req/s, p50/p99, replicas, queue, utilization "
                        "and learned limit over a window, with that window's decisions", {
                            "200": _ok("columns (one list per series, t in epoch seconds), "
                                       "step_s, targets and events"),
                            "400": _error("bad window"), "404": _error("no such deployment")},
                        parameters=[{"name": "window", "in": "query",
                                     "schema": {"enum": ["10m", "1h", "24h"]}}]),
    },
    "/v1/hosts": {"get": _control("live host agents and their capacity",
                                  {"200": _ok("hosts")})},
    "/v1/ui/login-links": {"post": _control(
        "a one-time dashboard sign-in link (works once, for 60 s); the token only", {
            "201": _ok("path (relative to the platform) and expires_in_s"),
            "403": _error("asked with a dashboard session instead of the token")},
        security=[{"token": []}])},
    "/v1/blobs/missing": {"post": _control(
        "which of these blobs the blob store lacks (upload only those)", {
            "200": _ok("missing digests and the blob size limit"), "400": _error("bad body"),
            "413": _error("a blob over the blob size limit")},
        requestBody={"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["blobs"], "properties": {"blobs": {
                "type": "array", "items": {"$ref": "#/components/schemas/BlobRef"}}}}}}})},
    "/v1/blobs/{sha256}": {
        "parameters": [SHA256_PARAM],
        "put": _control("upload a blob (streamed; kept only if its SHA-256 is the name)", {
            "200": _ok("already stored"), "201": _ok("stored"),
            "400": _error("digest mismatch"), "404": _error("not a SHA-256 digest"),
            "413": _error("over the blob size limit")},
            requestBody={"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}})},
    "/v1/host/blobs/{sha256}": {
        "parameters": [SHA256_PARAM],
        "get": {"summary": "a blob, for host agents", "tags": ["hosts"],
                "security": [{"hostToken": []}], "responses": {
                    "200": {"description": "the bytes", "content": {"application/octet-stream": {
                        "schema": {"type": "string", "format": "binary"}}}},
                    "401": _error("not the host token"), "404": _error("no such blob")}}},
    "/v1/platforms": {"get": _control("platform instances, the shards each scales, and the "
                                      "latest takeovers", {"200": _ok("instances")})},
}

_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
_PAGE = {"get": {"summary": "dashboard page (the sign-in page, 401, without a session)",
                 "tags": ["dashboard"], "security": [{"session": []}], "responses": {
                     "200": {"description": "the page", **_HTML},
                     "401": {"description": "the sign-in page", **_HTML}}}}
UI_PATHS: dict[str, Any] = {
    "/": {"get": {"summary": "redirect to the dashboard", "tags": ["dashboard"],
                  "security": [], "responses": {"302": {"description": "to /ui/"}}}},
    "/ui": {"get": {"summary": "redirect to /ui/", "tags": ["dashboard"], "security": [],
                    "responses": {"302": {"description": "to /ui/"}}}},
    "/ui/": _PAGE, "/ui/hosts": _PAGE,
    "/ui/endpoints/{name}": {"parameters": [NAME], **_PAGE},
    "/ui/login": {"get": {
        "summary": "redeem a one-time link: set the session cookie, go to /ui/",
        "tags": ["dashboard"], "security": [],
        "parameters": [{"name": "code", "in": "query", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "signed in (Set-Cookie); the page goes on to /ui/",
                              **_HTML},
                      "401": {"description": "used or expired link: the sign-in page",
                              **_HTML}}}},
    "/ui/logout": {"post": {
        "summary": "end the session", "tags": ["dashboard"], "security": [{"session": []}],
        "parameters": [{"name": "X-Lowtide-CSRF", "in": "header", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"204": {"description": "signed out"},
                      "403": _error("missing CSRF token or foreign Origin")}}},
}

def _method_path(call: dict[str, Any]) -> dict[str, Any]:
    """POST /fn/{name}/{method}: as POST /fn/{name}, for a class deployment's method."""
    post = {**call["post"], "summary": "call a public method of a class deployment",
            "responses": {**call["post"]["responses"], "404": _error(
                "no such endpoint, or no such method (the detail lists the methods)")}}
    method = {"name": "method", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]*$"}}
    return {"parameters": [NAME, method], "post": post}


INVOKE_PATHS: dict[str, Any] = {
    "/fn/{name}": {
        "parameters": [NAME],
        "post": {
            "summary": "call the function (a class deployment: its __call__)", **INVOKE,
            "security": [{}, {"invokeKey": []}],
            "parameters": [
                {"name": "async", "in": "query", "schema": {"enum": ["1", "true", "yes"]},
                 "description": "answer 202 with a request id at once"},
                {"name": TIMEOUT_HEADER, "in": "header", "schema": {
                    "type": "number", "exclusiveMinimum": 0},
                 "description": "seconds the function may run, at most the endpoint's timeout"}],
            "requestBody": {"content": {
                "application/json": {"schema": {}, "description": (
                    f"an object is the keyword arguments, any other value the one argument; "
                    f"at most {MAX_JSON_DEPTH} levels deep")},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {
                "200": {"description": "the function's result", "content": {
                    "application/json": {"schema": {}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                "202": _ok("accepted (async=1)", {"type": "object", "properties": {
                    "id": {"type": "string"}, "status_url": {"type": "string"}}}),
                "400": _error("malformed JSON, too deep, arguments do not fit, bad header"),
                **AUTH_ERRORS,
                "404": _error("no such endpoint, or a class without __call__"),
                "413": _error("body over the limit"),
                "415": _error("content type other than JSON or octet-stream"),
                "429": _error("the endpoint's queue is full (Retry-After)"),
                "500": _error("the function raised: `type`, the message in `detail`, "
                              "`traceback` (the user's frames, at most 8000 characters)"),
                "503": _error("Redis unreachable, or the endpoint's replicas cannot start "
                              "(`startup failed` / `cannot be placed`, with `reason`; "
                              "Retry-After)"),
                "504": _error("deadline exceeded"),
            },
        },
    },
    "/fn/{name}/{method}": {},  # filled in below
    "/requests/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}],
        "get": {
            "summary": "the stored answer of an async or buffered request", **INVOKE,
            "security": [{}, {"invokeKey": []}],
            "responses": {"200": {"description": "the answer (any status the call had)"},
                          "202": _ok("pending (Retry-After)"), **AUTH_ERRORS,
                          "404": _error("unknown or expired id"),
                          "503": _error("Redis unreachable")},
        },
    },
}

COMPONENTS = {
    "securitySchemes": {
        "token": {"type": "http", "scheme": "bearer",
                  "description": "the control-plane token (`lowtide up` writes it)"},
        "session": {"type": "apiKey", "in": "cookie", "name": "lowtide_session",
                    "description": "a dashboard session (`lowtide dashboard`); the control "
                    "plane's GETs take it too, other methods also need X-Lowtide-CSRF"},
        "hostToken": {"type": "http", "scheme": "bearer",
                      "description": "the host agents' token (in Redis, written by the "
                      "platform)"},
        "invokeKey": {"type": "http", "scheme": "bearer", "description": (
            f"an invoke key of the endpoint ({KEY_PATTERN.pattern}); only for endpoints whose "
            "access is 'key'")},
    },
    "schemas": {
        "Error": {"type": "object", "required": ["error", "detail"], "properties": {
            "error": {"type": "string"}, "detail": {"type": "string"}}},
        "Spec": {"type": "object", "required": ["name"], "additionalProperties": False,
                 "properties": {
                     "name": {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"},
                     "cpu": {"type": "number", "exclusiveMinimum": 0, "maximum": 512},
                     "memory_bytes": {"type": "integer", "minimum": 1},
                     "gpu": {"type": "integer", "minimum": 0, "maximum": 16},
                     "gpu_memory_bytes": {"type": "integer", "minimum": 0,
                                          "description": "memory each assigned GPU must "
                                          "have; 0: any; needs gpu >= 1"},
                     "requirements": {
                         "type": "array", "maxItems": MAX_REQUIREMENTS, "items": {
                             "type": "string", "minLength": 1,
                             "maxLength": MAX_REQUIREMENT_CHARS},
                         "description": "PEP 508 requirements of packages on the index, e.g. "
                         "'numpy>=1.24': no pip options, no URLs or paths"},
                     "min_replicas": {"type": "integer", "minimum": 0, "maximum": 1000},
                     "max_replicas": {"type": ["integer", "null"], "minimum": 1,
                                      "maximum": 1000,
                                      "description": "null, or at least min_replicas"},
                     "timeout_s": {"type": "number", "exclusiveMinimum": 0,
                                   "maximum": MAX_TIMEOUT_S},
                     "python": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+$",
                                "description": "must be the workers' Python minor version"},
                     "params": {"type": ["array", "null"], "items": {"type": "string"}},
                     "access": {"enum": list(ACCESS_MODES)},
                     "models": {"type": "array", "maxItems": MAX_MODELS,
                                "items": {"type": "string"},
                                "description": "BentoML model tags 'name:version'"},
                     "env": {"type": "object", "additionalProperties": {"type": "string"},
                             "description": "environment variables of the replicas"},
                     "secrets": {"type": "array", "items": {"type": "string"},
                                 "description": "names of secrets (PUT /v1/secrets/{name})"},
                     "packages": {
                         "type": "array", "maxItems": MAX_PACKAGES,
                         "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                         "description": "installed top-level packages the code references "
                         "(the SDK fills it in): prewarmed workers import them ahead"},
                     "methods": {
                         "type": ["object", "null"], "additionalProperties": {
                             "type": ["array", "null"], "items": {"type": "string"}},
                         "description": "a class deployment: its public methods (and "
                         "__call__) -> their parameter names; null for a function"}}},
        "BlobRef": {"type": "object", "required": ["sha256", "size"], "properties": {
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "size": {"type": "integer", "minimum": 0}}},
        "Manifest": {"type": "object", "required": ["artifact"], "properties": {
            "artifact": {"$ref": "#/components/schemas/BlobRef"},
            "models": {"type": "array", "items": {"type": "object", "properties": {
                "tag": {"type": "string"}, "files": {"type": "array", "items": {
                    "type": "object", "properties": {"path": {"type": "string"},
                                                     "sha256": {"type": "string"},
                                                     "size": {"type": "integer"}}}}}}}}},
        "NewKey": {"type": "object", "properties": {
            "id": {"type": "string"}, "key": {"type": "string", "description": "shown once"},
            "label": {"type": "string"}, "created_at": {"type": "number"},
            "endpoint": {"type": "string"}, "access": {"enum": list(ACCESS_MODES)},
            "note": {"type": "string"}}},
    },
}


INVOKE_PATHS["/fn/{name}/{method}"] = _method_path(INVOKE_PATHS["/fn/{name}"])


def document(component: str = "platform") -> dict[str, Any]:
    """The platform's document (both APIs) or the activator's (its part)."""
    paths = ({**CONTROL_PATHS, **INVOKE_PATHS, **UI_PATHS} if component == "platform"
             else dict(INVOKE_PATHS))
    return {
        "openapi": "3.1.0",
        "info": {"title": f"lowtide {component}", "version": "1",
                 "description": "Errors are JSON {error, detail}; see README.md, HTTP."},
        "paths": {**paths, **COMMON},
        "components": COMPONENTS,
    }


def add_openapi_route(app: web.Application, component: str = "platform") -> None:
    body = json.dumps(document(component))

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
