"""@lowtide.batched through the whole path: concurrent callers from cold (buffered and
direct items share batches), each its own answer; batch errors; status shows the batches."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import pytest

import lowtide
from lowtide import Client

from ..conftest import wait_for

pytestmark = pytest.mark.integration


async def test_batched_endpoint(client: Client, http: httpx.Client, cluster, redis,
                                unique_name: str) -> None:
    import time

    @lowtide.batched
    def tag(x: list[int], mode: list[str] = "ok") -> list[dict[str, int]]:  # type: ignore[assignment]
        time.sleep(0.02)  # a fixed cost per call: batches pay
        if "raise" in mode:
            raise ValueError("the batch failed")
        if "short" in mode:
            return []
        return [{"x": v, "n": len(x)} for v in x]

    ep = client.deploy(tag, name=unique_name, max_replicas=1)
    url = f"{cluster.config.activator_url}/fn/{unique_name}"

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, object]:
        async with session.post(url, json={"x": i}) as resp:
            return resp.status, await resp.json(content_type=None)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(2):  # cold (buffered), then warm (direct)
            results = await asyncio.gather(*(one(session, i) for i in range(64)))
            assert [s for s, _ in results] == [200] * 64, results[:3]
            assert [b["x"] for _, b in results] == list(range(64))  # type: ignore[index]
            assert max(b["n"] for _, b in results) > 1  # type: ignore[index]
    assert redis.xlen(f"lt:q:{unique_name}") == 0

    assert ep(5) == {"x": 5, "n": 1}  # a lone caller: a batch of one
    r = http.post(f"/fn/{unique_name}", json={"x": 1, "mode": "raise"})
    assert r.status_code == 500 and r.json()["type"] == "ValueError"
    r = http.post(f"/fn/{unique_name}", json={"x": 1, "mode": "short"})
    assert r.status_code == 500 and "0 outputs for 1 inputs" in r.json()["detail"]
    r = http.post(f"/fn/{unique_name}", json={"y": 1})
    assert r.status_code == 400

    def batch_view() -> object:
        items = ep.status()["replicas"]["items"]
        return items and items[0].get("batch", {}).get("batches", 0) >= 2 and items[0]

    replica = wait_for(batch_view, 10, "the replica's batch view in status")
    assert replica["batch"]["fixed_ms"] is not None  # type: ignore[index]
    assert replica["limit"] == replica["batch"]["item_limit"]  # type: ignore[index]
