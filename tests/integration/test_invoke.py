"""The whole path with real processes: deploy -> invoke URL -> buffered cold start on a
BentoML replica -> answers, errors, async calls."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx
import pytest

import lowtide
from lowtide import Client

pytestmark = pytest.mark.integration


def test_deploy_call_and_curl(client: Client, http: httpx.Client, unique_name: str) -> None:
    ep = client.deploy(lambda x: x * 2, name=unique_name)
    assert ep.url.endswith(f"/fn/{unique_name}")
    assert ep(21) == 42  # cold: buffered until the first replica is ready
    r = http.post(f"/fn/{unique_name}", json={"x": 21})
    assert (r.status_code, r.json()) == (200, 42)
    assert ep.call(x=5) == 10


def test_bytes_in_bytes_out(client: Client, http: httpx.Client, unique_name: str) -> None:
    ep = client.deploy(lambda data: bytes(reversed(data)), name=unique_name)
    assert ep(b"\x00abc\n") == b"\ncba\x00"
    r = http.post(f"/fn/{unique_name}", content=b"xyz",
                  headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/octet-stream")
    assert r.content == b"zyx"


async def test_200_concurrent_requests_to_a_cold_endpoint(
    client: Client, cluster, redis, unique_name: str
) -> None:
    def tag(x):
        return {"x": x, "double": x * 2}

    client.deploy(tag, name=unique_name, max_replicas=2)
    url = f"{cluster.config.activator_url}/fn/{unique_name}"

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, object]:
        async with session.post(url, json={"x": i}) as resp:
            return resp.status, await resp.json(content_type=None)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(200)))
    assert [status for status, _ in results] == [200] * 200, [b for s, b in results if s != 200][:3]
    assert [body for _, body in results] == [{"x": i, "double": 2 * i} for i in range(200)]
    # each answered once: nothing left in the buffer, nothing pending
    assert redis.xlen(f"lt:q:{unique_name}") == 0


def test_async_submit_and_result(client: Client, http: httpx.Client, unique_name: str) -> None:
    ep = client.deploy(lambda x: x + 1, name=unique_name)
    handles = [ep.submit(i) for i in range(5)]
    assert [h.result(timeout=90) for h in handles] == [1, 2, 3, 4, 5]
    r = http.post(f"/fn/{unique_name}?async=1", json={"x": 41})
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"id", "status_url"}
    assert body["status_url"].endswith(f"/requests/{body['id']}")
    deadline = time.monotonic() + 90
    while (got := http.get(f"/requests/{body['id']}")).status_code == 202:
        assert got.json()["status"] == "pending"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (got.status_code, got.json()) == (200, 42)
    assert http.get(f"/requests/{'0' * 32}").status_code == 404
    assert http.get("/requests/not-an-id").status_code == 404


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) >= {"error", "detail"}, body
    return body


def test_error_statuses(client: Client, http: httpx.Client, unique_name: str) -> None:
    def work(x, fail=False, sleep_s=0.0):
        import time as t

        if fail:
            raise ZeroDivisionError("asked to fail")
        t.sleep(sleep_s)
        return x

    ep = client.deploy(work, name=unique_name, timeout=3)
    assert ep(1) == 1  # warm it
    url = f"/fn/{unique_name}"

    r = http.post("/fn/no-such-endpoint", json={"x": 1})
    assert r.status_code == 404 and "no-such-endpoint" in _error(r)["detail"]
    r = http.post("/fn/..%2Fetc", json={})
    assert r.status_code == 404
    r = http.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in _error(r)["detail"]
    r = http.post(url, json={"y": 1})
    assert r.status_code == 400 and "'x'" in _error(r)["detail"]
    r = http.post(url, json={"x": 1, "fail": True})
    body = _error(r)
    assert r.status_code == 500
    assert body["type"] == "ZeroDivisionError" and "asked to fail" in body["detail"]
    r = http.post(url, json={"x": 1, "sleep_s": 10})
    assert r.status_code == 504 and _error(r)["error"] == "deadline exceeded"
    r = http.post(url, content=b"<x/>", headers={"content-type": "text/xml"})
    assert r.status_code == 415
    r = http.post(url, content=b"0" * (10 * 2**20 + 1), headers={"content-type":
                                                                 "application/octet-stream"})
    assert r.status_code == 413
    r = http.post(url, json={"x": 1}, headers={"X-Lowtide-Timeout": "abc"})
    assert r.status_code == 400

    with pytest.raises(lowtide.FunctionError) as info:
        ep(1, fail=True)
    assert info.value.exc_type == "ZeroDivisionError"
    with pytest.raises(lowtide.BadInput):
        ep(y=2)
    with pytest.raises(lowtide.DeadlineExceeded):
        ep(1, sleep_s=10)


def test_control_plane_needs_a_token(cluster, client: Client) -> None:
    base = cluster.config.platform_url
    r = httpx.get(f"{base}/v1/deployments")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = httpx.get(f"{base}/v1/deployments", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    assert cluster.config.token not in r.text
    assert httpx.get(f"{base}/healthz").status_code == 200
    with pytest.raises(lowtide.DeployError, match="name"):
        client.deploy(lambda x: x, name="Bad_Name")
    with pytest.raises(lowtide.DeployError, match="name"):
        client.deploy(lambda x: x)  # a lambda has no usable name
    with pytest.raises(lowtide.EndpointNotFound):
        client.status("never-deployed")


def test_python_version_mismatch_is_refused(cluster) -> None:
    spec = {"name": "wrong-python", "python": "2.7"}
    r = httpx.post(f"{cluster.config.platform_url}/v1/deployments",
                   headers={"Authorization": f"Bearer {cluster.config.token}"},
                   files={"spec": (None, json.dumps(spec), "application/json"),
                          "artifact": ("a", b"x", "application/octet-stream")})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "2.7" in detail and "3." in detail
