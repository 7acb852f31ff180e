"""The `lowtide` command.

User commands talk to a running cluster (`deploy`, `ls`, `status`, `invoke`, `logs`,
`delete`); component commands run one part of it (`up`, `platform`, `activator`, `agent`).
Flags default to LOWTIDE_* environment variables, read here once and nowhere deeper.

One module per command group: `components` (run a part of a cluster), `manage` (deploy, list,
delete), `observe` (status, invoke, logs, dashboard), `access` (invoke keys, access mode). Each has
`add_parsers(sub, env)` and a `COMMANDS` table; this module assembles them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from .._home import home_dir
from . import access, components, manage, observe, secrets
from ._common import env_value, setup_logging
from .observe import print_hosts

__all__ = ["COMMANDS", "build_parser", "main", "print_hosts", "setup_logging"]

EPILOG = """examples:
  lowtide up                                  start a local cluster (Ctrl-C stops it)
  lowtide deploy mymodule:predict --name predict
  lowtide invoke predict '{"x": 1}'
  lowtide status predict
  lowtide logs predict -f
"""


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowtide", description="Serverless functions and model serving for Python.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default=env_value(env, "LOWTIDE_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level of components")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    home = str(home_dir(dict(env)))

    components.add_parsers(sub, env, home)
    manage.add_parsers(sub, env)
    observe.add_parsers(sub, env)
    access.add_parsers(sub, env)
    secrets.add_parsers(sub, env)
    return p


def main(argv: list[str] | None = None) -> None:
    env = dict(os.environ)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    from ..sdk._errors import LowtideError
    from ._errors import explain, remote_traceback

    try:
        code = COMMANDS[args.command](args, env)
        sys.stdout.flush()
    except BrokenPipeError:  # `lowtide status NAME | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again
        code = 0
    except (LowtideError, ValueError) as exc:  # ValueError: settings validation
        if remote_traceback(exc):
            print(f"Remote traceback (on the replica):\n{remote_traceback(exc)}",
                  file=sys.stderr)
        print(explain(exc, args), file=sys.stderr)
        code = 1 if isinstance(exc, LowtideError) else 2
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if args.log_level == "DEBUG":
            raise
        print(explain(exc, args), file=sys.stderr)
        code = 1
    sys.exit(code)


COMMANDS = {**components.COMMANDS, **manage.COMMANDS, **observe.COMMANDS, **access.COMMANDS,
            **secrets.COMMANDS}
