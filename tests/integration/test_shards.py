"""Two platforms against one Redis, each its own process: both serve the API, the shards are
split between them, and when the leader of an endpoint's shard is SIGKILLed under load the
other takes its shard over within seconds; every request is answered meanwhile and the
endpoint's decisions resume, made by the survivor."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from lowtide import Client
from lowtide._local import LocalComponents
from lowtide.platform.shards import LEASE_S, RENEW_S, SHARDS
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

KEEP_ALIVE_S = 2.0
TAKEOVER_BUDGET_S = 5.0  # the target; the assertion allows the shared CI machine's slack


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalComponents]:
    cluster = LocalComponents(tmp_path_factory.mktemp("shards"), keep_alive_s=KEEP_ALIVE_S,
                              platforms=2)
    cluster.start()
    yield cluster
    cluster.stop()


def _platforms(lc: LocalComponents, proc: str) -> dict[str, Any]:
    r = httpx.get(f"{lc.platform_urls[proc]}/v1/platforms", timeout=10,
                  headers={"Authorization": f"Bearer {lc.config.token}"})
    r.raise_for_status()
    return dict(r.json())


def double(x: int) -> int:
    return x * 2


class Load:
    """Three callers in a loop until stopped; every answer is kept."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.answers: list[tuple[int, int, bytes]] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(3)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        n = 0
        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set():
                n += 1
                r = http.post(self.url, json={"x": n})
                self.answers.append((n, r.status_code, r.content))

    def join(self) -> list[tuple[int, int, bytes]]:
        self.stop.set()
        for t in self.threads:
            t.join(90)
        return self.answers


def test_a_killed_leader_s_shards_are_taken_over_under_load(lc: LocalComponents) -> None:
    split = wait_for(lambda: sorted(len(i["shards"]) for i in _platforms(lc, "platform")
                                    ["instances"]) == [SHARDS // 2, SHARDS // 2], 30,
                     "the two platforms to split the shards")
    assert split and _platforms(lc, "platform-2")["unled"] == []  # both serve the API
    clients = {p: Client(url, lc.config.activator_url, lc.config.token)
               for p, url in lc.platform_urls.items()}
    name = f"s-{uuid.uuid4().hex[:6]}"
    ep = clients["platform"].deploy(double, name=name)
    leader = clients["platform-2"].status(name)["scaling"]["leader"]
    killed = "platform" if leader == "platform-1" else "platform-2"
    survivor = "platform-2" if killed == "platform" else "platform"
    survivor_id = "platform-2" if survivor == "platform-2" else "platform-1"
    api = clients[survivor]

    load = Load(ep.url)
    wait_for(lambda: any(s == 200 for _, s, _ in load.answers), 60, "the first answer")
    lc.kill(killed)  # SIGKILL: no lease given back
    killed_at = time.time()

    def takeover() -> dict[str, Any] | None:
        return next((e for e in api.events(name) if e["kind"] == "takeover"), None)

    event: Any = wait_for(takeover, 30, "the takeover event")
    took_s = event["at"] - killed_at
    print(f"\nshard of {name} taken over {took_s:.2f} s after its leader was killed "
          f"(lease {LEASE_S:g} s, renewed every {RENEW_S:g} s): {event['reason']}")
    assert survivor_id in event["reason"] and leader in event["reason"]
    assert api.status(name)["scaling"]["leader"] == survivor_id
    assert took_s <= 3 * TAKEOVER_BUDGET_S, took_s  # the printed figure is the measure;
    # the bound only catches a takeover that did not follow the lease (a loaded CI machine)
    time.sleep(1.0)  # load across the takeover
    answers = load.join()
    bad = [(n, s, body[:200]) for n, s, body in answers if s != 200 or int(body) != 2 * n]
    assert not bad and len(answers) > 10, (bad[:5], len(answers))

    # decisions resume, made by the survivor: idle after the keep-alive, down to zero
    wait_for(lambda: any(e["kind"] == "idle" and e["at"] > killed_at
                         for e in api.events(name)), 30, "a scale-to-zero decision")
    assert all(len(i["shards"]) == SHARDS for i in _platforms(lc, survivor)["instances"])
