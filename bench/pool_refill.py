"""How long a prewarmed pool worker takes to start (a pool refill), and where the time goes.

    python bench/pool_refill.py [--runs 3] [--parallel 3] [--packages torch]

Spawns pool workers exactly as the agent does (`ReplicaSupervisor._spawn_pool_worker`:
`bentoml serve lowtide.workers.service:Worker` in pool mode) and times, per worker:
- arbiter: spawn until BentoML's arbiter has started its worker process (the `bentoml serve`
  interpreter importing BentoML and the service to read its configuration);
- worker: that until the worker answers idle on /lt/healthz (a second interpreter importing
  BentoML and the service again, starting uvicorn, running on_startup: the preloads);
then the same for `--parallel` workers spawned together (a refill after a burst), and the
bare imports for scale. Needs no cluster (pool workers touch Redis only when specialized).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from lowtide.workers.pool import PoolWorker
from lowtide.workers.procs import stop_group
from lowtide.workers.resources import Gpus
from lowtide.workers.settings import AgentSettings
from lowtide.workers.supervisor import ReplicaSupervisor


def import_s(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - started


def watch(workers: list[PoolWorker], limit_s: float = 120.0) -> list[tuple[float, float]]:
    """(arbiter_s, worker_s) per worker."""
    child_at: dict[int, float] = {}
    idle_at: dict[int, float] = {}
    end = time.time() + limit_s
    with httpx.Client(timeout=0.5) as http:
        while len(idle_at) < len(workers) and time.time() < end:
            for i, w in enumerate(workers):
                if i not in child_at:
                    try:
                        if psutil.Process(w.proc.pid).children():
                            child_at[i] = time.time()
                    except psutil.Error:
                        pass
                if i not in idle_at:
                    try:
                        r = http.get(f"http://{w.address}/lt/healthz")
                        if r.status_code == 200 and r.json().get("status") == "idle":
                            idle_at[i] = time.time()
                            child_at.setdefault(i, idle_at[i])
                    except httpx.HTTPError:
                        pass
            time.sleep(0.02)
    if len(idle_at) < len(workers):
        raise SystemExit(f"only {len(idle_at)} of {len(workers)} workers idle in {limit_s} s")
    return [(child_at[i] - w.started_at, idle_at[i] - child_at[i])
            for i, w in enumerate(workers)]


def spawn(sup: ReplicaSupervisor, n: int, packages: frozenset[str]) -> list[PoolWorker]:
    return [sup._spawn_pool_worker(packages) for _ in range(n)]


def stop(workers: list[PoolWorker]) -> None:
    for w in workers:
        stop_group(w.proc, 5.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--packages", default="", help="comma separated, as learned by the pool")
    args = ap.parse_args()
    packages = frozenset(p for p in args.packages.split(",") if p)
    with tempfile.TemporaryDirectory() as home:
        settings = AgentSettings("redis://127.0.0.1:1", Path(home), pool=False, gpus=False)
        sup = ReplicaSupervisor(settings, None, Gpus.none())  # type: ignore[arg-type]
        print(f"cores: {psutil.cpu_count()}  load average: "
              f"{' '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
        for module in ("bentoml", "lowtide.workers.service", *sorted(packages)):
            print(f"import {module}: {import_s(module):.2f} s (a fresh interpreter)")
        alone = []
        for _ in range(args.runs):
            workers = spawn(sup, 1, packages)
            try:
                alone += watch(workers)
            finally:
                stop(workers)
        workers = spawn(sup, args.parallel, packages)
        try:
            together = watch(workers)
        finally:
            stop(workers)
    for label, rows in ((f"one at a time ({args.runs} runs)", alone),
                        (f"{args.parallel} spawned together", together)):
        arb = statistics.median(a for a, _ in rows)
        wrk = statistics.median(w for _, w in rows)
        worst = max(a + w for a, w in rows)
        print(f"{label:26s} spawn->idle median {arb + wrk:5.1f} s (arbiter {arb:4.1f} s + "
              f"worker {wrk:4.1f} s), slowest {worst:5.1f} s")


if __name__ == "__main__":
    main()
