"""Throwaway local clusters for tests, benchmarks and notebooks: `lowtide up` as a child
process (`start_local_cluster`), or each component as its own process
(`LocalComponents`: for fault tests that kill or restart one of them)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil

from ._home import ClusterConfig
from ._redisserver import free_port, new_password, start_redis_server
from .workers.procs import die_with_parent_hook, stop_group

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
                        extra_args: tuple[str, ...] = (), timeout_s: float = 90.0,
                        env: Mapping[str, str] | None = None) -> LocalCluster:
    """Start `lowtide up` on free ports with its state in `home`; return once it is up.
    `env` adds to this process's environment for the cluster (e.g. pip settings)."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "up.log"
    cmd = [sys.executable, "-m", "lowtide", "up", "--home", str(home),
           "--activator-port", str(free_port()), "--platform-port", str(free_port()),
           *extra_args]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    if keep_alive_s is not None:
        cmd += ["--keep-alive", f"{keep_alive_s:g}"]
    environ = {**os.environ, **(env or {}), "LOWTIDE_HOME": str(home)}
    environ.pop("REDIS_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ,
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


# ---- one process per component: for fault tests and the chaos benchmark ----------------
COMPONENTS = ("platform", "activator", "agent")


@dataclass
class _Proc:
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalComponents:
    """Redis (append-only file, fixed port), platform, activator and one agent, each its own
    process (group) with its own log, on fixed ports: so a test can SIGKILL, restart, pause
    or stop any one of them while the others keep running, as in production.

    `lowtide up` stops the whole cluster when a component dies; this does not.

    Every process gets a parent-death signal, which Linux ties to the *thread* that started
    it: start and restart components from a thread that outlives them (the main thread)."""

    def __init__(self, home: Path, keep_alive_s: float | None = None, pool: bool = True,
                 env: dict[str, str] | None = None, platforms: int = 1) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.redis_dir = home / "redis"
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.redis_password = new_password()  # URL-safe: goes into the URL as it is
        activator_port, platform_port = free_port(), free_port()
        self.config = ClusterConfig(
            platform_url=f"http://127.0.0.1:{platform_port}",
            activator_url=f"http://127.0.0.1:{activator_port}",
            token=secrets.token_urlsafe(24),
            redis_url=f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0")
        keep = [] if keep_alive_s is None else ["--keep-alive", f"{keep_alive_s:g}"]
        self.env = {**os.environ, **(env or {}), "LOWTIDE_REDIS_URL": self.config.redis_url,
                    "LOWTIDE_TOKEN": self.config.token, "LOWTIDE_HOME": str(home),
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("REDIS_URL", None)
        # more platforms (`platform-2`...): each serves the API and scales its shards
        self.platform_urls = {"platform": self.config.platform_url}
        more = {}
        for i in range(2, platforms + 1):
            port = free_port()
            self.platform_urls[f"platform-{i}"] = f"http://127.0.0.1:{port}"
            more[f"platform-{i}"] = _Proc(
                ["platform", "--port", str(port), "--public-url", self.config.activator_url,
                 "--instance-id", f"platform-{i}", *keep], home / f"platform-{i}.log")
        named = ["--instance-id", "platform-1"] if platforms > 1 else []
        self.procs = {
            "platform": _Proc(["platform", "--port", str(platform_port), "--public-url",
                               self.config.activator_url, *named, *keep],
                              home / "platform.log"),
            **more,
            "activator": _Proc(["activator", "--port", str(activator_port)],
                               home / "activator.log"),
            "agent": _Proc(["agent", "--host-id", "local", "--port", "0", "--home", str(home),
                            *([] if pool else ["--no-pool"])], home / "agent.log"),
        }

    # ---- life cycle -------------------------------------------------------------------
    def start(self, timeout_s: float = 90.0) -> LocalComponents:
        self.start_redis()
        for name in self.procs:
            self.start_component(name)
        self.wait_ready(timeout_s)
        self.config.write(self.home)
        return self

    def client(self) -> Client:
        from .sdk import Client

        return Client(self.config.platform_url, self.config.activator_url, self.config.token)

    def start_component(self, name: str) -> None:
        p = self.procs[name]
        if p.running():
            raise RuntimeError(f"the {name} is already running")
        with open(p.log_path, "ab") as log:
            p.proc = subprocess.Popen(
                [sys.executable, "-m", "lowtide", *p.args], env=self.env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent_hook())

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one component's whole process group (SIGKILL: no clean-up at all)."""
        p = self.procs[name]
        if p.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            p.proc.wait(30)

    def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.kill(name, sig)
        self.start_component(name)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until the platform and activator answer /healthz and the agent is registered."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            dead = [n for n, p in self.procs.items() if not p.running()]
            if dead or time.monotonic() > deadline:
                why = f"the {dead[0]} exited" if dead else f"not ready within {timeout_s:g} s"
                tail = self.log_tail(dead[0] if dead else "agent")
                raise RuntimeError(f"local cluster: {why}:\n{tail}")
            time.sleep(0.1)

    def ready(self) -> bool:
        headers = {"Authorization": f"Bearer {self.config.token}"}
        try:
            with httpx.Client(timeout=2.0, headers=headers) as http:
                if http.get(f"{self.config.activator_url}/healthz").status_code != 200:
                    return False
                r = http.get(f"{self.config.platform_url}/v1/hosts")
                return r.status_code == 200 and bool(r.json()["hosts"])
        except httpx.HTTPError:
            return False

    def log_tail(self, name: str, n: int = 40) -> str:
        path = self.redis_dir / "redis.log" if name == "redis" else self.procs[name].log_path
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ---- Redis --------------------------------------------------------------------------
    def start_redis(self) -> None:
        self.redis_proc, _url = start_redis_server(self.redis_dir, self.redis_port,
                                                   appendonly=True, password=self.redis_password)

    def stop_redis(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis syncs its append-only file and exits; SIGKILL: up to a second of
        writes may be lost (appendfsync everysec)."""
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.send_signal(sig)
            self.redis_proc.wait(30)

    def pause_redis(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered."""
        assert self.redis_proc is not None
        self.redis_proc.send_signal(signal.SIGSTOP)

    def resume_redis(self) -> None:
        assert self.redis_proc is not None
        self.redis_proc.send_signal(signal.SIGCONT)

    # ---- teardown -----------------------------------------------------------------------
    def stop(self) -> None:
        if self.redis_proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.redis_proc.send_signal(signal.SIGCONT)
        for name in reversed(self.procs):  # agent (stops its replicas), activator, platforms
            p = self.procs[name]
            if p.proc is not None:
                stop_group(p.proc, 15.0)
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
                self.redis_proc.wait()

    def __enter__(self) -> LocalComponents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
