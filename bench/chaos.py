"""Chaos soak: mixed traffic against a local cluster while its parts are killed and restarted
on a schedule; every request's answer is checked against the result its payload expects.

    python bench/chaos.py [--duration 300] [--quick] [--rate 5] [--burst-rate 20]

The cluster is started here (`lowtide._local.LocalComponents`: Redis with its append-only
file, platform, activator and one agent as separate processes) with four endpoints: `fast`
(echo), `slow` (sleeps 0.3-0.8 s), `cpu` (about 30 ms of pure Python) and `async` (the slow
function, submitted with ?async=1 and polled by id), each with at most 3 replicas. The run
is split into phases of equal length; each phase has its arrival rate and its fault:

    steady        base rate
    burst         burst rate (scale up)
    replica-kill  SIGKILL of a replica process group of `slow` mid-request
    activator     SIGKILL of the activator, restarted at once
    agent         SIGKILL of the agent (its replicas die with it), restarted 2 s later
    platform      SIGKILL of the platform, restarted 2 s later
    redis-restart Redis stopped (SIGTERM: it syncs its append-only file), started 4 s later
    redis-hung    Redis paused (SIGSTOP) for 5 s: connections accepted, never answered
    cool-down     a trickle (scale down)

Every payload carries a unique id and a number; the answer must be exactly that id and the
number transformed by the endpoint's function. Outcomes per request: ok; an error answer
(by status: 503 while Redis is away is an answer); wrong (another request's result, or a
corrupted one: must be 0); lost (accepted, never answered: an async id that turned into a
404 or never resolved, a sync call that got no answer even after retries: must be 0).
A sync call whose connection broke (the activator was killed under it, or was down) is
retried with the same payload like any HTTP client would; those retries are counted.
After the last phase nothing new is sent and every outstanding request is waited for.
Latencies are from the first send to the final answer (retries included), per phase of
the send; on a shared machine they are indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from redis import Redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import percentile, table

from lowtide._local import COMPONENTS, LocalComponents

# Components restarted by a fault are children of the thread that started them, and their
# parent-death signal fires when that thread ends: one thread that outlives the cluster.
FAULTS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faults")
DRAIN_S = 240.0  # after the last phase: how long outstanding requests may take
SYNC_TIMEOUT_S = 200.0  # above the activator's queue wait (120 s) + the function's timeout
RETRY_FOR_S = 90.0  # connection-level retries of one call, for this long
MAX_REPLICAS = 3  # per endpoint: a bound a user sets, and all this machine can run


# ---- the deployed functions: each answer names its request -----------------------------
def fast(payload: dict[str, Any]) -> dict[str, Any]:
    return {"id": payload["id"], "r": payload["n"] * 2}


def slow(payload: dict[str, Any]) -> dict[str, Any]:
    import time as t

    t.sleep(payload["sleep"])
    return {"id": payload["id"], "r": payload["n"] + 7}


def cpu(payload: dict[str, Any]) -> dict[str, Any]:
    total = 0
    for i in range(400_000):
        total += i * i
    return {"id": payload["id"], "r": payload["n"] * 3 + (total & 0)}


EXPECTED: dict[str, Callable[[int], int]] = {
    "fast": lambda n: n * 2, "slow": lambda n: n + 7, "cpu": lambda n: n * 3,
    "async": lambda n: n + 7,
}
MIX = (("fast", 0.35), ("slow", 0.25), ("cpu", 0.2), ("async", 0.2))


@dataclass
class Phase:
    name: str
    rate_per_s: float
    fault: str = ""


@dataclass
class Record:
    phase: str
    kind: str
    sent_at: float
    outcome: str = "pending"  # ok | error | wrong | lost | pending
    status: int = 0
    latency_s: float = 0.0
    retries: int = 0
    detail: str = ""


@dataclass
class Stats:
    records: list[Record] = field(default_factory=list)
    replicas: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    faults: list[str] = field(default_factory=list)


def phases(duration_s: float, rate: float, burst: float) -> tuple[list[Phase], float]:
    plan = [Phase("steady", rate), Phase("burst", burst),
            Phase("replica-kill", rate, "replica"), Phase("activator", rate, "activator"),
            Phase("agent", rate, "agent"), Phase("platform", rate, "platform"),
            Phase("redis-restart", rate, "redis-restart"),
            Phase("redis-hung", rate, "redis-hung"), Phase("cool-down", rate / 4)]
    return plan, duration_s / len(plan)


# ---- checking one answer ----------------------------------------------------------------
def judge(rec: Record, payload: dict[str, Any], status: int, body: bytes) -> None:
    rec.status = status
    if status != 200:
        rec.outcome = "error"
        rec.detail = body[:200].decode(errors="replace")
        return
    try:
        got = json.loads(body)
    except ValueError:
        got = None
    want = {"id": payload["id"], "r": EXPECTED[rec.kind](payload["n"])}
    rec.outcome = "ok" if got == want else "wrong"
    if rec.outcome == "wrong":
        rec.detail = f"wanted {want}, got {body[:200]!r}"


class Load:
    def __init__(self, lc: LocalComponents, stats: Stats) -> None:
        self.lc = lc
        self.stats = stats
        self.base = lc.config.activator_url
        self.tasks: set[asyncio.Task[None]] = set()
        self.phase = "steady"
        self.rng = random.Random(7)

    def _payload(self, kind: str) -> dict[str, Any]:
        p: dict[str, Any] = {"id": uuid.uuid4().hex, "n": self.rng.randrange(10**9)}
        if kind in ("slow", "async"):
            p["sleep"] = round(self.rng.uniform(0.3, 0.8), 3)
        return p

    def send_one(self, session: aiohttp.ClientSession) -> None:
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        rec = Record(self.phase, kind, time.monotonic())
        self.stats.records.append(rec)
        coro = (self._async(session, rec, self._payload(kind)) if kind == "async"
                else self._sync(session, rec, self._payload(kind)))
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _sync(self, session: aiohttp.ClientSession, rec: Record,
                    payload: dict[str, Any]) -> None:
        url = f"{self.base}/fn/{rec.kind}"
        while True:
            try:
                async with session.post(url, json={"payload": payload},
                                        timeout=aiohttp.ClientTimeout(total=SYNC_TIMEOUT_S)
                                        ) as resp:
                    body = await resp.read()
                judge(rec, payload, resp.status, body)
                break
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                rec.retries += 1
                if time.monotonic() - rec.sent_at > RETRY_FOR_S:
                    rec.outcome, rec.detail = "lost", f"no answer after retries: {exc!r}"
                    break
                await asyncio.sleep(0.5)
        rec.latency_s = time.monotonic() - rec.sent_at

    async def _async(self, session: aiohttp.ClientSession, rec: Record,
                     payload: dict[str, Any]) -> None:
        request_id = None
        while request_id is None:  # submit: accepted (202 + id) or answered with an error
            try:
                async with session.post(f"{self.base}/fn/slow?async=1",
                                        json={"payload": payload},
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    body = await resp.read()
                if resp.status != 202:
                    judge(rec, payload, resp.status, body)
                    rec.latency_s = time.monotonic() - rec.sent_at
                    return
                request_id = json.loads(body)["id"]
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                rec.retries += 1
                if time.monotonic() - rec.sent_at > RETRY_FOR_S:
                    rec.outcome, rec.detail = "error", f"submit never accepted: {exc!r}"
                    rec.status = -1
                    return
                await asyncio.sleep(0.5)
        while True:  # accepted: it must be answered
            await asyncio.sleep(0.25)
            try:
                async with session.get(f"{self.base}/requests/{request_id}",
                                       timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    body = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue  # the activator is down or restarting: ask again
            if resp.status in (202, 503):  # pending, or Redis away: ask again
                continue
            if resp.status == 404:
                rec.outcome, rec.status = "lost", 404
                rec.detail = f"accepted request {request_id} unknown"
            else:
                judge(rec, payload, resp.status, body)
            break
        rec.latency_s = time.monotonic() - rec.sent_at


# ---- faults -------------------------------------------------------------------------------
def inject(lc: LocalComponents, fault: str, stats: Stats) -> None:
    at = time.strftime("%H:%M:%S")
    if fault == "replica":
        victim = _busy_replica(lc, "slow")
        if victim is None:
            stats.faults.append(f"{at} replica-kill: no ready replica of slow to kill")
            return
        rid, pid = victim
        os.killpg(os.getpgid(pid), signal.SIGKILL)
        stats.faults.append(f"{at} SIGKILL replica {rid} of slow (pid {pid})")
    elif fault == "activator":
        lc.restart("activator", signal.SIGKILL)
        stats.faults.append(f"{at} SIGKILL activator, restarted")
    elif fault in ("agent", "platform"):
        lc.kill(fault, signal.SIGKILL)
        time.sleep(2)
        lc.start_component(fault)
        stats.faults.append(f"{at} SIGKILL {fault}, restarted after 2 s")
    elif fault == "redis-restart":
        lc.stop_redis(signal.SIGTERM)
        time.sleep(4)
        lc.start_redis()
        stats.faults.append(f"{at} Redis stopped (SIGTERM), started again after 4 s")
    elif fault == "redis-hung":
        lc.pause_redis()
        time.sleep(5)
        lc.resume_redis()
        stats.faults.append(f"{at} Redis paused (SIGSTOP) for 5 s")


def _busy_replica(lc: LocalComponents, name: str) -> tuple[str, int] | None:
    r = Redis.from_url(lc.config.redis_url, socket_timeout=5)
    try:
        records = [json.loads(v) for v in r.hgetall(f"lt:rep:{name}").values()]
    finally:
        r.close()
    ready = [x for x in records if x.get("state") == "ready" and x.get("pid")]
    if not ready:
        return None
    pick = random.choice(ready)
    return pick["id"], int(pick["pid"])


def watch_replicas(lc: LocalComponents, stats: Stats, load: Load, stop: threading.Event
                   ) -> None:
    """Ready replicas per endpoint, every 2 s, filed under the current phase."""
    with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {lc.config.token}"}) as h:
        while not stop.wait(2.0):
            try:
                deps = h.get(f"{lc.config.platform_url}/v1/deployments").json()["deployments"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            for d in deps:
                stats.replicas[load.phase][d["name"]].append(d["replicas"]["ready"])


# ---- the run ------------------------------------------------------------------------------
async def run(lc: LocalComponents, plan: list[Phase], phase_s: float, stats: Stats) -> float:
    load = Load(lc, stats)
    stop_watch = threading.Event()
    watcher = threading.Thread(target=watch_replicas, args=(lc, stats, load, stop_watch),
                               daemon=True)
    watcher.start()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for phase in plan:
            load.phase = phase.name
            print(f"{time.strftime('%H:%M:%S')} phase {phase.name}: {phase.rate_per_s:g}/s"
                  + (f", fault {phase.fault}" if phase.fault else ""), flush=True)
            fault = None
            start = time.monotonic()
            end = start + phase_s
            next_at = start
            while time.monotonic() < end:
                if phase.fault and fault is None and time.monotonic() >= start + phase_s / 3:
                    fault = asyncio.get_running_loop().run_in_executor(
                        FAULTS, inject, lc, phase.fault, stats)
                now = time.monotonic()
                if now >= next_at:
                    load.send_one(session)
                    next_at += load.rng.expovariate(phase.rate_per_s)
                await asyncio.sleep(max(0.0, min(next_at - time.monotonic(), 0.05)))
            if fault is not None:
                await fault
        drain_start = time.monotonic()
        print(f"{time.strftime('%H:%M:%S')} sent {len(stats.records)}; waiting for "
              f"{len(load.tasks)} outstanding answers", flush=True)
        if load.tasks:
            await asyncio.wait(set(load.tasks), timeout=DRAIN_S)
    for t in load.tasks:
        t.cancel()
    stop_watch.set()
    return time.monotonic() - drain_start


def report(plan: list[Phase], stats: Stats, drain_s: float) -> int:
    statuses = sorted({r.status for r in stats.records if r.outcome == "error"})
    head = ["phase", "sent", "ok", *[f"err {s if s > 0 else 'conn'}" for s in statuses],
            "lost", "wrong", "retried", "p50 ms", "p99 ms", "replicas (ready, min-max)"]
    rows = [head]
    names = [p.name for p in plan]
    for name in [*names, "total"]:
        recs = [r for r in stats.records if name == "total" or r.phase == name]
        count = Counter(r.outcome for r in recs)
        by_status = Counter(r.status for r in recs if r.outcome == "error")
        answered = [r.latency_s * 1000 for r in recs if r.outcome in ("ok", "error", "wrong")]
        reps = stats.replicas.get(name, {}) if name != "total" else {}
        rep_text = " ".join(f"{ep} {min(v)}-{max(v)}" for ep, v in sorted(reps.items()) if v)
        rows.append([name, str(len(recs)), str(count["ok"]),
                     *[str(by_status[s]) for s in statuses],
                     str(count["lost"] + count["pending"]), str(count["wrong"]),
                     str(sum(1 for r in recs if r.retries)),
                     f"{percentile(answered, 50):.0f}", f"{percentile(answered, 99):.0f}",
                     rep_text])
    print()
    print(table(rows))
    print()
    print("faults injected:")
    for f in stats.faults:
        print(f"  {f}")
    print(f"drain after the last phase: {drain_s:.1f} s")
    bad = [r for r in stats.records if r.outcome in ("lost", "wrong", "pending")]
    for r in bad[:20]:
        print(f"  {r.outcome}: {r.kind} sent in {r.phase}: {r.detail}")
    errors = Counter((r.status, r.detail[:120]) for r in stats.records if r.outcome == "error")
    if errors:
        print("error answers (status, first words):")
        for (status, detail), n in errors.most_common(8):
            print(f"  {n:5d} x {status}: {detail}")
    lost_or_wrong = len(bad)
    print(f"\nlost: {sum(1 for r in bad if r.outcome != 'wrong')}, "
          f"wrong: {sum(1 for r in bad if r.outcome == 'wrong')}")
    return 1 if lost_or_wrong else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (300)")
    ap.add_argument("--quick", action="store_true", help="a 60 s run")
    ap.add_argument("--rate", type=float, default=5.0, help="base requests per second (5)")
    ap.add_argument("--burst-rate", type=float, default=20.0,
                    help="requests per second in the burst phase (20)")
    ap.add_argument("--keep-alive", type=float, default=20.0,
                    help="fixed keep-alive of the cluster, seconds (20), so it scales down")
    ap.add_argument("--home", help="cluster state directory (default: a temporary one)")
    a = ap.parse_args()
    duration = 60.0 if a.quick else a.duration
    plan, phase_s = phases(duration, a.rate, a.burst_rate)
    home = Path(a.home) if a.home else Path(tempfile.mkdtemp(prefix="lowtide-chaos-"))
    print(f"cluster in {home}; {len(plan)} phases of {phase_s:.1f} s", flush=True)
    lc = LocalComponents(home, keep_alive_s=a.keep_alive).start()
    stats = Stats()
    try:
        with lc.client() as client:
            for fn, name in ((fast, "fast"), (slow, "slow"), (cpu, "cpu")):
                client.deploy(fn, name=name, timeout=60, max_replicas=MAX_REPLICAS)
        drain_s = asyncio.run(run(lc, plan, phase_s, stats))
        dead = [n for n in COMPONENTS if not lc.procs[n].running()]
        if dead:
            print(f"component(s) not running at the end: {dead}")
        return report(plan, stats, drain_s) or (1 if dead else 0)
    finally:
        lc.stop()
        FAULTS.shutdown()
        print(f"logs: {home}/*.log")


if __name__ == "__main__":
    sys.exit(main())
