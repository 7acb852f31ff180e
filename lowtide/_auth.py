"""Credentials: the control-plane token and per-endpoint invoke keys, checked in one place.

- The control-plane token is a random secret; the platform holds only its SHA-256 digest
  (`token_digest`) and compares digests in constant time. A fast hash is enough here: the
  secrets are 256-bit random values, not passwords, so there is nothing to brute-force.
- An invoke key looks like `lt_<id>_<secret>`. The id (12 hex digits) is not secret: it
  names the key in listings and lets the activator find the one digest to compare without
  trying them all. Only the key's SHA-256 digest is stored (Redis, `_keys.invoke_keys`).
- An endpoint's access is `public` (no credentials) or `key` (a key of that endpoint).
  `check_invoke` is the pure decision: 401 when credentials are missing or malformed (with
  `WWW-Authenticate`), 403 when they are well formed but not allowed. Error details never
  echo the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._http import Forbidden, Unauthorized
from ._spec import PUBLIC

KEY_PATTERN = re.compile(r"lt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")  # use with fullmatch
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
MAX_KEYS_PER_ENDPOINT = 100
MAX_LABEL_CHARS = 200

CHALLENGE = 'Bearer realm="lowtide"'


def digest(secret: str) -> bytes:
    """SHA-256 of a token or key (what is stored and compared)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def token_digest(token: str) -> str:
    """The hex digest the platform keeps instead of the token (LOWTIDE_TOKEN_SHA256)."""
    return digest(token).hex()


def bearer(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` header, else None."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        return None
    return credential


def check_token(header: str | None, expected_digest: bytes) -> None:
    """The control-plane rule: a bearer token whose digest is the platform's."""
    token = bearer(header)
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>'; `lowtide up` writes the "
                           "token to ~/.lowtide/config.json (LOWTIDE_TOKEN for the SDK and CLI)",
                           headers={"WWW-Authenticate": CHALLENGE})
    if not hmac.compare_digest(digest(token), expected_digest):
        raise Forbidden("the token is not valid for this platform; check LOWTIDE_TOKEN or "
                        "~/.lowtide/config.json")


@dataclass(frozen=True)
class NewKey:
    id: str
    key: str  # shown once, never stored

    @property
    def digest_hex(self) -> str:
        return digest(self.key).hex()


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    return NewKey(key_id, f"lt_{key_id}_{secrets.token_urlsafe(32)}")


def key_id(key: str) -> str | None:
    """The id of a well-formed key, else None."""
    m = KEY_PATTERN.fullmatch(key)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Access:
    """An endpoint's invoke access as the activator caches it: mode and key digests by id."""

    mode: str = PUBLIC
    keys: Mapping[str, bytes] = field(default_factory=dict)


def check_invoke(access: Access, header: str | None, endpoint: str) -> None:
    """Allow the call, or raise Unauthorized (401) / Forbidden (403)."""
    if access.mode == PUBLIC:
        return
    credential = bearer(header)
    if credential is None:
        raise Unauthorized(f"endpoint {endpoint!r} needs an invoke key: send "
                           "'Authorization: Bearer <key>' (create one with "
                           f"`lowtide keys create {endpoint}`)",
                           headers={"WWW-Authenticate": CHALLENGE})
    kid = key_id(credential)
    if kid is None:
        raise Unauthorized("the credential is not an invoke key (keys look like "
                           "lt_<id>_<secret>, as `lowtide keys create` prints them)",
                           headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'})
    expected = access.keys.get(kid)
    # compare even when the id is unknown, so both refusals take the same time
    ok = hmac.compare_digest(digest(credential), expected or b"\0" * 32)
    if expected is None or not ok:
        raise Forbidden(f"this key is not valid for endpoint {endpoint!r} (revoked, or made "
                        f"for another endpoint); `lowtide keys ls {endpoint}` lists its keys")

