"""Many endpoints on one small platform: what 1, 1,000 and 10,000 endpoints idle at zero cost
the control plane, with `--busy` more endpoints kept warm by a small load meanwhile.

    python bench/scale.py [--levels 1,1000,10000] [--busy 10] [--idle-s 10] [--cold 6]

One cluster of separate processes (Redis, platform, activator, agent; keep-alive 2 s), so
each one's CPU and memory is its own. Per level it prints: the platform's and Redis' CPU
while the idle endpoints wait (cores, over `--idle-s`), the platform's RSS and Redis'
used memory, the cold start of one endpoint (p50/p99 over `--cold` runs, request to
answer, an idle pool worker ready before each, as in bench/cold_start.py) and its
wake-to-decision time (request sent to the platform's `wake` decision
event), the latency of the list's first page (100 names), and the time it took to deploy
the level's endpoints.

How the endpoints are deployed: the probe and the busy endpoints go through the SDK
(`lowtide.deploy`, one by one; their mean time per deploy is printed). Levels up to
`--sdk-upto` (1,000) are deployed through the SDK too, four callers at once (the real
path; the time is in the table). Larger levels are registered in bulk by this script: it
writes, in pipelines, the same keys the deploy API writes (the probe's spec and artifact
manifest under each name, its stream and consumer group, the name indexes), with
`updated_at` an hour back (deployed earlier, idle since); the platform finds them at its
next resync (30 s), as after a missed event.

Each level is measured in the steady state: after the platform has looked once at every
new endpoint (a pass over thousands when the resync finds them), when its looks per second
(`lowtide_platform_reconciles_total`) have come down to the busy endpoints' for two
3-second windows in a row, and once the dashboard series have closed the new endpoints'
open buckets (`lowtide_platform_charted_endpoints{state="parked"}` at 0: up to 4 minutes,
the longest bucket, after the endpoints went quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import percentile, summary_ms, table

from lowtide import _keys
from lowtide._local import LocalComponents

KEEP_ALIVE_S = 2.0


def double(x: int) -> int:
    return x * 2


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


class Bench:
    def __init__(self, lc: LocalComponents, http: httpx.Client) -> None:
        self.lc, self.http = lc, http
        self.api = lc.config.platform_url
        self.redis = Redis.from_url(lc.config.redis_url)
        self.headers = {"Authorization": f"Bearer {lc.config.token}"}
        self.client = lc.client()

    def get(self, path: str) -> Any:
        r = self.http.get(f"{self.api}{path}", headers=self.headers)
        r.raise_for_status()
        return r.json()

    def metric(self, name: str, labels: str = "") -> float:
        text = self.http.get(f"{self.api}/metrics").text
        m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    # ---- deploying ----------------------------------------------------------------------
    def sdk_deploy(self, names: list[str]) -> float:
        t0 = time.perf_counter()
        for name in names:  # small: ten busy replicas and the probe fit on one 2-core host
            self.client.deploy(double, name=name, cpu=0.1, memory="256Mi")
        return (time.perf_counter() - t0) / max(1, len(names))

    def sdk_deploy_many(self, names: list[str], threads: int = 4) -> float:
        """The real path, several callers at once: seconds for all of `names`."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda name: self.client.deploy(double, name=name, cpu=0.1,
                                                          memory="256Mi"), names))
        return time.perf_counter() - t0

    def register(self, names: list[str], like: str) -> float:
        """Bulk: the keys the deploy API writes, for each name, in pipelines."""
        spec = json.loads(self.redis.hget(_keys.deployment(like), "spec"))
        version = int(self.redis.hget(_keys.deployment(like), "version"))
        artifact = self.redis.get(_keys.artifact(like, version))
        at = time.time() - 3600
        t0 = time.perf_counter()
        for i in range(0, len(names), 500):
            with self.redis.pipeline(transaction=False) as pipe:
                for name in names[i: i + 500]:
                    pipe.set(_keys.version_counter(name), 1)
                    pipe.set(_keys.artifact(name, 1), artifact)
                    pipe.hset(_keys.deployment(name), mapping={
                        "spec": json.dumps({**spec, "name": name}), "version": 1,
                        "created_at": at, "updated_at": at, "desired": 0})
                    pipe.xgroup_create(_keys.stream(name), _keys.STREAM_GROUP, id="$",
                                       mkstream=True)
                    pipe.sadd(_keys.DEPLOYMENTS, name)
                    pipe.zadd(_keys.DEPLOYMENT_NAMES, {name: 0})
                pipe.execute()
        return time.perf_counter() - t0

    # ---- measuring ----------------------------------------------------------------------
    def cpu_cores(self, seconds: float) -> dict[str, float]:
        procs = {"platform": self.lc.procs["platform"].proc, "redis": self.lc.redis_proc,
                 "activator": self.lc.procs["activator"].proc}
        ps = {k: psutil.Process(p.pid) for k, p in procs.items() if p is not None}
        before = {k: sum(p.cpu_times()[:2]) for k, p in ps.items()}
        t0 = time.perf_counter()
        time.sleep(seconds)
        wall = time.perf_counter() - t0
        return {k: (sum(p.cpu_times()[:2]) - before[k]) / wall for k, p in ps.items()}

    def memory(self) -> dict[str, float]:
        platform = self.lc.procs["platform"].proc
        assert platform is not None
        return {"platform_rss": psutil.Process(platform.pid).memory_info().rss,
                "redis_used": float(self.redis.info("memory")["used_memory"])}

    def settle(self, busy: int, window_s: float = 3.0, timeout_s: float = 900.0) -> float:
        """Wait for the steady state: the platform's looks per second (reconciliations) at
        most the busy endpoints' (plus slack) over two windows in a row. New endpoints are
        looked at once when the platform finds them (a pass over thousands), and the gauges
        are set only at the end of a pass: the rate is what says the pass is over."""
        t0 = time.perf_counter()
        calm = 0
        before = self.metric("lowtide_platform_reconciles_total")
        while calm < 2:
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"the platform did not settle in {timeout_s:.0f} s")
            time.sleep(window_s)
            now = self.metric("lowtide_platform_reconciles_total")
            calm = calm + 1 if (now - before) / window_s <= busy * 1.5 + 2 else 0
            before = now
        return time.perf_counter() - t0

    def list_ms(self, query: str, n: int = 20) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.get(f"/v1/deployments?{query}")
            out.append(time.perf_counter() - t0)
        return out

    def cold_starts(self, name: str, runs: int) -> tuple[list[float], list[float]]:
        url = f"{self.lc.config.activator_url}/fn/{name}"
        cold, wake = [], []
        for i in range(runs):
            wait_until(lambda: self._at_zero(name), f"{name} at zero")
            wait_until(self._pool_ready, "an idle pool worker")  # as bench/cold_start.py
            sent = time.time()
            t0 = time.perf_counter()
            r = self.http.post(url, json={"x": i})
            cold.append(time.perf_counter() - t0)
            if r.status_code != 200 or r.json() != 2 * i:
                raise RuntimeError(f"bad answer {r.status_code}: {r.text[:200]}")
            events = self.get(f"/v1/deployments/{name}/events?limit=50")["events"]
            woke = [e["at"] for e in events if e["kind"] == "wake" and e["at"] >= sent]
            if woke:
                wake.append(min(woke) - sent)
        return cold, wake

    def _pool_ready(self) -> bool:
        hosts = self.get("/v1/hosts")["hosts"]
        return bool(hosts) and hosts[0]["load"]["pool"]["ready"] >= 1

    def _at_zero(self, name: str) -> bool:
        r = self.get(f"/v1/deployments/{name}")["replicas"]
        return r["desired"] == 0 and not r["items"]


