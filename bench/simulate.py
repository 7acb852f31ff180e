"""Trace-driven simulation of lowtide's autoscaler and keep-alive against today's policies.

    python bench/simulate.py [--functions 60] [--seed 7] [--out bench/out] [--only NAME]
                             [--breakdown] [--traces DIR]

Replays workloads against the *same* `Autoscaler` class the platform runs
(`lowtide.platform.policy`), with a model of replica start-up time and per-replica capacity,
and compares it with a Knative-KPA-style policy (70 % of a fixed concurrency, 60 s / 6 s
windows, panic at 200 %, 30 s grace to zero), a Ray-Serve-style policy (target 2 ongoing
requests, upscale delay 30 s, downscale delay 600 s) and fixed keep-alive windows of 10 and
20 minutes (AWS Lambda, Azure Functions). Prints a table and writes one PNG per workload
(load, replicas and queue over time) and `results.csv` under --out.

Model (one endpoint per function): time advances in ticks of `dt_s`; a request needs one of a
replica's `limit` slots for its duration (a request shorter than a tick holds a fraction of a
slot for the tick, so slot-seconds are kept); a replica is ready `startup_s` after it is asked
for. A request is *cold* when the replica that serves it became ready after it arrived;
queueing delay is the time from arrival to a slot (tick resolution). The model, not the
policy, counts both, the same way for every policy: a request that finds every ready slot
taken waits in the queue and is cold only if a replica started after it arrived serves it
(it may instead get a slot a warm replica frees first: warm, with queueing delay). The
floor of any policy without foresight, every instance kept forever, is printed for the
Azure sets: a function's first request, and the part of a batch beyond what was ever warm,
are cold whatever the policy. Wasted memory is the
memory of every loaded replica (starting, or ready with no request) times that time.

The Azure samples ship in `bench/traces/` (CC-BY 4.0; attribution in its README).
Trace sets are subsampled to keep the run to a few minutes on 2 cores: `--functions N`
functions drawn at random with a fixed seed from each Azure 2019 set (the same draw for every
policy); the Azure 2021 sample is replayed whole. Per-minute counts are spread over the
minute's ticks at random (seeded).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lowtide.platform.policy import (
    Autoscaler,
    Decision,
    Observation,
    replicas_for,
    request_replicas,
    window_average,
)

TRACES = Path(__file__).resolve().parent / "traces"  # shipped samples: traces/README.md
T0 = 19_675 * 86400.0  # the simulated epoch: a UTC midnight, so times of day read plainly


# ---- workloads --------------------------------------------------------------------------
@dataclass
class Function:
    app: str
    arrivals: np.ndarray  # requests per tick
    duration_s: float
    memory_gb: float
    limit: int


@dataclass
class Workload:
    name: str
    dt_s: float
    startup_s: float
    functions: list[Function]
    note: str = ""
    plot_s: float | None = None  # plot only the start (sparse loads blur when bucketed)

    @property
    def ticks(self) -> int:
        return max(len(f.arrivals) for f in self.functions)


STEP_AT_S, STEP_CONCURRENCY = 600.0, 200 * 0.2


def time_to_capacity(outcome: Outcome, limit: int) -> float:
    """Seconds from the step until the ready replicas can hold the new load at their limit."""
    for t, _, _, _, ready in outcome.series:
        if t >= STEP_AT_S and ready * limit >= STEP_CONCURRENCY:
            return t - STEP_AT_S
    return math.inf


def step_burst(rng: np.random.Generator) -> Workload:
    """20 req/s for 10 min, 200 req/s for 10 min, 20 req/s for 10 min (0.2 s, limit 4)."""
    rate = np.r_[np.full(600, 20.0), np.full(600, 200.0), np.full(600, 20.0)]
    fn = Function("step", rng.poisson(rate), 0.2, 1.0, 4)
    return Workload("step-10x", 1.0, 5.0, [fn], "10x step at t=10 min, 5 s start-up")


def diurnal(rng: np.random.Generator, days: int = 3) -> Workload:
    """Busy by day (peak 5 req/s at 14:00), idle from 22:00 to 06:00; 5 s ticks."""
    dt_s = 5.0
    hours = (np.arange(int(days * 86400 / dt_s)) * dt_s / 3600.0) % 24
    day = np.clip(np.sin((hours - 6) / 16 * np.pi), 0, None) * (hours >= 6) * (hours < 22)
    fn = Function("diurnal", rng.poisson(5.0 * day * dt_s), 0.3, 1.0, 4)
    return Workload("diurnal", dt_s, 5.0, [fn], f"{days} days, night 22:00-06:00 idle")


def periodic(days: int = 1) -> Workload:
    """A timer: one 2 s request every 15 minutes."""
    dt_s = 5.0
    counts = np.zeros(int(days * 86400 / dt_s), dtype=np.int64)
    counts[:: int(900 / dt_s)] = 1
    return Workload("periodic-15min", dt_s, 5.0, [Function("timer", counts, 2.0, 0.25, 4)],
                    "1 request every 15 min for a day", plot_s=3 * 3600.0)


def _spread(per_minute: np.ndarray, dt_s: float, rng: np.random.Generator) -> np.ndarray:
    """Spread each minute's count over its ticks at random."""
    per = int(60 / dt_s)
    out = np.zeros(len(per_minute) * per, dtype=np.int64)
    for m in np.flatnonzero(per_minute):
        out[m * per:(m + 1) * per] = rng.multinomial(int(per_minute[m]), [1 / per] * per)
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def azure2019_500(rng: np.random.Generator, n: int, traces: Path = TRACES) -> Workload:
    d = traces / "azure2019-500fn-8h"
    inv = _read_csv(d / "invocations.csv")
    dur = {r["HashFunction"]: float(r["Average"]) / 1000 for r in _read_csv(d / "durations.csv")}
    mem = {r["HashFunction"]: float(r["AverageAllocatedMb"]) / 1024
           for r in _read_csv(d / "memory.csv")}
    minutes = [k for k in inv[0] if k.isdigit()]
    chosen = sorted(rng.choice(len(inv), size=min(n, len(inv)), replace=False))
    fns = [Function(r["HashApp"][:8], _spread(np.array([int(r[m]) for m in minutes]), 10.0, rng),
                    dur.get(r["HashFunction"], 1.0), mem.get(r["HashFunction"], 0.25), 8)
           for r in (inv[i] for i in chosen)]
    return Workload("azure2019-500fn-8h", 10.0, 5.0, fns,
                    f"{len(fns)} of {len(inv)} functions, 8 h, 10 s ticks")


