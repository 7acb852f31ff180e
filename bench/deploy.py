"""Deploy cost with content-addressed blobs: the same large artifact deployed under many names,
and redeployed, against a trivial function's deploy in the same run.

    .venv/bin/python bench/deploy.py [--closure-mib 64] [--names 10]

Starts its own `lowtide up` in a temporary home. Prints, per case, the deploy() wall time
(p50 / max) and the bytes the platform received (its `lowtide_platform_blob_bytes_total`),
so the figures show that only the first deploy of an artifact uploads it. Timings include
pickling and hashing the closure on the client; a loaded machine makes them noisy: compare
the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import percentile, table

from lowtide._local import start_local_cluster


def received_bytes(platform_url: str) -> float:
    text = httpx.get(f"{platform_url}/metrics", timeout=10).text
    m = re.search(r'^lowtide_platform_blob_bytes_total\{direction="in"\} (\S+)$', text,
                  re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def make_big(closure_mib: int):  # type: ignore[no-untyped-def]
    weights = os.urandom(closure_mib * 2**20)

    def big(x: int) -> int:
        return len(weights) + x

    return big


def trivial(x: int) -> int:
    return x + 1


def timed_deploys(client, fn, names: list[str], platform_url: str  # type: ignore[no-untyped-def]
                  ) -> tuple[list[float], float]:
    before, times = received_bytes(platform_url), []
    for name in names:
        started = time.perf_counter()
        client.deploy(fn, name=name)
        times.append(time.perf_counter() - started)
    return times, received_bytes(platform_url) - before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--closure-mib", type=int, default=64)
    p.add_argument("--names", type=int, default=10)
    args = p.parse_args()
    big = make_big(args.closure_mib)
    rows = [["case", "deploys", "p50 ms", "max ms", "MiB uploaded"]]
    with tempfile.TemporaryDirectory(prefix="lowtide-bench-deploy-") as tmp, \
            start_local_cluster(Path(tmp), keep_alive_s=5) as cluster, cluster.client() as c:
        url = cluster.config.platform_url
        cases = [
            ("trivial function, new names", trivial,
             [f"triv-{i}" for i in range(args.names)]),
            (f"{args.closure_mib} MiB closure, first deploy", big, ["big-0"]),
            (f"same closure, {args.names} more names", big,
             [f"big-{i}" for i in range(1, args.names + 1)]),
            ("same closure, redeploys", big, ["big-0"] * args.names),
        ]
        for label, fn, names in cases:
            times, sent = timed_deploys(c, fn, names, url)
            ms = [t * 1000 for t in times]
            rows.append([label, str(len(names)), f"{percentile(ms, 50):.0f}",
                         f"{max(ms):.0f}", f"{sent / 2**20:.1f}"])
        for d in c.list():
            c.delete(d["name"])
    print(table(rows))


if __name__ == "__main__":
    main()
