"""Child processes that cannot outlive their parent: own process group, parent-death signal."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
# how the agent runs `bentoml serve` (argv: `python -c RUN_BENTOML bentoml serve ...`): this
# process, holding the replica's environment, uninspectable first (see `no_inspection`)
RUN_BENTOML = "from lowtide.workers.procs import run_bentoml; run_bentoml()"


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent: `find_library` runs `ldconfig -p`, far too
    slow between fork and exec (a parent killed meanwhile left the child running for good)."""
    if os.uname().sysname != "Linux":
        return None
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    prctl: Callable[..., int] = ctypes.CDLL(libc_name, use_errno=True).prctl
    return prctl


def die_with_parent_hook() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when this process dies, or at once
    when it died before the signal was armed."""
    if _prctl() is None:  # looked up here, in the parent: the child only calls it
        return None
    return functools.partial(die_with_parent, os.getpid())


def die_with_parent(parent_pid: int) -> None:
    """From now on this process gets SIGTERM when its parent dies; if the parent
    (`parent_pid`, read before this call) is already gone, SIGTERM now.

    For processes started by code we do not control: BentoML's `bentoml serve` starts its
    worker processes in their own sessions, so neither its parent-death signal nor a signal
    to its process group reaches them, and a worker would outlive a killed server."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
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


SERVER_PID_ENV = "LOWTIDE_SERVER_PID"


def worker_dies_with_server() -> None:
    """In a replica's BentoML worker, as early as our code runs (the import of the service
    module, before BentoML's start hooks): the worker gets SIGTERM when its `bentoml serve`
    dies, or at once if it already has (a server SIGKILLed while the worker imported would
    otherwise leave it orphaned: `die_with_parent` only compares with the parent it was
    given, and this one is known from the environment the server set)."""
    server = os.environ.get(SERVER_PID_ENV)
    if server and server.isdigit() and int(server) != os.getpid():  # not the server itself
        die_with_parent(int(server))


def no_inspection() -> None:
    """Make this process non-dumpable: its /proc files (environ, cmdline's memory, fds, cwd)
    become root's, and processes of the same user can neither read them nor ptrace it. All
    replicas of a host run as one user; this keeps one replica's environment (its secrets,
    its Redis password) from another's code. Cleared by an exec, so each process of a
    replica sets it (the server, its worker)."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_DUMPABLE, 0)


def run_bentoml() -> None:
    """`python -m bentoml ...`, uninspectable (`no_inspection`); argv after `-c CODE`."""
    import runpy
    import sys

    no_inspection()
    os.environ[SERVER_PID_ENV] = str(os.getpid())  # for its worker: `worker_dies_with_server`
    sys.argv = sys.argv[1:]
    runpy.run_module("bentoml", run_name="__main__", alter_sys=True)
