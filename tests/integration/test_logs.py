"""`lowtide logs -f` follows through quiet; replica output without BentoML's chatter; a
function that cannot be loaded is reported as such."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

import pytest

import lowtide
from lowtide import Client
from tests.conftest import RunningCluster, wait_for

pytestmark = pytest.mark.integration

QUIET_S = 15.0  # longer than Redis' socket timeout (5 s) and than one blocking read


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_line(lines: queue.Queue[str], needle: str, timeout_s: float, seen: list[str]) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} in {timeout_s:g} s; got {seen[-20:]}")


def test_follow_survives_quiet_and_gets_the_next_line(
        client: Client, cluster: RunningCluster, unique_name: str) -> None:
    def say(x):
        print(f"said {x}", flush=True)
        return x

    ep = client.deploy(say, name=unique_name)
    assert ep("one") == "one"
    env = {**os.environ, "LOWTIDE_HOME": str(cluster.home)}
    for var in ("LOWTIDE_PLATFORM_URL", "LOWTIDE_ACTIVATOR_URL", "LOWTIDE_TOKEN"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "lowtide", "logs", unique_name, "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines, seen = _lines_of(proc), []
        _wait_line(lines, "said one", 30, seen)
        time.sleep(QUIET_S)  # the quiet the issue saw end the follow after ~5 s
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert ep("two") == "two"  # a cold start again (keep-alive 4 s): a new replica
        _wait_line(lines, "said two", 60, seen)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "error" not in err.lower(), err
    chatter = [ln for ln in seen if "cleanup hook" in ln or "cleanup finalized" in ln]
    assert not chatter, chatter  # the first replica stopped in the quiet: no BentoML chatter


def test_a_function_that_cannot_load_says_so(client: Client, unique_name: str) -> None:
    class Broken:
        def __reduce__(self):
            return (eval, ("1/0",))  # raises when the replica unpickles the function

    broken = Broken()

    def uses_it(x):
        return broken

    ep = client.deploy(uses_it, name=unique_name)
    ep.submit(1)  # wakes it; how the call is answered is another test's concern

    def reported():
        text = [ln["line"] for ln in client.logs(unique_name)["lines"]]
        return text if any("ZeroDivisionError" in ln for ln in text) and any(
            "could not be loaded" in ln or "cannot start" in ln for ln in text) else None

    text = wait_for(reported, 60, "the load failure in the logs")
    assert not [ln for ln in text if "exited unexpectedly with code 0" in ln], text
    assert sum("Application startup failed" in ln for ln in text) == 0, text


def test_a_remote_traceback_through_both_paths_and_the_logs(
        client: Client, unique_name: str) -> None:
    def parse_row(row):
        return int(row["count"])  # KeyError for a row without "count"

    def load_rows(rows):
        return sum(parse_row(r) for r in rows)

    ep = client.deploy(load_rows, name=unique_name)
    assert ep([{"count": "2"}]) == 2  # warm now: the next call goes direct
    with pytest.raises(lowtide.FunctionError) as direct:
        ep([{"count": "1"}, {"n": 1}])
    with pytest.raises(lowtide.FunctionError) as buffered:
        ep.submit([{"oops": 1}]).result(timeout=60)  # async: through the stream
    for err in (direct.value, buffered.value):
        assert err.exc_type == "KeyError"
        assert "in load_rows" in err.traceback and "in parse_row" in err.traceback
        assert err.traceback.rstrip().endswith("KeyError: 'count'")
        assert "Remote traceback" in str(err) and "workers/runtime.py" not in err.traceback

    def logged():
        text = "\n".join(ln["line"] for ln in client.logs(unique_name)["lines"])
        return text if text.count("in parse_row") >= 2 else None

    text = wait_for(logged, 20, "both tracebacks in the logs")
    assert "raised:" in text
