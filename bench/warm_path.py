"""Warm path: a trivial function on one warm replica, called through the activator and
straight at the replica (the baseline), in the same run.

    python bench/warm_path.py [--duration 10] [--concurrency 32] [--rounds 5]

1. Throughput: wrk with `--concurrency` connections, direct and through the activator
   (the replica is the bottleneck: one BentoML worker process).
2. Latency at half of one replica's maximum throughput (open loop: wrk sending on a fixed
   schedule, `--connections` connections): p50/p99 direct and through the activator, and
   what the activator adds, and the CPU time the activator and the replica spend per
   request (their own counters). The generator is wrk, not Python: on 2 cores a Python
   generator at this rate takes most of a core from the servers it measures.

Both on a cluster whose replicas admit everything (LOWTIDE_FIXED_CONCURRENCY=1000: the
data path alone, and a direct baseline a learned limit would not refuse), then through the
activator again on a cluster with the learned limit.

Starts its own cluster (`lowtide up`, embedded Redis) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import LoadResult, wrk_closed, wrk_paced
from _stats import table

from lowtide import Client
from lowtide._local import LocalCluster, start_local_cluster


def row(label: str, r: LoadResult, base: LoadResult) -> list[str]:
    return [label, str(r.n), str(r.errors), f"{r.rps:.0f}", f"{r.rps / base.rps:.2f}",
            f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.p50_ms - base.p50_ms:+.2f}",
            f"{r.p99_ms - base.p99_ms:+.2f}"]


def listening(url: str) -> list[psutil.Process]:
    """The processes listening on the URL's port (a BentoML server and its worker process
    share the replica's socket)."""
    port = urlsplit(url).port
    pids = {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    return [psutil.Process(pid) for pid in pids]


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def interleaved(urls: dict[str, str], body: dict[str, int], rate: float, duration_s: float,
                rounds: int, connections: int, servers: dict[str, list[psutil.Process]]
                ) -> tuple[dict[str, list[LoadResult]], dict[str, dict[str, list[float]]]]:
    """Open-loop rounds at `rate`, the paths taking turns, so a slow spell of the machine
    does not fall on one path alone. Also the CPU time each server process spent per
    request in each round (ms), from its own counters."""
    runs: dict[str, list[LoadResult]] = {label: [] for label in urls}
    cpu: dict[str, dict[str, list[float]]] = {label: {s: [] for s in servers}
                                              for label in urls}
    for _ in range(rounds):
        for label, url in urls.items():
            before = {name: cpu_s(procs) for name, procs in servers.items()}
            r = wrk_paced(url, body, rate, duration_s, connections)
            runs[label].append(r)
            for name, procs in servers.items():
                cpu[label][name].append((cpu_s(procs) - before[name]) * 1000 / max(1, r.n))
    return runs, cpu


def combined(runs: list[LoadResult]) -> LoadResult:
    return LoadResult(sum(r.n for r in runs), sum(r.errors for r in runs),
                      statistics.fmean(r.rps for r in runs),
                      statistics.median(r.p50_ms for r in runs),
                      statistics.median(r.p99_ms for r in runs))


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
    p.add_argument("--rounds", type=int, default=5,
                   help="open-loop rounds per path at half load (seconds: --duration each)")
    p.add_argument("--connections", type=int, default=64,
                   help="wrk connections of the open-loop rounds (far above rate x latency)")
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
        servers = {"activator": listening(via), "replica": listening(direct)}
        half, half_cpu = interleaved({"direct": direct, "via": via}, body, rate, d,
                                     args.rounds, args.connections, servers)
        client.close()
    # 2. the same through the activator with the learned limit
    del os.environ["LOWTIDE_FIXED_CONCURRENCY"]
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp)) as cluster:
        client, via, direct = warm_replica(cluster, "bench-warm")
        wrk_closed(via, body, c, 5)  # lets the limit settle
        peak_learned = wrk_closed(via, body, c, d)
        servers = {"activator": listening(via), "replica": listening(direct)}
        learned, learned_cpu = interleaved({"direct": direct, "via": via}, body, rate, d,
                                           args.rounds, args.connections, servers)
        limit = client.status("bench-warm")["replicas"]["items"][0]["limit"]
        client.close()
    head = ["path", "n", "errors", "req/s", "/ direct", "p50 ms", "p99 ms", "+p50 ms",
            "+p99 ms"]
    print(f"max throughput: wrk, {c} connections, {d:g} s")
    print(table([head, row("direct to replica", peak_direct, peak_direct),
                 row("via activator", peak_via, peak_direct),
                 row(f"via activator, learned limit ({limit})", peak_learned, peak_direct)]))
    print(f"\nhalf of the replica's max: open loop at {rate:.0f} req/s (wrk, "
          f"{args.connections} connections), {args.rounds} rounds of {d:g} s per path, "
          "direct and via interleaved")
    rows = [[*head, "best p99 ms", "worst p99 ms", "activator CPU ms/req",
             "replica CPU ms/req"]]
    for label, runs, base, cpu in (
            ("direct to replica", half["direct"], half["direct"], half_cpu["direct"]),
            ("via activator", half["via"], half["direct"], half_cpu["via"]),
            ("direct to replica (learned)", learned["direct"], learned["direct"],
             learned_cpu["direct"]),
            ("via activator, learned limit", learned["via"], learned["direct"],
             learned_cpu["via"])):
        r, b = combined(runs), combined(base)
        rows.append([*row(label, r, b), f"{min(x.p99_ms for x in runs):.2f}",
                     f"{max(x.p99_ms for x in runs):.2f}",
                     f"{statistics.median(cpu['activator']):.3f}",
                     f"{statistics.median(cpu['replica']):.3f}"])
    print(table(rows))
    print("p50/p99: the median over the rounds (a stall of the machine lands in one round "
          "of one path; 'best'/'worst p99' show the spread); latency is wrk's, from the moment "
          "each request was written; CPU per request: user + system time of the process(es) "
          "listening on the activator's and the replica's port over a round / requests in it "
          "(median over the rounds)")


if __name__ == "__main__":
    main()
