from prometheus_client import REGISTRY

from lowtide.platform.startmetrics import StartMetrics
from lowtide.platform.state import ReplicaRecord


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_cold_starts_are_counted_once_by_path_and_forgotten_with_the_endpoint() -> None:
    m, ep = StartMetrics(), "sm-endpoint"
    ready = ReplicaRecord("r-1", 1, "ready", extra={"startup": {"path": "pool", "total_s": 0.4}})
    full = ReplicaRecord("r-2", 1, "ready", extra={"startup": {"path": "full", "total_s": 7.0}})
    starting = ReplicaRecord("r-3", 1, "starting")
    m.observe(ep, 3, [ready, full, starting])
    m.observe(ep, 3, [ready, full, starting])  # the next look counts nothing again
    m.failed(ep)
    assert sample("lowtide_platform_cold_starts_total", endpoint=ep, path="pool") == 1
    assert sample("lowtide_platform_cold_starts_total", endpoint=ep, path="full") == 1
    assert sample("lowtide_platform_cold_start_seconds_bucket", endpoint=ep, path="pool",
                  le="0.5") == 1
    assert sample("lowtide_platform_cold_start_seconds_sum", endpoint=ep, path="full") == 7.0
    assert sample("lowtide_platform_endpoint_replicas", endpoint=ep, state="starting") == 1
    assert sample("lowtide_platform_endpoint_replicas", endpoint=ep, state="ready") == 2
    assert sample("lowtide_platform_endpoint_replicas", endpoint=ep, state="desired") == 3
    assert sample("lowtide_platform_start_failures_total", endpoint=ep) == 1
    m.forget(ep)
    assert sample("lowtide_platform_endpoint_replicas", endpoint=ep, state="ready") is None
    assert sample("lowtide_platform_cold_starts_total", endpoint=ep, path="pool") is None
