"""Past capacity: the learned limit (requests over it wait in the activator's memory, then in
the stream) against admitting everything (LOWTIDE_FIXED_CONCURRENCY=1000), both through the
activator, one replica, wrk closed loops at 32, 128 and 512 connections.

    pip install -e '.[bench]' scikit-learn; python bench/saturation.py [--duration 4] [--rounds 2]

Two clusters run side by side (one with each setting) and the measurements take turns
(learned, admit-all, learned, ...), so a slow spell of a shared machine does not fall on one
side alone; each figure is the mean (req/s) or median (p50, p99) over the rounds. Functions:
trivial (returns its argument), CPU-bound (about 20 ms of pure Python) and a scikit-learn
RandomForest (50 trees) predicting one digits row.

Redis commands per request: INFO commandstats of the learned cluster's Redis before and
after each of its measurements, every command counted (the background ones too: heartbeats,
the autoscaler, the activator's flushes), divided by the requests the activator answered
meanwhile (its own counter: wrk counts only the calls that both started and ended in the
window, far fewer than were served when a call takes seconds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import LoadResult, wrk_closed
from _stats import table
from limits import cpu_bound, sklearn_model

from lowtide import Client
from lowtide._local import start_local_cluster

CONNECTIONS = (32, 128, 512)


def trivial(x: int) -> int:
    return x


def functions() -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    predict, body = sklearn_model()
    return [("trivial", trivial, {"x": 1}), ("cpu-bound", cpu_bound, {"x": 1}),
            ("sklearn-rf", predict, body)]


def answered(activator_url: str) -> float:
    text = httpx.get(f"{activator_url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("lowtide_activator_requests_total{"))


def commands(redis: Redis) -> int:
    stats = redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def deploy(client: Client, name: str, fn: Callable[..., Any], body: dict[str, Any]) -> str:
    ep = client.deploy(fn, name=name, min_replicas=1, max_replicas=1)
    ep.call(**body)
    return ep.url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="measurements per side and load")
    p.add_argument("--connections", type=int, nargs="*", default=list(CONNECTIONS))
    p.add_argument("--only", nargs="*", help="function labels to run (default: all)")
    args = p.parse_args()
    fns = [f for f in functions() if not args.only or f[0] in args.only]
    rows = [["function", "conns", "limit", "learned req/s", "admit-all req/s", "ratio",
             "learned p50/p99 ms", "admit-all p50/p99 ms", "Redis cmds/req (learned)"]]
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, ExitStack() as stack:
        learned_cluster = stack.enter_context(start_local_cluster(Path(tmp) / "learned"))
        fixed_cluster = stack.enter_context(start_local_cluster(
            Path(tmp) / "fixed", env={"LOWTIDE_FIXED_CONCURRENCY": "1000"}))
        learned_client, fixed_client = learned_cluster.client(), fixed_cluster.client()
        redis = Redis.from_url(learned_cluster.config.redis_url)
        activator = learned_cluster.config.activator_url
        for label, fn, body in fns:
            name = f"bench-{label}"
            urls = {"learned": deploy(learned_client, name, fn, body),
                    "fixed": deploy(fixed_client, name, fn, body)}
            for c in args.connections:
                for url in urls.values():  # the limit learns, connections open
                    wrk_closed(url, body, c, 2)
                runs: dict[str, list[LoadResult]] = {"learned": [], "fixed": []}
                per_request: list[float] = []
                for _ in range(args.rounds):
                    for side, url in urls.items():
                        if side == "learned":
                            before = commands(redis), answered(activator)
                        r = wrk_closed(url, body, c, args.duration)
                        runs[side].append(r)
                        if side == "learned":
                            n = answered(activator) - before[1]
                            per_request.append((commands(redis) - before[0]) / max(1, n))
                learned, fixed = (_mean(runs["learned"]), _mean(runs["fixed"]))
                limit = learned_client.status(name)["replicas"]["items"][0]["limit"]
                rows.append([label, str(c), str(limit), f"{learned.rps:.0f}",
                             f"{fixed.rps:.0f}",
                             f"{learned.rps / max(fixed.rps, 1e-9):.2f}",
                             f"{learned.p50_ms:.0f}/{learned.p99_ms:.0f}",
                             f"{fixed.p50_ms:.0f}/{fixed.p99_ms:.0f}",
                             f"{statistics.median(per_request):.2f}"])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
            learned_client.delete(name)
            fixed_client.delete(name)
        redis.close()
        learned_client.close()
        fixed_client.close()
    print(f"one replica per side, wrk closed loop, {args.rounds} x {args.duration:g} s per "
          "side and load, interleaved")
    print(table(rows))


def _mean(runs: list[LoadResult]) -> LoadResult:
    return LoadResult(sum(r.n for r in runs), sum(r.errors for r in runs),
                      statistics.fmean(r.rps for r in runs),
                      statistics.median(r.p50_ms for r in runs),
                      statistics.median(r.p99_ms for r in runs))


if __name__ == "__main__":
    main()
