"""Run `lowtide up` as a child process and wait until it is ready: for tests, benchmarks
and notebooks that need a throwaway cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ._home import ClusterConfig
from ._redisserver import free_port

if TYPE_CHECKING:
    from .sdk import Client


@dataclass
class LocalCluster:
    proc: subprocess.Popen[bytes]
    config: ClusterConfig
    home: Path
    log_path: Path

    def client(self) -> Client:
        from .sdk import Client

        return Client(self.config.platform_url, self.config.activator_url, self.config.token)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_local_cluster(home: Path, redis_url: str = "", keep_alive_s: float | None = None,
                        extra_args: tuple[str, ...] = (), timeout_s: float = 90.0
                        ) -> LocalCluster:
    """Start `lowtide up` on free ports with its state in `home`; return once it is up."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "up.log"
    cmd = [sys.executable, "-m", "lowtide", "up", "--home", str(home),
           "--activator-port", str(free_port()), "--platform-port", str(free_port()),
           *extra_args]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    if keep_alive_s is not None:
        cmd += ["--keep-alive", f"{keep_alive_s:g}"]
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
    if config is None:
        proc.kill()
        raise RuntimeError(f"lowtide up wrote no config to {home}")
    return LocalCluster(proc, config, home, log_path)
