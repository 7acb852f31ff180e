import argparse
import subprocess
import sys

import pytest

from lowtide.cli._errors import explain
from lowtide.sdk._errors import (
    AuthError,
    ConfigError,
    DeadlineExceeded,
    EndpointNotFound,
    FunctionError,
    Overloaded,
)

ARGS = argparse.Namespace(name="predict")


@pytest.mark.parametrize(("exc", "says"), [
    (EndpointNotFound(404, "not found", "no deployment named 'x'", {}), "`lowtide ls`"),
    (AuthError(403, "forbidden", "wrong token", {}), "LOWTIDE_TOKEN"),
    (FunctionError(500, "function raised", "KeyError: 'a'",
                   {"traceback": "Traceback...\n  File x\nKeyError: 'a'"}),
     "`lowtide logs predict`"),
    (DeadlineExceeded(504, "deadline exceeded", "took too long", {}), "--timeout"),
    (Overloaded(503, "unavailable", "Redis is\nunreachable", {}), "retry shortly"),
    (ConfigError("cannot reach the platform; is `lowtide up` running?"), "lowtide up"),
    (ValueError("'x' is not module:function (e.g. app:predict)"), "app:predict"),
    (RuntimeError("boom"), "please report it"),
])
def test_every_error_is_one_line_with_what_to_do(exc: BaseException, says: str) -> None:
    line = explain(exc, ARGS)
    assert line.startswith("error: ") and "\n" not in line and says in line


def test_a_closed_pipe_ends_quietly() -> None:
    code = ("import lowtide.cli as c\n"
            "def many(args, env):\n"
            "    for i in range(100000): print('line', i)\n"
            "    return 0\n"
            "c.COMMANDS['ls'] = many\n"
            "c.main(['ls'])\n")
    out = subprocess.run(f"{sys.executable} -c \"{code}\" | head -2", shell=True,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "line 0\nline 1\n"
    assert out.stderr == ""
