"""`lowtide platform`: the control-plane API and the scaling loop in one process."""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web
from redis.asyncio import Redis

from .. import _keys
from .._redis import async_redis, sync_redis, until_done
from .._run import serve_app, supervise
from .api import build_app
from .blobs import BlobCollector, FileBlobStore
from .scaler import Scaler, ScalerSettings
from .series import SeriesRecorder
from .settings import PlatformSettings
from .shards import Shards, new_instance_id

log = logging.getLogger(__name__)


async def publish_url(redis: Redis, settings: PlatformSettings, runner: web.AppRunner) -> None:
    """Where the host agents fetch blobs from: the advertised URL, else the bound address
    (a wildcard bind advertises this machine's name)."""
    url = settings.advertise_url
    if not url:
        port = runner.addresses[0][1] if runner.addresses else settings.port
        host = settings.host if settings.host not in ("0.0.0.0", "::", "") else (
            socket.gethostname())
        url = f"http://{host}:{port}"
    await redis.set(_keys.PLATFORM_URL, url.rstrip("/"))


async def serve(settings: PlatformSettings, stop: asyncio.Event) -> None:
    redis = async_redis(settings.redis_url)
    sync = sync_redis(settings.redis_url)
    shards = Shards(redis, settings.instance_id or new_instance_id())
    scaler = Scaler(redis, sync, ScalerSettings(keep_alive_s=settings.keep_alive_s,
                                                keep_alive_bin_s=settings.keep_alive_bin_s),
                    shards=shards)
    recorder = SeriesRecorder(redis)
    scaler.observed = recorder.observe
    store = FileBlobStore(settings.blob_dir)
    collector = BlobCollector(store, redis)
    # Redis may be restarting while this platform starts (a restart of both, a chaos
    # soak): its start-up steps wait for it instead of exiting
    await until_done(redis.ping, stop, what="platform start")
    runner = await serve_app(build_app(settings, redis, scaler, recorder, store),
                             settings.host, settings.port)
    await until_done(lambda: publish_url(redis, settings, runner), stop,
                     what="publishing the blob URL")
    log.info("platform %s: API on http://%s:%d (keep-alive: %s)", shards.id, settings.host,
             settings.port, "platform policy" if settings.keep_alive_s is None
             else f"{settings.keep_alive_s:g} s")
    try:
        await supervise(stop, [asyncio.create_task(scaler.run(stop), name="scaler"),
                               asyncio.create_task(recorder.run(stop), name="series"),
                               asyncio.create_task(collector.run(stop), name="blobs")])
    finally:
        await runner.cleanup()
        await redis.aclose()
        sync.close()
