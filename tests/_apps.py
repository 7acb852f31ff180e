"""The real platform and activator aiohttp apps, in this process, on free ports, against a
real Redis: for HTTP tests that need no agent or BentoML replica (auth, bounds, fuzzing).

The apps run on their own event loop in a thread, so tests (and hypothesis) call them with
plain synchronous httpx. A tiny echo server stands in for a ready replica, so the warm path
is exercised too.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web
from redis import Redis as SyncRedis

from lowtide import _keys
from lowtide._auth import token_digest
from lowtide._redis import async_redis
from lowtide._run import serve_app
from lowtide.activator.app import Activator
from lowtide.activator.app import build_app as build_activator
from lowtide.activator.settings import ActivatorSettings
from lowtide.platform.api import build_app as build_platform
from lowtide.platform.scaler import Scaler, ScalerSettings
from lowtide.platform.settings import PlatformSettings


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body or b"null",
                        content_type=request.content_type or "application/json")


@dataclass
class Apps:
    redis_url: str
    token: str = "test-token-" + "x" * 32
    activator_options: dict[str, Any] = field(default_factory=dict)
    platform_url: str = ""
    activator_url: str = ""
    replica_address: str = ""
    activator: Activator | None = None

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._cleanup: list[Any] = []

    def call(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        """Run a coroutine on the apps' loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def start(self) -> Apps:
        self._thread.start()
        self.call(self._setup())
        return self

    async def _setup(self) -> None:
        self._stop = asyncio.Event()
        redis = async_redis(self.redis_url)
        sync_redis = SyncRedis.from_url(self.redis_url)
        scaler = Scaler(redis, sync_redis, ScalerSettings())
        platform = PlatformSettings(redis_url=self.redis_url,
                                    token_sha256=token_digest(self.token), port=0)
        prunner = await serve_app(build_platform(platform, redis, scaler), "127.0.0.1", 0)
        self.platform_url = f"http://127.0.0.1:{prunner.addresses[0][1]}"
        activator = Activator(ActivatorSettings(redis_url=self.redis_url, port=0,
                                                **self.activator_options), redis)
        self.activator = activator
        tasks = [asyncio.create_task(activator.routes.run(self._stop)),
                 asyncio.create_task(activator.replies.run(self._stop)),
                 asyncio.create_task(activator.backlog.run(redis, self._stop))]
        arunner = await serve_app(build_activator(activator), "127.0.0.1", 0)
        self.activator_url = f"http://127.0.0.1:{arunner.addresses[0][1]}"
        replica = web.Application()
        replica.router.add_post("/lt/invoke", _echo)
        rrunner = await serve_app(replica, "127.0.0.1", 0)
        self.replica_address = f"127.0.0.1:{rrunner.addresses[0][1]}"
        self._cleanup = [tasks, [arunner, prunner, rrunner], activator.upstreams, redis,
                         sync_redis]

    async def _teardown(self) -> None:
        assert self._stop is not None
        tasks, runners, upstreams, redis, sync_redis = self._cleanup
        self._stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in runners:
            await r.cleanup()
        upstreams.close()
        await redis.aclose()
        sync_redis.close()

    def stop(self) -> None:
        self.call(self._teardown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # ---- helpers ----------------------------------------------------------------------
    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.platform_url}{path}", headers=headers,
                             timeout=10, **kw)

    def deploy(self, name: str, **spec: Any) -> httpx.Response:
        files = {"spec": (None, json.dumps({"name": name, **spec}), "application/json"),
                 "artifact": ("a.pkl", b"not really a pickle", "application/octet-stream")}
        return self.api("POST", "/v1/deployments", files=files)

    def add_replica(self, name: str, limit: int = 64) -> None:
        """Mark the echo server as a ready replica of `name` (current version)."""
        r = SyncRedis.from_url(self.redis_url)
        try:
            version = int(r.hget(_keys.deployment(name), "version") or 0)
            record = {"id": f"echo-{name}", "address": self.replica_address,
                      "state": "ready", "version": version, "limit": limit}
            r.hset(_keys.replicas(name), record["id"], json.dumps(record))
            r.publish(_keys.ROUTES_CHANNEL, name)
        finally:
            r.close()
