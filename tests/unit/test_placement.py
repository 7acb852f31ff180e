"""choose_host: spread one endpoint, then the least loaded host, deterministic on ties."""

from __future__ import annotations

from typing import Any

import pytest

from lowtide.platform.placement import choose_host


def hosts(**replicas: int | None) -> dict[str, dict[str, Any]]:
    """host id -> heartbeat record with a total replica count (None: no load reported)."""
    return {h: ({} if n is None else {"load": {"replicas": n}}) for h, n in replicas.items()}


@pytest.mark.parametrize(
    ("live", "endpoint_replicas", "expected"),
    [
        pytest.param({}, {}, None, id="no-hosts"),
        pytest.param({}, {"a": 1}, None, id="no-hosts-stale-counts"),
        pytest.param(hosts(a=0), {}, "a", id="single-host"),
        pytest.param(hosts(a=0), {"a": 5}, "a", id="single-host-already-used"),
        pytest.param(hosts(a=0, b=9), {"a": 1}, "b", id="spread-beats-total-load"),
        pytest.param(hosts(a=5, b=5, c=0), {"a": 2, "b": 1, "c": 2}, "b",
                     id="fewest-of-this-endpoint"),
        pytest.param(hosts(a=3, b=1, c=2), {}, "b", id="fewest-total"),
        pytest.param(hosts(a=3, b=1), {"a": 1, "b": 1}, "b", id="equal-spread-then-total"),
        pytest.param(hosts(a=2, b=None), {}, "b", id="no-load-reported-counts-as-zero"),
        pytest.param(hosts(a=1, b=1), {"gone": 0}, "a", id="counts-for-dead-host-ignored"),
        pytest.param(hosts(b=1, a=1, c=1), {}, "a", id="tie-lowest-id"),
        pytest.param(hosts(**{"host-10": 0, "host-9": 0}), {}, "host-10", id="tie-string-order"),
    ],
)
def test_choose_host(live: dict[str, dict[str, Any]], endpoint_replicas: dict[str, int],
                     expected: str | None) -> None:
    assert choose_host(live, endpoint_replicas) == expected


def test_tie_break_does_not_depend_on_insertion_order() -> None:
    forward = {f"h{i}": {"load": {"replicas": 1}} for i in range(5)}
    backward = dict(reversed(list(forward.items())))
    assert choose_host(forward, {}) == choose_host(backward, {}) == "h0"


def test_placing_replicas_one_by_one_spreads_them() -> None:
    live = hosts(a=0, b=0, c=0)
    placed: dict[str, int] = {}
    order = []
    for _ in range(6):
        host = choose_host(live, placed)
        assert host is not None
        placed[host] = placed.get(host, 0) + 1
        live[host]["load"]["replicas"] += 1
        order.append(host)
    assert order == ["a", "b", "c", "a", "b", "c"]
