"""Generator endpoints through the whole path: buffered (cold) and warm streams, ndjson and
SSE framing, bytes, errors mid-stream, async results, and callers that leave."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import psutil
import pytest
from redis import Redis

import lowtide
from lowtide import Client, _keys, cli

from ..conftest import wait_for

pytestmark = pytest.mark.integration


def test_streams(client: Client, http: httpx.Client, redis: Redis, cluster, unique_name: str,
                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    def tokens(n: int = 3, delay: float = 0.0, mode: str = "ok", marker: str = ""):
        import pathlib
        import time
        try:
            for i in range(n):
                if mode == "raise" and i == 1:
                    raise ValueError("mid-stream")
                yield (b"%d;" % i) if mode == "bytes" else {"token": i}
                time.sleep(delay)
        finally:
            if marker:
                pathlib.Path(marker).write_text("closed")

    ep = client.deploy(tokens, name=unique_name, max_replicas=1, timeout=10)
    # cold: the first call waits in the buffer, its chunks come through Redis
    assert list(ep.stream(n=4)) == [{"token": i} for i in range(4)]
    url = f"/fn/{unique_name}"

    # warm, ndjson by default: the first line arrives long before the last is produced
    started = time.monotonic()
    with http.stream("POST", url, json={"n": 3, "delay": 0.5}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = r.iter_lines()
        assert json.loads(next(lines)) == {"token": 0}
        first_s = time.monotonic() - started
        assert [json.loads(line) for line in lines if line] == [{"token": 1}, {"token": 2}]
    assert first_s < 1.0, first_s

    r = http.post(url, json={"n": 2}, headers={"Accept": "text/event-stream"})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text == 'data: {"token": 0}\n\ndata: {"token": 1}\n\nevent: end\ndata: \n\n'
    r = http.post(url, json={"n": 3, "mode": "bytes"})
    assert (r.headers["content-type"], r.content) == ("application/octet-stream", b"0;1;2;")

    # an exception mid-stream: the values before it, then an error event
    r = http.post(url, json={"n": 3, "mode": "raise"})
    last = json.loads(r.text.splitlines()[-1])
    assert r.status_code == 200 and last["type"] == "ValueError"
    assert "in tokens" in last["traceback"]  # the remote traceback, as a 500 carries it
    got = []
    with pytest.raises(lowtide.FunctionError, match="mid-stream") as info:
        for item in ep.stream(n=3, mode="raise"):
            got.append(item)
    assert got == [{"token": 0}]
    assert info.value.traceback.endswith("ValueError: mid-stream")

    # the CLI prints each value as a JSON line
    cfg = cluster.config
    monkeypatch.setenv("LOWTIDE_ACTIVATOR_URL", cfg.activator_url)
    monkeypatch.setenv("LOWTIDE_PLATFORM_URL", cfg.platform_url)
    monkeypatch.setenv("LOWTIDE_TOKEN", cfg.token)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["invoke", unique_name, '{"n": 2}', "--stream"])
    assert exited.value.code in (0, None)
    assert capsys.readouterr().out == '{"token": 0}\n{"token": 1}\n'

    # async: the whole sequence is stored
    assert ep.submit(n=3).result(timeout=30) == [{"token": i} for i in range(3)]

    # a caller that leaves closes the generator (its finally runs) and frees the slot
    marker = tmp_path / "closed"
    with http.stream("POST", url, json={"n": 10**9, "delay": 0.01, "marker": str(marker)}) as r:
        next(r.iter_lines())
    wait_for(marker.exists, 10, "the generator's finally after the caller left")

    def replica() -> dict:
        return ep.status()["replicas"]["items"][0]

    worker = psutil.Process(json.loads(redis.get(_keys.replica_alive(replica()["id"])))["pid"])

    def abort_streams(n: int) -> None:
        for _ in range(n):
            with http.stream("POST", url, json={"n": 10**9, "delay": 0.001}) as r:
                next(r.iter_lines())

    abort_streams(20)  # buffers and pools reach their size
    rss_before = worker.memory_info().rss
    abort_streams(200)
    wait_for(lambda: replica()["in_flight"] == 0, 20, "every aborted stream's slot freed")
    grown = worker.memory_info().rss - rss_before
    assert grown < 10 * 2**20, f"the replica grew {grown / 2**20:.1f} MiB over 200 streams"
    metrics = http.get("/metrics").text
    assert f'endpoint="{unique_name}",path="warm",status="200"' in metrics  # passed through
    assert f'endpoint="{unique_name}",path="buffered",status="200"' in metrics  # via Redis
    for path in ("warm", "buffered"):  # the time to the first byte of streamed answers
        count = re.search(rf'lowtide_activator_stream_first_byte_seconds_count\{{endpoint='
                          rf'"{unique_name}",path="{path}"\}} (\S+)', metrics)
        assert count is not None and float(count.group(1)) > 0, path
