"""Past capacity: the learned limit (requests over it wait in the activator's memory, then in
the stream) against admitting everything (LOWTIDE_FIXED_CONCURRENCY=1000), both through the
activator, one replica, wrk closed loops at 32, 128 and 512 connections.

    pip install -e '.[bench]' scikit-learn; python bench/saturation.py [--duration 3] [--rounds 2]

Two clusters run side by side (one with each setting) and the measurements take turns
(learned, admit-all, learned, ...), so a slow spell of a shared machine does not fall on one
side alone; each figure is the mean (req/s) or median (p50, p99) over the rounds. Functions:
trivial (returns its argument), CPU-bound (about 20 ms of pure Python) and a scikit-learn
RandomForest (50 trees) predicting one digits row.

How each measurement runs, so that a slow function at 512 callers measures its steady state:
- throughput is counted by the activator (its 200 answers for the endpoint) over a window
  that starts after a warm-up inside the same wrk run: a closed loop of c callers of a
  function that serves X calls a second turns over once every c / X seconds (10 s for 512
  callers of a 20 ms function), and with every call admitted the replica shares its one
  core among all of them, so the first answers come only after about that long and later
  ones in bursts. The warm-up is one such turn (at the rate measured so far for the
  function; at most 10 s), the window at least `--duration` and two turns (at most 10 s);
- p50 and p99 are wrk's, over the whole run (warm-up included);
- afterwards the side is left to settle (its replica and its activator run nothing) before
  the other side is measured: calls that wrk's callers had sent still run when wrk stops,
  and would otherwise take the other side's CPU.

CPU per request: the CPU seconds of each cluster's processes over the window (wrk's not
counted) per request answered; on a shared machine this moves less than throughput does
with what else runs (a side that needs more CPU per request is slower on a busy 2-core
machine, whatever the neighbours do).

Redis commands per request: INFO commandstats of the learned cluster's Redis over the same
window, less the background's rate (heartbeats, the autoscaler, the activator's flushes,
the replica's stream polls: measured with the endpoint idle before its loads), divided by
the requests the activator answered in it; and the share of those requests it sent to the
stream (its spilled counter: a long expected wait, its queue bound, refused as busy too
often).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import LoadResult, wrk_closed
from _stats import table
from limits import cpu_bound, sklearn_model

from lowtide import Client
from lowtide._local import LocalCluster, start_local_cluster

CONNECTIONS = (32, 128, 512)
MAX_WINDOW_S = 10.0


def trivial(x: int) -> int:
    return x


def functions() -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    predict, body = sklearn_model()
    return [("trivial", trivial, {"x": 1}), ("cpu-bound", cpu_bound, {"x": 1}),
            ("sklearn-rf", predict, body)]


@dataclass
class Side:
    name: str
    cluster: LocalCluster
    client: Client
    redis: Redis
    url: str = ""

    idle_commands_per_s: float = 0.0  # the background's (heartbeats, autoscaler, flushes)

    def counters(self, endpoint: str) -> tuple[float, float]:
        """The endpoint's 200 answers and its synchronous requests sent to the stream so
        far, as the activator counts them."""
        text = httpx.get(f"{self.cluster.config.activator_url}/metrics", timeout=30).text
        tag = f'endpoint="{endpoint}"'
        lines = [line for line in text.splitlines() if tag in line]
        return (sum(float(line.rsplit(" ", 1)[1]) for line in lines
                    if line.startswith("lowtide_activator_requests_total{")
                    and 'status="200"' in line),
                sum(float(line.rsplit(" ", 1)[1]) for line in lines
                    if line.startswith("lowtide_activator_spilled_total{")))

    def measure_idle(self, seconds: float = 3.0) -> None:
        before = self.commands()
        time.sleep(seconds)
        self.idle_commands_per_s = (self.commands() - before) / seconds

    def cpu_s(self) -> float:
        """CPU seconds used so far by the cluster's processes (Redis, platform, activator,
        agent, replicas), wrk's excluded."""
        total = 0.0
        try:
            procs = [psutil.Process(self.cluster.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return total
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    def commands(self) -> int:
        return sum(int(v["calls"]) for v in self.redis.info("commandstats").values())

    def settle(self, endpoint: str, timeout_s: float = 120.0) -> None:
        """Wait until the replica runs nothing and nothing waits (in memory or the stream)."""
        deadline = time.monotonic() + timeout_s
        time.sleep(1.0)  # the heartbeat reports in_flight about once a second
        while time.monotonic() < deadline:
            s = self.client.status(endpoint)
            busy = sum(r.get("in_flight") or 0 for r in s["replicas"]["items"])
            queue = s.get("queue") or {}
            if not busy and not queue.get("depth") and not queue.get("in_memory"):
                return
            time.sleep(0.5)


@dataclass
class Measured:
    rps: float  # counted by the activator over the window
    wrk: LoadResult
    commands_per_request: float  # over the background's rate
    spilled: float  # the share of the window's requests sent to the stream
    cpu_ms: float  # the cluster's CPU per request answered (ms)


def measure(side: Side, endpoint: str, body: dict[str, Any], connections: int,
            warm_s: float, window_s: float) -> Measured:
    out: list[LoadResult] = []
    run = threading.Thread(target=lambda: out.append(
        wrk_closed(side.url, body, connections, warm_s + window_s + 1)))
    run.start()
    time.sleep(warm_s)
    (n0, s0), c0, t0 = side.counters(endpoint), side.commands(), time.monotonic()
    cpu0 = side.cpu_s()
    time.sleep(window_s)
    cpu1 = side.cpu_s()
    (n1, s1), c1, t1 = side.counters(endpoint), side.commands(), time.monotonic()
    run.join()
    side.settle(endpoint)
    n = max(1.0, n1 - n0)
    extra = max(0.0, c1 - c0 - side.idle_commands_per_s * (t1 - t0))
    return Measured((n1 - n0) / (t1 - t0), out[0], extra / n, (s1 - s0) / n,
                    (cpu1 - cpu0) * 1000 / n)


def deploy(client: Client, name: str, fn: Callable[..., Any], body: dict[str, Any]) -> str:
    ep = client.deploy(fn, name=name, min_replicas=1, max_replicas=1)
    ep.call(**body)
    return ep.url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per window, at least")
    p.add_argument("--rounds", type=int, default=2, help="measurements per side and load")
    p.add_argument("--connections", type=int, nargs="*", default=list(CONNECTIONS))
    p.add_argument("--only", nargs="*", help="function labels to run (default: all)")
    args = p.parse_args()
    fns = [f for f in functions() if not args.only or f[0] in args.only]
    rows = [["function", "conns", "limit", "learned req/s", "admit-all req/s", "ratio",
             "learned p50/p99 ms", "admit-all p50/p99 ms", "Redis cmds/req (learned)",
             "spilled (learned)", "CPU ms/req learned/admit-all", "warm-up+window s"]]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, ExitStack() as stack:
        sides = []
        for name, env in (("learned", {}), ("admit-all", {"LOWTIDE_FIXED_CONCURRENCY": "1000"})):
            cluster = stack.enter_context(start_local_cluster(Path(tmp) / name, env=env))
            sides.append(Side(name, cluster, cluster.client(),
                              Redis.from_url(cluster.config.redis_url)))
        learned_side = sides[0]
        for label, fn, body in fns:
            name = f"bench-{label}"
            for side in sides:
                side.url = deploy(side.client, name, fn, body)
            rate = max(wrk_closed(s.url, body, 8, 2).rps for s in sides)  # and connections open
            learned_side.measure_idle()
            for c in args.connections:
                turn_s = c / max(rate, 1.0)  # one turn of the closed loop (Little's law)
                warm_s = min(MAX_WINDOW_S, max(1.5, 1.2 * turn_s))
                window_s = min(MAX_WINDOW_S, max(args.duration, 2 * turn_s))
                runs: dict[str, list[Measured]] = {s.name: [] for s in sides}
                for _ in range(args.rounds):
                    for side in sides:
                        runs[side.name].append(measure(side, name, body, c, warm_s, window_s))
                learned, fixed = runs["learned"], runs["admit-all"]
                l_rps = statistics.fmean(m.rps for m in learned)
                f_rps = statistics.fmean(m.rps for m in fixed)
                rate = max(rate, l_rps, f_rps)
                items = learned_side.client.status(name)["replicas"]["items"]
                limit = items[0]["limit"] if items else "?"
                rows.append([label, str(c), str(limit), f"{l_rps:.0f}", f"{f_rps:.0f}",
                             f"{l_rps / max(f_rps, 1e-9):.2f}", _latency(learned),
                             _latency(fixed),
                             f"{statistics.median(m.commands_per_request for m in learned):.2f}",
                             f"{statistics.fmean(m.spilled for m in learned):.1%}",
                             f"{statistics.median(m.cpu_ms for m in learned):.2f}/"
                             f"{statistics.median(m.cpu_ms for m in fixed):.2f}",
                             f"{warm_s:.1f}+{window_s:.1f}"])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
            for side in sides:
                side.client.delete(name)
        for side in sides:
            side.redis.close()
            side.client.close()
    print(f"one replica per side, wrk closed loop, {args.rounds} rounds per side and load, "
          f"interleaved; req/s counted by the activator over the window (after the warm-up); "
          f"{time.monotonic() - started:.0f} s in all")
    print(table(rows))


def _latency(runs: list[Measured]) -> str:
    return (f"{statistics.median(m.wrk.p50_ms for m in runs):.0f}/"
            f"{statistics.median(m.wrk.p99_ms for m in runs):.0f}")


if __name__ == "__main__":
    main()
