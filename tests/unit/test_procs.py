"""Children that cannot outlive their parent (`lowtide.workers.procs`): real processes, the
parent killed with SIGKILL, as when an agent is killed while it starts a pool worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="prctl is Linux only")


def gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie (its parent not reaping it yet) is gone too
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_child_dies_with_its_killed_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import subprocess, sys, time
        from lowtide.workers.procs import die_with_parent_hook
        child = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent_hook(),
                                 start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert gone(child), "the child outlived its SIGKILLed parent"


def test_a_child_whose_parent_died_before_the_signal_was_armed_stops(tmp_path: Path) -> None:
    # the window between fork and exec: the parent is killed before the child arms its
    # parent-death signal, which then never comes; the hook must notice by itself
    survived = tmp_path / "survived"
    pids = tmp_path / "pid"
    parent = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from lowtide.workers.procs import die_with_parent_hook
        hook = die_with_parent_hook()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: let the parent go first, then run the hook
            while os.getppid() == parent:
                time.sleep(0.01)
            hook()
            time.sleep(1)
            open({str(survived)!r}, "w").close()
            os._exit(0)
        open({str(pids)!r}, "w").write(str(pid))
    """)], timeout=30)
    assert parent.returncode == 0
    child = int(pids.read_text())
    assert gone(child), "the child is still running"
    time.sleep(1.5)
    assert not survived.exists()


def test_the_hook_is_none_where_there_is_no_prctl(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowtide.workers import procs

    monkeypatch.setattr(procs, "_prctl", lambda: None)
    assert procs.die_with_parent_hook() is None
    procs.die_with_parent(os.getppid())  # a no-op, not an error