def azure2019_day(rng: np.random.Generator, n: int, traces: Path = TRACES) -> Workload:
    d = traces / "azure2019-sampled-day"
    inv = _read_csv(d / "200_inv.csv")
    run = {r["HashFunction"]: float(r["Average"]) / 1000 for r in _read_csv(d / "200_run.csv")}
    mem = {r["HashApp"]: float(r["AverageAllocatedMb"]) / 1024
           for r in _read_csv(d / "200_mem.csv")}
    minutes = [k for k in inv[0] if k.startswith("minute_")]
    chosen = sorted(rng.choice(len(inv), size=min(n, len(inv)), replace=False))
    fns = [Function(r["HashApp"][:8], _spread(np.array([int(r[m]) for m in minutes]), 10.0, rng),
                    run.get(r["HashFunction"], 1.0), mem.get(r["HashApp"], 0.25), 8)
           for r in (inv[i] for i in chosen)]
    return Workload("azure2019-sampled-day", 10.0, 5.0, fns,
                    f"{len(fns)} of {len(inv)} functions, 24 h, 10 s ticks")


def azure2021(dt_s: float = 1.0, traces: Path = TRACES) -> Workload:
    rows = _read_csv(traces / "azure2021-example" / "Azure2021_200.csv")
    starts = [(r["app"][:8] + r["func"][:8], float(r["end_timestamp"]) - float(r["duration"]),
               float(r["duration"])) for r in rows]
    horizon = int(max(s for _, s, _ in starts) / dt_s) + 1200
    fns = []
    for key in sorted({k for k, _, _ in starts}):
        mine = [(s, d) for k, s, d in starts if k == key]
        counts = np.zeros(horizon, dtype=np.int64)
        for s, _ in mine:
            counts[max(0, int(s / dt_s))] += 1
        fns.append(Function(key[:8], counts, float(np.mean([d for _, d in mine])), 0.25, 8))
    return Workload("azure2021-example", dt_s, 5.0, fns,
                    f"all {len(rows)} invocations, {len(fns)} functions, 1 s ticks")


# ---- baselines (lowtide's own policy is imported, never copied) -------------------------
class Policy(Protocol):
    def decide(self, obs: Observation, now: float) -> Decision: ...


def _d(prev: int, n: int, kind: str) -> Decision:
    return Decision(n, kind if n != prev else "steady", f"{prev} -> {n}: {kind}")


