"""Learned concurrency limits: for a CPU-bound function (about 20 ms of pure Python), an
I/O-bound one (awaits 100 ms) and a real scikit-learn model (a RandomForest trained on the
bundled digits dataset), the limit one replica learned under sustained load, and the
throughput through the activator at that limit against the best of a sweep of fixed limits
(1, 2, 4, ..., 256) measured in the same run.

    pip install -e '.[bench]'; python bench/limits.py [--duration 15] [--offered 256]

- learned: a cluster as deployed, one replica per function, `--offered` wrk connections
  through the activator (requests over the limit wait in the stream); the limit is read
  from the deployment status every second of the measurement (median and range shown).
- fixed: a cluster whose replicas admit everything (LOWTIDE_FIXED_CONCURRENCY=1000), wrk
  with c connections straight to the replica, so at most c requests run at once; once more
  with c = the learned limit, so the learned value is judged on the same path as the sweep.

Two ratios against the best fixed limit: the learned limit's own (same path), and the whole
learned run through the activator (which adds the activator and, for callers over the
limit, the Redis stream).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import LoadResult, wrk_closed
from _stats import table

from lowtide import Client
from lowtide._local import start_local_cluster

SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def cpu_bound(x: int) -> int:
    """A fixed amount of pure-Python work (about 20 ms here): not a wall-clock busy-wait,
    which would finish in 20 ms of wall time however many threads share the GIL."""
    total = 0
    for i in range(250_000):
        total += i * i
    return x + (total & 0)


async def io_bound(x: int) -> int:
    import asyncio

    await asyncio.sleep(0.100)
    return x


def sklearn_model() -> tuple[Callable[..., Any], dict[str, Any]]:
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    digits = load_digits()
    model = RandomForestClassifier(n_estimators=50, random_state=0)
    model.fit(digits.data, digits.target)
    row = [float(v) for v in digits.data[0]]

    def predict(features: list[float]) -> int:
        return int(model.predict([features])[0])

    return predict, {"features": row}


MAX_SWEEP_S = 40.0


def functions() -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    predict, body = sklearn_model()
    return [("cpu-bound", cpu_bound, {"x": 1}), ("io-bound", io_bound, {"x": 1}),
            ("sklearn-rf", predict, body)]


def replica(client: Client, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The endpoint's ready replica (its status may lag while a heavy run ends)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ready = [r for r in client.status(name)["replicas"]["items"] if r["state"] == "ready"]
        if ready:
            return ready[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: no ready replica for {timeout_s:g} s")
        time.sleep(0.5)


def drain(client: Client, name: str, timeout_s: float = 300.0) -> None:
    """Wait until the endpoint's stream holds nothing (abandoned callers' requests are still
    answered, and would take the measured run's capacity)."""
    deadline = time.monotonic() + timeout_s
    while client.status(name)["queue"]["depth"] > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the queue did not drain in {timeout_s:g} s")
        time.sleep(0.5)


def settle(client: Client, name: str, timeout_s: float = 60.0) -> None:
    """Wait until the replica runs nothing: when wrk stops, the requests its connections
    had sent still run, and would take the next measurement's capacity."""
    deadline = time.monotonic() + timeout_s
    time.sleep(1.0)  # the heartbeat reports in_flight about once a second
    while replica(client, name)["in_flight"] > 0 and time.monotonic() < deadline:
        time.sleep(0.5)


