"""Deploy and manage endpoints: `deploy`, `ls`, `delete`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from ._common import sdk_client, stderr_console


def add_parsers(sub: Any, env: Mapping[str, str]) -> None:
    de = sub.add_parser("deploy", help="deploy module:function",
                        description="Deploy a function; prints its invoke URL.")
    de.add_argument("target", metavar="module:function")
    de.add_argument("--name", help="endpoint name (default: the function's name)")
    de.add_argument("--cpu", type=float, default=1.0)
    de.add_argument("--memory", default="1Gi", help="e.g. 512Mi, 2Gi")
    de.add_argument("--gpu", type=int, default=0, help="whole GPUs per replica")
    de.add_argument("--gpu-memory", default=None,
                    help="memory each GPU must have, e.g. 16Gi (needs --gpu)")
    de.add_argument("-r", "--requirement", action="append", default=[],
                    dest="requirements", help="a pip requirement (repeatable)")
    de.add_argument("--min-replicas", type=int, default=0)
    de.add_argument("--max-replicas", type=int, default=None)
    de.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    de.add_argument("--access", choices=["public", "key"], default="public",
                    help="who may invoke: anyone with the URL (public, default) or callers "
                    "with an invoke key (key; create keys with `lowtide keys create NAME`)")
    de.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable of the replicas (repeatable; shown in status)")
    de.add_argument("--secret", action="append", default=[], dest="secrets", metavar="NAME",
                    help="a secret whose variables the replicas get (repeatable; see "
                    "`lowtide secrets`)")
    de.add_argument("--wait", action="store_true",
                    help="wait until the function is built (and min replicas are ready)")

    ls = sub.add_parser("ls", help="list deployments, a page at a time")
    ls.add_argument("--state", choices=["active", "idle"],
                    help="only those with replicas wanted (active) or at zero (idle)")
    ls.add_argument("--limit", type=int, default=100, help="names per page (1-1000)")
    ls.add_argument("--cursor", help="start after this name (the hint under a page)")
    ls.add_argument("--all", action="store_true", help="every page")
    ve = sub.add_parser("versions", help="an endpoint's kept versions: digests, who, when")
    ve.add_argument("name")
    rb = sub.add_parser("rollback", help="route an endpoint to an earlier version again "
                        "(no upload; running calls finish)")
    rb.add_argument("name")
    rb.add_argument("--to", type=int, default=None, metavar="N",
                    help="the version (default: the one before the current)")
    dl = sub.add_parser("delete", help="delete an endpoint")
    dl.add_argument("name")


def _load_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{target!r} is not module:function (e.g. app:predict)")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def cmd_deploy(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    fn = _load_target(args.target)
    console = stderr_console()
    client = sdk_client()
    options = dict(cpu=args.cpu, memory=args.memory, gpu=args.gpu, gpu_memory=args.gpu_memory,
                   requirements=args.requirements, min_replicas=args.min_replicas,
                   max_replicas=args.max_replicas, timeout=args.timeout, access=args.access,
                   env=_env_pairs(args.env), secrets=args.secrets)
    with console.status("uploading...") if console.is_terminal else contextlib.nullcontext():
        ep = client.deploy(fn, args.name, **options)
    if args.wait:
        _wait_deployed(client, ep.name, args.min_replicas, console)
    print(ep.url)
    return 0


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--env {key[:40]!r} is not KEY=VALUE")
        out[key] = value
    return out


def _wait_deployed(client: Any, name: str, min_replicas: int, console: Any) -> None:
    text = "building..." if min_replicas == 0 else "waiting for the first replica..."
    with console.status(text) if console.is_terminal else contextlib.nullcontext():
        while True:
            status = client.status(name)
            builds = status.get("builds", {})
            failed = [v for v in builds.values() if str(v).startswith("failed")]
            if failed:
                raise ValueError(f"build failed: {failed[0]}")
            built = any(v == "ready" for v in builds.values())
            if built and status["replicas"]["ready"] >= min_replicas:
                return
            time.sleep(0.5)


def cmd_ls(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    client = sdk_client()
    if args.all:
        items, cursor = client.list(state=args.state), None
    else:
        page = client.list_page(cursor=args.cursor, limit=args.limit, state=args.state)
        items, cursor = page["deployments"], page["next_cursor"]
    if not items:
        print("no deployments" + (f" {args.state}" if args.state else "") + (
            "" if args.state or args.cursor else
            "; deploy one with lowtide.deploy(fn) or `lowtide deploy mod:fn`"))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("NAME", "VERSION", "READY", "DESIRED", "QUEUED", "URL", box=None)
    for d in items:
        r = d["replicas"]
        table.add_row(d["name"], str(d["version"]), str(r["ready"]), str(r["desired"]),
                      str(d["queue"]["depth"]), d["url"])
    Console().print(table)
    if cursor is not None:
        state = f" --state {args.state}" if args.state else ""
        print(f"more: lowtide ls --cursor {cursor}{state} (or --all)", file=sys.stderr)
    return 0


def cmd_delete(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    info = sdk_client().delete(args.name)
    print(f"deleted {info['deleted']}")
    return 0


def cmd_versions(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    for v in sdk_client().versions(args.name):
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["deployed_at"]))
        models = "".join(f" +{m['tag']}" for m in v["digests"]["models"])
        print(f"{'*' if v['current'] else ' '} v{v['version']:<4} {at}  {v['deployed_by']:<24} "
              f"{v['digests']['artifact'][:19]}{models}  {v['origin']}")
    return 0


def cmd_rollback(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    info = sdk_client().rollback(args.name, args.to)
    print(f"{info['name']}: v{info['version']} serves v{info['to']}'s code and spec "
          f"(was v{info['from']}); running calls finish on v{info['from']}")
    return 0


COMMANDS = {"deploy": cmd_deploy, "ls": cmd_ls, "delete": cmd_delete,
            "versions": cmd_versions, "rollback": cmd_rollback}
