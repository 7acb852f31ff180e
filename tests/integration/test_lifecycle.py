"""Scale to zero and back, redeploys, deletion, replica failure, logs and events."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from lowtide import Client
from tests.conftest import TEST_KEEP_ALIVE_S, wait_for

pytestmark = pytest.mark.integration


def test_scale_to_zero_after_keep_alive_then_wake(client: Client, unique_name: str) -> None:
    ep = client.deploy(lambda x: x * 3, name=unique_name)
    assert ep(2) == 6
    status = ep.status()
    assert status["replicas"]["ready"] == 1
    assert status["last_decision"]["reason"].startswith("0 -> 1: wake")

    def at_zero():
        s = ep.status()
        r = s["replicas"]
        return s if r["ready"] == 0 and r["desired"] == 0 and not r["items"] else None

    status = wait_for(at_zero, TEST_KEEP_ALIVE_S + 20, "scale to zero")
    decision = status["last_decision"]
    assert (decision["from"], decision["to"], decision["kind"]) == (1, 0, "idle")
    assert f"keep-alive {TEST_KEEP_ALIVE_S:g} s" in decision["reason"]
    assert ep(5) == 15  # the next request wakes it
    kinds = [e["kind"] for e in ep.events() if e["kind"] != "replica"]
    assert kinds[:3] == ["wake", "idle", "wake"]
    assert kinds[-1] == "deploy"


def test_redeploy_replaces_the_function(client: Client, unique_name: str) -> None:
    ep1 = client.deploy(lambda x: x + 1, name=unique_name)
    assert ep1(1) == 2
    ep2 = client.deploy(lambda x: x + 100, name=unique_name)
    assert ep2.version == ep1.version + 1
    # route changes reach the activators within moments
    wait_for(lambda: ep2(1) == 101, 5, "the new version to serve")
    assert ep1(1) == 101  # the name now serves the new version

    def old_gone():
        items = client.status(unique_name)["replicas"]["items"]
        return all(item["version"] == ep2.version for item in items)

    wait_for(old_gone, 30, "the old version's replica to stop")


def test_delete(client: Client, http: httpx.Client, unique_name: str) -> None:
    ep = client.deploy(lambda x: x, name=unique_name)
    assert ep(7) == 7
    ep.delete()
    assert http.post(f"/fn/{unique_name}", json={"x": 1}).status_code == 404
    assert unique_name not in [d["name"] for d in client.list()]


def test_replica_killed_while_requests_are_buffered(client: Client, unique_name: str,
                                                    redis) -> None:
    def slow(x):
        import time as t

        t.sleep(1.5)
        return x * 10

    ep = client.deploy(slow, name=unique_name, max_replicas=1)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = ep(i)
        except Exception as exc:  # recorded and asserted below
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()

    def busy_replica():
        for item in client.status(unique_name)["replicas"]["items"]:
            if item["state"] == "ready" and item["in_flight"] > 0:
                return item
        return None

    victim = wait_for(busy_replica, 90, "a replica running buffered requests")
    record = json.loads(redis.hget(f"lt:rep:{unique_name}", victim["id"]))
    os.killpg(os.getpgid(record["pid"]), signal.SIGKILL)  # the whole replica, at once
    for t in threads:
        t.join(120)
    assert results == {i: i * 10 for i in range(24)}
    events = [e["reason"] for e in client.events(unique_name)]
    assert any(victim["id"] in reason for reason in events) or any(
        item["id"] != victim["id"] for item in client.status(unique_name)["replicas"]["items"])


def test_functions_from_user_modules_ship_by_value(
    client: Client, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "lt_user_code"
    (pkg / "helpers").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers" / "__init__.py").write_text("OFFSET = 1000\n")
    (pkg / "model.py").write_text(textwrap.dedent("""
        from lt_user_code.helpers import OFFSET

        def predict(x):
            return x + OFFSET
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from lt_user_code.model import predict  # type: ignore[import-not-found]

    try:
        ep = client.deploy(predict, name=unique_name)
        assert ep(1) == 1001
    finally:
        for mod in [m for m in sys.modules if m.startswith("lt_user_code")]:
            del sys.modules[mod]


def test_logs_and_events(client: Client, cluster, unique_name: str) -> None:
    def noisy(x):
        print(f"hello from the replica {x}", flush=True)
        return x

    ep = client.deploy(noisy, name=unique_name)
    assert ep("abc") == "abc"

    def logged():
        lines = client.logs(unique_name)["lines"]
        return [ln for ln in lines if "hello from the replica abc" in ln["line"]]

    found = wait_for(logged, 20, "the replica's output in the logs")
    assert found[0]["replica"].startswith("r-")
    events = ep.events()
    assert events[0]["at"] >= events[-1]["at"]  # newest first
    wake = next(e for e in events if e["kind"] == "wake")
    assert wake["inputs"]["queued"] >= 1 and wake["to"] == 1
