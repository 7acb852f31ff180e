"""Shared fixtures: a real redis-server on a free port, and a real cluster started with
`lowtide up` (platform, activator, agent and BentoML replicas as subprocesses)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from lowtide import Client
from lowtide._local import LocalCluster, start_local_cluster
from lowtide._redisserver import new_password, start_redis_server

TEST_KEEP_ALIVE_S = 4.0


def wait_for(predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.05) -> object:
    """Poll until predicate() is truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"), appendonly=False,
                                   password=new_password())
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def own_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this test module alone (the session's is shared with the cluster, whose
    scaler and agent would act on what the module writes)."""
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis-own"), appendonly=False,
                                   password=new_password())
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


RunningCluster = LocalCluster


def start_cluster(home: Path, redis_url: str = "", keep_alive_s: float | None = None,
                  env: dict[str, str] | None = None) -> LocalCluster:
    return start_local_cluster(home, redis_url, keep_alive_s, env=env)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels the session cluster's pip finds besides the index (PIP_FIND_LINKS): tests
    put packages here that no index has."""
    return tmp_path_factory.mktemp("wheelhouse")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str, wheelhouse: Path
            ) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path_factory.mktemp("lowtide-home"), redis_url,
                            keep_alive_s=TEST_KEEP_ALIVE_S,
                            env={"PIP_FIND_LINKS": str(wheelhouse)})
    yield running
    running.stop()


@pytest.fixture
def client(cluster: RunningCluster) -> Iterator[Client]:
    c = cluster.client()
    yield c
    c.close()


@pytest.fixture
def http(cluster: RunningCluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.config.activator_url, timeout=120) as h:
        yield h


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    base = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")
    base = "".join(ch for ch in base if ch.isalnum() or ch == "-").strip("-")
    return f"t-{base}"[:50] + f"-{int(time.time() * 1000) % 100000}"
