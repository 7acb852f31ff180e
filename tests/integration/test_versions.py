"""Versions and rollback under load: every call is answered by exactly one of the two
versions, and calls sent after the switch reached the activators (a route event:
milliseconds; the 2 s resync at worst) by the target's code."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from lowtide import Client
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
ROUTE_RESYNC_S = 2.0  # the activators' route resync: a missed route event is seen by then


def test_rollback_under_load(client: Client, unique_name: str) -> None:
    v1 = client.deploy(lambda x: ["one", x], name=unique_name)
    assert v1(0) == ["one", 0]
    ep = client.deploy(lambda x: ["two", x], name=unique_name)
    wait_for(lambda: ep(0) == ["two", 0], 30, "v2 to serve")
    answers: list[tuple[float, int, object]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            x = worker * 100000 + i
            sent = time.monotonic()
            try:
                answers.append((sent, x, ep(x)))
            except Exception as exc:  # every failure fails the test
                errors.append(exc)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # calls are running on v2
        info = ep.rollback()
        switched = time.monotonic()
        # and keep coming while v3 (v1's code) starts, until some are sent after the switch
        wait_for(lambda: sum(sent > switched + ROUTE_RESYNC_S for sent, _, _ in answers) >= 8,
                 90, "calls answered after the switch", interval_s=0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert info["from"] == 2 and info["to"] == 1 and info["version"] == 3
    assert all(a in (["one", x], ["two", x]) for _, x, a in answers), answers[:5]
    after = [a for sent, _, a in answers if sent > switched + ROUTE_RESYNC_S]
    assert after and all(a[0] == "one" for a in after)
    assert any(a[0] == "two" for sent, _, a in answers if sent < switched)

    kept = client.versions(unique_name)
    assert [v["version"] for v in kept] == [3, 2, 1] and kept[0]["current"]
    assert kept[0]["origin"] == "rollback to v1"
    assert kept[0]["digests"]["artifact"] == kept[2]["digests"]["artifact"]
    assert kept[1]["digests"]["artifact"] != kept[2]["digests"]["artifact"]
    assert "@" in kept[0]["deployed_by"]
    assert any("rollback to v1" in e["reason"] for e in client.events(unique_name))
    metrics = httpx.get(f"{client.config.platform_url}/metrics").text  # the cold starts seen
    assert f'lowtide_platform_cold_starts_total{{endpoint="{unique_name}"' in metrics
    assert f'lowtide_platform_cold_start_seconds_bucket{{endpoint="{unique_name}"' in metrics
    assert client.rollback(unique_name, to=2)["version"] == 4  # --to, and back again
    wait_for(lambda: ep(5) == ["two", 5], 60, "v4 (v2's code) to serve")
