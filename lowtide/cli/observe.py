"""Observe and call endpoints: `status`, `invoke`, `logs`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from ._common import env_value, sdk_client


def add_parsers(sub: Any, env: Mapping[str, str]) -> None:
    st = sub.add_parser("status", help="hosts; or replicas, queue and recent decisions of "
                        "an endpoint")
    st.add_argument("name", nargs="?", help="an endpoint (default: show the hosts)")
    st.add_argument("--json", action="store_true", help="print the raw status")
    iv = sub.add_parser("invoke", help="call an endpoint with a JSON body")
    iv.add_argument("name")
    iv.add_argument("payload", nargs="?", default="{}", help="JSON (default {})")
    iv.add_argument("--async", dest="is_async", action="store_true",
                    help="submit and print the request id")
    iv.add_argument("--stream", action="store_true",
                    help="a generator endpoint: print each value (a JSON line) as it is "
                    "yielded; bytes go to stdout as they come")
    iv.add_argument("--key", default=env_value(env, "LOWTIDE_KEY", ""),
                    help="invoke key, for an endpoint whose access is 'key' (env LOWTIDE_KEY)")
    db = sub.add_parser("dashboard", help="open the web dashboard, signed in (a one-time "
                        "link; the token never goes into the browser)")
    db.add_argument("--url", action="store_true",
                    help="print the one-time link instead (for a remote browser or a script)")
    lg = sub.add_parser("logs", help="replica output of an endpoint")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


def _size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**30:.1f}Gi" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f}Mi"


def print_hosts(hosts: dict[str, Any]) -> None:
    """Per host: kind, capacity, allocated, utilization, replicas."""
    views = hosts.get("hosts", []) + hosts.get("lost", [])
    if not views:
        print("no hosts: start `lowtide agent` (or `lowtide up`)")
    for h in views:
        cap, alloc, use = h["capacity"], h["allocated"], h["utilization"]
        labels = ",".join(f"{k}={v}" for k, v in sorted((h.get("labels") or {}).items()))
        print(f"host {h['id']}  {h['kind']}  {h['state']}  {h.get('address') or '-'}"
              + (f"  [{labels}]" if labels else ""))
        cpu_used = "-" if use["cpu_percent"] is None else f"{use['cpu_percent']:g}"
        print(f"  cpu     {alloc['cpu']:g}/{cap['cpu_schedulable']:g} cores allocated "
              f"({cap['cpus']:g} cores)  used {cpu_used}%")
        print(f"  memory  {_size(alloc['memory_bytes'])}/{_size(cap['memory_bytes'])} allocated"
              f"  used {_size(use['memory_used_bytes'])}")
        used_gpus = {g["index"]: g for g in use.get("gpus") or []}
        for g in cap.get("gpus") or []:
            u = used_gpus.get(g["index"], {})
            print(f"  gpu {g['index']}   {g.get('name', '')} {_size(g['memory_bytes'])}  "
                  f"{'allocated' if g['index'] in alloc['gpus'] else 'free'}  "
                  f"util {u.get('utilization_percent', '-')}%  "
                  f"memory {_size(u.get('memory_used_bytes'))}")
        for r in h.get("replicas") or []:
            cores = r.get("cpu_cores")
            gpus = f"  gpu {','.join(map(str, r['gpus']))}" if r.get("gpus") else ""
            print(f"  replica {r['id']}  {r['endpoint']}  {r['state']}"
                  f"  cpu {'-' if cores is None else f'{cores:g}'} cores{gpus}")


def cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    client = sdk_client()
    if args.name is None:
        hosts = client.hosts()
        if args.json:
            print(json.dumps(hosts, indent=2))
        else:
            print_hosts(hosts)
        return 0
    status = client.status(args.name)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    r, q = status["replicas"], status["queue"]
    print(f"{status['name']}  v{status['version']}  {status['url']}")
    print(f"replicas  ready {r['ready']}  desired {r['desired']}  starting {r['starting']}"
          f"  stopping {r['stopping']}")
    print(f"queue     depth {q['depth']}  oldest {q['oldest_age_s']:.1f} s")
    if status.get("placement"):
        print(f"placement waiting: {status['placement']}")
    ka = status.get("keep_alive") or {}
    daily = status.get("daily") or {}
    print(f"keep-alive {status['keep_alive_s']:g} s" + (f" ({ka['reason']})" if ka else "")
          + (f"; daily: {daily['reason']}" if daily else "")
          + ("  PANIC: scaling up, no scale-down" if status.get("panic") else ""))
    for item in r["items"]:
        startup = item.get("startup") or {}
        started = (f"  started via {startup['path']} in {startup['total_s'] * 1000:.0f} ms"
                   if "total_s" in startup else "")
        if startup.get("preloaded"):
            started += f" ({', '.join(startup['preloaded'])} preloaded)"
        gpus = f"  gpu {','.join(map(str, item['gpus']))}" if item.get("gpus") else ""
        print(f"  {item['id']}  {item['state']:<9} v{item['version']}  {item['host']}  "
              f"{item['address'] or '-'}  in-flight {item['in_flight']}/{item['limit']}"
              f"{gpus}{started}")
    print("recent decisions (newest first):")
    for ev in client.events(args.name, limit=10):
        at = time.strftime("%H:%M:%S", time.localtime(ev["at"]))
        print(f"  {at}  {ev['kind']:<9} {ev['reason']}")
    return 0


def cmd_invoke(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import httpx

    from ..sdk._client import decode_result

    try:
        json.loads(args.payload)
    except ValueError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    client = sdk_client()
    url = client.invoke_url(args.name)
    if args.stream:
        return _print_stream(client, url, args.payload, args.key)
    params = {"async": "1"} if args.is_async else None
    try:
        headers = {"Content-Type": "application/json"}
        if args.key:
            headers["Authorization"] = f"Bearer {args.key}"
        response = httpx.post(url, content=args.payload, params=params, timeout=3700,
                              headers=headers)
    except httpx.TransportError as exc:
        raise ValueError(f"cannot reach {url}: {exc}; is `lowtide up` running?") from None
    if args.is_async and response.status_code == 202:
        print(json.dumps(response.json()))
        return 0
    value = decode_result(response)
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
    else:
        print(json.dumps(value))
    return 0


def _print_stream(client: Any, url: str, payload: str, key: str) -> int:
    from ..sdk._stream import stream

    for value in stream(client._http, url, "application/json", payload.encode(), key or None,
                        3700.0):
        if isinstance(value, bytes):
            sys.stdout.buffer.write(value)
            sys.stdout.buffer.flush()
        else:
            print(json.dumps(value), flush=True)
    return 0


FOLLOW_WAIT_MS = 20000  # one long poll of `logs -f`; the server splits it below Redis' timeout
FOLLOW_RETRY_MAX_S = 10.0


def cmd_logs(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Print the endpoint's replica output; with -f keep following (for hours: a quiet
    endpoint is an empty page; once following, a platform or Redis that goes away is
    waited for, while the first page fails at once with what to do)."""
    from ..sdk._errors import ConfigError, Overloaded

    client = sdk_client()
    after, retry_s, answered = "0-0", 0.0, False
    while True:
        try:
            page = client.logs(args.name, after=after,
                               wait_ms=FOLLOW_WAIT_MS if args.follow else 0)
        except (Overloaded, ConfigError) as exc:
            if not args.follow or not answered:
                raise
            retry_s = min(FOLLOW_RETRY_MAX_S, retry_s * 2 or 0.5)
            print(f"lowtide: {exc}; still following, retrying in {retry_s:g} s",
                  file=sys.stderr, flush=True)
            time.sleep(retry_s)
            continue
        retry_s, answered = 0.0, True
        for line in page["lines"]:
            print(f"[{line['replica']}] {line['line']}", flush=True)
        after = page["next"]
        if not args.follow and not page["lines"]:
            return 0


def cmd_dashboard(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import webbrowser

    link = sdk_client().dashboard_link()
    if args.url:
        print(link)
        return 0
    if not webbrowser.open(link):
        print(f"no browser found here; open this one-time link (it works once, within a "
              f"minute):\n{link}")
        return 0
    print("dashboard opened in your browser (signed in through a one-time link); "
          "`lowtide dashboard --url` prints a link instead")
    return 0


COMMANDS = {"status": cmd_status, "invoke": cmd_invoke, "logs": cmd_logs,
            "dashboard": cmd_dashboard}
