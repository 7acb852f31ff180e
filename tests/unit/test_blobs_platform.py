"""The platform's blob routes in process: what is missing, upload once, digest and size
bounds, and the host agents' fetch with the host token."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lowtide._http import errors_middleware
from lowtide.platform.blobs import (
    BlobCollector,
    FileBlobStore,
    add_blob_routes,
    store_inline,
    unreferenced,
)

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

LIMIT = 1024
DATA = b"weights" * 100
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
async def http(tmp_path: Path):  # type: ignore[no-untyped-def]
    app = web.Application(middlewares=[errors_middleware])
    app["host_token"] = "host-secret"
    add_blob_routes(app, FileBlobStore(tmp_path / "blobs"), LIMIT)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_a_blob_is_uploaded_once_and_then_not_missing(http: TestClient) -> None:
    query = {"blobs": [{"sha256": DIGEST, "size": len(DATA)}]}
    r = await http.post("/v1/blobs/missing", json=query)
    assert (await r.json())["missing"] == [DIGEST]
    r = await http.put(f"/v1/blobs/{DIGEST}", data=DATA)
    assert r.status == 201, await r.text()
    r = await http.put(f"/v1/blobs/{DIGEST}", data=DATA)
    assert r.status == 200 and (await r.json())["stored"] is False
    r = await http.post("/v1/blobs/missing", json=query)
    assert (await r.json()) == {"missing": [], "max_blob_bytes": LIMIT}


async def test_bytes_that_are_not_the_digest_are_refused(http: TestClient) -> None:
    r = await http.put(f"/v1/blobs/{DIGEST}", data=DATA + b"!")
    assert r.status == 400
    assert "refused" in (await r.json())["detail"]
    r = await http.post("/v1/blobs/missing",
                        json={"blobs": [{"sha256": DIGEST, "size": len(DATA)}]})
    assert (await r.json())["missing"] == [DIGEST]  # nothing was kept


async def test_over_the_blob_limit_is_413_before_and_during_the_upload(
        http: TestClient) -> None:
    big = b"x" * (LIMIT + 1)
    digest = hashlib.sha256(big).hexdigest()
    r = await http.post("/v1/blobs/missing", json={"blobs": [{"sha256": digest,
                                                              "size": len(big)}]})
    assert r.status == 413
    assert "over the blob limit of 1024 bytes" in (await r.json())["detail"]
    r = await http.put(f"/v1/blobs/{digest}", data=big)
    assert r.status == 413

    async def chunked():  # type: ignore[no-untyped-def]  # no Content-Length: counted
        yield big

    r = await http.put(f"/v1/blobs/{digest}", data=chunked())
    assert r.status == 413


async def test_hosts_fetch_with_the_host_token_only(http: TestClient) -> None:
    await http.put(f"/v1/blobs/{DIGEST}", data=DATA)
    r = await http.get(f"/v1/host/blobs/{DIGEST}")
    assert r.status == 401
    r = await http.get(f"/v1/host/blobs/{DIGEST}", headers={"Authorization": "Bearer nope"})
    assert r.status == 401
    auth = {"Authorization": "Bearer host-secret"}
    r = await http.get(f"/v1/host/blobs/{DIGEST}", headers=auth)
    assert r.status == 200 and await r.read() == DATA
    r = await http.get(f"/v1/host/blobs/{'0' * 64}", headers=auth)
    assert r.status == 404


async def test_bad_queries_are_400(http: TestClient) -> None:
    for body in ({}, {"blobs": [{"sha256": "abc", "size": 1}]},
                 {"blobs": [{"sha256": DIGEST, "size": -1}]}):
        r = await http.post("/v1/blobs/missing", json=body)
        assert r.status == 400, body
    r = await http.put("/v1/blobs/not-a-digest", data=b"x")
    assert r.status == 404


# ---- collection -----------------------------------------------------------------------
@pytest.mark.parametrize(("referenced", "now", "deleted"), [
    ({"a", "b"}, 5000.0, []),          # all named
    ({"a"}, 5000.0, ["b"]),            # b named by nothing, written long ago
    ({"a"}, 1500.0, []),               # ... but within the grace period: kept
    (set(), 5000.0, ["a", "b"]),
])
def test_unreferenced_blobs_go_after_a_grace_period(referenced: set[str], now: float,
                                                     deleted: list[str]) -> None:
    stored = [("a", 100.0), ("b", 1000.0)]
    assert unreferenced(stored, referenced, now, grace_s=600.0) == deleted


async def test_the_collector_keeps_what_manifests_name(tmp_path: Path, redis_url: str) -> None:
    from lowtide import _keys
    from lowtide._manifest import Manifest
    from lowtide._redis import async_redis

    store = FileBlobStore(tmp_path / "blobs")
    refs = {}
    for data in (b"kept", b"dropped", b"asked-for"):
        refs[data] = await store_inline(store, data, LIMIT)
    redis = async_redis(redis_url)
    key = _keys.artifact("gc-test", 1)
    await redis.set(key, Manifest(refs[b"kept"]).to_json())
    long_ago = time.time() - 7200.0  # every blob written past the grace period...
    async for digest, _, _ in store.list():
        path = store.local_path(digest)
        assert path is not None
        os.utime(path, (long_ago, long_ago))
    await store.touch(refs[b"asked-for"].sha256)  # ... but this one a deploy just asked for
    collector = BlobCollector(store, redis, grace_s=3600.0)
    assert await collector.collect_once() == [refs[b"dropped"].sha256]
    assert await store.size(refs[b"kept"].sha256) == 4
    assert await store.size(refs[b"asked-for"].sha256) == 9
    await redis.delete(key)
    await redis.aclose()
