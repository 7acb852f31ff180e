"""Cold starts: time from a request to a zero-replica endpoint until its response, with and
without the prewarmed pool, for a trivial function, a scikit-learn model and a small torch
CPU model; the warm latency of each is the floor (measured in the same run).

    python bench/cold_start.py [--runs 20] [--warm 50] [--functions trivial,sklearn,torch]

Each mode starts its own cluster (`lowtide up`, embedded Redis, keep-alive 1 s, and
`--no-pool` for the mode without the pool). Before each cold start the endpoint is back at
zero replicas and, with the pool, an idle pool worker is ready. Prints one table, and the
median start-up phases the replicas recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import summary_ms, table

from lowtide._local import LocalCluster, start_local_cluster


def trivial() -> tuple[Callable[..., Any], dict[str, Any], Any]:
    return (lambda x: x * 2), {"x": 21}, 42


def sklearn_model() -> tuple[Callable[..., Any], dict[str, Any], Any]:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(data.data, data.target)
    row = [float(v) for v in data.data[0]]

    def predict(features):
        return int(model.predict([features])[0])

    return predict, {"features": row}, int(data.target[0])


def torch_model() -> tuple[Callable[..., Any], dict[str, Any], Any]:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10)).eval()
    x = [0.01 * i for i in range(64)]
    with torch.no_grad():
        expected = int(net(torch.tensor([x])).argmax())

    def predict(features):
        import torch as t

        with t.no_grad():
            return int(net(t.tensor([features])).argmax())

    return predict, {"features": x}, expected


FUNCTIONS = {"trivial": trivial, "sklearn": sklearn_model, "torch": torch_model}


def _status(cluster: LocalCluster, path: str) -> Any:
    headers = {"Authorization": f"Bearer {cluster.config.token}"}
    return httpx.get(f"{cluster.config.platform_url}{path}", headers=headers, timeout=10).json()


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def at_zero(cluster: LocalCluster, name: str) -> bool:
    r = _status(cluster, f"/v1/deployments/{name}")["replicas"]
    return r["desired"] == 0 and not r["items"]


def pool_ready(cluster: LocalCluster) -> bool:
    hosts = _status(cluster, "/v1/hosts")["hosts"]
    return bool(hosts) and hosts[0]["load"]["pool"]["ready"] >= 1


def call(http: httpx.Client, url: str, payload: dict[str, Any], expected: Any) -> float:
    t0 = time.perf_counter()
    r = http.post(url, json=payload)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200 or r.json() != expected:
        raise RuntimeError(f"bad answer {r.status_code}: {r.text[:300]}")
    return elapsed


def measure(cluster: LocalCluster, pool: bool, kind: str, runs: int, warm_n: int,
            http: httpx.Client) -> dict[str, Any]:
    fn, payload, expected = FUNCTIONS[kind]()
    client = cluster.client()
    name = f"cold-{kind}"
    ep = client.deploy(fn, name=name)
    call(http, ep.url, payload, expected)  # builds the Bento once; not part of the figures
    cold, warm = [], []
    for i in range(runs):
        wait_until(lambda: at_zero(cluster, name), "zero replicas")
        if pool:
            wait_until(lambda: pool_ready(cluster), "an idle pool worker")
        cold.append(call(http, ep.url, payload, expected))
        if i == 0:
            warm = [call(http, ep.url, payload, expected) for _ in range(warm_n)]
        print(f"  {kind:8} {'pool' if pool else 'no pool'} cold start {i + 1}/{runs}: "
              f"{cold[-1] * 1000:.0f} ms", file=sys.stderr)
    phases = [e["inputs"] for e in client.events(name, limit=1000)
              if e["kind"] == "replica" and "total_s" in (e.get("inputs") or {})]
    client.close()
    return {"cold": cold, "warm": warm, "phases": phases}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="cold starts per function and mode")
    p.add_argument("--warm", type=int, default=50, help="warm calls per function")
    p.add_argument("--functions", default="trivial,sklearn,torch")
    p.add_argument("--preload", default="",
                   help="LOWTIDE_POOL_PRELOAD for the pool workers (e.g. numpy,torch)")
    args = p.parse_args()
    kinds = [k for k in args.functions.split(",") if k]
    results: dict[tuple[str, bool], dict[str, Any]] = {}
    for pool in (True, False):
        extra = () if pool else ("--no-pool",)
        if args.preload:
            os.environ["LOWTIDE_POOL_PRELOAD"] = args.preload
        with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
                start_local_cluster(Path(tmp), keep_alive_s=1, extra_args=extra) as cluster, \
                httpx.Client(timeout=300) as http:
            for kind in kinds:
                results[kind, pool] = measure(cluster, pool, kind, args.runs, args.warm, http)
    rows = [["function", "path", "n", "p50 ms", "p99 ms", "p50 / warm p50",
             "no pool p50 / pool p50"]]
    for kind in kinds:
        warm = summary_ms(results[kind, True]["warm"])
        pool_s = summary_ms(results[kind, True]["cold"])
        full_s = summary_ms(results[kind, False]["cold"])
        rows.append([kind, "warm (floor)", str(warm["n"]), f"{warm['p50']:.1f}",
                     f"{warm['p99']:.1f}", "1.0x", ""])
        rows.append([kind, "cold, pool", str(pool_s["n"]), f"{pool_s['p50']:.0f}",
                     f"{pool_s['p99']:.0f}", f"{pool_s['p50'] / warm['p50']:.0f}x",
                     f"{full_s['p50'] / pool_s['p50']:.1f}x"])
        rows.append([kind, "cold, no pool", str(full_s["n"]), f"{full_s['p50']:.0f}",
                     f"{full_s['p99']:.0f}", f"{full_s['p50'] / warm['p50']:.0f}x", ""])
    print(table(rows))
    print("\nmedian start-up phases recorded by the replicas (ms):")
    phase_rows = [["function", "path", "queue", "start", "function load", "total"]]
    for (kind, pool), res in results.items():
        ph = [x for x in res["phases"] if x.get("path") == ("pool" if pool else "full")]
        if not ph:
            continue

        def med(key: str, ph: list[dict[str, Any]] = ph) -> str:
            return f"{statistics.median(x[key] for x in ph) * 1000:.0f}"

        phase_rows.append([kind, "pool" if pool else "full", med("queue_s"), med("start_s"),
                           med("load_s"), med("total_s")])
    print(table(phase_rows))


if __name__ == "__main__":
    main()
