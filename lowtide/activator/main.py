"""`lowtide activator`: the ingress process, or N of them on one port.

With `workers > 1` the parent starts N worker processes that each bind the port with
SO_REUSEPORT (the kernel spreads connections among them) and share nothing but Redis; it
forwards SIGINT/SIGTERM to them, and when one dies it stops the others and fails.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

from aiohttp import web

from .._redis import async_redis
from .._run import run, supervise
from ..workers.procs import die_with_parent
from .app import Activator, build_app
from .settings import ActivatorSettings

log = logging.getLogger(__name__)

WORKER_STOP_S = 15.0
REDIS_TIMEOUT_S = 2.0  # the longest one Redis command on the request path may take


async def serve(settings: ActivatorSettings, stop: asyncio.Event) -> None:
    # a request never waits long on a hung Redis: it is answered 503 with Retry-After
    redis = async_redis(settings.redis_url, timeout_s=REDIS_TIMEOUT_S)
    activator = Activator(settings, redis)
    tasks = [
        asyncio.create_task(activator.replies.run(stop), name="replies"),
        asyncio.create_task(activator.routes.run(stop), name="routes"),
        asyncio.create_task(activator.flush_stats(stop), name="stats"),
        asyncio.create_task(activator.backlog.run(redis, stop), name="backlog"),
    ]
    runner = web.AppRunner(build_app(activator), access_log=None, handle_signals=False,
                           shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port, reuse_address=True,
                      reuse_port=settings.workers > 1).start()
    log.info("activator on http://%s:%d", settings.host, settings.port)
    # what exists now (modules, the app) lives as long as the process: keep it out of the
    # collector's generations, so a full collection under load walks only request garbage
    gc.freeze()
    try:
        # stop accepting and let in-flight requests finish while replies still flow
        await supervise(stop, tasks, before_cancel=runner.shutdown)
    finally:
        await runner.cleanup()
        activator.upstreams.close()
        await redis.aclose()


def _worker(settings: ActivatorSettings, parent_pid: int) -> None:
    die_with_parent(parent_pid)  # a SIGKILLed parent leaves no worker holding the port
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # the event loop installs its own
    run(lambda stop: serve(settings, stop))


def run_activator(settings: ActivatorSettings) -> int:
    """Serve in this process, or in `settings.workers` processes on one port."""
    if settings.workers == 1:
        run(lambda stop: serve(settings, stop))
        return 0
    # fork before any event loop, Redis connection or thread exists in this process
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(settings, os.getpid()), name=f"activator-{i}")
             for i in range(settings.workers)]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    for p in procs:
        p.start()
    log.info("activator: %d workers on http://%s:%d", settings.workers, settings.host,
             settings.port)
    while not stop.wait(0.5):
        dead = [p for p in procs if not p.is_alive()]
        if dead:
            log.error("activator worker %s exited with code %s; stopping the others",
                      dead[0].name, dead[0].exitcode)
            _stop_all(procs)
            return 1
    _stop_all(procs)
    return 0


def _stop_all(procs: Sequence[BaseProcess]) -> None:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            p.terminate()  # SIGTERM: each drains like a single activator
    for p in procs:
        p.join(WORKER_STOP_S)
        if p.is_alive():
            p.kill()
            p.join()