class KnativeKPA:
    """70 % of a fixed concurrency, 60 s / 6 s windows, panic at 200 %, 30 s grace to zero."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.samples: deque[tuple[float, float]] = deque()
        self.panic_until = -math.inf
        self.zero_since: float | None = None

    def decide(self, obs: Observation, now: float) -> Decision:
        demand = obs.in_flight + obs.queued
        self.samples.append((now, float(demand)))
        while self.samples[0][0] <= now - 60:
            self.samples.popleft()
        stable = request_replicas(window_average(self.samples, now, 60), self.concurrency, 0.7)
        panic = request_replicas(window_average(self.samples, now, 6), self.concurrency, 0.7)
        prev = obs.desired
        if prev == 0:
            return _d(prev, max(1, panic) if obs.queued else 0, "activate")
        if panic >= 2 * max(1, obs.ready):
            self.panic_until = now + 60
        if now < self.panic_until:
            return _d(prev, max(prev, panic), "panic")
        if stable == 0:
            self.zero_since = now if self.zero_since is None else self.zero_since
            return _d(prev, 0 if now - self.zero_since >= 30 else prev, "grace")
        self.zero_since = None
        return _d(prev, stable, "stable")


class RayServe:
    """Target 2 ongoing requests per replica; upscale after 30 s, downscale after 600 s."""

    def __init__(self) -> None:
        self.above_since: float | None = None
        self.below_since: float | None = None

    def decide(self, obs: Observation, now: float) -> Decision:
        prev = obs.desired
        want = math.ceil((obs.in_flight + obs.queued) / 2)
        if prev == 0:
            return _d(prev, 1 if obs.queued else 0, "from-zero")
        self.above_since = (self.above_since or now) if want > prev else None
        self.below_since = (self.below_since or now) if want < prev else None
        if self.above_since is not None and now - self.above_since >= 30:
            return _d(prev, want, "upscale")
        if self.below_since is not None and now - self.below_since >= 600:
            return _d(prev, want, "downscale")
        return _d(prev, prev, "hold")


class FixedKeepAlive:
    """One instance per `limit` concurrent requests at once; each kept `keep_s` after use."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.needed: deque[tuple[float, int]] = deque()

    def decide(self, obs: Observation, now: float) -> Decision:
        n = replicas_for(obs.in_flight + obs.queued, obs.limit)
        while self.needed and self.needed[-1][1] <= n:  # a sliding-window maximum
            self.needed.pop()
        self.needed.append((now, n))
        while self.needed[0][0] <= now - self.keep_s:
            self.needed.popleft()
        return _d(obs.desired, self.needed[0][1], "keep-alive")


POLICIES: dict[str, Callable[[Function], Policy]] = {
    "lowtide": lambda f: Autoscaler(),
    "knative-kpa": lambda f: KnativeKPA(f.limit),
    "ray-serve": lambda f: RayServe(),
    "fixed-10min": lambda f: FixedKeepAlive(600.0),
    "fixed-20min": lambda f: FixedKeepAlive(1200.0),
}


# ---- the model of one endpoint ----------------------------------------------------------
@dataclass
class Replica:
    ready_at: float
    busy: list[tuple[float, float]] = field(default_factory=list)  # (done_at, slots)

    def used(self) -> float:
        return sum(s for _, s in self.busy)


@dataclass
class Outcome:
    requests: int = 0
    cold: int = 0
    delays: dict[float, int] = field(default_factory=dict)  # queueing delay s -> requests
    replica_s: float = 0.0
    wasted_gb_s: float = 0.0
    series: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    # (t, arrivals, replicas, queued, ready)


def simulate(fn: Function, policy: Policy, dt_s: float, startup_s: float) -> Outcome:
    out, replicas, queue = Outcome(), [], deque()  # queue: [arrived_at, count]
    duration_s = max(fn.duration_s, 0.001)
    occupancy, hold_s = min(1.0, duration_s / dt_s), max(duration_s, dt_s)
    desired, last_arrival, last_done = 0, 0.0, T0
    for i, arrived in enumerate(fn.arrivals):
        now = T0 + i * dt_s
        for r in replicas:
            done = [b for b in r.busy if b[0] <= now]
            if done:
                last_done = max(last_done, max(b[0] for b in done))
                r.busy = [b for b in r.busy if b[0] > now]
        if arrived:
            queue.append([now, int(arrived)])
            out.requests += int(arrived)
            last_arrival = now
        _dispatch(queue, replicas, now, fn.limit, occupancy, hold_s, out)
        ready = [r for r in replicas if r.ready_at <= now]
        used = sum(r.used() for r in ready)
        obs = Observation(
            desired=desired, ready=len(ready), starting=len(replicas) - len(ready),
            queued=sum(c for _, c in queue), oldest_wait_s=now - queue[0][0] if queue else 0.0,
            in_flight=math.ceil(round(used, 6)),
            last_activity_at=max(last_arrival, last_done), limit=fn.limit,
            last_request_at=last_arrival, arrival_rate_per_s=arrived / dt_s,
            cpu_utilization=used / (len(ready) * fn.limit) if ready else None)
        desired = policy.decide(obs, now).desired
        _converge(replicas, desired, now + startup_s)
        loaded_idle = sum(1 for r in replicas if r.ready_at > now or not r.busy)
        out.replica_s += len(replicas) * dt_s
        out.wasted_gb_s += loaded_idle * fn.memory_gb * dt_s
        out.series.append((now - T0, int(arrived), len(replicas), obs.queued, len(ready)))
    return out


