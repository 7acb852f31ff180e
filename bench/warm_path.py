"""Warm path: a trivial function on one warm replica, called through the activator and
straight at the replica (the baseline), in the same run.

    python bench/warm_path.py [--duration 10] [--concurrency 32]

1. Throughput: wrk with `--concurrency` connections, direct and through the activator
   (the replica is the bottleneck: one BentoML worker process).
2. Latency at half of one replica's maximum throughput (open loop, aiohttp in its own
   process): p50/p99 direct and through the activator, and what the activator adds.

Both on a cluster whose replicas admit everything (LOWTIDE_FIXED_CONCURRENCY=1000: the
data path alone, and a direct baseline a learned limit would not refuse), then through the
activator again on a cluster with the learned limit.

Starts its own cluster (`lowtide up`, embedded Redis) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import LoadResult, open_loop, wrk_closed
from _stats import table

from lowtide import Client
from lowtide._local import LocalCluster, start_local_cluster


def row(label: str, r: LoadResult, base: LoadResult) -> list[str]:
    return [label, str(r.n), str(r.errors), f"{r.rps:.0f}", f"{r.rps / base.rps:.2f}",
            f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.p50_ms - base.p50_ms:+.2f}",
            f"{r.p99_ms - base.p99_ms:+.2f}"]


def warm_replica(cluster: LocalCluster, name: str) -> tuple[Client, str, str]:
    client = cluster.client()
    ep = client.deploy(lambda x: x * 2, name=name, min_replicas=1, max_replicas=1)
    assert ep(21) == 42
    replica = client.status(ep.name)["replicas"]["items"][0]["address"]
    return client, ep.url, f"http://{replica}/lt/invoke"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    args = p.parse_args()
    body, d, c = {"x": 21}, args.duration, args.concurrency
    # 1. the data path alone: the replica admits everything, so direct calls are a fair
    #    baseline (a learned limit would refuse direct calls over it)
    os.environ["LOWTIDE_FIXED_CONCURRENCY"] = "1000"
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp)) as cluster:
        client, via, direct = warm_replica(cluster, "bench-warm")
        wrk_closed(via, body, c, 3)  # warm both paths
        wrk_closed(direct, body, c, 3)
        peak_direct = wrk_closed(direct, body, c, d)
        peak_via = wrk_closed(via, body, c, d)
        rate = peak_direct.rps / 2
        half_direct = open_loop(direct, body, rate, d)
        half_via = open_loop(via, body, rate, d)
        client.close()
    # 2. the same through the activator with the learned limit
    del os.environ["LOWTIDE_FIXED_CONCURRENCY"]
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp)) as cluster:
        client, via, direct = warm_replica(cluster, "bench-warm")
        wrk_closed(via, body, c, 5)  # lets the limit settle
        peak_learned = wrk_closed(via, body, c, d)
        half_learned = open_loop(via, body, rate, d)
        limit = client.status("bench-warm")["replicas"]["items"][0]["limit"]
        client.close()
    head = ["path", "n", "errors", "req/s", "/ direct", "p50 ms", "p99 ms", "+p50 ms",
            "+p99 ms"]
    print(f"max throughput: wrk, {c} connections, {d:g} s")
    print(table([head, row("direct to replica", peak_direct, peak_direct),
                 row("via activator", peak_via, peak_direct),
                 row(f"via activator, learned limit ({limit})", peak_learned, peak_direct)]))
    print(f"\nhalf of the replica's max: open loop at {rate:.0f} req/s, {d:g} s")
    print(table([[*head, "gen late p99 ms"],
                 [*row("direct to replica", half_direct, half_direct),
                  f"{half_direct.late_p99_ms:.2f}"],
                 [*row("via activator", half_via, half_direct), f"{half_via.late_p99_ms:.2f}"],
                 [*row("via activator, learned limit", half_learned, half_direct),
                  f"{half_learned.late_p99_ms:.2f}"]]))
    print("latency from the moment each request was sent (perf_counter); 'gen late': how "
          "late the load generator sent, which is not counted")


if __name__ == "__main__":
    main()
