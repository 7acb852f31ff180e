"""Auth and input bounds over real HTTP with a real Redis.

Most tests run the real platform and activator apps in this process (tests/_apps.py: no
agent, an echo server as the ready replica), so every rule is checked in well under a
second; the last tests go through a real `lowtide up` cluster with a BentoML replica.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from redis import Redis

import lowtide
from lowtide import Client, _keys
from lowtide._auth import KEY_PATTERN, token_digest
from lowtide._protocol import MAX_JSON_DEPTH
from lowtide.platform import state
from tests._apps import Apps
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

MAX_BODY = 64 * 1024
MAX_QUEUED = 3


@pytest.fixture(scope="module")
def apps(own_redis_url: str) -> Iterator[Apps]:
    running = Apps(own_redis_url, activator_options={
        "max_body_bytes": MAX_BODY, "max_queued": MAX_QUEUED, "max_queue_wait_s": 1.0}).start()
    yield running
    running.stop()


@pytest.fixture
def own_redis(own_redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(own_redis_url)
    yield client
    client.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"a{abs(hash(request.node.name)) % 10**9}-{time.monotonic_ns() % 10**6}"


def deployed(apps: Apps, name: str, **spec: object) -> str:
    spec.setdefault("timeout_s", 3)  # a call that finds no replica is answered 504 in ~6 s
    r = apps.deploy(name, **spec)
    assert r.status_code == 201, r.text
    return name


def invoke(apps: Apps, name: str, key: str | None = None, **kw: object) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))  # type: ignore[call-overload]
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    kw.setdefault("json", {"x": 1})
    return httpx.post(f"{apps.activator_url}/fn/{name}", headers=headers, timeout=10, **kw)


def altered(key: str) -> str:
    """The key with its last character changed: well formed, not valid."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


def create_key(apps: Apps, name: str, label: str = "") -> dict:
    r = apps.api("POST", f"/v1/deployments/{name}/keys", json={"label": label})
    assert r.status_code == 201, r.text
    return r.json()