def _dispatch(queue: deque[list[float]], replicas: list[Replica], now: float, limit: int,
              occupancy: float, hold_s: float, out: Outcome) -> None:
    for r in sorted((r for r in replicas if r.ready_at <= now), key=Replica.used):
        while queue:
            fits = int((limit - r.used()) / occupancy + 1e-9)
            if fits <= 0:
                break
            arrived_at, count = queue[0]
            k = min(int(count), fits)
            r.busy.append((now + hold_s, k * occupancy))
            delay = round(now - arrived_at, 3)
            out.delays[delay] = out.delays.get(delay, 0) + k
            if r.ready_at > arrived_at:
                out.cold += k
            if k == count:
                queue.popleft()
            else:
                queue[0][1] = count - k


def _converge(replicas: list[Replica], desired: int, ready_at: float) -> None:
    while len(replicas) < desired:
        replicas.append(Replica(ready_at))
    if len(replicas) > desired:  # starting ones first, then idle; busy ones finish first
        for r in sorted(replicas, key=lambda r: (-r.ready_at, r.used())):
            if len(replicas) <= desired or r.busy:
                break
            replicas.remove(r)


# ---- metrics, table, plots --------------------------------------------------------------
def weighted_percentile(counts: dict[float, int], pct: float) -> float:
    if not counts:
        return 0.0
    values = sorted(counts)
    cum = np.cumsum([counts[v] for v in values])
    return float(values[int(np.searchsorted(cum, cum[-1] * pct / 100.0))])


@dataclass
class Row:
    workload: str
    policy: str
    requests: int
    cold: int
    cold_pct: float
    app_p75_cold_pct: float
    p99_queue_s: float
    replica_h: float
    wasted_gb_min: float


def summarize(workload: Workload, policy: str, outcomes: list[Outcome]) -> Row:
    delays: dict[float, int] = {}
    per_app: dict[str, list[int]] = {}
    for fn, o in zip(workload.functions, outcomes, strict=True):
        for k, v in o.delays.items():
            delays[k] = delays.get(k, 0) + v
        app = per_app.setdefault(fn.app, [0, 0])
        app[0], app[1] = app[0] + o.cold, app[1] + o.requests
    requests = sum(o.requests for o in outcomes)
    app_rates = [100 * c / n for c, n in per_app.values() if n]
    return Row(workload.name, policy, requests, sum(o.cold for o in outcomes),
               100 * sum(o.cold for o in outcomes) / max(1, requests),
               float(np.percentile(app_rates, 75)) if app_rates else 0.0,
               weighted_percentile(delays, 99), sum(o.replica_s for o in outcomes) / 3600,
               sum(o.wasted_gb_s for o in outcomes) / 60)


HEADER = ("workload", "policy", "requests", "cold", "cold %", "p75 app cold %", "p99 queue s",
          "replica-h", "wasted GB-min")


