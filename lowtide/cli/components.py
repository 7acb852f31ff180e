"""Component commands: run one part of a cluster (`up`, `platform`, `activator`, `agent`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._common import (
    env_value,
    overcommit_factor,
    port_number,
    positive_float,
    positive_int,
    redis_url_from,
    setup_logging,
    size_bytes,
)


def add_parsers(sub: Any, env: Mapping[str, str], home: str) -> None:
    up = sub.add_parser("up", help="run a whole dev cluster in one process tree",
                        description="Start Redis (embedded unless --redis-url/REDIS_URL), the "
                        "platform, the activator and one local agent; write the token and URLs "
                        "to LOWTIDE_HOME for the SDK and CLI. Ctrl-C stops everything.")
    up.add_argument("--redis-url", default=redis_url_from(env),
                    help="use this Redis instead of an embedded one (env REDIS_URL)")
    up.add_argument("--activator-port", type=port_number,
                    default=env_value(env, "LOWTIDE_ACTIVATOR_PORT", "8080"),
                    help="invoke URLs port (default 8080, env LOWTIDE_ACTIVATOR_PORT)")
    up.add_argument("--platform-port", type=port_number,
                    default=env_value(env, "LOWTIDE_PLATFORM_PORT", "8081"),
                    help="control-plane API port (default 8081, env LOWTIDE_PLATFORM_PORT)")
    up.add_argument("--keep-alive", type=positive_float, metavar="SECONDS",
                    default=env_value(env, "LOWTIDE_KEEP_ALIVE_S"),
                    help="fixed idle time before scaling to zero (default: platform policy)")
    up.add_argument("--home", default=home, help=f"state directory (default {home})")
    up.add_argument("--no-pool", dest="pool", action="store_false",
                    help="keep no prewarmed workers (slower cold starts, less idle memory)")

    pl = sub.add_parser("platform", help="run the control plane (API + autoscaler)")
    pl.add_argument("--redis-url", default=redis_url_from(env), help="env LOWTIDE_REDIS_URL")
    pl.add_argument("--host", default=env_value(env, "LOWTIDE_PLATFORM_HOST", "127.0.0.1"))
    pl.add_argument("--port", type=port_number, default=env_value(env, "LOWTIDE_PLATFORM_PORT",
                                                             "8081"))
    pl.add_argument("--token-sha256", default=env_value(env, "LOWTIDE_TOKEN_SHA256", ""),
                    metavar="HEX", help="hex SHA-256 of the API bearer token (env "
                    "LOWTIDE_TOKEN_SHA256): the platform then never sees the token")
    pl.add_argument("--token", default=env_value(env, "LOWTIDE_TOKEN", ""),
                    help="API bearer token, hashed at start and not kept (env LOWTIDE_TOKEN); "
                    "prefer --token-sha256")
    pl.add_argument("--public-url", default=env_value(env, "LOWTIDE_PUBLIC_URL",
                                                 "http://127.0.0.1:8080"),
                    help="activator URL shown in invoke URLs (env LOWTIDE_PUBLIC_URL)")
    pl.add_argument("--keep-alive", type=positive_float, metavar="SECONDS",
                    default=env_value(env, "LOWTIDE_KEEP_ALIVE_S"),
                    help="fixed idle keep-alive (default: platform policy)")
    pl.add_argument("--instance-id", default=env_value(env, "LOWTIDE_INSTANCE_ID", ""),
                    help="this platform's name in shard leases and events, when several run "
                    "against one Redis (env LOWTIDE_INSTANCE_ID; default: host-pid-random)")
    pl.add_argument("--keep-alive-bin", type=positive_float, metavar="SECONDS",
                    default=env_value(env, "LOWTIDE_KEEP_ALIVE_BIN_S", "60"),
                    help="resolution of the learned keep-alive's idle-gap histogram; shorter "
                    "gaps are not idle periods (env LOWTIDE_KEEP_ALIVE_BIN_S; tests use ~1 s "
                    "to learn in seconds)")
    pl.add_argument("--blob-dir", default=env_value(env, "LOWTIDE_BLOB_DIR",
                                                    str(Path(home) / "blobs")),
                    help="the blob store: artifacts and model files (env LOWTIDE_BLOB_DIR, "
                    "default LOWTIDE_HOME/blobs)")
    pl.add_argument("--max-blob-bytes", type=size_bytes, metavar="SIZE",
                    default=env_value(env, "LOWTIDE_MAX_BLOB_BYTES", "64Gi"),
                    help="largest artifact or model file, 413 above (default 64Gi)")
    pl.add_argument("--advertise-url", default=env_value(env, "LOWTIDE_PLATFORM_ADVERTISE_URL",
                                                         ""),
                    help="where host agents reach this platform for blobs (default "
                    "http://HOST:PORT; env LOWTIDE_PLATFORM_ADVERTISE_URL)")

    ac = sub.add_parser("activator", help="run the ingress (invoke URLs)")
    ac.add_argument("--redis-url", default=redis_url_from(env), help="env LOWTIDE_REDIS_URL")
    ac.add_argument("--host", default=env_value(env, "LOWTIDE_ACTIVATOR_HOST", "127.0.0.1"))
    ac.add_argument("--port", type=port_number, default=env_value(env, "LOWTIDE_ACTIVATOR_PORT",
                                                             "8080"))
    ac.add_argument("--public-url", default=env_value(env, "LOWTIDE_ACTIVATOR_PUBLIC_URL", ""),
                    help="base URL for status links (default: the request's host)")
    ac.add_argument("--max-body-bytes", type=positive_int,
                    default=env_value(env, "LOWTIDE_MAX_BODY_BYTES", str(10 * 2**20)),
                    help="largest request body, answered 413 above (default 10 MiB)")
    ac.add_argument("--max-queue-wait", type=positive_float, metavar="SECONDS",
                    default=env_value(env, "LOWTIDE_MAX_QUEUE_WAIT_S", "120"),
                    help="how long a request may wait for a replica, cold starts included "
                    "(default 120)")
    ac.add_argument("--max-queue", type=positive_int,
                    default=env_value(env, "LOWTIDE_MAX_QUEUE", "10000"),
                    help="requests queued per endpoint (about) before new ones get 429 "
                    "(default 10000)")
    ac.add_argument("--workers", type=positive_int,
                    default=env_value(env, "LOWTIDE_ACTIVATOR_WORKERS", "1"),
                    help="processes serving the port, with SO_REUSEPORT (default 1)")

    ag = sub.add_parser("agent", help="run a host agent (starts and stops replicas)")
    ag.add_argument("--redis-url", default=redis_url_from(env), help="env LOWTIDE_REDIS_URL")
    ag.add_argument("--host-id", default=env_value(env, "LOWTIDE_HOST_ID", os.uname().nodename))
    ag.add_argument("--advertise-address", default=env_value(env, "LOWTIDE_ADVERTISE_ADDRESS",
                                                        "127.0.0.1"),
                    help="address other hosts reach this host's replicas on")
    ag.add_argument("--bind-host", default=env_value(env, "LOWTIDE_BIND_HOST", None),
                    help="interface replicas listen on (default: the advertise address)")
    ag.add_argument("--home", default=home, help=f"state directory (default {home})")
    ag.add_argument("--port", type=port_number,
                    default=env_value(env, "LOWTIDE_AGENT_PORT", "8082"),
                    help="port of the agent's /healthz and /metrics (default 8082, 0 = any)")
    ag.add_argument("--no-pool", dest="pool", action="store_false",
                    default=env_value(env, "LOWTIDE_POOL", "1") not in ("0", "false", "no"),
                    help="keep no prewarmed workers (env LOWTIDE_POOL=0); cold starts then "
                    "pay for a full server start")
    ag.add_argument("--label", action="append", dest="labels", metavar="KEY=VALUE",
                    default=[x for x in [env_value(env, "LOWTIDE_HOST_LABELS")] if x],
                    help="a host label, shown in `lowtide status` (repeatable; env "
                    "LOWTIDE_HOST_LABELS=k=v,k=v)")
    ag.add_argument("--cpu-overcommit", type=overcommit_factor, metavar="FACTOR",
                    default=env_value(env, "LOWTIDE_CPU_OVERCOMMIT", "4"),
                    help="schedulable cores = cores x FACTOR (default 4: CPU time is shared; "
                    "memory and GPUs are never overcommitted; 1 = strict)")
    ag.add_argument("--no-gpu", dest="gpus", action="store_false",
                    default=env_value(env, "LOWTIDE_GPUS", "1") not in ("0", "false", "no"),
                    help="do not offer this host's GPUs (env LOWTIDE_GPUS=0)")
    ag.add_argument("--blob-cache-bytes", type=size_bytes, metavar="SIZE",
                    default=env_value(env, "LOWTIDE_BLOB_CACHE_BYTES", "50Gi"),
                    help="disk for fetched artifacts and models, least recently used evicted "
                    "(default 50Gi)")
    ag.add_argument("--platform-url",
                    default=env_value(env, "LOWTIDE_AGENT_PLATFORM_URL", ""),
                    help="where to fetch blobs (env LOWTIDE_AGENT_PLATFORM_URL; default: the "
                    "URL the platform publishes in Redis)")
    ag.add_argument("--replica-user", default=env_value(env, "LOWTIDE_REPLICA_USER", ""),
                    metavar="USER",
                    help="when the agent runs as root, run every replica as this one user "
                    "(env LOWTIDE_REPLICA_USER; default: a uid of its own per replica "
                    "process, or root with an error logged where such a uid cannot run "
                    "lowtide's Python)")


def _need_redis(args: argparse.Namespace) -> str:
    if not args.redis_url:
        raise ValueError("no Redis: pass --redis-url or set LOWTIDE_REDIS_URL / REDIS_URL")
    return str(args.redis_url)


def cmd_up(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .._up import UpSettings, up

    return up(UpSettings(home=Path(args.home).expanduser(), redis_url=args.redis_url,
                         activator_port=args.activator_port, platform_port=args.platform_port,
                         keep_alive_s=None if args.keep_alive is None else float(args.keep_alive),
                         log_level=args.log_level, pool=args.pool))


def cmd_platform(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .._auth import token_digest
    from .._run import run
    from ..platform.main import serve
    from ..platform.settings import PlatformSettings

    digest = args.token_sha256.strip().lower() or (token_digest(args.token) if args.token
                                                   else "")
    args.token = None  # only the digest goes further
    settings = PlatformSettings(
        redis_url=_need_redis(args), token_sha256=digest, host=args.host, port=args.port,
        public_activator_url=args.public_url,
        keep_alive_s=None if args.keep_alive is None else float(args.keep_alive),
        keep_alive_bin_s=float(args.keep_alive_bin), instance_id=args.instance_id,
        blob_dir=Path(args.blob_dir).expanduser(), max_blob_bytes=args.max_blob_bytes,
        advertise_url=args.advertise_url)
    setup_logging(args.log_level)
    run(lambda stop: serve(settings, stop))
    return 0


def cmd_activator(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from ..activator.main import run_activator
    from ..activator.settings import ActivatorSettings

    settings = ActivatorSettings(redis_url=_need_redis(args), host=args.host, port=args.port,
                                 public_url=args.public_url, max_body_bytes=args.max_body_bytes,
                                 max_queue_wait_s=args.max_queue_wait, workers=args.workers,
                                 max_queued=args.max_queue)
    setup_logging(args.log_level)
    return run_activator(settings)


def cmd_agent(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import signal
    import threading

    from ..workers.agent import Agent, AgentSettings
    from ..workers.resources import parse_labels

    settings = AgentSettings(
        redis_url=_need_redis(args), home=Path(args.home).expanduser(), host_id=args.host_id,
        advertise_address=args.advertise_address,
        bind_host=args.bind_host or args.advertise_address,
        port=args.port, pool=args.pool, labels=parse_labels(args.labels),
        cpu_overcommit=float(args.cpu_overcommit), gpus=args.gpus,
        blob_cache_bytes=args.blob_cache_bytes, platform_url=args.platform_url,
        replica_user=args.replica_user)
    setup_logging(args.log_level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    Agent(settings).run(stop)
    return 0


COMMANDS = {"up": cmd_up, "platform": cmd_platform, "activator": cmd_activator,
            "agent": cmd_agent}