def learned_run(client: Client, name: str, url: str, body: dict[str, Any], offered: int,
                duration_s: float) -> tuple[LoadResult, list[int], dict[str, Any]]:
    wrk_closed(url, body, offered, duration_s)  # the limit learns; not measured
    drain(client, name)  # the warm-up's backlog must not count in the measured run
    limits: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            limits.append(replica(client, name)["limit"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = wrk_closed(url, body, offered, duration_s)
    stop.set()
    sampler.join()
    return result, limits, replica(client, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    p.add_argument("--sweep-duration", type=float, default=5.0,
                   help="seconds per fixed limit, at least (longer where c callers need it: "
                   "three call times at the rate measured so far, up to 40 s)")
    p.add_argument("--offered", type=int, default=256,
                   help="concurrent callers through the activator")
    args = p.parse_args()
    fns = functions()
    learned: dict[str, tuple[LoadResult, list[int], dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp)) as cluster:
        client = cluster.client()
        for label, fn, body in fns:
            ep = client.deploy(fn, name=f"bench-{label}", min_replicas=1, max_replicas=1)
            ep.call(**body)
            learned[label] = learned_run(client, ep.name, ep.url, body, args.offered,
                                         args.duration)
            print(f"{label}: learned {learned[label][1]}", file=sys.stderr)
            ep.delete()
        client.close()
    sweeps: dict[str, dict[int, LoadResult]] = {}
    at_learned: dict[str, LoadResult] = {}  # the same fixed-limit run at the learned limit

    def learned_limit(label: str) -> int:
        _result, limits, view = learned[label]
        return max(1, round(statistics.median(limits) if limits else view["limit"]))

    os.environ["LOWTIDE_FIXED_CONCURRENCY"] = "1000"
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp)) as cluster:
        client = cluster.client()
        for label, fn, body in fns:
            ep = client.deploy(fn, name=f"bench-{label}", min_replicas=1, max_replicas=1)
            ep.call(**body)
            direct = f"http://{replica(client, ep.name)['address']}/lt/invoke"
            at_learned[label] = wrk_closed(direct, body, learned_limit(label),
                                           args.sweep_duration)
            sweeps[label] = {}
            rps = at_learned[label].rps
            for c in SWEEP:
                settle(client, ep.name)
                # c callers at the last rate take c / rps seconds per call (Little's law): a
                # window of several call times, or a slow function at c=256 completes nothing
                duration_s = min(MAX_SWEEP_S, max(args.sweep_duration, 3 * c / max(rps, 1.0)))
                sweeps[label][c] = wrk_closed(direct, body, c, duration_s)
                rps = max(rps, sweeps[label][c].rps)
            print(f"{label}: sweep " + ", ".join(f"{c}: {r.rps:.0f}/s"
                                                 for c, r in sweeps[label].items()),
                  file=sys.stderr)
            ep.delete()
        client.close()
    cores = os.cpu_count()
    rows = [["function", "learned limit (median, range)", "no-load ms",
             "req/s at learned, direct", "ratio", "req/s via activator", "p50 ms", "p99 ms",
             "ratio", "best fixed (req/s)"]]
    for label, _fn, _body in fns:
        result, limits, view = learned[label]
        best_c, best = max(sweeps[label].items(), key=lambda kv: kv[1].rps)
        med = statistics.median(limits) if limits else view["limit"]
        same = at_learned[label]
        rows.append([label, f"{med:g} ({min(limits, default=0)}-{max(limits, default=0)})",
                     f"{view.get('no_load_ms') or float('nan'):.1f}", f"{same.rps:.0f}",
                     f"{same.rps / best.rps:.2f}", f"{result.rps:.0f}",
                     f"{result.p50_ms:.0f}", f"{result.p99_ms:.0f}",
                     f"{result.rps / best.rps:.2f}", f"{best_c} ({best.rps:.0f})"])
    print(f"one replica (one BentoML worker process) on {cores} cores; learned under "
          f"{args.offered} callers through the activator, {args.duration:g} s")
    print("- at learned, direct: wrk straight to the replica with as many connections as the "
          "learned limit (the limit's own worth, same path as the sweep)")
    print("- via activator: the learned run itself, end to end (callers over the limit wait "
          "in the Redis stream, so this includes the buffered path's cost)")
    print(table(rows))
    print("\nfixed-limit sweep, direct to the replica (req/s):")
    sweep_rows = [["function", *map(str, SWEEP)]]
    for label, _fn, _body in fns:
        sweep_rows.append([label, *(f"{sweeps[label][c].rps:.0f}" for c in SWEEP)])
    print(table(sweep_rows))


if __name__ == "__main__":
    main()
