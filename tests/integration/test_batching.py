"""@lowtide.batched through the whole path: concurrent callers from cold (buffered and
direct items share batches), each its own answer; batch errors; status shows the batches.
A class deployment with batched, streaming and plain methods called all at once."""

from __future__ import annotations

import asyncio
import json
import re

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
        if "threads" in mode:  # the replica's compute threads fit its cores (cpu=1)
            import os
            return [{"omp": os.environ.get("OMP_NUM_THREADS")} for _ in x]
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
    assert http.post(f"/fn/{unique_name}", json={"x": 1, "mode": "threads"}
                     ).json() == {"omp": "1"}

    def batch_view() -> object:
        items = ep.status()["replicas"]["items"]
        return items and items[0].get("batch", {}).get("batches", 0) >= 2 and items[0]

    replica = wait_for(batch_view, 10, "the replica's batch view in status")
    assert replica["batch"]["fixed_ms"] is not None  # type: ignore[index]
    assert replica["limit"] == replica["batch"]["item_limit"]  # type: ignore[index]



class Chat:
    """Batched `__call__` and `embed` (a batcher each), sync and async generator methods,
    and a plain one; the instance's offset shows every call went through it."""

    def __init__(self) -> None:
        self.offset = 1000

    @lowtide.batched
    def __call__(self, x: list[int]) -> list[dict[str, int]]:
        import time

        time.sleep(0.02)  # a fixed cost per call: batches pay
        return [{"x": v + self.offset, "n": len(x)} for v in x]

    @lowtide.batched
    def embed(self, text: list[str]) -> list[str]:
        return [t.upper() for t in text]

    def tokens(self, n: int, fail: bool = False):
        import time

        for i in range(n):
            if fail and i == 1:
                raise ValueError("mid-stream in a method")
            yield {"i": i + self.offset}
            time.sleep(0.005)

    async def atokens(self, word: str):
        for ch in word:
            yield ch

    def info(self, x: int) -> dict[str, int]:
        return {"info": x + self.offset}


async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, object]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def _stream(session: aiohttp.ClientSession, url: str, n: int) -> tuple[int, list]:
    async with session.post(url, json={"n": n}) as resp:
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return resp.status, [json.loads(line) async for line in resp.content if line.strip()]


async def _all_methods_at_once(base: str) -> list[int]:
    """32 batched calls, 8 of another batched method, 8 plain, 4 streams, concurrently:
    each caller checks its own answer; the batch sizes its __call__ callers saw."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        called, embedded, plain, streamed = await asyncio.gather(
            asyncio.gather(*(_post(session, base, {"x": i}) for i in range(32))),
            asyncio.gather(*(_post(session, f"{base}/embed", {"text": f"w{i}"})
                             for i in range(8))),
            asyncio.gather(*(_post(session, f"{base}/info", {"x": i}) for i in range(8))),
            asyncio.gather(*(_stream(session, f"{base}/tokens", n) for n in range(1, 5))))
    assert [(s, b["x"]) for s, b in called] == [(200, i + 1000) for i in range(32)]  # type: ignore[index]
    assert embedded == [(200, f"W{i}") for i in range(8)]
    assert plain == [(200, {"info": i + 1000}) for i in range(8)]
    assert streamed == [(200, [{"i": i + 1000} for i in range(n)]) for n in range(1, 5)]
    return [b["n"] for _, b in called]  # type: ignore[index]


def _first_byte_count(metrics: str, name: str, path: str) -> float:
    found = re.search(rf'lowtide_activator_stream_first_byte_seconds_count\{{endpoint='
                      rf'"{name}",path="{path}"\}} (\S+)', metrics)
    return float(found.group(1)) if found else 0.0


async def test_a_class_with_batched_streaming_and_plain_methods(
        client: Client, http: httpx.Client, cluster, unique_name: str) -> None:
    ep = client.deploy(Chat, name=unique_name, max_replicas=1, timeout=20)
    base = f"{cluster.config.activator_url}/fn/{unique_name}"
    sizes = await _all_methods_at_once(base)  # cold: buffered, streams through Redis
    sizes += await _all_methods_at_once(base)  # warm: direct
    assert max(sizes) > 1  # the batched __call__ got batches, not single values

    # through the SDK: a generator method streams, sync and async (SSE underneath)
    assert list(ep.tokens.stream(3)) == [{"i": 1000}, {"i": 1001}, {"i": 1002}]
    assert [ch async for ch in ep.atokens.astream(word="abc")] == ["a", "b", "c"]
    r = http.post(f"/fn/{unique_name}/tokens", json={"n": 1},
                  headers={"Accept": "text/event-stream"})
    assert r.text == 'data: {"i": 1000}\n\nevent: end\ndata: \n\n'
    assert ep.tokens.submit(n=2).result(timeout=30) == [{"i": 1000}, {"i": 1001}]  # async
    assert ep(x=1)["x"] == 1001 and ep.embed("a") == "A" and ep.info(1) == {"info": 1001}

    # an exception mid-stream: the error event carries the remote traceback
    got = []
    with pytest.raises(lowtide.FunctionError, match="mid-stream in a method") as info:
        for item in ep.tokens.stream(n=3, fail=True):
            got.append(item)
    assert got == [{"i": 1000}] and info.value.exc_type == "ValueError"
    assert "in tokens" in info.value.traceback
    assert info.value.traceback.endswith("ValueError: mid-stream in a method")

    def batch_views() -> object:
        items = ep.status()["replicas"]["items"]
        views = (items and items[0].get("batches")) or {}
        return (views.get("__call__", {}).get("batches", 0) >= 2
                and views.get("embed", {}).get("batches", 0) >= 1 and items[0])

    replica = wait_for(batch_views, 10, "per-method batch views in status")
    views = replica["batches"]  # type: ignore[index]
    assert replica["limit"] >= views["__call__"]["item_limit"] + views["embed"]["item_limit"]

    # the activator's time to first byte of streamed answers, on both paths
    metrics = http.get("/metrics").text
    assert _first_byte_count(metrics, unique_name, "buffered") > 0
    assert _first_byte_count(metrics, unique_name, "warm") > 0
