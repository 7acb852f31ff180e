"""Secrets: `lowtide secrets set NAME KEY=VALUE...`, `secrets ls`, `secrets rm NAME`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from ._common import sdk_client


def add_parsers(sub: Any, env: Mapping[str, str]) -> None:
    se = sub.add_parser(
        "secrets", help="create, list or remove secrets (environment variables of replicas)",
        description="A secret is a named set of environment variables. Endpoints deployed "
        "with `secrets=[NAME]` (or `deploy --secret NAME`) get them at each replica start; "
        "the values are never shown again.")
    se_sub = se.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    ss = se_sub.add_parser("set", help="create or replace a secret")
    ss.add_argument("name")
    ss.add_argument("pairs", nargs="+", metavar="KEY=VALUE",
                    help="a variable; KEY alone takes the value of KEY in this shell's "
                    "environment (keeps it out of the process list and shell history)")
    se_sub.add_parser("ls", help="list secrets: names and key names, never values")
    sr = se_sub.add_parser("rm", help="remove a secret (refused while an endpoint uses it)")
    sr.add_argument("name")


def parse_pairs(pairs: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """KEY=VALUE, or KEY alone for the value of $KEY. Errors never echo a value."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            if key not in env:
                raise ValueError(f"{key} has no '=' and is not set in this environment; "
                                 f"pass {key}=VALUE or export {key} first")
            value = env[key]
        values[key] = value
    return values


def cmd_secrets(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    client = sdk_client()
    if args.secrets_command == "set":
        info = client.set_secret(args.name, parse_pairs(args.pairs, env))
        print(f"secret {info['name']}: {', '.join(info['keys'])} ({info['note']})")
    elif args.secrets_command == "ls":
        items = client.secrets()
        if not items:
            print("no secrets; create one with `lowtide secrets set NAME KEY=VALUE`")
        for s in items:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["updated_at"] or 0))
            print(f"{s['name']}  {at}  {', '.join(s['keys'])}")
    else:
        client.delete_secret(args.name)
        print(f"removed secret {args.name}")
    return 0


COMMANDS = {"secrets": cmd_secrets}
