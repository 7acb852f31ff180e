"""The hand-written OpenAPI document stays true: every route of the platform's and the
activator's aiohttp apps is in it with its method, and it names no route that does not exist."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from redis import Redis as SyncRedis

from lowtide._auth import token_digest
from lowtide._redis import async_redis
from lowtide.activator.app import Activator
from lowtide.activator.app import build_app as build_activator
from lowtide.activator.settings import ActivatorSettings
from lowtide.openapi import document
from lowtide.platform.api import build_app as build_platform
from lowtide.platform.scaler import Scaler, ScalerSettings
from lowtide.platform.settings import PlatformSettings

# the apps keep their state under string keys (aiohttp recommends AppKey; not an error here)
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

URL = "redis://127.0.0.1:1/0"  # never connected: building the apps makes no Redis call
METHODS = {"get", "post", "put", "patch", "delete"}


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD" or path is None:  # aiohttp adds HEAD to every GET
            continue
        found.add((route.method.lower(), path))
    return found


def documented(doc: dict) -> set[tuple[str, str]]:
    return {(m, p) for p, item in doc["paths"].items() for m in item if m in METHODS}


async def apps() -> tuple[web.Application, web.Application]:
    redis = async_redis(URL)
    scaler = Scaler(redis, SyncRedis.from_url(URL), ScalerSettings())
    platform = build_platform(PlatformSettings(redis_url=URL, token_sha256=token_digest("t")),
                              redis, scaler)
    activator = build_activator(Activator(ActivatorSettings(redis_url=URL), redis))
    return platform, activator


async def test_every_platform_route_is_documented_and_nothing_else() -> None:
    platform, activator = await apps()
    doc = document("platform")
    assert routes_of(platform) | routes_of(activator) == documented(doc)


async def test_the_activator_documents_its_own_routes() -> None:
    _, activator = await apps()
    assert routes_of(activator) == documented(document("activator"))


@pytest.mark.parametrize("component", ["platform", "activator"])
def test_document_is_openapi_3_and_serializable(component: str) -> None:
    doc = json.loads(json.dumps(document(component)))
    assert doc["openapi"].startswith("3.")
    for path, item in doc["paths"].items():
        for param in item.get("parameters", []):
            if param["in"] == "path":
                assert "{" + param["name"] + "}" in path
        for method in METHODS & set(item):
            assert item[method]["responses"], (method, path)
            refs = json.dumps(item[method])
            for name in ("Error", "Spec", "NewKey"):
                if f"#/components/schemas/{name}" in refs:
                    assert name in doc["components"]["schemas"]


def test_control_plane_operations_need_the_token_or_a_session_and_health_does_not() -> None:
    doc = document("platform")
    for path, item in doc["paths"].items():
        for method in METHODS & set(item):
            op = item[method]
            if path == "/v1/ui/login-links":  # a session cannot make more sessions
                assert op["security"] == [{"token": []}]
            elif path.startswith("/v1/host/"):  # host agents' routes: the host token
                assert op["security"] == [{"hostToken": []}], (method, path)
            elif path.startswith("/v1/"):
                assert op["security"] == [{"token": []}, {"session": []}], (method, path)
                assert {"401", "403"} <= set(op["responses"])
            elif path in ("/healthz", "/metrics", "/openapi.json"):
                assert op["security"] == []


def test_the_spec_schema_names_every_spec_field() -> None:
    from dataclasses import fields

    from lowtide._spec import DeploymentSpec
    from lowtide.openapi import document

    schema = document()["components"]["schemas"]["Spec"]
    assert set(schema["properties"]) == {f.name for f in fields(DeploymentSpec)}
