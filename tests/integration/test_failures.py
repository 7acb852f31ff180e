"""A replica that cannot start: the reason is recorded and restarts back off."""

from __future__ import annotations

import itertools

import pytest

from lowtide import Client
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _refuse_to_load(message):
    raise RuntimeError(message)


class Unloadable:
    """Pickles fine; raises when a replica unpickles it."""

    def __call__(self, x):
        return x

    def __reduce__(self):
        return (_refuse_to_load, ("this function cannot be loaded",))


def test_a_replica_that_cannot_load_is_reported_and_restarts_back_off(
    client: Client, unique_name: str
) -> None:
    ep = client.deploy(Unloadable(), name=unique_name, timeout=5)
    ep.submit(1)  # wakes the endpoint; its answer does not matter here

    def failures():
        return [e for e in ep.events() if e["kind"] == "replica" and "failed" in e["reason"]]

    first = wait_for(failures, 60, "a start failure in the events")
    assert "this function cannot be loaded" in first[0]["reason"]
    wait_for(lambda: len(failures()) >= 2, 60, "a second attempt")
    events = failures()
    gaps = [a["at"] - b["at"] for a, b in itertools.pairwise(events)]
    assert all(gap >= 4.0 for gap in gaps), gaps  # backed off, not a restart loop
    assert ep.status()["replicas"]["ready"] == 0
    ep.delete()  # no more attempts in the shared cluster
