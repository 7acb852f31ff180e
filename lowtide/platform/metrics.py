"""The dashboard's numbers for Prometheus: per endpoint, what the scaler saw at its last look
and the activators' latency over the last RECENT_S, read from the series recorder's memory
at scrape time (docs/grafana/lowtide.json charts them). An endpoint the scaler stopped
looking at disappears with it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .series import SeriesRecorder

GAUGES = {  # look field -> (metric, help)
    "rps": ("lowtide_endpoint_requests_per_second", "Arrivals per second"),
    "queued": ("lowtide_endpoint_queued", "Buffered requests not yet taken by a replica"),
    "oldest_wait_s": ("lowtide_endpoint_oldest_wait_seconds",
                      "Age of the oldest buffered request not yet taken"),
    "in_flight": ("lowtide_endpoint_in_flight", "Requests running on its replicas"),
    "cpu": ("lowtide_endpoint_cpu_utilization",
            "Mean CPU use of the ready replicas over the cores they requested (1 = all)"),
    "gpu": ("lowtide_endpoint_gpu_utilization",
            "Mean GPU use of the ready replicas over the GPUs they requested (1 = all)"),
    "limit": ("lowtide_endpoint_limit", "Learned per-replica concurrency limit (lowest ready)"),
}


class SeriesCollector(Collector):
    def __init__(self, recorder: SeriesRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        families = {k: GaugeMetricFamily(m, h, labels=["endpoint"])
                    for k, (m, h) in GAUGES.items()}
        replicas = GaugeMetricFamily("lowtide_endpoint_replicas", "Replicas ready and desired",
                                     labels=["endpoint", "kind"])
        latency = GaugeMetricFamily("lowtide_endpoint_latency_seconds",
                                    "Answer time quantiles at the activators, last 10 s",
                                    labels=["endpoint", "quantile"])
        for name, look in self.recorder.looks().items():
            for key, family in families.items():
                if look.get(key) is not None:
                    family.add_metric([name], float(look[key] or 0.0))
            replicas.add_metric([name, "ready"], float(look["ready"] or 0))
            replicas.add_metric([name, "desired"], float(look["desired"] or 0))
            recent = self.recorder.recent(name)
            for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
                if recent[key] is not None:
                    latency.add_metric([name, q], recent[key] / 1000)
        charted = GaugeMetricFamily("lowtide_platform_charted_endpoints",
                                    "Endpoints the dashboard series hold: stepped each second "
                                    "(the scaler looks at them) or parked at zero until their "
                                    "open buckets close", labels=["state"])
        stepped = self.recorder.stepped()
        charted.add_metric(["stepped"], float(stepped))
        charted.add_metric(["parked"], float(self.recorder.charted() - stepped))
        yield from (*families.values(), replicas, latency, charted)
