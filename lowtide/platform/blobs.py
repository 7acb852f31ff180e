"""The platform's blob store: function artifacts and model files, content-addressed by SHA-256,
uploaded once (streamed, verified) and served to the host agents.

Routes (`add_blob_routes`):
- `POST /v1/blobs/missing` `{"blobs": [{"sha256", "size"}, ...]}` -> `{"missing": [digests],
  "max_blob_bytes"}`: what the SDK still has to upload (a redeploy of the same model: none);
  413 naming a blob over the limit, before any byte of it is sent.
- `PUT /v1/blobs/{sha256}`: the bytes, streamed to a temporary file while hashed; kept only
  when their digest is the name (else 400); 413 past `max_blob_bytes`; 200 when already
  there (the body is not read), 201 when stored.
- `GET /v1/host/blobs/{sha256}`: the bytes, for host agents, with the *host token* (a random
  secret the platform keeps in Redis, where the agents read it; replicas' Redis users cannot).
  Routes under `/v1/host/` check that token themselves instead of the API token.

Storage is behind `BlobStore` (a folder today, `FileBlobStore`; an S3-compatible store later
implements the same seven methods). Redis holds only metadata: the manifests that name blobs.
`BlobCollector` deletes blobs no manifest names (a replaced or deleted version's) after a
grace period; asking for a blob (`missing`) renews it, so a deploy in flight keeps its blobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .. import _keys
from .._http import BadRequest, NotFound, PayloadTooLarge, Unauthorized, json_response
from .._manifest import SHA256, BlobRef, Manifest, ManifestError

log = logging.getLogger(__name__)

HOST_PREFIX = "/v1/host/"  # routes that take the host token, not the API token
CHUNK_BYTES = 1 << 20
MAX_DIGESTS_PER_QUERY = 20_000
BLOB_BYTES = Counter("lowtide_platform_blob_bytes_total", "Blob bytes", ["direction"])


class BlobStoreError(Exception):
    """A blob could not be stored; subclasses say why."""


class DigestMismatch(BlobStoreError):
    pass


class BlobTooLarge(BlobStoreError):
    pass


class BlobStore(Protocol):
    """Content-addressed storage. `write` verifies the digest before the blob is visible."""

    async def size(self, sha256: str) -> int | None: ...

    async def write(self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int: ...

    def read(self, sha256: str) -> AsyncIterator[bytes]: ...

    def local_path(self, sha256: str) -> Path | None:
        """Where the blob lies as a local file (sent with sendfile), or None."""

    async def delete(self, sha256: str) -> None: ...

    async def touch(self, sha256: str) -> None:
        """Count the blob as just written: the collector keeps it for its grace period."""

    def list(self) -> AsyncIterator[tuple[str, int, float]]:
        """Every blob: (digest, size, last written or touched)."""


class FileBlobStore:
    """Blobs as files `root/ab/abcd...` (read-only), uploads in `root/tmp` until verified."""

    def __init__(self, root: Path) -> None:
        self.root = root  # created on the first upload

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def local_path(self, sha256: str) -> Path | None:
        path = self._path(sha256)
        return path if path.is_file() else None

    async def size(self, sha256: str) -> int | None:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    async def write(self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int) -> int:
        tmp = self.root / "tmp" / f"{sha256}.{secrets.token_hex(4)}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BlobTooLarge(f"over the limit of {max_bytes} bytes")
                    await asyncio.to_thread(_hash_and_write, h, f, chunk)
            if h.hexdigest() != sha256:
                raise DigestMismatch(f"the bytes sent have SHA-256 {h.hexdigest()}, not "
                                     f"{sha256}")
            final = self._path(sha256)
            final.parent.mkdir(mode=0o700, exist_ok=True)  # the platform's alone: a
            tmp.chmod(0o444)  # replica reaches the agent's cache by name, never these lists
            tmp.replace(final)  # atomic: a concurrent upload of the same bytes is harmless
            return size
        finally:
            tmp.unlink(missing_ok=True)

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        with open(self._path(sha256), "rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
                yield chunk

    async def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    async def touch(self, sha256: str) -> None:
        with suppress(FileNotFoundError):
            os.utime(self._path(sha256))

    async def list(self) -> AsyncIterator[tuple[str, int, float]]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for path in sub.iterdir():
                if SHA256.fullmatch(path.name):
                    with suppress(FileNotFoundError):
                        st = path.stat()
                        yield path.name, st.st_size, st.st_mtime


def _hash_and_write(h: hashlib._Hash, f: object, chunk: bytes) -> None:
    h.update(chunk)
    f.write(chunk)  # type: ignore[attr-defined]


async def missing_of(store: BlobStore, manifest: Manifest) -> list[str]:
    return [d for d in manifest.blobs() if await store.size(d) is None]


async def check_manifest(store: BlobStore, manifest: Manifest, models: list[str]) -> None:
    """A deployment may name only blobs the store has, with the sizes it says."""
    tags = [m.tag for m in manifest.models]
    if sorted(tags) != sorted(models):
        raise BadRequest(f"the manifest's models {tags} are not the spec's {models}")
    for digest, size in manifest.blobs().items():
        stored = await store.size(digest)
        if stored is None:
            raise BadRequest(f"blob {digest} is not in the blob store: upload it first "
                             f"(PUT /v1/blobs/{digest}); the SDK does this for you")
        if stored != size:
            raise BadRequest(f"blob {digest} has {stored} bytes, not {size}")


async def store_inline(store: BlobStore, data: bytes, max_bytes: int) -> BlobRef:
    """An artifact sent inside the deploy request (older SDKs, curl): into the store too."""
    digest = hashlib.sha256(data).hexdigest()

    async def one() -> AsyncIterator[bytes]:
        yield data

    if await store.size(digest) is None:
        await store.write(digest, one(), max_bytes)
    else:
        await store.touch(digest)
    return BlobRef(digest, len(data))


async def ensure_host_token(redis: Redis) -> str:
    """The secret agents fetch blobs with: created once, shared by every platform process."""
    await redis.set(_keys.HOST_TOKEN, secrets.token_urlsafe(32), nx=True)
    raw = await redis.get(_keys.HOST_TOKEN)
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _digest(request: web.Request) -> str:
    digest = request.match_info["sha256"]
    if not SHA256.fullmatch(digest):
        raise NotFound(f"{digest!r} is not a SHA-256 digest (64 lowercase hex digits)")
    return digest


class BlobAPI:
    def __init__(self, store: BlobStore, max_blob_bytes: int) -> None:
        self.store = store
        self.max_blob_bytes = max_blob_bytes

    def _too_large(self, what: str, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"{what} has {size} bytes, over the blob limit of {self.max_blob_bytes} bytes; "
            "the platform's operator raises it with --max-blob-bytes (LOWTIDE_MAX_BLOB_BYTES)")

    async def missing(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            refs = [BlobRef.from_dict(b) for b in body["blobs"]]
        except (ValueError, KeyError, TypeError) as exc:
            detail = str(exc) if isinstance(exc, ManifestError) else "send {\"blobs\": " \
                "[{\"sha256\": ..., \"size\": ...}]}"
            raise BadRequest(detail) from None
        if len(refs) > MAX_DIGESTS_PER_QUERY:
            raise BadRequest(f"at most {MAX_DIGESTS_PER_QUERY} blobs per query")
        for ref in refs:
            if ref.size > self.max_blob_bytes:
                raise self._too_large(f"blob {ref.sha256}", ref.size)
        missing = []
        for ref in refs:
            if await self.store.size(ref.sha256) is None:
                missing.append(ref.sha256)
            else:  # the deploy that follows will name it: not collected meanwhile
                await self.store.touch(ref.sha256)
        return json_response({"missing": sorted(set(missing)),
                              "max_blob_bytes": self.max_blob_bytes})

    async def put(self, request: web.Request) -> web.Response:
        digest = _digest(request)
        if await self.store.size(digest) is not None:
            return json_response({"sha256": digest, "stored": False}, status=200)
        length = request.content_length
        if length is not None and length > self.max_blob_bytes:
            raise self._too_large("the body", length)
        try:
            size = await self.store.write(digest, request.content.iter_chunked(CHUNK_BYTES),
                                          self.max_blob_bytes)
        except BlobTooLarge:
            raise self._too_large("the body", self.max_blob_bytes + 1) from None
        except DigestMismatch as exc:
            raise BadRequest(f"refused: {exc}; the blob was corrupted on the way, or named "
                             "wrongly") from None
        BLOB_BYTES.labels("in").inc(size)
        log.info("stored blob %s (%d bytes)", digest, size)
        return json_response({"sha256": digest, "size": size, "stored": True}, status=201)

    async def get(self, request: web.Request) -> web.StreamResponse:
        want = request.app["host_token"]
        auth = request.headers.get("Authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {want}".encode()):
            raise Unauthorized("host routes take the host token (agents read it from Redis)")
        digest = _digest(request)
        size = await self.store.size(digest)
        if size is None:
            raise NotFound(f"no blob {digest}")
        BLOB_BYTES.labels("out").inc(size)
        path = self.store.local_path(digest)
        if path is not None:
            return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(size)})
        await response.prepare(request)
        async for chunk in self.store.read(digest):
            await response.write(chunk)
        await response.write_eof()
        return response


def add_blob_routes(app: web.Application, store: BlobStore, max_blob_bytes: int) -> None:
    """The blob routes; `app["host_token"]` is set at start (`ensure_host_token`)."""
    api = BlobAPI(store, max_blob_bytes)
    app["blob_store"] = store
    app.router.add_post("/v1/blobs/missing", api.missing)
    # the digest pattern in the route: PUT /v1/blobs/missing is a 405 (POST only), not a PUT
    app.router.add_put("/v1/blobs/{sha256:[0-9a-f]{64}}", api.put)
    app.router.add_get(HOST_PREFIX + "blobs/{sha256}", api.get)

    async def on_startup(app: web.Application) -> None:
        if "host_token" not in app:
            app["host_token"] = await ensure_host_token(app["redis"])

    app.on_startup.append(on_startup)


# ---- collection: blobs no deployment version names any more ---------------------------
def unreferenced(stored: Iterable[tuple[str, float]], referenced: set[str], now: float,
                 grace_s: float) -> list[str]:
    """The stored blobs (digest, last written) to delete: named by no manifest, and older
    than `grace_s`, so a blob uploaded for a deploy that has not arrived yet is kept."""
    return sorted(d for d, written in stored if d not in referenced and now - written > grace_s)


async def referenced_blobs(redis: Redis) -> set[str]:
    """Every blob a stored manifest names (every kept version of every name)."""
    found: set[str] = set()
    batch: list[bytes] = []

    async def read(keys: list[bytes]) -> None:
        for raw in await redis.mget(keys):
            if raw is not None:
                with suppress(ManifestError):
                    found.update(Manifest.from_json(raw).blobs())

    async for key in redis.scan_iter(match=_keys.ARTIFACTS_MATCH, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            await read(batch)
            batch = []
    if batch:
        await read(batch)
    return found


class BlobCollector:
    """Deletes unreferenced blobs every `every_s`: a thin loop around `unreferenced`."""

    def __init__(self, store: BlobStore, redis: Redis, every_s: float = 600.0,
                 grace_s: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.store, self.redis = store, redis
        self.every_s, self.grace_s, self.clock = every_s, grace_s, clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
            if stop.is_set():
                return
            try:
                await self.collect_once()
            except (RedisError, OSError) as exc:  # the next round tries again
                log.warning("blob collection failed: %s", exc)

    async def collect_once(self) -> list[str]:
        stored = [(d, written) async for d, _size, written in self.store.list()]
        referenced = await referenced_blobs(self.redis)
        victims = unreferenced(stored, referenced, self.clock(), self.grace_s)
        for digest in victims:
            await self.store.delete(digest)
        if victims:
            log.info("deleted %d blob(s) no deployment names", len(victims))
        return victims
