"""Class deployments with real processes: one instance per replica, built before the
replica takes a request; methods routed by name; a stop hook run when the replica stops."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

import lowtide
from lowtide import Client
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

SETUP_S = 2.0


class SlowModel:
    """Its constructor takes SETUP_S, like a model load; counts how often it ran in its
    replica process."""

    built = 0

    def __init__(self):
        import time

        time.sleep(SETUP_S)
        type(self).built += 1
        self.weights = [1.0, 2.0, 3.0]

    def __call__(self, x):
        import os

        return {"pid": os.getpid(), "built": type(self).built, "instance": id(self),
                "y": x * self.weights[1]}


async def test_the_constructor_runs_once_per_replica_under_40_concurrent_calls(
    client: Client, cluster, unique_name: str
) -> None:
    deployed_at = time.time()
    client.deploy(SlowModel, name=unique_name, max_replicas=2)
    url = f"{cluster.config.activator_url}/fn/{unique_name}"

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, dict]:
        async with session.post(url, json={"x": i}) as resp:
            return resp.status, await resp.json(content_type=None)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(40)))
    assert [s for s, _ in results] == [200] * 40, [b for s, b in results if s != 200][:3]
    assert [b["y"] for _, b in results] == [2.0 * i for i in range(40)]
    assert all(b["built"] == 1 for _, b in results)  # never a second build in a replica
    per_pid: dict[int, set[int]] = {}
    for _, b in results:
        per_pid.setdefault(b["pid"], set()).add(b["instance"])
    assert all(len(ids) == 1 for ids in per_pid.values()), per_pid  # one instance each

    # ready only after the constructor returned, and the load is shown as "setup"
    items = [r for r in client.status(unique_name)["replicas"]["items"] if r["startup"]]
    print("answered after", time.time() - deployed_at, [r["startup"] for r in items])
    assert items and all(r["startup"]["setup_s"] >= SETUP_S * 0.9 for r in items), items
    assert all(r["ready_after_s"] >= SETUP_S * 0.9 for r in items)
    assert time.time() - deployed_at >= SETUP_S
    ready = [e["reason"] for e in client.events(unique_name) if "ready in" in e["reason"]]
    assert ready and all(", setup 2." in text for text in ready), ready
    client.delete(unique_name)


class Toolkit:
    def __init__(self):
        self.prefix = "tk"

    def __call__(self, text):
        return f"{self.prefix}:{text}"

    def shout(self, text, times=1):
        return text.upper() * times

    async def slow_len(self, text):
        import asyncio

        await asyncio.sleep(0.01)
        return len(text)

    def _private(self):
        return "never over HTTP"

    @lowtide.on_shutdown
    def release(self):
        import os

        path = os.environ.get("STOP_MARKER_DIR", "/nonexistent")
        with open(f"{path}/toolkit-stopped", "w") as f:
            f.write(self.prefix)


def test_methods_route_and_unknown_ones_are_404_naming_the_methods(
    client: Client, http: httpx.Client, unique_name: str, tmp_path: Path
) -> None:
    tmp_path.chmod(0o1777)  # where the stop hook leaves its file (replicas may run as nobody)
    ep = client.deploy(Toolkit, name=unique_name, env={"STOP_MARKER_DIR": str(tmp_path)})
    assert ep.methods is not None and set(ep.methods) == {"__call__", "shout", "slow_len"}
    assert ep("a") == "tk:a"
    assert ep.shout("hey", 2) == "HEYHEY"  # positional arguments bind to parameter names
    assert ep.method("slow_len").call(text="four") == 4  # async method
    assert ep.shout.submit(text="x").result(timeout=30) == "X"  # buffered, method carried
    r = http.post(f"/fn/{unique_name}/shout", json={"text": "curl"})
    assert (r.status_code, r.json()) == (200, "CURL")
    for missing in ("nope", "_private", "release"):
        r = http.post(f"/fn/{unique_name}/{missing}", json={})
        assert r.status_code == 404, missing
        assert "shout, slow_len" in r.json()["detail"], r.json()
    with pytest.raises(AttributeError, match="shout, slow_len"):
        ep.method("nope")

    fn = client.deploy(lambda x: x, name=f"{unique_name}-fn")
    r = http.post(f"/fn/{fn.name}/shout", json={})
    assert r.status_code == 404 and "is a function" in r.json()["detail"]
    fn.delete()

    # the stop hook runs when the replica stops (here: the endpoint is deleted)
    marker = tmp_path / "toolkit-stopped"
    ep.delete()
    wait_for(marker.exists, 30, "the on_shutdown hook's file")
    assert marker.read_text() == "tk"
