"""The hybrid autoscaler on a real cluster: a burst against a cold endpoint scales it up to
several replicas and back to zero, every request is answered, and the events explain it."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import httpx
import pytest

from lowtide import Client
from tests.conftest import TEST_KEEP_ALIVE_S, wait_for

pytestmark = pytest.mark.integration

BURST = 120
MAX_REPLICAS = 3


async def test_burst_scales_up_and_back_to_zero_with_reasons(
    client: Client, cluster, unique_name: str
) -> None:
    def slow(x):
        import time

        time.sleep(1.0)
        return x + 1

    ep = client.deploy(slow, name=unique_name, max_replicas=MAX_REPLICAS)
    url = f"{cluster.config.activator_url}/fn/{unique_name}"

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, object]:
        async with session.post(url, json={"x": i}) as resp:
            return resp.status, await resp.json(content_type=None)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(BURST)))
    assert [s for s, _ in results] == [200] * BURST, [b for s, b in results if s != 200][:3]
    assert [b for _, b in results] == [i + 1 for i in range(BURST)]

    def at_zero() -> dict | None:
        s = ep.status()
        return s if s["replicas"]["desired"] == 0 and not s["replicas"]["items"] else None

    status = await asyncio.to_thread(wait_for, at_zero, TEST_KEEP_ALIVE_S + 90, "scale to zero")
    assert status["keep_alive"]["reason"] == "fixed by --keep-alive"
    assert status["panic"] is False

    events = [e for e in reversed(ep.events()) if e["kind"] not in ("deploy", "replica")]
    assert events[0]["kind"] == "wake" and events[-1]["kind"] == "idle"
    assert max(e["to"] for e in events) >= 2  # scaled out for the burst
    assert max(e["to"] for e in events) <= MAX_REPLICAS  # within the bound
    ups = [e for e in events if e["to"] > e["from"]]
    assert {e["kind"] for e in ups} <= {"wake", "panic", "scale-up"}
    for e in events:  # each step says what changed and why, with its inputs
        assert re.match(rf"{e['from']} -> {e['to']}: {e['kind']}\b", e["reason"]), e
        assert {"queued", "in_flight", "limit", "stable_concurrency"} <= set(e["inputs"])


def test_decisions_are_counted_in_metrics(client: Client, cluster, unique_name: str) -> None:
    ep = client.deploy(lambda x: x, name=unique_name)
    assert ep(1) == 1
    text = httpx.get(f"{cluster.config.platform_url}/metrics", timeout=10).text
    wakes = re.search(r'lowtide_platform_scaling_decisions_total\{kind="wake"\} (\S+)', text)
    assert wakes and float(wakes.group(1)) >= 1


def test_status_reports_replica_cpu(client: Client, unique_name: str) -> None:
    ep = client.deploy(lambda x: x, name=unique_name)
    assert ep(1) == 1

    def measured() -> object:
        items = ep.status()["replicas"]["items"]
        return [i for i in items if i.get("cpu_cores") is not None]

    found = wait_for(measured, 20, "a CPU measurement of the replica")
    assert isinstance(found, list) and found[0]["cpu_cores"] >= 0.0


def test_a_saturated_warm_endpoint_scales_out_on_the_waiters_in_memory(
    client: Client, unique_name: str
) -> None:
    """One warm replica of a CPU-bound function under a closed loop far over its limit:
    the requests over it wait in the activator's memory (not in the stream), the platform
    counts them as queued, and the endpoint gets more replicas, each step with its reason."""
    from tests.integration.test_limits import busy, load

    ep = client.deploy(busy, name=unique_name, min_replicas=1, max_replicas=4)
    assert ep(0, ms=50) == 0

    def scaled_out() -> list[dict] | None:
        ups = [e for e in ep.events() if (e["to"] or 0) > (e["from"] or 0) >= 1]
        return ups or None

    with load(ep.url, 24, {"x": 1, "ms": 50}) as statuses:
        ups = wait_for(scaled_out, 90, "a scale-out under load")
    assert statuses and set(statuses) == {200}
    up = ups[-1]  # the first step up from the warm replica (events are newest first)
    assert up["kind"] in ("panic", "scale-up") and up["to"] <= 4
    assert re.match(rf"{up['from']} -> {up['to']}: {up['kind']}\b", up["reason"]), up
    assert up["inputs"]["queued"] > 0  # the waiters in memory reached the autoscaler
    assert "queue lag" in up["reason"] or up["inputs"]["in_flight"] > 0, up
