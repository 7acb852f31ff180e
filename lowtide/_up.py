"""`lowtide up`: a whole dev cluster in one process tree.

Redis (embedded unless a URL is given), the platform, the activator and one host agent run
as child processes in their own process groups, so the order of shutdown is ours: the
activator first (it stops accepting and answers what it holds, while replicas still run),
then the platform (so it does not replace the replicas the agent is about to stop), then the
agent (it stops the replicas), and Redis last. Children also get a parent-death signal, so
even a SIGKILL of `lowtide up` leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
from rich.console import Console

from ._auth import token_digest
from ._home import ClusterConfig
from ._redisserver import new_password, start_redis_server
from .workers.procs import die_with_parent_hook, stop_group

STOP_GRACE_S = 8.0
STOP_ORDER = ("activator", "platform", "agent")  # see the module docstring
READY_TIMEOUT_S = 60.0


class UpError(RuntimeError):
    pass


@dataclass(frozen=True)
class UpSettings:
    home: Path
    redis_url: str = ""
    activator_port: int = 8080
    platform_port: int = 8081
    host: str = "127.0.0.1"
    keep_alive_s: float | None = None
    log_level: str = "INFO"
    pool: bool = True


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _token(home: Path) -> str:
    saved = ClusterConfig.read(home)
    return saved.token if saved and saved.token else secrets.token_urlsafe(32)


class Cluster:
    def __init__(self, settings: UpSettings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis_proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lowtide", *args], env=env, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent_hook(),
        )
        self.children.append((name, proc))

    def start(self) -> ClusterConfig:
        s = self.settings
        for label, port, flag in (("activator", s.activator_port, "--activator-port"),
                                  ("platform", s.platform_port, "--platform-port")):
            if port and not _port_free(s.host, port):
                raise UpError(f"port {port} for the {label} is in use: stop what uses it or "
                              f"pass {flag} PORT")
        redis_url = s.redis_url
        if not redis_url:
            # a new password every start: it lives in config.json (mode 0600) and in the
            # components' environment only
            self.redis_proc, redis_url = start_redis_server(s.home / "redis",
                                                            password=new_password())
        token = _token(s.home)
        platform_url = f"http://{s.host}:{s.platform_port}"
        activator_url = f"http://{s.host}:{s.activator_port}"
        env = {**os.environ, "LOWTIDE_REDIS_URL": redis_url,
               "LOWTIDE_HOME": str(s.home), "LOWTIDE_LOG_LEVEL": s.log_level}
        for key in ("REDIS_URL", "LOWTIDE_TOKEN", "LOWTIDE_TOKEN_SHA256"):
            env.pop(key, None)
        keep_alive = [] if s.keep_alive_s is None else ["--keep-alive", f"{s.keep_alive_s:g}"]
        # the platform gets only the token's digest; the token itself stays in config.json
        self._spawn("platform", ["platform", "--host", s.host, "--port", str(s.platform_port),
                                 "--public-url", activator_url, *keep_alive],
                    {**env, "LOWTIDE_TOKEN_SHA256": token_digest(token)})
        self._spawn("activator", ["activator", "--host", s.host,
                                  "--port", str(s.activator_port)], env)
        no_pool = [] if s.pool else ["--no-pool"]
        self._spawn("agent", ["agent", "--host-id", "local", "--advertise-address", s.host,
                              "--port", "0", *no_pool], env)
        config = ClusterConfig(platform_url, activator_url, token, redis_url)
        self._wait_ready(config)
        config.write(s.home)
        return config

    def _wait_ready(self, config: ClusterConfig) -> None:
        checks = {"platform": f"{config.platform_url}/healthz",
                  "activator": f"{config.activator_url}/healthz",
                  "agent": f"{config.platform_url}/v1/hosts"}
        deadline = time.monotonic() + READY_TIMEOUT_S
        headers = {"Authorization": f"Bearer {config.token}"}
        with httpx.Client(timeout=2.0, headers=headers) as http:
            for name, url in checks.items():
                while True:
                    self._check_children()
                    with contextlib.suppress(httpx.HTTPError):
                        r = http.get(url)
                        if r.status_code == 200 and (name != "agent" or r.json()["hosts"]):
                            break
                    if time.monotonic() > deadline:
                        raise UpError(f"the {name} did not become ready within "
                                      f"{READY_TIMEOUT_S:g} s; see its log above")
                    time.sleep(0.1)

    def _check_children(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise UpError(f"the {name} exited with code {proc.returncode}; see its log above")

    def wait(self, stop: threading.Event) -> str | None:
        """Block until stop is set or a component dies; return the dead one's name."""
        while not stop.wait(0.5):
            for name, proc in self.children:
                if proc.poll() is not None:
                    return name
        return None

    def stop(self) -> None:
        me = psutil.Process()
        before = me.children(recursive=True)
        for _name, proc in sorted(self.children, key=lambda c: STOP_ORDER.index(c[0])):
            stop_group(proc, STOP_GRACE_S)
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
                self.redis_proc.wait()
        leftovers = [p for p in before + me.children(recursive=True) if p.is_running()]
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(leftovers, timeout=3)


def up(settings: UpSettings) -> int:
    console = Console(stderr=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(settings, console)
    try:
        if console.is_terminal:
            with console.status("starting Redis, platform, activator and agent..."):
                config = cluster.start()
        else:
            config = cluster.start()
        _print_ready(config, settings)
        dead = cluster.wait(stop)
        if dead:
            console.print(f"[red]the {dead} exited unexpectedly; stopping the cluster[/red]")
            return 1
        return 0
    except UpError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    finally:
        if console.is_terminal:
            with console.status("stopping..."):
                cluster.stop()
        else:
            cluster.stop()
        console.print("lowtide stopped")


def _without_password(url: str) -> str:
    """The URL to show: its password stays in config.json (terminals get logged)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _print_ready(config: ClusterConfig, settings: UpSettings) -> None:
    keep_alive = ("platform policy" if settings.keep_alive_s is None
                  else f"{settings.keep_alive_s:g} s")
    lines = [
        "lowtide is up",
        f"  invoke URLs   {config.activator_url}/fn/NAME",
        f"  platform API  {config.platform_url}/v1/deployments",
        f"  dashboard     {config.platform_url}/ui/  (`lowtide dashboard` opens it signed in)",
        f"  redis         {_without_password(config.redis_url)}",
        f"  keep-alive    {keep_alive}",
        f"  config        {settings.home / 'config.json'} (token, URLs and the Redis password "
        "for the SDK and CLI)",
        "Try:  python -c 'import lowtide; ep = lowtide.deploy(lambda x: x * 2, name=\"double\"); "
        "print(ep.url, ep(21))'",
        "Stop with Ctrl-C.",
    ]
    print("\n".join(lines), flush=True)
