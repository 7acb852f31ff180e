"""Per-endpoint start-up metrics of the platform's /metrics: replicas by state, cold starts
(a counter, and their seconds as a histogram by start path: `pool` specialization or the
`full` Bento start), and failed starts.

Fed by the replica housekeeping each time it looks at an endpoint: a replica is counted as
a cold start once, when it is first seen ready with its start-up record (what it measured
itself, from the platform's decision to its first readiness). An endpoint's labels go when
the endpoint does.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from .state import ReplicaRecord

REPLICAS = Gauge("lowtide_platform_endpoint_replicas",
                 "Replicas of an endpoint by state (starting, ready, stopping) and desired",
                 ["endpoint", "state"])
COLD_STARTS = Counter("lowtide_platform_cold_starts_total",
                      "Replicas that became ready, by start path", ["endpoint", "path"])
COLD_START_SECONDS = Histogram(
    "lowtide_platform_cold_start_seconds",
    "Seconds from the decision to start a replica to its readiness, by start path",
    ["endpoint", "path"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900))
START_FAILURES = Counter("lowtide_platform_start_failures_total",
                         "Replicas that failed to start (load error, crash, start timeout)",
                         ["endpoint"])
STATES = ("starting", "ready", "stopping")
MAX_REMEMBERED = 10_000  # replica ids already counted, per platform process


class StartMetrics:
    def __init__(self) -> None:
        self._counted: dict[str, None] = {}  # insertion-ordered set of replica ids

    def observe(self, name: str, desired: int, replicas: Iterable[ReplicaRecord]) -> None:
        by_state = Tally(r.state for r in replicas)
        for st in STATES:
            REPLICAS.labels(name, st).set(by_state.get(st, 0))
        REPLICAS.labels(name, "desired").set(desired)
        for r in replicas:
            startup = r.extra.get("startup") or {}
            if r.state != "ready" or r.id in self._counted or "total_s" not in startup:
                continue
            path = str(startup.get("path") or "full")
            COLD_STARTS.labels(name, path).inc()
            COLD_START_SECONDS.labels(name, path).observe(float(startup["total_s"]))
            self._counted[r.id] = None
            if len(self._counted) > MAX_REMEMBERED:
                self._counted.pop(next(iter(self._counted)))

    def failed(self, name: str) -> None:
        START_FAILURES.labels(name).inc()

    def forget(self, name: str) -> None:
        for metric in (REPLICAS, COLD_STARTS, COLD_START_SECONDS, START_FAILURES):
            for labels in [lbl for lbl in _label_sets(metric) if lbl[0] == name]:
                metric.remove(*labels)


def _label_sets(metric: Gauge | Counter | Histogram) -> list[tuple[str, ...]]:
    return [tuple(k) for k in metric._metrics]  # prometheus_client: children by label values
