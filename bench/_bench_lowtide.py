"""bench/models.py's lowtide side: the cases, the measurements on a running `lowtide up`.

Nothing here imports bentoml or the examples at import time: bench/models.py points
BENTOML_HOME at its own temporary store first."""

from __future__ import annotations

import importlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _stats import summary_ms

COUNTER_ENV = "BENCH_CONSTRUCTOR_RUNS"
FAILED_AT_ENV = "BENCH_FAILED_AT"
SETTLED_S = 3.0  # the pool has started no worker for this long: warm figures may begin


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


def counted(model: type) -> type:
    """The example's class, its constructor counting its runs: a line (the process id) per
    run in the file $BENCH_CONSTRUCTOR_RUNS, written before the model's own constructor."""

    class Counted(model):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            with open(os.environ[COUNTER_ENV], "a") as f:
                f.write(f"{os.getpid()}\n")
            super().__init__()

    Counted.__name__ = Counted.__qualname__ = model.__name__
    return Counted


class Failing:
    """A model whose constructor fails after 1 s (a caller is waiting by then); it writes
    the moment it raised to $BENCH_FAILED_AT."""

    def __init__(self) -> None:
        time.sleep(1.0)
        Path(os.environ[FAILED_AT_ENV]).write_text(repr(time.time()))
        raise RuntimeError("bench: the weights file is truncated")

    def __call__(self, x: int) -> int:
        return x


def startup_line(startup: dict[str, Any]) -> str:
    phases = ("queue_s", "start_s", "load_s", "setup_s", "first_response_s")
    return f"{startup['path']}, " + ", ".join(
        f"{k[:-2]} {float(startup[k]) * 1000:.0f} ms" for k in phases if k in startup)


