"""The `lowtide` command.

User commands talk to a running cluster (`deploy`, `ls`, `status`, `invoke`, `logs`,
`delete`); component commands run one part of it (`up`, `platform`, `activator`, `agent`).
Flags default to LOWTIDE_* environment variables, read here once and nowhere deeper.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._home import home_dir

EPILOG = """examples:
  lowtide up                                  start a local cluster (Ctrl-C stops it)
  lowtide deploy mymodule:predict --name predict
  lowtide invoke predict '{"x": 1}'
  lowtide status predict
  lowtide logs predict -f
"""


def _env(env: Mapping[str, str], key: str, default: Any = None) -> Any:
    value = env.get(key)
    return default if value in (None, "") else value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _overcommit(text: str) -> float:
    value = _positive_float(text)
    if not 1.0 <= value <= 64.0:
        raise argparse.ArgumentTypeError(f"{text} must be in [1, 64]")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} must be in [0, 65535]")
    return value


def _redis_url(env: Mapping[str, str]) -> str:
    return str(_env(env, "LOWTIDE_REDIS_URL", _env(env, "REDIS_URL", "")))


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowtide", description="Serverless functions and model serving for Python.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default=_env(env, "LOWTIDE_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level of components")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    home = str(home_dir(dict(env)))

    up = sub.add_parser("up", help="run a whole dev cluster in one process tree",
                        description="Start Redis (embedded unless --redis-url/REDIS_URL), the "
                        "platform, the activator and one local agent; write the token and URLs "
                        "to LOWTIDE_HOME for the SDK and CLI. Ctrl-C stops everything.")
    up.add_argument("--redis-url", default=_redis_url(env),
                    help="use this Redis instead of an embedded one (env REDIS_URL)")
    up.add_argument("--activator-port", type=_port,
                    default=_env(env, "LOWTIDE_ACTIVATOR_PORT", "8080"),
                    help="invoke URLs port (default 8080, env LOWTIDE_ACTIVATOR_PORT)")
    up.add_argument("--platform-port", type=_port,
                    default=_env(env, "LOWTIDE_PLATFORM_PORT", "8081"),
                    help="control-plane API port (default 8081, env LOWTIDE_PLATFORM_PORT)")
    up.add_argument("--keep-alive", type=_positive_float, metavar="SECONDS",
                    default=_env(env, "LOWTIDE_KEEP_ALIVE_S"),
                    help="fixed idle time before scaling to zero (default: platform policy)")
    up.add_argument("--home", default=home, help=f"state directory (default {home})")
    up.add_argument("--no-pool", dest="pool", action="store_false",
                    help="keep no prewarmed workers (slower cold starts, less idle memory)")

    pl = sub.add_parser("platform", help="run the control plane (API + autoscaler)")
    pl.add_argument("--redis-url", default=_redis_url(env), help="env LOWTIDE_REDIS_URL")
    pl.add_argument("--host", default=_env(env, "LOWTIDE_PLATFORM_HOST", "127.0.0.1"))
    pl.add_argument("--port", type=_port, default=_env(env, "LOWTIDE_PLATFORM_PORT",
                                                             "8081"))
    pl.add_argument("--token-sha256", default=_env(env, "LOWTIDE_TOKEN_SHA256", ""),
                    metavar="HEX", help="hex SHA-256 of the API bearer token (env "
                    "LOWTIDE_TOKEN_SHA256): the platform then never sees the token")
    pl.add_argument("--token", default=_env(env, "LOWTIDE_TOKEN", ""),
                    help="API bearer token, hashed at start and not kept (env LOWTIDE_TOKEN); "
                    "prefer --token-sha256")
    pl.add_argument("--public-url", default=_env(env, "LOWTIDE_PUBLIC_URL",
                                                 "http://127.0.0.1:8080"),
                    help="activator URL shown in invoke URLs (env LOWTIDE_PUBLIC_URL)")
    pl.add_argument("--keep-alive", type=_positive_float, metavar="SECONDS",
                    default=_env(env, "LOWTIDE_KEEP_ALIVE_S"),
                    help="fixed idle keep-alive (default: platform policy)")
    pl.add_argument("--keep-alive-bin", type=_positive_float, metavar="SECONDS",
                    default=_env(env, "LOWTIDE_KEEP_ALIVE_BIN_S", "60"),
                    help="resolution of the learned keep-alive's idle-gap histogram; shorter "
                    "gaps are not idle periods (env LOWTIDE_KEEP_ALIVE_BIN_S; tests use ~1 s "
                    "to learn in seconds)")

    ac = sub.add_parser("activator", help="run the ingress (invoke URLs)")
    ac.add_argument("--redis-url", default=_redis_url(env), help="env LOWTIDE_REDIS_URL")
    ac.add_argument("--host", default=_env(env, "LOWTIDE_ACTIVATOR_HOST", "127.0.0.1"))
    ac.add_argument("--port", type=_port, default=_env(env, "LOWTIDE_ACTIVATOR_PORT",
                                                             "8080"))
    ac.add_argument("--public-url", default=_env(env, "LOWTIDE_ACTIVATOR_PUBLIC_URL", ""),
                    help="base URL for status links (default: the request's host)")
    ac.add_argument("--max-body-bytes", type=_positive_int,
                    default=_env(env, "LOWTIDE_MAX_BODY_BYTES", str(10 * 2**20)),
                    help="largest request body, answered 413 above (default 10 MiB)")
    ac.add_argument("--max-queue-wait", type=_positive_float, metavar="SECONDS",
                    default=_env(env, "LOWTIDE_MAX_QUEUE_WAIT_S", "120"),
                    help="how long a request may wait for a replica, cold starts included "
                    "(default 120)")
    ac.add_argument("--max-queue", type=_positive_int,
                    default=_env(env, "LOWTIDE_MAX_QUEUE", "10000"),
                    help="requests queued per endpoint (about) before new ones get 429 "
                    "(default 10000)")
    ac.add_argument("--workers", type=_positive_int,
                    default=_env(env, "LOWTIDE_ACTIVATOR_WORKERS", "1"),
                    help="processes serving the port, with SO_REUSEPORT (default 1)")

    ag = sub.add_parser("agent", help="run a host agent (starts and stops replicas)")
    ag.add_argument("--redis-url", default=_redis_url(env), help="env LOWTIDE_REDIS_URL")
    ag.add_argument("--host-id", default=_env(env, "LOWTIDE_HOST_ID", os.uname().nodename))
    ag.add_argument("--advertise-address", default=_env(env, "LOWTIDE_ADVERTISE_ADDRESS",
                                                        "127.0.0.1"),
                    help="address other hosts reach this host's replicas on")
    ag.add_argument("--bind-host", default=_env(env, "LOWTIDE_BIND_HOST", None),
                    help="interface replicas listen on (default: the advertise address)")
    ag.add_argument("--home", default=home, help=f"state directory (default {home})")
    ag.add_argument("--port", type=_port, default=_env(env, "LOWTIDE_AGENT_PORT", "8082"),
                    help="port of the agent's /healthz and /metrics (default 8082, 0 = any)")
    ag.add_argument("--no-pool", dest="pool", action="store_false",
                    default=_env(env, "LOWTIDE_POOL", "1") not in ("0", "false", "no"),
                    help="keep no prewarmed workers (env LOWTIDE_POOL=0); cold starts then "
                    "pay for a full server start")
    ag.add_argument("--label", action="append", dest="labels", metavar="KEY=VALUE",
                    default=[x for x in [_env(env, "LOWTIDE_HOST_LABELS")] if x],
                    help="a host label, shown in `lowtide status` (repeatable; env "
                    "LOWTIDE_HOST_LABELS=k=v,k=v)")
    ag.add_argument("--cpu-overcommit", type=_overcommit, metavar="FACTOR",
                    default=_env(env, "LOWTIDE_CPU_OVERCOMMIT", "4"),
                    help="schedulable cores = cores x FACTOR (default 4: CPU time is shared; "
                    "memory and GPUs are never overcommitted; 1 = strict)")
    ag.add_argument("--no-gpu", dest="gpus", action="store_false",
                    default=_env(env, "LOWTIDE_GPUS", "1") not in ("0", "false", "no"),
                    help="do not offer this host's GPUs (env LOWTIDE_GPUS=0)")

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
    de.add_argument("--wait", action="store_true",
                    help="wait until the function is built (and min replicas are ready)")

    sub.add_parser("ls", help="list deployments")
    st = sub.add_parser("status", help="hosts; or replicas, queue and recent decisions of "
                        "an endpoint")
    st.add_argument("name", nargs="?", help="an endpoint (default: show the hosts)")
    st.add_argument("--json", action="store_true", help="print the raw status")
    iv = sub.add_parser("invoke", help="call an endpoint with a JSON body")
    iv.add_argument("name")
    iv.add_argument("payload", nargs="?", default="{}", help="JSON (default {})")
    iv.add_argument("--async", dest="is_async", action="store_true",
                    help="submit and print the request id")
    iv.add_argument("--key", default=_env(env, "LOWTIDE_KEY", ""),
                    help="invoke key, for an endpoint whose access is 'key' (env LOWTIDE_KEY)")
    lg = sub.add_parser("logs", help="replica output of an endpoint")
    lg.add_argument("name")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    dl = sub.add_parser("delete", help="delete an endpoint")
    dl.add_argument("name")
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
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().isEnabledFor(logging.INFO) and not logging.getLogger().isEnabledFor(
            logging.DEBUG):
        # one line per HTTP request (the agent's probes of its pool workers): debug detail
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    env = dict(os.environ)
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(2)
    from .sdk._errors import LowtideError

    try:
        code = COMMANDS[args.command](args, env)
    except LowtideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except ValueError as exc:  # settings validation
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


# ---- component commands ---------------------------------------------------------------
def _need_redis(args: argparse.Namespace) -> str:
    if not args.redis_url:
        raise ValueError("no Redis: pass --redis-url or set LOWTIDE_REDIS_URL / REDIS_URL")
    return str(args.redis_url)


def cmd_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from ._up import UpSettings, up

    return up(UpSettings(home=Path(args.home).expanduser(), redis_url=args.redis_url,
                         activator_port=args.activator_port, platform_port=args.platform_port,
                         keep_alive_s=None if args.keep_alive is None else float(args.keep_alive),
                         log_level=args.log_level, pool=args.pool))


def cmd_platform(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from ._auth import token_digest
    from ._run import run
    from .platform.main import serve
    from .platform.settings import PlatformSettings

    digest = args.token_sha256.strip().lower() or (token_digest(args.token) if args.token
                                                   else "")
    args.token = None  # only the digest goes further
    settings = PlatformSettings(
        redis_url=_need_redis(args), token_sha256=digest, host=args.host, port=args.port,
        public_activator_url=args.public_url,
        keep_alive_s=None if args.keep_alive is None else float(args.keep_alive),
        keep_alive_bin_s=float(args.keep_alive_bin))
    _setup_logging(args.log_level)
    run(lambda stop: serve(settings, stop))
    return 0


def cmd_activator(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .activator.main import run_activator
    from .activator.settings import ActivatorSettings

    settings = ActivatorSettings(redis_url=_need_redis(args), host=args.host, port=args.port,
                                 public_url=args.public_url, max_body_bytes=args.max_body_bytes,
                                 max_queue_wait_s=args.max_queue_wait, workers=args.workers,
                                 max_queued=args.max_queue)
    _setup_logging(args.log_level)
    return run_activator(settings)


def cmd_agent(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import signal
    import threading

    from .workers.agent import Agent, AgentSettings
    from .workers.resources import parse_labels

    settings = AgentSettings(
        redis_url=_need_redis(args), home=Path(args.home).expanduser(), host_id=args.host_id,
        advertise_address=args.advertise_address,
        bind_host=args.bind_host or args.advertise_address,
        port=args.port, pool=args.pool, labels=parse_labels(args.labels),
        cpu_overcommit=float(args.cpu_overcommit), gpus=args.gpus)
    _setup_logging(args.log_level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Agent(settings).run(stop)
    return 0


# ---- user commands --------------------------------------------------------------------
def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _client() -> Any:
    from .sdk import Client

    return Client()


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
    console = _console()
    client = _client()
    options = dict(cpu=args.cpu, memory=args.memory, gpu=args.gpu, gpu_memory=args.gpu_memory,
                   requirements=args.requirements, min_replicas=args.min_replicas,
                   max_replicas=args.max_replicas, timeout=args.timeout, access=args.access)
    with console.status("uploading...") if console.is_terminal else _nothing():
        ep = client.deploy(fn, args.name, **options)
    if args.wait:
        _wait_deployed(client, ep.name, args.min_replicas, console)
    print(ep.url)
    return 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _wait_deployed(client: Any, name: str, min_replicas: int, console: Any) -> None:
    text = "building..." if min_replicas == 0 else "waiting for the first replica..."
    with console.status(text) if console.is_terminal else _nothing():
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
    items = _client().list()
    if not items:
        print("no deployments; deploy one with lowtide.deploy(fn) or `lowtide deploy mod:fn`")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("NAME", "VERSION", "READY", "DESIRED", "QUEUED", "URL", box=None)
    for d in items:
        r = d["replicas"]
        table.add_row(d["name"], str(d["version"]), str(r["ready"]), str(r["desired"]),
                      str(d["queue"]["depth"]), d["url"])
    Console().print(table)
    return 0


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
    client = _client()
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

    from .sdk._client import decode_result

    try:
        json.loads(args.payload)
    except ValueError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    client = _client()
    url = client.invoke_url(args.name)
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


def cmd_logs(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    client = _client()
    after = "0-0"
    while True:
        page = client.logs(args.name, after=after, wait_ms=5000 if args.follow else 0)
        for line in page["lines"]:
            print(f"[{line['replica']}] {line['line']}", flush=True)
        after = page["next"]
        if not args.follow and not page["lines"]:
            return 0


def cmd_delete(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    info = _client().delete(args.name)
    print(f"deleted {info['deleted']}")
    return 0


def cmd_keys(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    client = _client()
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
    info = _client().set_access(args.name, args.mode)
    print(f"{info['name']}: access {info['access']}")
    return 0


COMMANDS = {
    "up": cmd_up, "platform": cmd_platform, "activator": cmd_activator, "agent": cmd_agent,
    "deploy": cmd_deploy, "ls": cmd_ls, "status": cmd_status, "invoke": cmd_invoke,
    "logs": cmd_logs, "delete": cmd_delete, "keys": cmd_keys, "access": cmd_access,
}
