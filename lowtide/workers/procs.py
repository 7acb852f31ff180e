"""Child processes that cannot outlive their parent: own process group, parent-death signal."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_parent_hook() -> Callable[[], None] | None:
    return _die_with_parent if os.uname().sysname == "Linux" else None


def die_with_parent(parent_pid: int) -> None:
    """From now on this process gets SIGTERM when its parent dies; if the parent
    (`parent_pid`, read before this call) is already gone, SIGTERM now.

    For processes started by code we do not control: BentoML's `bentoml serve` starts its
    worker processes in their own sessions, so neither its parent-death signal nor a signal
    to its process group reaches them, and a worker would outlive a killed server."""
    if os.uname().sysname != "Linux":
        return
    _die_with_parent()
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> int | None:
    """SIGTERM the process group, wait up to grace_s, then SIGKILL it; return the exit code."""
    _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(proc, signal.SIGKILL)  # whatever of the group is left, exited leader or not
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return proc.returncode


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