class Lowtide:
    def __init__(self, cluster: Any, http: httpx.Client, tmp: Path, args: Any) -> None:
        self.cluster, self.http, self.args = cluster, http, args
        self.client = cluster.client()
        tmp.chmod(0o711)  # replicas (maybe another user) reach the shared folder below
        self.shared = tmp / "shared"  # written by replicas
        self.shared.mkdir(mode=0o777)
        self.shared.chmod(0o777)
        self.headers = {"Authorization": f"Bearer {cluster.config.token}"}

    @staticmethod
    def timed_post(http: httpx.Client, url: str, body: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        r = http.post(url, json=body)
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
        return elapsed

    def post(self, url: str, body: dict[str, Any]) -> float:
        return self.timed_post(self.http, url, body)

    # ---- the cluster's state ----------------------------------------------------------
    def _get(self, path: str) -> Any:
        return self.http.get(f"{self.cluster.config.platform_url}{path}",
                             headers=self.headers).json()

    def pool(self) -> dict[str, Any]:
        return dict(self._get("/v1/hosts")["hosts"][0]["load"]["pool"])

    def wait(self, predicate: Any, what: str, timeout_s: float = 240.0,
             between: Any = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            if between is not None:
                between()
            time.sleep(0.1)

    def at_zero(self, name: str) -> bool:
        r = self._get(f"/v1/deployments/{name}")["replicas"]
        return bool(r["desired"] == 0 and not r["items"])

    def wait_cold(self, name: str, packages: set[str]) -> None:
        """Until the endpoint is at zero and an idle pool worker has its packages."""
        self.wait(lambda: self.at_zero(name), f"{name} at zero replicas")

        def pool_ready() -> bool:
            pool = self.pool()
            return bool(pool["ready"] >= 1 and packages <= set(pool.get("ready_packages", [])))

        self.wait(pool_ready, "an idle pool worker with the endpoint's packages")

    def wait_pool_settled(self, between: Any) -> None:
        """Until no pool worker has been starting for SETTLED_S (on 2 cores the agent
        refills one at a time, and a change of the wanted packages replaces idle ones)."""
        quiet_since = [time.monotonic()]

        def settled() -> bool:
            if self.pool()["starting"]:
                quiet_since[0] = time.monotonic()
            return time.monotonic() - quiet_since[0] >= SETTLED_S

        self.wait(settled, "the pool to finish refilling", between=between)

    def replica_event(self, name: str, since: float) -> dict[str, Any]:
        """The start-up phases of the replica of `name` that became ready after `since`."""
        for event in self.client.events(name, limit=20):  # newest first
            inputs = event.get("inputs") or {}
            if event["kind"] == "replica" and "total_s" in inputs and event["at"] >= since:
                return dict(inputs)
        raise RuntimeError(f"{name}: no replica became ready after the call")

    def cold_starts(self, name: str, url: str, body: dict[str, Any], packages: set[str]
                    ) -> tuple[list[float], list[float]]:
        cold, setup = [], []
        for i in range(self.args.cold):
            waited = time.perf_counter()
            self.wait_cold(name, packages)
            waited = time.perf_counter() - waited
            since = time.time()
            cold.append(self.post(url, body))
            startup = self.replica_event(name, since)
            setup.append(float(startup.get("setup_s", 0.0)))
            print(f"  {name}: cold start {i + 1}/{self.args.cold} {cold[-1] * 1000:.0f} ms "
                  f"(replica: {startup_line(startup)}; waited {waited:.1f} s for zero, pool)",
                  file=sys.stderr)
            if startup["path"] != "pool":
                raise RuntimeError(f"{name}: a cold start took the {startup['path']} path")
        return cold, setup

    # ---- the measurements ---------------------------------------------------------------
    def trivial(self) -> dict[str, Any]:
        ep = self.client.deploy(lambda x: x, name="bench-trivial", max_replicas=1)
        self.post(ep.url, {"x": 1})
        cold, _ = self.cold_starts(ep.name, ep.url, {"x": 1}, set())
        self.client.delete(ep.name)
        return {"cold": summary_ms(cold)}

    def failures(self) -> dict[str, Any]:
        """Seconds from the constructor's raise to the 503 of a caller that was waiting
        (sent before the raise), each after a deploy (a redeploy resets the failing state
        and its backoff)."""
        failed_at = self.shared / "failed_at"
        to_503: list[float] = []
        detail = ""
        for _ in range(self.args.failures * 3):
            if len(to_503) == self.args.failures:
                break
            failed_at.unlink(missing_ok=True)
            ep = self.client.deploy(Failing, name="bench-failing",
                                    env={FAILED_AT_ENV: str(failed_at)})
            sent = time.time()
            r = self.http.post(ep.url, json={"x": 1})
            answered = time.time()
            if r.status_code != 503:
                raise RuntimeError(f"a failing start answered {r.status_code} {r.text}")
            if not failed_at.exists() or float(failed_at.read_text()) < sent:
                continue  # answered from the previous version's failure: not a waiting call
            to_503.append(answered - float(failed_at.read_text()))
            detail = str(r.json().get("detail", r.text))
            print(f"  start-up failure -> 503 in {to_503[-1]:.2f} s", file=sys.stderr)
        self.client.delete("bench-failing")
        return {"to_503": summary_ms(to_503), "detail": detail}

    def model(self, case: Case) -> dict[str, Any]:
        module = importlib.import_module(f"examples.{case.module}")
        tags = [module.save()] if case.saves else []
        counter = self.shared / f"{case.name}.runs"
        counter.touch(mode=0o666)
        counter.chmod(0o666)
        cls = counted(getattr(module, case.cls))
        t0 = time.perf_counter()
        ep = self.client.deploy(cls, name=case.name, models=tags, memory=case.memory,
                                max_replicas=1, env={COUNTER_ENV: str(counter)})
        self.post(ep.url, case.body)
        deploy_first = time.perf_counter() - t0
        packages = set(self.client.status(case.name)["spec"].get("packages", []))
        cold, setup = self.cold_starts(case.name, ep.url, case.body, packages)

        self.wait_cold(case.name, packages)  # a burst at zero: one replica, one constructor
        with ThreadPoolExecutor(self.args.burst) as pool:
            list(pool.map(lambda _: self.post(ep.url, case.body), range(self.args.burst)))
        # right after the cold starts the host's pool refills (imports the packages again)
        warm_refill = [self.post(ep.url, case.body) for _ in range(min(20, self.args.warm))]
        self.wait_pool_settled(lambda: self.post(ep.url, case.body))  # calls keep it warm
        self.post(ep.url, case.body)
        warm = [self.post(ep.url, case.body) for _ in range(self.args.warm)]
        from _load import wrk_closed

        load = wrk_closed(ep.url, case.body, self.args.concurrency, self.args.seconds)
        replicas = sum(1 for e in self.client.events(case.name, limit=1000)
                       if e["kind"] == "replica" and "total_s" in (e.get("inputs") or {}))
        runs = counter.read_text().split()
        self.client.delete(case.name)
        return {"deploy_first_s": deploy_first, "cold": summary_ms(cold),
                "cold_minus_setup": summary_ms([c - s for c, s in zip(cold, setup,
                                                                      strict=True)]),
                "setup": summary_ms(setup), "warm": summary_ms(warm),
                "warm_refill": summary_ms(warm_refill), "rps": load.rps,
                "errors": load.errors,
                "constructor": {"runs": len(runs), "replicas": replicas,
                                "burst": self.args.burst,
                                "once_each": len(runs) == replicas == len(set(runs))}}
