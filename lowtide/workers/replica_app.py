"""The replica's HTTP surface, mounted by the BentoML service at /lt: POST /invoke (direct
calls: answered, streamed, or refused busy over the learned limit), GET /healthz, GET
/metrics, and POST /specialize, which turns an idle prewarmed pool worker into a replica.

One process holds at most one replica (`current()`): built from the environment when the
agent started a full `bentoml serve` for it, or from the /specialize body in a pool worker.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
import traceback

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._protocol import METHOD_HEADER, TIMEOUT_HEADER
from ..limiter import BUSY_HEADER
from . import tracebacks, user_env
from .batching import REGISTRY as BATCH_METRICS
from .replica import PRELOADED, Replica
from .replica_settings import ReplicaSettings
from .streaming import ChunkStream
from .target import exception_text

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0


async def start_or_fail(replica: Replica) -> bool:
    """Start the replica; when its load or constructor raises, print the traceback (for
    `lowtide logs`), record the reason (`Replica.fail`) and return False: the caller
    then ends the process."""
    try:
        await replica.start()
        return True
    except Exception as exc:
        reason = exception_text(exc)
        traceback.print_exc()
        print(f"[lowtide] the replica cannot start: {reason}", file=sys.stderr, flush=True)
        await replica.fail(reason)
        return False


_current: Replica | None = None
_pool_mode = False
_background: set[asyncio.Task[None]] = set()
# common imports a prewarmed worker loads before it has a function (LOWTIDE_POOL_PRELOAD,
# comma separated, replaces the list; missing modules are skipped), and the packages the
# agent learned its host's cold starts need (LOWTIDE_POOL_PACKAGES)
PRELOAD = ("numpy", "sklearn.ensemble", "sklearn.linear_model")


def enter_pool() -> None:
    """Wait as a prewarmed generic worker until POST /lt/specialize gives a function."""
    global _pool_mode
    _pool_mode = True
    names = os.environ.get("LOWTIDE_POOL_PRELOAD")
    base = names.split(",") if names else list(PRELOAD)
    learned = [n for n in os.environ.get("LOWTIDE_POOL_PACKAGES", "").split(",") if n]
    for name in dict.fromkeys([*base, *learned]):  # once each: a learned one may be common
        try:
            importlib.import_module(name)
        except Exception as exc:  # a package broken on import must not break the pool
            if name in learned:
                log.warning("pool worker: cannot preload %s: %s: %s", name,
                            type(exc).__name__, exc)
            continue
        if name in learned:
            PRELOADED.append(name)
    gc.freeze()


def current() -> Replica | None:
    global _current
    if _current is None and not _pool_mode:
        tracebacks.hide(user_env.secret_values(os.environ))
        _current = Replica(ReplicaSettings.from_env())
    return _current


async def _specialize(request: Request) -> Response:
    global _current
    if not _pool_mode or _current is not None:
        return JSONResponse({"error": "conflict", "detail": "not an idle pool worker"}, 409)
    spec = await request.json()
    user_vars = spec.pop("env", None) or {}
    os.environ.update(user_vars)  # this worker is the replica's alone from now on
    tracebacks.hide(user_env.secret_values(os.environ))
    env = {**os.environ, **{f"LOWTIDE_{k.upper()}": str(v) for k, v in spec.items()},
           "LOWTIDE_START_PATH": "pool"}
    try:
        replica = Replica(ReplicaSettings.from_env(env))
    except Exception as exc:
        return JSONResponse({"error": "cannot load the function",
                             "detail": f"{type(exc).__name__}: {exc}"}, 500)
    _current = replica
    # the load (a class's constructor: maybe minutes) runs on: the agent's start job does
    # not wait for it, and the replica reports ready, or its failure, itself
    task = asyncio.create_task(_start_specialized(replica), name="specialize")
    _background.add(task)
    task.add_done_callback(_background.discard)
    return JSONResponse({"status": "loading"}, 202)


async def _start_specialized(replica: Replica) -> None:
    if not await start_or_fail(replica):
        end_server()


def end_server() -> None:
    """End this replica: stop the `bentoml serve` process whose worker this is (the
    agent reaps it and reports the exit)."""
    os.kill(os.getppid(), signal.SIGTERM)


def _not_ready() -> Response:
    return JSONResponse({"error": "unavailable", "detail": "this worker has no function yet"},
                        503)


async def _invoke(request: Request) -> Response:
    replica = current()
    if replica is None or not replica.ready:
        return _not_ready()
    body = await request.body()
    try:
        timeout_s = float(request.headers.get(TIMEOUT_HEADER) or DEFAULT_TIMEOUT_S)
    except ValueError:
        timeout_s = DEFAULT_TIMEOUT_S
    content_type = request.headers.get("content-type", "")
    method = request.headers.get(METHOD_HEADER, "")
    if replica.streams(method):
        answer = await replica.open_stream(content_type, body, timeout_s,
                                           request.headers.get("accept", ""), method)
        if isinstance(answer, ChunkStream):
            return answer
        result = answer
    else:
        result = await replica.run_direct(content_type, body, timeout_s, method)
    headers = replica.load_headers(hold=not replica.streams(method))
    if result is None:
        return JSONResponse({"error": "busy", "detail": "the replica is at its concurrency "
                             "limit"}, status_code=503, headers={**headers, BUSY_HEADER: "1"})
    return Response(result.body, status_code=result.status, media_type=result.content_type,
                    headers=headers)


async def _metrics(_: Request) -> Response:
    """Prometheus text: the batch size and wait histograms of batched functions."""
    return Response(generate_latest(BATCH_METRICS), media_type=CONTENT_TYPE_LATEST)


async def _health(_: Request) -> Response:
    r = current()
    if r is None:
        return JSONResponse({"status": "idle"})
    return JSONResponse({"status": "ok", **r.load()})


invoke_app = Starlette(routes=[
    Route("/invoke", _invoke, methods=["POST"]),
    Route("/healthz", _health, methods=["GET"]),
    Route("/metrics", _metrics, methods=["GET"]),
    Route("/specialize", _specialize, methods=["POST"]),
])
