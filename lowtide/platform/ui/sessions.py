"""Dashboard sign-in: one-time links, session cookies and the CSRF rule.

- `lowtide dashboard` asks the API (bearer token) for a login link: a random code, kept in
  Redis by its SHA-256 for LOGIN_TTL_S and redeemed at most once (GET and DEL in one
  transaction), so the token is never typed into a browser and the link stops working once
  opened or after a minute.
- Redeeming it starts a session: a random id in an HttpOnly, SameSite=Strict cookie (Redis
  keeps its digest and a CSRF token, SESSION_TTL_S). Scripts of the page cannot read the
  cookie; other sites' pages cannot send it.
- A request that changes state with a session (anything but GET/HEAD/OPTIONS) must also
  carry the session's CSRF token in `X-Lowtide-CSRF` (the page has it; another origin
  cannot read it) and, when the browser sends one, an `Origin` of this host.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import Redis

from ... import _keys
from ..._auth import digest
from ..._http import Forbidden

LOGIN_TTL_S = 60
SESSION_TTL_S = 12 * 3600
COOKIE = "lowtide_session"
CSRF_HEADER = "X-Lowtide-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_PATH = "/ui/login"


@dataclass(frozen=True)
class Session:
    id: str
    csrf: str
    created_at: float


async def new_login_code(redis: Redis) -> str:
    code = secrets.token_urlsafe(32)
    await redis.set(_keys.ui_login(digest(code).hex()), "1", ex=LOGIN_TTL_S)
    return code


async def redeem(redis: Redis, code: str, now: float | None = None) -> Session | None:
    """A new session for a login code that exists and was not used; else None."""
    if not code or len(code) > 100:
        return None
    key = _keys.ui_login(digest(code).hex())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.delete(key)
        found, _ = await pipe.execute()
    if found is None:
        return None
    session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24),
                      time.time() if now is None else now)
    await redis.set(_keys.ui_session(digest(session.id).hex()),
                    json.dumps({"csrf": session.csrf, "created_at": session.created_at}),
                    ex=SESSION_TTL_S)
    return session


async def lookup(redis: Redis, session_id: str | None) -> Session | None:
    if not session_id or len(session_id) > 100:
        return None
    raw = await redis.get(_keys.ui_session(digest(session_id).hex()))
    if raw is None:
        return None
    data = json.loads(raw)
    return Session(session_id, str(data["csrf"]), float(data["created_at"]))


async def end(redis: Redis, session: Session) -> None:
    await redis.delete(_keys.ui_session(digest(session.id).hex()))


def check_csrf(method: str, host: str | None, origin: str | None, token: str | None,
               session: Session) -> None:
    """The rule for a request authenticated by the session cookie (pure)."""
    if method.upper() in SAFE_METHODS:
        return
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != host):
        raise Forbidden(f"a dashboard request from origin {origin!r} is refused: only pages "
                        "of this platform may change state with its session")
    if not token or not hmac.compare_digest(token, session.csrf):
        raise Forbidden(f"send the page's CSRF token in {CSRF_HEADER} (the dashboard does); "
                        "scripts use the bearer token instead of the session")


def cookie_header(session: Session, secure: bool) -> str:
    parts = [f"{COOKIE}={session.id}", "HttpOnly", "SameSite=Strict", "Path=/",
             f"Max-Age={SESSION_TTL_S}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clear_cookie_header() -> str:
    return f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
