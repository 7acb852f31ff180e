"""Access: invoke keys and public/key access of endpoints (`keys`, `access`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

from ._common import sdk_client


def add_parsers(sub: Any, env: Mapping[str, str]) -> None:
    ke = sub.add_parser("keys", help="create, list or revoke an endpoint's invoke keys",
                        description="Invoke keys of an endpoint whose access is 'key' "
                        "(`lowtide access NAME key`). A key is printed once, at creation; "
                        "only its hash is stored. Revoked keys are refused within a second.")
    ke_sub = ke.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kc = ke_sub.add_parser("create", help="create a key and print it (only this once)")
    kc.add_argument("name")
    kc.add_argument("--label", default="", help="what the key is for (shown by ls)")
    kl = ke_sub.add_parser("ls", help="list keys: ids, labels, creation times")
    kl.add_argument("name")
    kr = ke_sub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("name")
    kr.add_argument("key_id", help="the id `lowtide keys ls NAME` shows")
    acc = sub.add_parser("access", help="make an endpoint public or key-protected")
    acc.add_argument("name")
    acc.add_argument("mode", choices=["public", "key"])


def cmd_keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    client = sdk_client()
    if args.keys_command == "create":
        info = client.create_key(args.name, args.label)
        print(info["key"])
        print(f"key {info['id']} of {args.name}: {info['note']}", file=sys.stderr)
    elif args.keys_command == "ls":
        keys = client.keys(args.name)
        if not keys:
            print(f"no keys; create one with `lowtide keys create {args.name}`")
        for k in keys:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k["created_at"] or 0))
            print(f"{k['id']}  {at}  {k['label']}")
    else:
        client.revoke_key(args.name, args.key_id)
        print(f"revoked key {args.key_id} of {args.name}")
    return 0


def cmd_access(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    info = sdk_client().set_access(args.name, args.mode)
    print(f"{info['name']}: access {info['access']}")
    return 0


COMMANDS = {"keys": cmd_keys, "access": cmd_access}