class Load:
    """One caller per busy endpoint, a call every 1/rps seconds."""

    def __init__(self, urls: list[str], rps: float) -> None:
        self.stop, self.errors, self.calls = threading.Event(), 0, 0
        self.threads = [threading.Thread(target=self._run, args=(u, rps), daemon=True)
                        for u in urls]
        for t in self.threads:
            t.start()

    def _run(self, url: str, rps: float) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.stop.wait(1 / rps):
                try:
                    ok = http.post(url, json={"x": 1}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.calls += 1
                self.errors += not ok

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def measure_level(b: Bench, n: int, args: argparse.Namespace, sdk_s: float,
                  register_s: float, busy: int) -> dict[str, Any]:
    known = wait_until(lambda: b.metric("lowtide_platform_endpoints", '{state="known"}')
                       >= n + busy, f"the platform to know {n + busy} endpoints", 900)
    del known
    wait_until(lambda: b.metric("lowtide_platform_endpoints", '{state="active"}') <= busy + 1,
               "the idle endpoints to go quiet", 180)
    settle_s = b.settle(busy + 1)
    wait_until(lambda: b.metric("lowtide_platform_charted_endpoints", '{state="parked"}') == 0,
               "the dashboard series to close the idle endpoints' buckets", 300)
    time.sleep(5.0)  # their closed buckets are written in one burst after they leave the count
    print(f"level {n}: the platform settled {settle_s:.0f} s after the level was known",
          file=sys.stderr)
    looks_before = b.metric("lowtide_platform_reconciles_total")
    cpu = b.cpu_cores(args.idle_s)
    looks = b.metric("lowtide_platform_reconciles_total") - looks_before
    mem = b.memory()
    first = b.list_ms("limit=100")
    idle_page = b.list_ms("limit=100&state=idle", 5)
    cold, wake = b.cold_starts("probe", args.cold)
    return {"n": n, "cpu": cpu, "looks_per_s": looks / args.idle_s, "mem": mem,
            "list": first, "list_idle": idle_page, "cold": cold, "wake": wake,
            "deploy_sdk_s": sdk_s * n, "register_s": register_s,
            "load": os.getloadavg()[0]}


def redis_key_bytes(b: Bench, name: str) -> dict[str, int]:
    keys = {"deployment": _keys.deployment(name), "manifest": _keys.artifact(name, 1),
            "stream+group": _keys.stream(name), "version": _keys.version_counter(name)}
    return {k: int(b.redis.memory_usage(key) or 0) for k, key in keys.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1,1000,10000")
    p.add_argument("--busy", type=int, default=10, help="endpoints kept warm by a load")
    p.add_argument("--busy-rps", type=float, default=2.0, help="calls/s to each busy one")
    p.add_argument("--idle-s", type=float, default=10.0, help="CPU measured over this long")
    p.add_argument("--cold", type=int, default=6, help="cold starts of the probe per level")
    p.add_argument("--sdk-upto", type=int, default=1000,
                   help="levels up to this many endpoints deploy through the SDK (4 callers "
                        "at once); larger ones are registered in bulk")
    args = p.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lowtide-scale-") as tmp, \
            LocalComponents(Path(tmp), keep_alive_s=KEEP_ALIVE_S) as lc, \
            httpx.Client(timeout=120) as http:
        lc.start()
        b = Bench(lc, http)
        sdk_s = b.sdk_deploy(["probe"] + [f"busy-{i}" for i in range(args.busy)])
        load = Load([f"{lc.config.activator_url}/fn/busy-{i}" for i in range(args.busy)],
                    args.busy_rps)
        have = 1
        try:
            for n in levels:
                names = [f"idle-{i:05d}" for i in range(have - 1, n - 1)]
                how = "deployed through the SDK" if n <= args.sdk_upto else "registered"
                looks0 = b.metric("lowtide_platform_reconciles_total")
                if not names:
                    took = 0.0
                elif n <= args.sdk_upto:
                    took = b.sdk_deploy_many(names)
                else:
                    took = b.register(names, "probe")
                have = n
                print(f"level {n}: {how} {len(names)} in {took:.1f} s; waiting for the "
                      "platform to look at each once", file=sys.stderr)
                target = looks0 + len(names)
                wait_until(lambda t=target: b.metric("lowtide_platform_reconciles_total") >= t,
                           "the platform to look at every new endpoint", 900)
                row = measure_level(b, n, args, sdk_s, took, args.busy)
                row["how"] = "SDK" if n <= args.sdk_upto else "bulk"
                rows.append(row)
            per_key = redis_key_bytes(b, "idle-00000") if have > 1 else {}
        finally:
            load.close()
        print(f"busy load: {load.calls} calls, {load.errors} errors")
    report(rows, per_key, sdk_s, args)


def report(rows: list[dict[str, Any]], per_key: dict[str, int], sdk_s: float,
           args: argparse.Namespace) -> None:
    base = summary_ms(rows[0]["cold"])["p50"]
    out = [["idle endpoints", "platform CPU", "Redis CPU", "activator CPU", "looks/s",
            "platform RSS MiB", "Redis MiB", "cold p50 ms", "cold p99 ms", "p50 / 1-ep",
            "wake->decision p50 ms", "list page p50 ms", "list p99 ms", "idle page p50 ms",
            "added in s (how)", "SDK deploy est. s", "load avg"]]
    for r in rows:
        cold = summary_ms(r["cold"])
        wake = [w * 1000 for w in r["wake"]]
        out.append([
            f"{r['n']:,}", f"{r['cpu']['platform']:.3f}", f"{r['cpu']['redis']:.3f}",
            f"{r['cpu']['activator']:.3f}", f"{r['looks_per_s']:.1f}",
            f"{r['mem']['platform_rss'] / 2**20:.0f}", f"{r['mem']['redis_used'] / 2**20:.1f}",
            f"{cold['p50']:.0f}", f"{cold['p99']:.0f}", f"{cold['p50'] / base:.2f}x",
            f"{percentile(wake, 50):.1f}", f"{summary_ms(r['list'])['p50']:.1f}",
            f"{summary_ms(r['list'])['p99']:.1f}", f"{summary_ms(r['list_idle'])['p50']:.1f}",
            f"{r['register_s']:.1f} ({r['how']})", f"{r['deploy_sdk_s']:.0f}", f"{r['load']:.1f}"])
    print(table(out))
    print(f"\n{args.busy} busy endpoints at {args.busy_rps:g} calls/s each throughout; CPU in "
          f"cores over {args.idle_s:g} s; SDK deploy {sdk_s * 1000:.0f} ms each (mean of "
          f"{args.busy + 1}), so 'SDK deploy est.' = that x endpoints")
    if len(rows) >= 2 and rows[-1]["n"] > rows[-2]["n"]:
        a, z = rows[-2], rows[-1]
        dn = z["n"] - a["n"]
        print(f"per idle endpoint (from {a['n']:,} to {z['n']:,}): platform RSS "
              f"{(z['mem']['platform_rss'] - a['mem']['platform_rss']) / dn:.0f} B, Redis "
              f"{(z['mem']['redis_used'] - a['mem']['redis_used']) / dn:.0f} B")
    if per_key:
        print("Redis keys of one idle endpoint (MEMORY USAGE, bytes): "
              + ", ".join(f"{k} {v}" for k, v in per_key.items()))


if __name__ == "__main__":
    main()