# ---- control plane: the token ---------------------------------------------------------
@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b"])
def test_control_plane_without_a_bearer_token_is_401(apps: Apps, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/v1/deployments"), ("POST", "/v1/deployments"),
                         ("GET", "/v1/hosts"), ("DELETE", "/v1/deployments/x"),
                         ("GET", "/v1/nothing-here"), ("GET", "/nothing-here")]:
        r = httpx.request(method, apps.platform_url + path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert set(r.json()) >= {"error", "detail"}


def test_control_plane_with_a_wrong_token_is_403_and_not_echoed(apps: Apps) -> None:
    wrong = "wrong-token-that-must-not-be-echoed"
    r = httpx.get(apps.platform_url + "/v1/deployments",
                  headers={"Authorization": f"Bearer {wrong}"})
    assert r.status_code == 403
    assert wrong not in r.text and apps.token not in r.text


def test_control_plane_with_the_token_and_open_paths_without(apps: Apps) -> None:
    assert apps.api("GET", "/v1/deployments").status_code == 200
    assert apps.api("GET", "/v1/nothing-here").status_code == 404
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert httpx.get(apps.platform_url + path).status_code == 200, path
        assert httpx.get(apps.activator_url + path).status_code == 200, path
    doc = httpx.get(apps.platform_url + "/openapi.json").json()
    assert "/v1/deployments/{name}/keys" in doc["paths"] and "/fn/{name}" in doc["paths"]


# ---- invoke keys ----------------------------------------------------------------------
def test_public_endpoint_needs_no_credentials(apps: Apps, name: str) -> None:
    deployed(apps, name)
    apps.add_replica(name)
    for headers in ({}, {"Authorization": "garbage"}, {"Authorization": "Bearer lt_x"}):
        r = wait_for(lambda h=headers: (r := invoke(apps, name, headers=h)).status_code == 200
                     and r, 5, "the public endpoint to answer")
        assert r.json() == {"x": 1}  # type: ignore[union-attr]


def test_key_endpoint_401_403_and_200(apps: Apps, name: str) -> None:
    deployed(apps, name, access="key")
    other = deployed(apps, name + "-other", access="key")
    apps.add_replica(name)
    key = create_key(apps, name, "ci")["key"]
    other_key = create_key(apps, other)["key"]

    r = invoke(apps, name)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="lowtide"'
    assert f"lowtide keys create {name}" in r.json()["detail"]
    for bad in ("garbage", key + "x", key[:-1]):
        r = invoke(apps, name, bad)
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert bad not in r.text
    r = invoke(apps, name, headers={"Authorization": f"Basic {key}"})
    assert r.status_code == 401
    r = invoke(apps, name, other_key)  # valid in form, another endpoint's
    assert r.status_code == 403 and other_key not in r.text
    r = wait_for(lambda: (r := invoke(apps, name, key)).status_code == 200 and r, 5,
                 "the key to be accepted")
    assert r.json() == {"x": 1}  # type: ignore[union-attr]


def test_keys_are_shown_once_and_stored_hashed(apps: Apps, name: str, own_redis: Redis
                                               ) -> None:
    redis = own_redis
    deployed(apps, name, access="key")
    info = create_key(apps, name, "laptop")
    assert KEY_PATTERN.fullmatch(info["key"]) and info["label"] == "laptop"
    stored = redis.hgetall(_keys.invoke_keys(name))
    assert list(stored) == [info["id"].encode()]
    record = json.loads(stored[info["id"].encode()])
    secret = info["key"].split("_", 2)[2]
    assert secret not in json.dumps(record) and info["key"] not in json.dumps(record)
    listed = apps.api("GET", f"/v1/deployments/{name}/keys").json()["keys"]
    assert [(k["id"], k["label"]) for k in listed] == [(info["id"], "laptop")]
    assert secret not in json.dumps(listed)


def test_key_api_refusals(apps: Apps, name: str) -> None:
    deployed(apps, name, access="key")
    base = f"/v1/deployments/{name}/keys"
    assert apps.api("POST", "/v1/deployments/never-deployed/keys").status_code == 404
    assert apps.api("GET", "/v1/deployments/never-deployed/keys").status_code == 404
    assert apps.api("POST", base, json={"label": "x" * 201}).status_code == 400
    assert apps.api("POST", base, json={"label": 3}).status_code == 400
    assert apps.api("POST", base, json={"other": 1}).status_code == 400
    assert apps.api("POST", base, content=b"[1]").status_code == 400
    assert apps.api("POST", base, content=b"{nope").status_code == 400
    assert apps.api("POST", base, content=b"[" * 100_000).status_code == 400
    assert apps.api("POST", base).status_code == 201  # no body: no label
    assert apps.api("DELETE", f"{base}/000000000000").status_code == 404
    assert apps.api("DELETE", f"{base}/..%2F..").status_code == 404
    assert apps.api("DELETE", f"{base}/not-an-id").status_code == 404


def test_revocation_takes_effect_within_about_a_second(apps: Apps, name: str) -> None:
    deployed(apps, name, access="key")
    apps.add_replica(name)
    info = create_key(apps, name)
    wait_for(lambda: invoke(apps, name, info["key"]).status_code == 200, 5, "the key to work")
    r = apps.api("DELETE", f"/v1/deployments/{name}/keys/{info['id']}")
    assert r.status_code == 200
    started = time.monotonic()
    wait_for(lambda: invoke(apps, name, info["key"]).status_code == 403, 1.5,
             "the revoked key to be refused")
    assert time.monotonic() - started < 1.5
    assert apps.api("DELETE", f"/v1/deployments/{name}/keys/{info['id']}").status_code == 404


def test_access_changes_without_a_redeploy(apps: Apps, name: str) -> None:
    deployed(apps, name)
    apps.add_replica(name)
    wait_for(lambda: invoke(apps, name).status_code == 200, 5, "the public endpoint")
    assert apps.api("PATCH", f"/v1/deployments/{name}", json={"access": "key"}).json() == {
        "name": name, "access": "key"}
    wait_for(lambda: invoke(apps, name).status_code == 401, 1.5, "access 'key' to apply")
    apps.api("PATCH", f"/v1/deployments/{name}", json={"access": "public"})
    wait_for(lambda: invoke(apps, name).status_code == 200, 1.5, "access 'public' to apply")
    for body in ({"access": "private"}, {}, {"access": "key", "cpu": 2}):
        assert apps.api("PATCH", f"/v1/deployments/{name}", json=body).status_code == 400
    assert apps.api("PATCH", "/v1/deployments/never-deployed",
                    json={"access": "key"}).status_code == 404


def test_access_change_racing_a_redeploy_is_409(apps: Apps, name: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    deployed(apps, name)
    real = state.load_deployment

    async def read_then_redeploy(redis, dep_name):  # type: ignore[no-untyped-def]
        dep = await real(redis, dep_name)
        await redis.hincrby(_keys.deployment(dep_name), "version", 1)  # a deploy lands now
        return dep

    monkeypatch.setattr(state, "load_deployment", read_then_redeploy)
    r = apps.api("PATCH", f"/v1/deployments/{name}", json={"access": "key"})
    assert r.status_code == 409 and "retry" in r.json()["detail"]


def test_a_deleted_endpoints_keys_do_not_open_its_namesake(apps: Apps, name: str) -> None:
    deployed(apps, name, access="key")
    key = create_key(apps, name)["key"]
    assert apps.api("DELETE", f"/v1/deployments/{name}").status_code == 200
    deployed(apps, name, access="key")
    wait_for(lambda: invoke(apps, name, key, params={"async": "1"}).status_code == 403, 2,
             "the old key to be refused")


def test_async_results_of_a_key_endpoint_need_its_key(apps: Apps, name: str) -> None:
    deployed(apps, name, access="key")
    key = create_key(apps, name)["key"]
    r = wait_for(lambda: (r := invoke(apps, name, key, params={"async": "1"})).status_code
                 == 202 and r, 5, "the async call to be accepted")
    status_url = r.json()["status_url"]  # type: ignore[union-attr]
    r = httpx.get(status_url)
    assert r.status_code == 401, r.text
    assert httpx.get(status_url, headers={"Authorization": f"Bearer {altered(key)}"}
                     ).status_code == 403
    assert httpx.get(status_url, headers={"Authorization": f"Bearer {key}"}).status_code == 202


def test_warm_key_checks_make_no_redis_command_per_request(apps: Apps, name: str,
                                                           own_redis: Redis) -> None:
    redis = own_redis
    deployed(apps, name, access="key")
    apps.add_replica(name)
    key = create_key(apps, name)["key"]
    wait_for(lambda: invoke(apps, name, key).status_code == 200, 5, "the warm path")
    n = 60

    def commands() -> int:
        return int(redis.info("stats")["total_commands_processed"])

    before, t0 = commands(), time.monotonic()
    with httpx.Client(timeout=10) as http:
        for _ in range(n):
            r = http.post(f"{apps.activator_url}/fn/{name}", json={"x": 1},
                          headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
    used, took = commands() - before, time.monotonic() - t0
    # the background (heartbeats, stats flushes, resyncs) over as long, without requests: on
    # a loaded machine the calls take seconds, and the background a few commands a second
    before = commands()
    time.sleep(took)
    background = commands() - before
    assert used - background < n // 2, (used, background)


def test_tokens_and_keys_never_reach_logs_or_bodies(apps: Apps, name: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    deployed(apps, name, access="key")
    apps.add_replica(name)
    key = create_key(apps, name)["key"]
    wrong_token = "Wr0ng-" + apps.token
    bodies = [
        httpx.get(apps.platform_url + "/v1/deployments",
                  headers={"Authorization": f"Bearer {wrong_token}"}).text,
        apps.api("GET", f"/v1/deployments/{name}").text,
        apps.api("GET", f"/v1/deployments/{name}/keys").text,
        invoke(apps, name, key + "x").text, invoke(apps, name, altered(key)).text,
        invoke(apps, name, key, headers={TIMEOUT: "nope"}).text,
        invoke(apps, name, key, content=b"{bad", headers={"content-type": "application/json"}
               ).text,
        httpx.get(f"{apps.activator_url}/requests/{'0' * 32}",
                  headers={"Authorization": f"Bearer {key}"}).text,
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (apps.token, wrong_token, key, key.split("_", 2)[2]):
        assert all(secret not in b for b in bodies), secret
        assert secret not in logged


# ---- bounds -----------------------------------------------------------------------------
TIMEOUT = "X-Lowtide-Timeout"


@pytest.mark.parametrize("path", [
    "/fn/..%2Fetc", "/fn/%2e%2e", "/fn/..", "/fn/Double", "/fn/d%C3%B3uble", "/fn/a%00b",
    "/fn/a%20b", "/fn/" + "a" * 64, "/fn/-a", "/fn/a%0A", "/fn/%E2%80%AEabc", "/fn/1abc",
    "/fn/a/b", "/fn/", "/fn//x",
])
def test_strange_endpoint_names_are_404(apps: Apps, path: str) -> None:
    r = httpx.post(apps.activator_url + path, json={})
    assert r.status_code in (404, 405), r.text  # 405: a path with no POST route at all
    r = apps.api("GET", path.replace("/fn/", "/v1/deployments/"))
    assert r.status_code == 404, (path, r.text)


@pytest.mark.parametrize("name", ["../x", "..", "A", "a_b", "a/b", "\u0430bc", "a\n", "", "-a"])
def test_strange_names_are_refused_at_deploy(apps: Apps, name: str) -> None:
    r = apps.deploy(name)
    assert r.status_code == 400 and "name" in r.json()["detail"]


@pytest.mark.parametrize(("spec", "words"), [
    ({"requirements": ["--index-url=https://evil.example/simple"]}, "pip option"),
    ({"requirements": ["pkg @ https://evil.example/pkg.whl"]}, "URL"),
    ({"requirements": ["git+https://github.com/x/y"]}, "PEP 508"),
    ({"requirements": ["numpy\n-e ."]}, "PEP 508"),
    ({"requirements": [f"p{i}" for i in range(101)]}, "at most"),
    ({"cpu": -1}, "cpu"), ({"cpu": "lots"}, "cpu"), ({"memory_bytes": 0}, "memory"),
    ({"gpu": 99}, "gpu"), ({"timeout_s": 0}, "timeout"), ({"access": "private"}, "access"),
    ({"python": "2.7"}, "2.7"), ({"replicas": 3}, "unknown field"),
])
def test_bad_specs_are_400_naming_the_field(apps: Apps, name: str, spec: dict,
                                            words: str) -> None:
    r = apps.deploy(name, **spec)
    assert r.status_code == 400, r.text
    assert words in r.json()["detail"]


def test_python_mismatch_names_both_versions(apps: Apps, name: str) -> None:
    r = apps.deploy(name, python="2.7")
    detail = r.json()["detail"]
    assert r.status_code == 400
    assert "2.7" in detail and f"{sys.version_info.major}.{sys.version_info.minor}" in detail


def test_json_depth_and_body_size(apps: Apps, name: str) -> None:
    deployed(apps, name)
    apps.add_replica(name)
    wait_for(lambda: invoke(apps, name).status_code == 200, 5, "the warm path")
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert invoke(apps, name, content=ok, headers={"content-type": "application/json"}
                  ).status_code == 200
    for deep in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "[" * 60_000):
        r = invoke(apps, name, content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "deeper" in r.json()["detail"]
    r = invoke(apps, name, content=b"0" * (MAX_BODY + 1),
               headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "-inf", "1e309", "61",
                                   "", "1,5", "0x10"])
def test_bad_deadline_headers_are_400(apps: Apps, name: str, value: str) -> None:
    deployed(apps, name, timeout_s=60)
    r = invoke(apps, name, headers={TIMEOUT: value}, params={"async": "1"})
    assert r.status_code == 400, r.text
    assert TIMEOUT in r.json()["detail"]


def test_good_deadline_header_is_taken(apps: Apps, name: str) -> None:
    deployed(apps, name, timeout_s=60)
    assert invoke(apps, name, headers={TIMEOUT: "59.5"}, params={"async": "1"}
                  ).status_code == 202


def test_queue_length_bound_is_429_with_retry_after(apps: Apps, name: str,
                                                    own_redis: Redis) -> None:
    redis = own_redis
    deployed(apps, name)  # no replica: everything is buffered
    accepted = [invoke(apps, name, params={"async": "1"}).status_code for _ in range(MAX_QUEUED)]
    assert accepted == [202] * MAX_QUEUED
    r = invoke(apps, name, params={"async": "1"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert str(MAX_QUEUED) in r.json()["detail"]
    assert redis.xlen(_keys.stream(name)) == MAX_QUEUED  # the refused one was not buffered
    redis.xtrim(_keys.stream(name), maxlen=0)  # drained (as replicas would)
    wait_for(lambda: invoke(apps, name, params={"async": "1"}).status_code == 202, 5,
             "the bound to follow the drained queue")


def test_content_type_and_malformed_json(apps: Apps, name: str) -> None:
    deployed(apps, name)
    r = invoke(apps, name, content=b"<x/>", headers={"content-type": "text/xml"})
    assert r.status_code == 415
    r = invoke(apps, name, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]


# ---- through a real cluster (lowtide up, BentoML replica) ------------------------------
def test_key_protected_endpoint_end_to_end(cluster, client: Client, unique_name: str) -> None:
    ep = client.deploy(lambda x: x * 3, name=unique_name, access="key")
    with pytest.raises(lowtide.AuthError) as info:
        ep(2)
    assert info.value.status == 401
    key = ep.create_key("e2e")
    assert ep(2) == 6
    assert ep.submit(3).result(timeout=60) == 9
    other = client.get(unique_name, key=altered(key))
    with pytest.raises(lowtide.AuthError) as info:
        other(2)
    assert info.value.status == 403

    env = {"LOWTIDE_HOME": str(cluster.home), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "lowtide"]
    listed = subprocess.run([*cli, "keys", "ls", unique_name], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and "e2e" in listed.stdout and key not in listed.stdout
    made = subprocess.run([*cli, "keys", "create", unique_name, "--label", "cli"], env=env,
                          capture_output=True, text=True, timeout=60)
    cli_key = made.stdout.strip()
    assert made.returncode == 0 and KEY_PATTERN.fullmatch(cli_key), made.stderr
    called = subprocess.run([*cli, "invoke", unique_name, '{"x": 5}', "--key", cli_key],
                            env=env, capture_output=True, text=True, timeout=120)
    assert called.returncode == 0 and called.stdout.strip() == "15", called.stderr
    kid = KEY_PATTERN.fullmatch(cli_key).group(1)  # type: ignore[union-attr]
    revoked = subprocess.run([*cli, "keys", "revoke", unique_name, kid], env=env,
                             capture_output=True, text=True, timeout=60)
    assert revoked.returncode == 0, revoked.stderr
    refused = client.get(unique_name, key=cli_key)
    wait_for(lambda: _refused(refused), 2, "the revoked key to be refused")

    log = cluster.log_path.read_text(errors="replace")
    for secret in (cluster.config.token, key, cli_key):
        assert secret not in log
    ep.delete()


def test_no_component_or_replica_holds_the_token(cluster, client: Client,
                                                 unique_name: str) -> None:
    """`lowtide up` gives the platform only the token's digest, and nothing else the token."""
    ep = client.deploy(lambda x: x, name=unique_name)
    assert ep(1) == 1  # a replica runs now
    token = cluster.config.token
    seen = []
    for proc in psutil.Process(cluster.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            env, cmdline = proc.environ(), " ".join(proc.cmdline())
            seen.append(cmdline)
            assert token not in cmdline and token not in "\n".join(env.values()), cmdline
            if " platform" in cmdline:
                assert env.get("LOWTIDE_TOKEN_SHA256") == token_digest(token)
    assert any(" platform" in c for c in seen) and len(seen) >= 4, seen
    ep.delete()


def _refused(ep: lowtide.Endpoint) -> bool:
    try:
        ep(1)
    except lowtide.AuthError as exc:
        return exc.status == 403
    return False
