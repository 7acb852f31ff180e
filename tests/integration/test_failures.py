"""A replica that cannot start: the reason is recorded and restarts back off."""

from __future__ import annotations

import itertools
import json
import os

import psutil
import pytest
from redis import Redis

from lowtide import Client, _keys
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
    # min_replicas=1: the platform keeps trying without callers (a failure answers the
    # waiting calls, after which an endpoint at zero would try again only when called)
    ep = client.deploy(Unloadable(), name=unique_name, timeout=5, min_replicas=1)

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


def test_a_killed_bentoml_server_takes_its_worker_process_along(
    client: Client, redis: Redis, unique_name: str
) -> None:
    """`bentoml serve` starts its worker in a session of its own: a SIGKILL of the server
    (or of its process group) does not reach the worker, which must not live on alone."""
    ep = client.deploy(lambda x: x + 1, name=unique_name, min_replicas=1, max_replicas=1)
    assert ep(1) == 2
    replica_id = client.status(unique_name)["replicas"]["items"][0]["id"]
    worker = psutil.Process(json.loads(redis.get(_keys.replica_alive(replica_id)))["pid"])
    server = worker.parent()
    assert server is not None and "bentoml" in " ".join(server.cmdline())
    assert worker.pid != server.pid and os.getsid(worker.pid) != os.getsid(server.pid)
    server.kill()
    _gone, alive = psutil.wait_procs([worker], timeout=15)
    assert not alive, f"worker {worker.pid} outlived its killed server"
    assert ep(2) == 3  # and the platform replaces the replica
    ep.delete()
