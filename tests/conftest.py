"""Shared fixtures: a real redis-server on a free port, and a real cluster started with
`lowtide up` (platform, activator, agent and BentoML replicas as subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from redis import Redis

from lowtide import Client
from lowtide._home import ClusterConfig
from lowtide._redisserver import free_port, start_redis_server

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
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"), appendonly=False)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@dataclass
class RunningCluster:
    proc: subprocess.Popen[bytes]
    config: ClusterConfig
    home: Path
    log_path: Path

    def client(self) -> Client:
        return Client(self.config.platform_url, self.config.activator_url, self.config.token)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def start_cluster(home: Path, redis_url: str = "", keep_alive_s: float | None = None,
                  timeout_s: float = 90.0) -> RunningCluster:
    activator_port, platform_port = free_port(), free_port()
    log_path = home / "up.log"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "lowtide", "up", "--home", str(home),
           "--activator-port", str(activator_port), "--platform-port", str(platform_port)]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    if keep_alive_s is not None:
        cmd += ["--keep-alive", str(keep_alive_s)]
    env = {**os.environ, "LOWTIDE_HOME": str(home)}
    env.pop("REDIS_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while "lowtide is up" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("lowtide up did not start:\n" + log_path.read_text())
        time.sleep(0.1)
    config = ClusterConfig.read(home)
    assert config is not None
    return RunningCluster(proc, config, home, log_path)


def stop_cluster(cluster: RunningCluster) -> None:
    cluster.proc.send_signal(signal.SIGTERM)
    try:
        cluster.proc.wait(30)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(cluster.proc.pid).children(recursive=True):
            child.kill()
        cluster.proc.kill()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_url: str
            ) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path_factory.mktemp("lowtide-home"), redis_url,
                            keep_alive_s=TEST_KEEP_ALIVE_S)
    yield running
    stop_cluster(running)


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
