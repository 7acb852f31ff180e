"""Running a component: an event loop (uvloop when installed), SIGINT/SIGTERM as a stop
event, and owned background tasks whose failure stops the component loudly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

Main = Callable[[asyncio.Event], Awaitable[None]]


def run(main: Main) -> None:
    """Run main(stop) until it returns; SIGINT/SIGTERM set the stop event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(runner())
    else:
        uvloop.run(runner())


async def serve_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


async def supervise(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]],
    before_cancel: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Wait for the stop event; a task that ends first is a failure and stops everything.

    `before_cancel` runs first on the way out (e.g. stop accepting and drain requests)
    while the background tasks still serve them."""
    stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if before_cancel is not None:
        try:
            await before_cancel()
        except Exception:
            log.exception("shutdown step failed")
    stop.set()
    failed = [t for t in done if t is not stopper]
    for t in tasks:
        if t not in done:
            t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    stopper.cancel()
    for t in failed:
        if t.exception() is not None:
            raise RuntimeError(f"background task {t.get_name()} died") from t.exception()
        raise RuntimeError(f"background task {t.get_name()} stopped unexpectedly")
