"""`lowtide activator`: the ingress process."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from .._redis import async_redis
from .._run import serve_app, supervise
from .app import Activator, build_app
from .settings import ActivatorSettings

log = logging.getLogger(__name__)


async def serve(settings: ActivatorSettings, stop: asyncio.Event) -> None:
    redis = async_redis(settings.redis_url)
    activator = Activator(settings, redis)
    activator.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        auto_decompress=False,
    )
    tasks = [
        asyncio.create_task(activator.replies.run(stop), name="replies"),
        asyncio.create_task(activator.routes.run(stop), name="routes"),
        asyncio.create_task(activator.flush_stats(stop), name="stats"),
    ]
    runner = await serve_app(build_app(activator), settings.host, settings.port)
    log.info("activator on http://%s:%d", settings.host, settings.port)
    try:
        # stop accepting and let in-flight requests finish while replies still flow
        await supervise(stop, tasks, before_cancel=runner.shutdown)
    finally:
        await runner.cleanup()
        await activator.session.close()
        await redis.aclose()
