"""Cold start of a trivial function: time from a request to a zero-replica endpoint until
its response, over repeated cold starts, against the warm latency of the same function and a
direct call to its replica (the baselines, measured in the same run).

    python bench/cold_start.py [--runs 20] [--warm 300]

Starts its own cluster (`lowtide up`, embedded Redis, keep-alive 0 so every request after
the first idle tick finds the endpoint at zero) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import summary_ms, table  # noqa: E402

from lowtide._local import start_local_cluster  # noqa: E402


def wait_at_zero(client, name: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        s = client.status(name)
        if s["replicas"]["desired"] == 0 and not s["replicas"]["items"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not reach zero replicas: {s['replicas']}")
        time.sleep(0.05)


def time_calls(http: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = http.post(url, json={"x": i})
        out.append(time.perf_counter() - t0)
        if r.status_code != 200 or r.json() != i * 2:
            raise RuntimeError(f"bad answer {r.status_code}: {r.text}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="cold starts to time")
    p.add_argument("--warm", type=int, default=300, help="warm calls to time")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-") as tmp, \
            start_local_cluster(Path(tmp), keep_alive_s=0) as cluster, \
            httpx.Client(timeout=180) as http:
        client = cluster.client()
        ep = client.deploy(lambda x: x * 2, name="bench-cold")
        url = ep.url
        assert ep(1) == 2  # builds the Bento once; not part of the figures
        cold = []
        for i in range(args.runs):
            wait_at_zero(client, ep.name)
            cold += time_calls(http, url, 1)
            print(f"cold start {i + 1}/{args.runs}: {cold[-1] * 1000:.0f} ms", file=sys.stderr)
        warm_ep = client.deploy(lambda x: x * 2, name="bench-warm", min_replicas=1)
        assert warm_ep(1) == 2
        time_calls(http, warm_ep.url, 20)  # connection pools, first-call paths
        warm = time_calls(http, warm_ep.url, args.warm)
        replica = client.status(warm_ep.name)["replicas"]["items"][0]["address"]
        direct = time_calls(http, f"http://{replica}/lt/invoke", args.warm)
        client.close()
    rows = [["path", "n", "p50 ms", "p99 ms", "p50 / warm p50"]]
    warm_p50 = summary_ms(warm)["p50"]
    for label, values in (("cold start (0 -> 1 replica)", cold), ("warm via activator", warm),
                          ("direct to replica", direct)):
        s = summary_ms(values)
        rows.append([label, str(s["n"]), f"{s['p50']:.1f}", f"{s['p99']:.1f}",
                     f"{s['p50'] / warm_p50:.1f}x"])
    print(table(rows))


if __name__ == "__main__":
    main()