def print_table(rows: list[Row]) -> None:
    cells = [HEADER] + [(r.workload, r.policy, str(r.requests), str(r.cold),
                         f"{r.cold_pct:.2f}",
                         f"{r.app_p75_cold_pct:.1f}", f"{r.p99_queue_s:.1f}",
                         f"{r.replica_h:.2f}", f"{r.wasted_gb_min:.1f}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    for n, line in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_breakdown(workload: Workload, runs: dict[str, list[Outcome]]) -> None:
    """Cold starts per app and policy (apps where the policies differ first)."""
    names = list(runs)
    apps: dict[str, list[int]] = {}
    requests: dict[str, int] = {}
    for i, fn in enumerate(workload.functions):
        counts = apps.setdefault(fn.app, [0] * len(names))
        for j, name in enumerate(names):
            counts[j] += runs[name][i].cold
        requests[fn.app] = requests.get(fn.app, 0) + runs[names[0]][i].requests
    print(f"cold starts per app, {workload.name}")
    print("app       requests  " + "  ".join(f"{n:>11}" for n in names))
    for app, counts in sorted(apps.items(), key=lambda kv: (-(max(kv[1]) - min(kv[1])), kv[0])):
        print(f"{app:8}  {requests[app]:8}  " + "  ".join(f"{c:11}" for c in counts))
    print()


def plot(workload: Workload, runs: dict[str, list[Outcome]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    span_s = workload.plot_s or workload.ticks * workload.dt_s
    scale, unit = (3600.0, "h") if span_s > 4 * 3600 else (60.0, "min")
    for name, outcomes in runs.items():
        t, load, reps, queue = _sum_series(outcomes, workload.dt_s, scale / 12, span_s)
        if name == "lowtide":
            axes[0].plot(t / scale, load, color="black", lw=0.8)
        axes[1].plot(t / scale, reps, lw=1.2 if name == "lowtide" else 0.8, label=name)
        axes[2].plot(t / scale, queue, lw=1.2 if name == "lowtide" else 0.8, label=name)
    axes[0].set_ylabel("requests / s")
    axes[1].set_ylabel("replicas")
    axes[2].set_ylabel("queued")
    axes[2].set_xlabel(f"time ({unit})")
    axes[1].legend(loc="upper right", fontsize=8)
    shown = f" (first {span_s / 3600:g} h shown)" if workload.plot_s else ""
    fig.suptitle(f"{workload.name}: {workload.note}{shown}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _sum_series(outcomes: list[Outcome], dt_s: float, bucket_s: float, span_s: float
                ) -> tuple[np.ndarray, ...]:
    length = min(max(len(o.series) for o in outcomes), int(span_s / dt_s))
    total = np.zeros((length, 3))
    for o in outcomes:
        n = min(len(o.series), length)
        total[:n] += np.array([s[1:4] for s in o.series[:n]], dtype=float)
    per = max(1, int(bucket_s / dt_s)) if length * dt_s > 3 * 3600 else 1
    n = length // per * per
    buckets = total[:n].reshape(-1, per, 3)
    t = np.arange(n // per) * per * dt_s
    return t, buckets[:, :, 0].sum(1) / (per * dt_s), buckets[:, :, 1].mean(1), \
        buckets[:, :, 2].mean(1)


def workloads(args: argparse.Namespace) -> Iterator[Workload]:
    rng = np.random.default_rng(args.seed)  # one draw in this order: figures stay comparable
    yield step_burst(rng)
    yield diurnal(rng)
    yield periodic()
    yield azure2019_500(rng, args.functions, args.traces)
    yield azure2019_day(rng, args.functions, args.traces)
    yield azure2021(traces=args.traces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--functions", type=int, default=60,
                        help="functions drawn from each Azure 2019 set (default 60)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--traces", type=Path, default=TRACES,
                        help=f"the Azure trace samples (default {TRACES})")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--only", help="run only the workloads whose name contains this")
    parser.add_argument("--breakdown", action="store_true",
                        help="also print cold starts per app and policy")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    notes: list[str] = []
    for workload in workloads(args):
        if args.only and args.only not in workload.name:
            continue
        started = time.monotonic()
        runs = {name: [simulate(fn, make(fn), workload.dt_s, workload.startup_s)
                       for fn in workload.functions] for name, make in POLICIES.items()}
        rows += [summarize(workload, name, outcomes) for name, outcomes in runs.items()]
        if args.breakdown:
            print_breakdown(workload, runs)
        plot(workload, runs, args.out / f"{workload.name}.png")
        if workload.name.startswith("azure"):
            floor = sum(simulate(fn, FixedKeepAlive(math.inf), workload.dt_s,
                                 workload.startup_s).cold for fn in workload.functions)
            notes.append(f"{workload.name}: {floor} cold starts with every instance kept "
                         "forever (no policy without foresight has fewer)")
        if workload.name == "step-10x":
            notes += [f"step-10x: {name} holds the new load {time_to_capacity(o[0], 4):.0f} s "
                      "after the step" for name, o in runs.items()]
        print(f"# {workload.name}: {workload.note} ({time.monotonic() - started:.0f} s)",
              file=sys.stderr)
    print_table(rows)
    for note in notes:
        print(note)
    with (args.out / "results.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        writer.writerows([[getattr(r, f) for f in Row.__dataclass_fields__] for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
