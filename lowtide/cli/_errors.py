"""How a failed command ends: one line on stderr, the error and what to do next.

`explain(exc, args)` is pure (a test checks every error kind); `main` prints it. A
function's remote traceback is printed above that line, as a local one would be.
"""

from __future__ import annotations

import argparse

from ..sdk._errors import (
    AuthError,
    BadInput,
    ConfigError,
    DeadlineExceeded,
    EndpointNotFound,
    FunctionError,
    LowtideError,
    Overloaded,
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _name(args: argparse.Namespace) -> str:
    return str(getattr(args, "name", None) or "NAME")


def _hint(exc: BaseException, args: argparse.Namespace) -> str:
    name = _name(args)
    hints: list[tuple[type[BaseException], str]] = [
        (EndpointNotFound, "`lowtide ls` lists the endpoints"),
        (AuthError, "check LOWTIDE_TOKEN (or the token `lowtide up` wrote to ~/.lowtide/"
                    "config.json); an invoke key goes in --key or LOWTIDE_KEY"),
        (FunctionError, f"the remote traceback is above; `lowtide logs {name}` has it too"),
        (DeadlineExceeded, f"`lowtide status {name}` shows replicas and queue; a slow "
                           "function needs a larger `deploy --timeout`"),
        (Overloaded, f"retry shortly; `lowtide status {name}` says why"),
        (BadInput, f"`lowtide status {name}` and the function's signature say what it takes"),
    ]
    for kind, hint in hints:
        if isinstance(exc, kind):
            return hint
    return ""


def explain(exc: BaseException, args: argparse.Namespace) -> str:
    """The one line a failed command prints."""
    if isinstance(exc, FunctionError):
        text = f"{exc.status} {exc.error}: {exc.detail}"
    elif isinstance(exc, (LowtideError, ValueError)):
        text = str(exc)
    else:
        text = (f"unexpected {type(exc).__name__}: {exc}; please report it "
                "(`--log-level DEBUG` before the command prints the traceback)")
    hint = _hint(exc, args)
    already = isinstance(exc, ConfigError) or not hint or hint in text
    return _one_line(f"error: {text}" + ("" if already else f"; {hint}"))


def remote_traceback(exc: BaseException) -> str:
    """A function's remote traceback to print above the error line, or ""."""
    return exc.traceback if isinstance(exc, FunctionError) else ""
