"""Faults, one per test, on a cluster whose components are separate processes (Redis with
its append-only file, platform, activator, agent, BentoML replicas): each test kills or
restarts one part while requests are in the system and checks that every accepted request
is answered, with its own result (every payload is unique and every answer is checked)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from lowtide import Client
from lowtide._local import COMPONENTS, LocalComponents
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

KEEP_ALIVE_S = 30.0  # no scale to zero in the middle of a test


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalComponents]:
    cluster = LocalComponents(tmp_path_factory.mktemp("faults"), keep_alive_s=KEEP_ALIVE_S)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def healed(lc: LocalComponents) -> Iterator[None]:
    """Every test starts with every component up, whatever the previous one left."""
    if lc.redis_proc is None or lc.redis_proc.poll() is not None:
        lc.start_redis()
    else:
        lc.resume_redis()  # in case a test left it paused
    for name in COMPONENTS:
        if not lc.procs[name].running():
            lc.start_component(name)
    lc.wait_ready()
    yield


@pytest.fixture
def client(lc: LocalComponents) -> Iterator[Client]:
    with lc.client() as c:
        yield c


@pytest.fixture
def redis(lc: LocalComponents) -> Iterator[Redis]:
    r = Redis.from_url(lc.config.redis_url, socket_timeout=5)
    yield r
    r.close()


def _name(prefix: str) -> str:
    return f"f-{prefix}-{uuid.uuid4().hex[:6]}"


def tagged(payload: dict[str, Any]) -> dict[str, Any]:
    """The function the tests deploy: its answer names the request it belongs to."""
    import time as t

    log = payload.get("log")
    if log:  # each start of a run, for the at-least-once check
        with open(log, "a") as f:
            f.write(payload["id"] + "\n")
    t.sleep(float(payload.get("sleep", 0)))
    return {"id": payload["id"], "double": payload["n"] * 2}


def _payloads(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": uuid.uuid4().hex, "n": i, **extra} for i in range(n)]


def _check(payload: dict[str, Any], status: int, body: bytes) -> None:
    assert status == 200, (payload["id"], status, body[:300])
    assert json.loads(body) == {"id": payload["id"], "double": payload["n"] * 2}


class Calls:
    """Synchronous calls, each in its own thread; `join()` returns (status, body) per
    payload, or the exception that ended the call."""

    def __init__(self, url: str, payloads: list[dict[str, Any]], timeout_s: float = 150):
        self.results: dict[str, tuple[int, bytes] | Exception] = {}
        self.threads = [threading.Thread(target=self._one, args=(url, p, timeout_s))
                        for p in payloads]
        for t in self.threads:
            t.start()

    def _one(self, url: str, payload: dict[str, Any], timeout_s: float) -> None:
        try:
            r = httpx.post(url, json={"payload": payload}, timeout=timeout_s)
            self.results[payload["id"]] = (r.status_code, r.content)
        except Exception as exc:  # recorded; the test asserts on it
            self.results[payload["id"]] = exc

    def join(self) -> dict[str, tuple[int, bytes] | Exception]:
        for t in self.threads:
            t.join(200)
        return self.results


def _submit(lc: LocalComponents, name: str, payloads: list[dict[str, Any]]) -> dict[str, str]:
    """Async submits; payload id -> request id."""
    ids = {}
    with httpx.Client(base_url=lc.config.activator_url, timeout=30) as http:
        for p in payloads:
            r = http.post(f"/fn/{name}?async=1", json={"payload": p})
            assert r.status_code == 202, r.text
            ids[p["id"]] = r.json()["id"]
    return ids


def _fetch_all(lc: LocalComponents, payloads: list[dict[str, Any]], ids: dict[str, str],
               timeout_s: float = 120) -> None:
    """Every async request answered with its own result (pending ones polled)."""
    deadline = time.monotonic() + timeout_s
    left = {p["id"]: p for p in payloads}
    with httpx.Client(base_url=lc.config.activator_url, timeout=30) as http:
        while left:
            for pid, p in list(left.items()):
                r = http.get(f"/requests/{ids[pid]}")
                if r.status_code == 202:
                    continue
                _check(p, r.status_code, r.content)
                del left[pid]
            assert time.monotonic() < deadline, f"{len(left)} async request(s) unanswered"
            time.sleep(0.2)


def _busy_replica(client: Client, name: str) -> dict[str, Any] | None:
    for item in client.status(name)["replicas"]["items"]:
        if item["state"] == "ready" and item["in_flight"] > 0:
            return item
    return None


def _all_running(lc: LocalComponents) -> None:
    dead = {n: lc.log_tail(n) for n, p in lc.procs.items() if not p.running()}
    assert not dead, f"component(s) exited: {dead}"


# ---- replica ----------------------------------------------------------------------------
def test_replica_sigkill_mid_request_reruns_it_elsewhere(
    lc: LocalComponents, client: Client, redis: Redis, tmp_path: Path
) -> None:
    name = _name("replica")
    ep = client.deploy(tagged, name=name)
    runs = tmp_path / "runs.txt"
    payloads = _payloads(16, sleep=1.5, log=str(runs))
    calls = Calls(ep.url, payloads)
    victim = wait_for(lambda: _busy_replica(client, name), 90, "a replica running requests")
    record = json.loads(redis.hget(f"lt:rep:{name}", victim["id"]))
    os.killpg(os.getpgid(record["pid"]), signal.SIGKILL)  # the whole replica, mid-request
    results = calls.join()
    for p in payloads:
        got = results[p["id"]]
        assert not isinstance(got, Exception), got
        _check(p, *got)
    ran = runs.read_text().split()
    assert set(ran) == {p["id"] for p in payloads}
    # at least once: what the killed replica was running ran again elsewhere
    assert len(ran) > len(payloads), "no request was re-run after the replica died"
    reasons = [e["reason"] for e in client.events(name)]
    assert any(victim["id"] in r for r in reasons), reasons


# ---- activator --------------------------------------------------------------------------
def test_activator_sigkill_keeps_buffered_async_requests(
    lc: LocalComponents, client: Client
) -> None:
    name = _name("activator")
    client.deploy(tagged, name=name, max_replicas=1)
    payloads = _payloads(12, sleep=0.3)
    ids = _submit(lc, name, payloads)  # 202 + id each: buffered in the stream
    lc.restart("activator", signal.SIGKILL)
    lc.wait_ready()
    _fetch_all(lc, payloads, ids)  # through the new activator


def _waiting_in_memory(lc: LocalComponents, name: str) -> float:
    metrics = httpx.get(f"{lc.config.activator_url}/metrics", timeout=10).text
    prefix = f'lowtide_endpoint_waiting_in_memory{{endpoint="{name}"}} '
    return next((float(line[len(prefix):]) for line in metrics.splitlines()
                 if line.startswith(prefix)), 0.0)


def test_activator_sigkill_with_waiters_in_memory_fails_only_their_callers(
    lc: LocalComponents, client: Client, redis: Redis, tmp_path: Path
) -> None:
    """Requests waiting in the activator's memory never reached a replica: when it dies,
    their callers' connections fail and nothing else is left behind (no stream entry, no
    run of them later); what the replica was running finishes and frees its slots."""
    name = _name("waiters")
    ep = client.deploy(tagged, name=name, min_replicas=1, max_replicas=1)
    warm = _payloads(1)[0]
    _check(warm, 200, httpx.post(ep.url, json={"payload": warm}, timeout=120).content)
    runs = tmp_path / "runs.txt"
    payloads = _payloads(12, sleep=0.5, log=str(runs))
    calls = Calls(ep.url, payloads, timeout_s=60)
    wait_for(lambda: _waiting_in_memory(lc, name) > 0, 30, "requests waiting in memory")
    lc.kill("activator", signal.SIGKILL)
    results = calls.join()
    answered = set()
    for p in payloads:
        got = results[p["id"]]
        if not isinstance(got, Exception):
            _check(p, *got)  # answered before the kill: its own result
            answered.add(p["id"])
    assert len(answered) < len(payloads), "no caller was waiting when the activator died"
    # the replica finishes what it was running and holds nothing; the stream holds nothing
    items = wait_for(lambda: [r for r in client.status(name)["replicas"]["items"]
                              if r["in_flight"] == 0] or None, 30, "the replica to finish")
    assert redis.xlen(f"lt:q:{name}") == 0
    ran = runs.read_text().split()
    assert len(ran) == len(set(ran)) and answered <= set(ran)  # each ran once at most
    # beyond the answered ones, only what was running on the replica when the activator
    # died ran: the waiters in memory never reached it
    assert len(set(ran) - answered) <= max(r["limit"] for r in items)


# ---- agent ------------------------------------------------------------------------------
def test_agent_sigkill_requests_answered_after_replacement(
    lc: LocalComponents, client: Client, redis: Redis
) -> None:
    name = _name("agent")
    ep = client.deploy(tagged, name=name, max_replicas=1)
    async_payloads = _payloads(8, sleep=0.5)
    sync_payloads = _payloads(8, sleep=0.5)
    calls = Calls(ep.url, sync_payloads)
    ids = _submit(lc, name, async_payloads)
    wait_for(lambda: _busy_replica(client, name), 90, "a replica running requests")
    before = {i["id"] for i in client.status(name)["replicas"]["items"]}
    lc.kill("agent", signal.SIGKILL)  # its replicas and pool workers go with it
    # and it died while starting one more: a record nothing will ever make ready
    orphan = {"id": "r-orphan" + uuid.uuid4().hex[:6], "version": 1, "state": "starting",
              "host": "local", "created_at": time.time() - 60}
    redis.hset(f"lt:rep:{name}", orphan["id"], json.dumps(orphan))
    # a restart quicker than the host's heartbeat TTL (start-up is slow on a busy machine)
    beat = redis.get("lt:hostalive:local")
    assert beat is not None
    redis.set("lt:hostalive:local", beat, ex=30)
    time.sleep(2)
    lc.start_component("agent")
    _fetch_all(lc, async_payloads, ids, timeout_s=150)
    results = calls.join()
    for p in sync_payloads:
        got = results[p["id"]]
        assert not isinstance(got, Exception), got
        _check(p, *got)
    # and the endpoint keeps serving on a replica the new agent started
    p = _payloads(1)[0]
    r = httpx.post(ep.url, json={"payload": p}, timeout=120)
    _check(p, r.status_code, r.content)
    after = {i["id"] for i in client.status(name)["replicas"]["items"] if i["state"] == "ready"}
    assert after and not after & before
    assert not redis.hexists(f"lt:rep:{name}", orphan["id"])


# ---- platform ---------------------------------------------------------------------------
def test_platform_restart_continues_from_redis_state(
    lc: LocalComponents, client: Client
) -> None:
    warm = _name("plat-warm")
    cold = _name("plat-cold")
    ep_warm = client.deploy(tagged, name=warm)
    client.deploy(tagged, name=cold)  # never called: at zero replicas
    p = _payloads(1)[0]
    r = httpx.post(ep_warm.url, json={"payload": p}, timeout=120)
    _check(p, r.status_code, r.content)
    version = client.status(warm)["version"]

    lc.kill("platform", signal.SIGKILL)
    # while the control plane is down: warm calls are served, cold ones are buffered
    p = _payloads(1)[0]
    r = httpx.post(ep_warm.url, json={"payload": p}, timeout=30)
    _check(p, r.status_code, r.content)
    payloads = _payloads(6)
    ids = _submit(lc, cold, payloads)  # the wake is published to nobody
    lc.start_component("platform")
    lc.wait_ready()

    listed = {d["name"]: d for d in client.list()}
    assert {warm, cold} <= set(listed)
    assert listed[warm]["version"] == version
    assert listed[warm]["replicas"]["ready"] == 1  # the running replica was kept
    _fetch_all(lc, payloads, ids)  # the new platform saw the queue and scaled from zero
    decisions = [e for e in client.events(cold) if e["kind"] not in ("replica", "deploy")]
    assert decisions and decisions[0]["to"] >= 1, decisions


def test_platform_started_while_redis_is_away_waits_for_it(
    lc: LocalComponents, client: Client
) -> None:
    """A platform that meets Redis away during its own start waits for it (it used to exit
    with a ConnectionError: seen in the chaos soak, a platform restart and a Redis restart
    close together)."""
    lc.kill("platform", signal.SIGKILL)
    lc.stop_redis(signal.SIGTERM)
    lc.start_component("platform")
    time.sleep(3)
    assert lc.procs["platform"].running(), lc.log_tail("platform")
    lc.start_redis()
    lc.wait_ready()
    assert "Redis is not answering" in lc.log_tail("platform")
    name = _name("after-wait")
    ep = client.deploy(tagged, name=name)
    p = _payloads(1)[0]
    _check(p, *_post(ep.url, p))


# ---- Redis ------------------------------------------------------------------------------
def test_redis_restart_with_aof_everyone_reconnects(
    lc: LocalComponents, client: Client
) -> None:
    name = _name("redis")
    ep = client.deploy(tagged, name=name, max_replicas=1)
    p = _payloads(1)[0]
    _check(p, *_post(ep.url, p))
    ready_before = {i["id"] for i in client.status(name)["replicas"]["items"]
                    if i["state"] == "ready"}
    payloads = _payloads(20, sleep=0.4)  # a backlog: most of it waits in the stream
    ids = _submit(lc, name, payloads)

    lc.stop_redis(signal.SIGTERM)  # Redis writes its append-only file and exits
    time.sleep(4)  # past the heartbeat TTLs: every loop sees errors meanwhile
    _all_running(lc)
    lc.start_redis()  # same port, same data directory

    _fetch_all(lc, payloads, ids, timeout_s=150)
    p = _payloads(1)[0]
    _check(p, *_post(ep.url, p))  # and new requests work
    q = _payloads(1)[0]
    r = httpx.post(f"{lc.config.activator_url}/fn/{name}?async=1", json={"payload": q},
                   timeout=30)
    _fetch_all(lc, [q], {q["id"]: r.json()["id"]})
    _all_running(lc)
    # a Redis restart is not a lost replica: the one that served before still does
    ready_after = {i["id"] for i in client.status(name)["replicas"]["items"]
                   if i["state"] == "ready"}
    assert ready_before & ready_after, (ready_before, ready_after)
    # the agent still takes jobs: a new endpoint gets a replica
    other = client.deploy(tagged, name=_name("redis-new"))
    p = _payloads(1)[0]
    _check(p, *_post(other.url, p))


def _post(url: str, payload: dict[str, Any], timeout_s: float = 120) -> tuple[int, bytes]:
    r = httpx.post(url, json={"payload": payload}, timeout=timeout_s)
    return r.status_code, r.content


def test_redis_unreachable_answers_503_fast_then_resumes(
    lc: LocalComponents, client: Client
) -> None:
    warm = client.deploy(tagged, name=_name("down-warm"))
    cold = client.deploy(tagged, name=_name("down-cold"))
    p = _payloads(1)[0]
    _check(p, *_post(warm.url, p))
    r = httpx.post(cold.url + "?async=1", json={"payload": p}, timeout=30)
    assert r.status_code == 202  # its route is now cached by the activator, as in use
    wait_for(lambda: f'endpoint="{warm.name}"' in httpx.get(
        f"{lc.config.activator_url}/metrics").text, 20, "the activator to route warm calls")
    api = httpx.Client(base_url=lc.config.platform_url, timeout=20,
                       headers={"Authorization": f"Bearer {lc.config.token}"})

    for outage in ("stopped", "hung"):
        if outage == "stopped":
            lc.stop_redis()  # connections refused
        else:
            lc.start_redis()
            wait_for(lambda: _post(cold.url, p, 30)[0] == 200, 60, "Redis back")
            lc.pause_redis()  # connections accepted, never answered
        # the deadline of each call below is a hang detector, not a speed target
        r = httpx.post(cold.url, json={"payload": p}, timeout=20)
        assert r.status_code in (200, 503), (outage, r.status_code, r.text)
        if r.status_code == 503:
            assert r.headers["Retry-After"] and r.json()["error"] == "unavailable"
        r = httpx.post(f"{lc.config.activator_url}/fn/never-deployed-{outage}",
                       json={"payload": p}, timeout=20)
        assert r.status_code == 503, (outage, r.status_code, r.text)
        assert r.headers["Retry-After"] and "Redis" in r.json()["detail"]
        r = api.get("/v1/deployments")
        assert r.status_code == 503, (outage, r.status_code, r.text)
        assert r.headers["Retry-After"] and "Redis" in r.json()["detail"]
        # the warm path needs no Redis: a running replica keeps answering
        q = _payloads(1)[0]
        _check(q, *_post(warm.url, q, 20))
        _all_running(lc)
    lc.resume_redis()

    for ep in (warm, cold):
        q = _payloads(1)[0]
        _check(q, *_post(ep.url, q))
    assert api.get("/v1/deployments").status_code == 200
    api.close()
    _all_running(lc)
