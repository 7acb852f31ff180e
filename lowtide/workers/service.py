"""The generic BentoML service every replica runs: it serves the endpoint's function.

The function itself is not part of this module: the replica loads it from the artifact the
agent points it at (LOWTIDE_ARTIFACT), so one service definition serves every endpoint.
"""

from __future__ import annotations

import bentoml

from . import replica


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
        await replica.current().start()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        await replica.current().stop()
