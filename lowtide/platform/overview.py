"""An endpoint's state in one word, and why (pure): what the dashboard's endpoints list and
`GET /v1/deployments` show first.

| state | when |
|---|---|
| failing | replicas cannot be placed, or a start failed recently and none is ready |
| cold | nothing desired, nothing running |
| starting | replicas desired, none ready yet |
| scaling | some ready, and the count is moving towards a different desired |
| warm | ready replicas match what is desired |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FAILURE_RECENT_S = 120.0  # a failed start this recent, with nothing ready, is failing


@dataclass(frozen=True)
class EndpointState:
    state: str
    reason: str


def last_failure(events: Iterable[dict[str, Any]], now: float) -> str | None:
    """The reason of the newest failed start within FAILURE_RECENT_S, if any."""
    for event in events:
        if now - float(event.get("at", 0.0)) > FAILURE_RECENT_S:
            return None
        reason = str(event.get("reason", ""))
        if event.get("kind") == "replica" and " failed" in reason:
            return reason
    return None


def endpoint_state(desired: int, ready: int, starting: int, unplaced: str | None,
                   failure: str | None) -> EndpointState:
    if unplaced:
        return EndpointState("failing", unplaced)
    if failure and ready == 0:
        return EndpointState("failing", failure)
    if desired == 0 and ready == 0 and starting == 0:
        return EndpointState("cold", "scaled to zero; the next request wakes it")
    if ready == 0:
        return EndpointState("starting", f"{starting} replica(s) starting, {desired} desired")
    if ready != desired or starting:
        return EndpointState("scaling", f"{ready} ready -> {desired} desired")
    return EndpointState("warm", f"{ready} ready")
