"""Three host agents (separate processes, distinct host ids, each advertising its own loopback
address), one Redis, one platform, one activator: replicas spread over the hosts; an agent
SIGKILLed together with its replicas while load runs loses no accepted request, its replicas
are replaced on the other hosts, and status, events and the hosts view say what happened.
A GPU endpoint on these CPU hosts is not placed, says why, and its request is answered 504.

The cluster is this module's own (its own Redis): the session cluster's agent must not take
these replicas, nor its platform scale these endpoints.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from lowtide import Client
from lowtide._redisserver import free_port, new_password, start_redis_server
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

HOSTS = {"h1": "127.0.0.2", "h2": "127.0.0.3", "h3": "127.0.0.4"}
MAX_QUEUE_WAIT_S = 10


@dataclass
class MultiHost:
    root: Path
    redis_url: str
    token: str
    platform_url: str
    activator_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LOWTIDE_") and k != "REDIS_URL"}
        env.update(LOWTIDE_HOME=str(self.root / name), LOWTIDE_LOG_LEVEL="INFO")
        (self.root / name).mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "lowtide", *args, "--redis-url", self.redis_url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in self.procs:
            text = (self.root / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"---- {name} ----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def client(self) -> Client:
        return Client(self.platform_url, self.activator_url, self.token)

    def hosts(self) -> dict[str, Any]:
        r = httpx.get(f"{self.platform_url}/v1/hosts",
                      headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def kill_host(self, name: str) -> None:
        """Take the host down as a dying machine would: freeze the agent and every process
        it started (replicas, pool workers, their children: nothing may react, not even to
        its parent's death signal), then SIGKILL them all, process groups included."""
        agent = self.procs[name]
        tree = [psutil.Process(agent.pid), *psutil.Process(agent.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.suspend()
        groups = set()
        for p in tree:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(p.pid))
        groups.discard(os.getpgid(0))  # never our own group
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        agent.wait(10)

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):  # agents first
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                proc.kill()
                proc.wait()
            del name


@pytest.fixture(scope="module")
def multihost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHost]:
    root = tmp_path_factory.mktemp("multihost")
    redis_proc, redis_url = start_redis_server(root / "redis", appendonly=False,
                                                password=new_password())
    activator_port, platform_port = free_port(), free_port()
    mh = MultiHost(root, redis_url, secrets.token_hex(8), f"http://127.0.0.1:{platform_port}",
                   f"http://127.0.0.1:{activator_port}")
    try:
        mh.spawn("platform", "platform", "--port", str(platform_port), "--token", mh.token,
                 "--public-url", mh.activator_url, "--keep-alive", "60")
        mh.spawn("activator", "activator", "--port", str(activator_port),
                 "--max-queue-wait", str(MAX_QUEUE_WAIT_S))
        for host_id, address in HOSTS.items():
            mh.spawn(host_id, "agent", "--host-id", host_id, "--advertise-address", address,
                     "--port", "0", "--label", f"rack={host_id[-1]}", "--home",
                     str(root / host_id))

        def all_up() -> bool:
            for name, proc in mh.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{mh.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{mh.activator_url}/healthz", timeout=2).raise_for_status()
                return len(mh.hosts()["hosts"]) == len(HOSTS)
            return False

        wait_for(all_up, 90, "platform, activator and three agents")
        yield mh
    finally:
        mh.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


def test_hosts_register_with_capacity_and_their_own_address(multihost: MultiHost) -> None:
    view = multihost.hosts()
    hosts = {h["id"]: h for h in view["hosts"]}
    assert set(hosts) == set(HOSTS) and view["lost"] == []
    for host_id, h in hosts.items():
        assert h["address"] == HOSTS[host_id]
        assert h["labels"] == {"rack": host_id[-1]}
        assert h["kind"] == "cpu" and h["capacity"]["gpus"] == []  # no NVML here: CPU hosts
        assert 1 <= h["capacity"]["cpus"] <= psutil.cpu_count()  # affinity, cgroup quota
        assert h["capacity"]["cpu_schedulable"] == h["capacity"]["cpus"] * 4  # the default
        assert h["capacity"]["memory_bytes"] == psutil.virtual_memory().total
        assert h["utilization"]["memory_used_bytes"] > 0
        assert h["allocated"] == {"cpu": 0, "memory_bytes": 0, "gpus": []}


def _load(url: str, stop: threading.Event, results: list[tuple[int, int, Any]],
          first: int) -> None:
    i = first
    with httpx.Client(timeout=MAX_QUEUE_WAIT_S + 60) as http:
        while not stop.is_set():
            try:
                r = http.post(url, json={"x": i})
                results.append((i, r.status_code, r.json()))
            except httpx.HTTPError as exc:  # the activator itself must never fail
                results.append((i, 0, repr(exc)))
            i += 1


def _pending(redis_url: str, name: str, replica_ids: set[str]) -> int:
    """Entries of the endpoint's stream that one of these replicas took and has not
    answered yet."""
    from redis import Redis

    from lowtide import _keys

    with Redis.from_url(redis_url) as r:
        summary = r.xpending(_keys.stream(name), _keys.STREAM_GROUP)
    return sum(int(c["pending"]) for c in summary.get("consumers") or []
               if c["name"].decode().split(".")[0] in replica_ids)


def _answer(status_url: str) -> Any:
    r = httpx.get(status_url, timeout=10)
    if r.status_code == 202:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def test_spread_then_failover_loses_no_request(multihost: MultiHost) -> None:
    def work(x, sleep=0.05):
        import time as t

        t.sleep(sleep)
        return x * 2

    client = multihost.client()
    name = "spread"
    ep = client.deploy(work, name=name, min_replicas=3, max_replicas=3, cpu=0.5,
                       memory="256Mi")

    def ready_replicas() -> list[dict[str, Any]]:
        items = client.status(name)["replicas"]["items"]
        return [r for r in items if r["state"] == "ready"]

    first = wait_for(lambda: len(ready_replicas()) == 3 and ready_replicas(), 120,
                     f"three ready replicas\n{multihost.logs()}")
    assert isinstance(first, list)
    assert sorted(r["host"] for r in first) == ["h1", "h2", "h3"]  # spread, one per host
    for r in first:
        assert r["address"].startswith(HOSTS[r["host"]] + ":")  # reachable at its host's
    allocated = {h["id"]: h["allocated"] for h in multihost.hosts()["hosts"]}
    assert all(a["cpu"] == 0.5 and a["memory_bytes"] == 256 * 2**20
               for a in allocated.values()), allocated

    stop, results = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(ep.url, stop, results, k * 10**6))
               for k in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(results) >= 40, 60, "load to run")
        killed_ids = {r["id"] for r in first if r["host"] == "h2"}
        # slow requests through the stream: h2's replica must hold some when it dies
        held = [httpx.post(f"{ep.url}?async=1", json={"x": 7000 + i, "sleep": 2.0},
                           timeout=30).json()["status_url"] for i in range(12)]
        wait_for(lambda: _pending(multihost.redis_url, name, killed_ids), 30,
                 "h2's replica to hold buffered requests")
        multihost.kill_host("h2")
        killed_at = len(results)

        def replaced() -> list[dict[str, Any]] | None:
            ready = ready_replicas()
            return ready if len(ready) == 3 and {r["host"] for r in ready} <= {"h1", "h3"} \
                else None

        final = wait_for(replaced, 120, f"a replacement on h1 or h3\n{multihost.logs()}")
        assert isinstance(final, list)
        wait_for(lambda: len(results) >= killed_at + 40, 60, "load after the failover")
    finally:
        stop.set()
        for t in threads:
            t.join(MAX_QUEUE_WAIT_S + 90)
    assert not any(t.is_alive() for t in threads)

    bad = [r for r in results if r[1] != 200 or r[2] != r[0] * 2]
    assert not bad, bad[:5]  # every accepted request answered, and right
    # those h2's replica held were claimed from the stream by the others, run and answered
    answers = [wait_for(lambda url=url: _answer(url), MAX_QUEUE_WAIT_S + 30, url)
               for url in held]
    assert sorted(a for a in answers) == [2 * (7000 + i) for i in range(12)]
    assert not killed_ids & {r["id"] for r in final}

    def host_lost_said() -> list[str] | None:  # within a second of the host's TTL
        reasons = [e["reason"] for e in ep.events()]
        return reasons if any(r.startswith("host h2 lost: no heartbeat") for r in reasons) \
            else None

    reasons = wait_for(host_lost_said, 15, "the host-lost event")
    assert isinstance(reasons, list)
    for rid in killed_ids:
        assert any(f"replica {rid} lost" in r for r in reasons), reasons
    for r in final:
        if r["id"] not in {f["id"] for f in first}:  # a replacement: placed, and said so
            assert any(e.startswith(f"starting replica {r['id']} on {r['host']}")
                       for e in reasons), reasons

    view = multihost.hosts()
    assert [h["id"] for h in view["lost"]] == ["h2"]
    assert view["lost"][0]["state"] == "lost"
    live = {h["id"]: h for h in view["hosts"]}
    assert set(live) == {"h1", "h3"}
    on_hosts = sorted(r["id"] for h in live.values() for r in h["replicas"]
                      if r["endpoint"] == name)
    assert on_hosts == sorted(r["id"] for r in final)
    assert sum(h["allocated"]["cpu"] for h in live.values()) == 1.5


def test_gpu_endpoint_on_cpu_hosts_says_why_and_is_answered_503(multihost: MultiHost) -> None:
    client = multihost.client()
    name = "needs-gpu"
    ep = client.deploy(lambda x: x, name=name, gpu=1, gpu_memory="8Gi", timeout=1)
    started = time.monotonic()
    r = httpx.post(ep.url, json={"x": 1}, timeout=MAX_QUEUE_WAIT_S + 30)
    # no host can ever place it: answered with the placement reason, not at the queue-wait limit
    expected = "needs 1 GPU with 8 GiB; no host has a GPU"
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "cannot be placed", r.text
    assert expected in r.json()["detail"], r.text
    assert time.monotonic() - started < MAX_QUEUE_WAIT_S - 1
    status = client.status(name)
    assert status["placement"].startswith(expected), status["placement"]
    assert status["replicas"]["items"] == []
    placement = [e for e in ep.events() if e["kind"] == "placement"]
    assert placement and placement[0]["reason"].startswith(expected)
    ep.delete()
