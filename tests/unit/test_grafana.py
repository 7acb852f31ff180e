"""The Grafana dashboard in docs/ stays true: every metric it queries is one lowtide exports,
and the platform's per-endpoint gauges come out of the series recorder."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from lowtide.platform.metrics import SeriesCollector
from lowtide.platform.policy import Decision, Observation
from lowtide.platform.series import SeriesRecorder

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"lowtide_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def exported() -> set[str]:
    names = set()
    for path in (ROOT / "lowtide").rglob("*.py"):
        names |= set(re.findall(r'"(lowtide_[a-z_]+)"', path.read_text()))
    return names


def test_every_metric_the_grafana_dashboard_queries_is_exported() -> None:
    dash = json.loads((ROOT / "docs" / "grafana" / "lowtide.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"]]
    used = {n for e in exprs for n in NAME.findall(e)}
    known = exported()
    missing = {n for n in used if n not in known
               and not any(n.endswith(s) and n[: -len(s)] in known for s in SUFFIXES)}
    assert used and not missing, missing


def test_the_platform_exports_what_the_scaler_saw() -> None:
    recorder = SeriesRecorder(redis=None)  # type: ignore[arg-type]  # no I/O here
    obs = Observation(desired=1, ready=2, starting=0, queued=3, oldest_wait_s=0.5,
                      in_flight=4, last_activity_at=0.0, limit=8, arrival_rate_per_s=12.0,
                      cpu_utilization=0.4)
    recorder.observe("ep", obs, Decision(3, "scale-up", "why"), 100.0)
    registry = CollectorRegistry()
    registry.register(SeriesCollector(recorder))
    text = generate_latest(registry).decode()
    for line in ('lowtide_endpoint_replicas{endpoint="ep",kind="desired"} 3.0',
                 'lowtide_endpoint_replicas{endpoint="ep",kind="ready"} 2.0',
                 'lowtide_endpoint_requests_per_second{endpoint="ep"} 12.0',
                 'lowtide_endpoint_cpu_utilization{endpoint="ep"} 0.4',
                 'lowtide_endpoint_limit{endpoint="ep"} 8.0'):
        assert line in text
    assert "lowtide_endpoint_gpu_utilization{" not in text  # not measured: no sample
