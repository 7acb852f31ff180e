"""The activator's view of each replica as Prometheus metrics, read from memory at scrape
time: the replica's learned limit and no-load latency as last reported, this activator's
in-flight requests on it and its share of it, and the requests waiting in memory. Series of
replicas that left routing disappear with them, as nothing is kept per label between
scrapes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .routes import Routes
from .waiters import Waiters

LABELS = ["endpoint", "replica"]


class RoutesCollector(Collector):
    def __init__(self, routes: Routes, waiting: Mapping[str, int],
                 waiters: Waiters | None = None) -> None:
        self.routes = routes
        self.waiting = waiting
        self.waiters = waiters

    def collect(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily("lowtide_replica_limit",
                                  "Learned concurrency limit of the replica", labels=LABELS)
        in_flight = GaugeMetricFamily("lowtide_replica_in_flight",
                                      "Requests this activator has running on the replica",
                                      labels=LABELS)
        no_load = GaugeMetricFamily("lowtide_replica_no_load_latency_seconds",
                                    "The replica's no-load latency estimate", labels=LABELS)
        direct = CounterMetricFamily("lowtide_replica_direct_requests",
                                     "Requests the replica answered directly through this "
                                     "activator", labels=LABELS)
        waiting = GaugeMetricFamily("lowtide_endpoint_buffered_waiting",
                                    "Requests this activator buffered and still waits for",
                                    labels=["endpoint"])
        in_memory = GaugeMetricFamily("lowtide_endpoint_waiting_in_memory",
                                      "Requests waiting in this activator's memory for a "
                                      "replica slot", labels=["endpoint"])
        share = GaugeMetricFamily("lowtide_replica_share",
                                  "Slots of the replica this activator learned it may use "
                                  "(its limit while no other work filled it)", labels=LABELS)
        for endpoint in list(self.routes.endpoints.values()):
            for r in list(endpoint.replicas.values()):
                labels = [endpoint.name, r.id]
                limit.add_metric(labels, r.limit)
                in_flight.add_metric(labels, r.in_flight)
                share.add_metric(labels, r.room() + r.in_flight)
                direct.add_metric(labels, r.requests)
                if r.no_load_ms is not None:
                    no_load.add_metric(labels, r.no_load_ms / 1000)
        for name, n in list(self.waiting.items()):
            waiting.add_metric([name], n)
        if self.waiters is not None:
            for name in self.waiters.names():
                in_memory.add_metric([name], self.waiters.count(name))
        yield from (limit, in_flight, no_load, direct, waiting, in_memory, share)
