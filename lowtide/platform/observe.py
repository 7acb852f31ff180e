"""The dashboard's part of the control-plane API: an endpoint's chart series with the
decisions of the same window, and one-time dashboard login links."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from .. import _keys
from .._http import BadRequest, Forbidden, NotFound, json_response
from .._spec import SpecError, check_name
from .policy import AutoscalerSettings
from .series import WINDOWS, SeriesRecorder
from .ui import sessions

MAX_EVENTS = 1000


class ObserveAPI:
    def __init__(self, redis: Redis, recorder: SeriesRecorder, policy: AutoscalerSettings
                 ) -> None:
        self.redis = redis
        self.recorder = recorder
        self.policy = policy

    async def series(self, request: web.Request) -> web.Response:
        """GET /v1/deployments/{name}/series?window=10m|1h|24h."""
        name = request.match_info["name"]
        try:
            check_name(name)
        except SpecError:
            raise NotFound(f"no deployment named {name!r}") from None
        window = request.query.get("window", "1h")
        if window not in WINDOWS:
            raise BadRequest(f"window={window!r} must be one of {', '.join(WINDOWS)}")
        if not await self.redis.exists(_keys.deployment(name)):
            raise NotFound(f"no deployment named {name!r}; `lowtide ls` lists them")
        now = time.time()
        body = await self.recorder.read(name, window)
        since = now - WINDOWS[window].step_s * WINDOWS[window].keep
        body.update(name=name, now=now, since=since,
                    targets={"utilization_of_limit": self.policy.target_utilization,
                             "cpu": self.policy.target_cpu_utilization,
                             "gpu": self.policy.target_cpu_utilization},
                    events=await self._events(name, since))
        return json_response(body)

    async def _events(self, name: str, since: float) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(_keys.decisions(name), min=f"{int(since * 1000)}",
                                             count=MAX_EVENTS)
        events = []
        for _id, fields in reversed(entries):
            event = json.loads(fields[b"event"])
            events.append({k: event.get(k) for k in ("at", "kind", "from", "to", "reason")})
        return events

    async def login_link(self, request: web.Request) -> web.Response:
        """POST /v1/ui/login-links (the bearer token only): a one-time dashboard link."""
        if "session" in request:
            raise Forbidden("a dashboard session cannot make login links; use the token "
                            "(`lowtide dashboard --url`)")
        code = await sessions.new_login_code(self.redis)
        return json_response({"path": f"{sessions.LOGIN_PATH}?code={code}",
                              "expires_in_s": sessions.LOGIN_TTL_S}, status=201)


def add_observe_routes(app: web.Application, redis: Redis, recorder: SeriesRecorder,
                       policy: AutoscalerSettings) -> None:
    api = ObserveAPI(redis, recorder, policy)
    app.router.add_get("/v1/deployments/{name}/series", api.series)
    app.router.add_post("/v1/ui/login-links", api.login_link)
