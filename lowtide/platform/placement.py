"""Where a new replica goes: pure, table-tested.

Foundation rule: among live hosts, spread an endpoint's replicas (fewest of this endpoint
first), then prefer the host with the fewest replicas overall.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def choose_host(
    hosts: Mapping[str, Mapping[str, Any]], endpoint_replicas: Mapping[str, int]
) -> str | None:
    if not hosts:
        return None

    def score(host_id: str) -> tuple[int, int, str]:
        load = hosts[host_id].get("load") or {}
        return (endpoint_replicas.get(host_id, 0), int(load.get("replicas", 0)), host_id)

    return min(hosts, key=score)
