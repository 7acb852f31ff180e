"""`lowtide activator --workers N`: N processes serving one port, stopped together."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from lowtide._redisserver import free_port

from ..conftest import wait_for

pytestmark = pytest.mark.integration


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_workers_share_one_port_and_stop_on_sigterm(redis_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lowtide", "activator", "--workers", "2",
                             "--port", str(port), "--redis-url", redis_url])
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}/healthz"), timeout_s=30,
                 what="the activator workers")
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2

        def listening() -> set[int]:
            return {c.pid for c in psutil.net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port}

        # both bind the port, not the parent (the first one may answer before the second binds)
        wait_for(lambda: listening() == {w.pid for w in workers}, timeout_s=30,
                 what="both workers listening")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
