"""The generic BentoML service every replica runs: it serves the endpoint's function.

The function itself is not part of this module: the replica loads it from the artifact the
agent points it at (LOWTIDE_ARTIFACT), so one service definition serves every endpoint.
"""

from __future__ import annotations

import os

import bentoml
from bentoml._internal.server.http import traffic

from . import replica_app as replica
from .procs import die_with_parent, no_inspection, worker_dies_with_server

no_inspection()  # before the function loads (both start paths import this module first)
worker_dies_with_server()


def _passthrough(app: object, timeout: float) -> object:
    return app


# BentoML's TimeoutMiddleware schedules a timer per request (`traffic.timeout` ahead) and
# never cancels it, so each request's future, context and tracing span stay alive for the
# whole timeout: a replica grew by about 5 KB per request and its tail latency with the
# collector's work. The replica bounds every call by its own deadline (runtime.execute), so
# BentoML's timer goes; BentoML builds its middleware after importing this module.
traffic.TimeoutMiddleware = _passthrough  # type: ignore[assignment,misc]


@bentoml.asgi_app(replica.invoke_app, path="/lt")
@bentoml.service(
    name="lowtide-worker",
    workers=1,
    traffic={"timeout": 3600},
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
)
class Worker:
    @bentoml.on_startup
    async def _start(self) -> None:
        die_with_parent(os.getppid())  # a killed `bentoml serve` takes this worker along
        if os.environ.get("LOWTIDE_POOL") == "1":
            replica.enter_pool()  # a prewarmed worker: the function comes later
            return
        r = replica.current()
        assert r is not None
        if not await replica.start_or_fail(r):
            # BentoML would keep a server without a function; end the whole replica (the
            # reason is recorded for the platform, which answers the callers with it)
            replica.end_server()
            raise RuntimeError("the replica cannot start; see the lines above")

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        r = replica.current()
        if r is not None:
            await r.stop()
