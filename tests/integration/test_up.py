"""`lowtide up` as a user runs it: embedded Redis, one process tree, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError

from tests.conftest import start_cluster, wait_for

pytestmark = pytest.mark.integration


def test_up_runs_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "home")  # embedded redis, default policy
    try:
        # the embedded Redis requires the password that config.json (0600) holds
        url = urlsplit(cluster.config.redis_url)
        assert url.hostname == "127.0.0.1" and url.password and len(url.password) >= 32
        with pytest.raises(AuthenticationError), Redis(port=url.port) as anonymous:
            anonymous.get("lt:deployments")
        assert Redis.from_url(cluster.config.redis_url).ping()
        assert url.password not in cluster.log_path.read_text()  # the banner masks it
        assert (tmp_path / "home" / "redis").is_dir()
        assert oct((tmp_path / "home" / "config.json").stat().st_mode & 0o777) == "0o600"
        with cluster.client() as client:
            ep = client.deploy(lambda x: -x, name="negate")
            assert ep(4) == -4
        tree = psutil.Process(cluster.proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        for part in ("redis-server", "lowtide platform", "lowtide activator", "lowtide agent",
                     "bentoml serve"):
            assert part in names, f"{part} missing from the process tree"
    except BaseException:
        print(cluster.log_tail())
        raise
    cluster.proc.send_signal(signal.SIGINT)
    assert cluster.proc.wait(20) == 0
    wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != "zombie"],
             10, "every process of the tree to exit")


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "LOWTIDE_HOME": str(tmp_path)}
        proc = subprocess.run(
            [sys.executable, "-m", "lowtide", "up", "--activator-port", str(port)],
            env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"port {port}" in proc.stderr and "--activator-port" in proc.stderr
