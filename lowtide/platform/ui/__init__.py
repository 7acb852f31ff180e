"""The dashboard's pages, served by the platform under /ui/ (same port as the API).

A page is an HTML shell with the session's CSRF token; its script (static/app.js, with the
vendored uPlot for charts) reads the control-plane API with the session cookie and redraws
every second. Without a valid session every page is the sign-in page (401), with no data.
Everything the page loads comes from this platform: the Content-Security-Policy allows
nothing else.
"""

from __future__ import annotations

import html
from pathlib import Path

from aiohttp import web
from redis.asyncio import Redis

from ..._http import Forbidden
from . import sessions

STATIC = Path(__file__).parent / "static"
PAGES = {"/ui/": "endpoints", "/ui/hosts": "hosts"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/static/vendor/uPlot.min.css">
<link rel="stylesheet" href="/ui/static/app.css">
"""

SHELL = _HEAD + """<meta name="lowtide-csrf" content="{csrf}">
</head><body data-page="{page}" data-name="{name}">
<header class="top"><a class="brand" href="/ui/">lowtide</a>
<nav><a href="/ui/" data-nav="endpoints">Endpoints</a>
<a href="/ui/hosts" data-nav="hosts">Hosts</a></nav>
<span class="live" id="live">connecting…</span>
<button id="logout" class="link">sign out</button></header>
<main id="main"></main>
<script src="/ui/static/vendor/uPlot.iife.min.js"></script>
<script src="/ui/static/app.js"></script>
</body></html>
"""

SIGN_IN = _HEAD + """</head><body class="signin"><main class="signin-box">
<h1>lowtide</h1>
<p class="why">{why}</p>
<p>Sign in from a terminal that has the cluster's token:</p>
<pre>lowtide dashboard</pre>
<p>opens this dashboard signed in, through a one-time link that works once and for {ttl} s.
On another machine, <code>lowtide dashboard --url</code> prints the link instead.</p>
</main></body></html>
"""


SIGNED_IN = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="0; url=/ui/"><title>lowtide: signed in</title></head>
<body><p>Signed in. <a href="/ui/">Open the dashboard</a>.</p></body></html>
"""


def sign_in_page(why: str, status: int = 401) -> web.Response:
    body = SIGN_IN.format(title="lowtide: sign in", why=html.escape(why),
                          ttl=sessions.LOGIN_TTL_S)
    return web.Response(status=status, text=body, content_type="text/html", headers=HEADERS)


class Pages:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def _session(self, request: web.Request) -> sessions.Session | None:
        return await sessions.lookup(self.redis, request.cookies.get(sessions.COOKIE))

    async def page(self, request: web.Request) -> web.Response:
        session = await self._session(request)
        if session is None:
            why = ("Your session has expired or is not valid here." if
                   sessions.COOKIE in request.cookies else "You are not signed in.")
            return sign_in_page(why)
        name = request.match_info.get("name", "")
        page = "endpoint" if name else PAGES.get(request.path, "endpoints")
        title = f"{name} · lowtide" if name else f"{page} · lowtide"
        body = SHELL.format(title=html.escape(title), csrf=html.escape(session.csrf),
                            page=page, name=html.escape(name))
        return web.Response(text=body, content_type="text/html", headers=HEADERS)

    async def login(self, request: web.Request) -> web.Response:
        """GET /ui/login?code=...: redeem a one-time link, set the session cookie and go on to
        the dashboard (so the code does not stay in the address bar)."""
        session = await sessions.redeem(self.redis, request.query.get("code", ""))
        if session is None:
            return sign_in_page("This sign-in link was already used or has expired: links "
                                f"work once, for {sessions.LOGIN_TTL_S} s.")
        # a page that moves on by itself, not a 303: a SameSite=Strict cookie is not sent
        # along a redirect chain that began on another site (a link clicked in a web chat)
        return web.Response(text=SIGNED_IN, content_type="text/html", headers={
            **HEADERS, "Set-Cookie": sessions.cookie_header(session, secure=request.secure)})

    async def logout(self, request: web.Request) -> web.Response:
        """POST /ui/logout (with the page's CSRF token): end the session."""
        if not request.headers.get(sessions.CSRF_HEADER):
            raise Forbidden("signing out needs the page's CSRF token (X-Lowtide-CSRF); "
                            "sign out from the dashboard's page")
        session = await self._session(request)
        if session is not None:
            sessions.check_csrf(request.method, request.host, request.headers.get("Origin"),
                                request.headers.get(sessions.CSRF_HEADER), session)
            await sessions.end(self.redis, session)
        return web.Response(status=204, headers={
            **HEADERS, "Set-Cookie": sessions.clear_cookie_header()})

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")


def add_ui_routes(app: web.Application, redis: Redis) -> None:
    pages = Pages(redis)
    app.router.add_get("/ui", pages.root)
    app.router.add_get("/ui/", pages.page)
    app.router.add_get("/ui/hosts", pages.page)
    app.router.add_get("/ui/endpoints/{name}", pages.page)
    app.router.add_get("/ui/login", pages.login)
    app.router.add_post("/ui/logout", pages.logout)
    app.router.add_static("/ui/static", STATIC, append_version=False)


def is_ui_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")
