"""The host's blob cache: each blob a deployment version names (its function artifact, its
model files) fetched once per host from the platform over HTTP, its SHA-256 verified before
it is kept, and cached within a disk budget.

- Eviction is least recently used first, and never a blob a running replica (or a start or
  build in progress) holds: `choose_evictions` is the pure decision, tested with sizes and a
  clock; a blob that cannot fit even then fails its start with the budget named.
- Models are laid out per deployment version as a BentoML model store
  (`NAME/VERSION/<files>` as links into the cache, `NAME/latest`), which the replica makes
  its model store: `bentoml.models.get("iris_clf:latest")` finds what was attached, as in a
  Bento, and nothing of another endpoint.

Blocking I/O: the agent calls it from its job threads; one lock per digest lets two starts
of the same version share one fetch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
from redis import Redis

from .. import _keys
from .._manifest import SHA256, Manifest, ModelRef

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
FETCH_TIMEOUT_S = 60.0  # per read/connect, not for the whole blob


class BlobFetchError(RuntimeError):
    """A blob could not be brought to this host; the message says why and what to do."""


class CacheFull(BlobFetchError):
    pass


@dataclass(frozen=True)
class Entry:
    sha256: str
    size_bytes: int
    last_used: float


def choose_evictions(entries: Iterable[Entry], incoming_bytes: int, budget_bytes: int,
                     in_use: set[str]) -> list[str]:
    """The blobs to delete, least recently used first, so that `incoming_bytes` more fit in
    `budget_bytes`; blobs in `in_use` are never chosen. CacheFull when no choice fits."""
    entries = list(entries)
    total = sum(e.size_bytes for e in entries)
    over = total + incoming_bytes - budget_bytes
    if over <= 0:
        return []
    chosen, freed = [], 0
    for e in sorted((e for e in entries if e.sha256 not in in_use), key=lambda e: e.last_used):
        chosen.append(e.sha256)
        freed += e.size_bytes
        if freed >= over:
            return chosen
    held = sum(e.size_bytes for e in entries if e.sha256 in in_use)
    raise CacheFull(f"the host's blob cache cannot take {incoming_bytes} bytes more: its "
                    f"budget is {budget_bytes} bytes and {held} are held by running replicas; "
                    "raise the agent's --blob-cache-bytes (LOWTIDE_BLOB_CACHE_BYTES)")


Fetch = Callable[[str, BinaryIO], None]


class HttpBlobSource:
    """Blobs from the platform's `GET /v1/host/blobs/{sha256}`, with the host token. The URL
    and token are read from Redis (the platform writes them) unless `url` is given."""

    def __init__(self, redis: Redis, url: str = "") -> None:
        self.redis = redis
        self.url_override = url.rstrip("/")
        self._http = httpx.Client(timeout=FETCH_TIMEOUT_S)

    def _where(self) -> tuple[str, str]:
        url = self.url_override or (self.redis.get(_keys.PLATFORM_URL) or b"").decode()
        token = (self.redis.get(_keys.HOST_TOKEN) or b"").decode()
        if not url or not token:
            raise BlobFetchError("no platform has published its blob URL and host token in "
                                 "Redis yet; is `lowtide platform` running on this Redis?")
        return url, token

    def __call__(self, sha256: str, dest: BinaryIO) -> None:
        url, token = self._where()
        try:
            with self._http.stream("GET", f"{url}/v1/host/blobs/{sha256}",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                if r.status_code != 200:
                    r.read()
                    raise BlobFetchError(f"the platform at {url} answered {r.status_code} for "
                                         f"blob {sha256}: {r.text[:300]}")
                for chunk in r.iter_bytes(CHUNK_BYTES):
                    dest.write(chunk)
        except httpx.HTTPError as exc:
            raise BlobFetchError(f"cannot fetch blob {sha256} from the platform at {url} "
                                 f"({type(exc).__name__}: {exc}); the agent must reach it "
                                 "(the platform's --advertise-url)") from None

    def close(self) -> None:
        self._http.close()


class BlobCache:
    """Blobs as read-only files `root/<sha256>`; last use is the file's mtime, so a restarted
    agent keeps its cache and its order."""

    def __init__(self, root: Path, budget_bytes: int, fetch: Fetch,
                 clock: Callable[[], float] = time.time) -> None:
        if budget_bytes < 1:
            raise ValueError(f"blob cache budget {budget_bytes} must be at least one byte")
        self.root, self.budget_bytes, self.fetch, self.clock = root, budget_bytes, fetch, clock
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        for stale in (root / "tmp").iterdir():  # a fetch a previous agent did not finish
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, Entry] = {}
        self._owners: dict[str, frozenset[str]] = {}
        self._reserved_bytes = 0  # fetches under way
        for path in root.iterdir():
            if path.is_file() and SHA256.fullmatch(path.name):
                st = path.stat()
                self._entries[path.name] = Entry(path.name, st.st_size, st.st_mtime)

    # ---- holders: what must not be evicted -----------------------------------------------
    def acquire(self, owner: str, digests: Iterable[str]) -> None:
        with self._lock:
            self._owners[owner] = self._owners.get(owner, frozenset()) | frozenset(digests)

    def release(self, owner: str) -> None:
        with self._lock:
            self._owners.pop(owner, None)

    def in_use(self) -> set[str]:
        with self._lock:
            return set().union(*self._owners.values()) if self._owners else set()

    def cached_bytes(self) -> int:
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values())

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    # ---- get ---------------------------------------------------------------------------
    def get(self, sha256: str, size: int) -> Path:
        """The blob's local path: from the cache (its last use now), else fetched."""
        with self._lock:
            lock = self._fetch_locks.setdefault(sha256, threading.Lock())
        with lock:
            with self._lock:
                if sha256 in self._entries:
                    return self._touch(sha256)
                self._make_room(size)
                self._reserved_bytes += size
            try:
                self._fetch_verified(sha256, size)
            finally:
                with self._lock:
                    self._reserved_bytes -= size
            with self._lock:
                self._entries[sha256] = Entry(sha256, size, self.clock())
                return self._touch(sha256)

    def _touch(self, sha256: str) -> Path:
        now = self.clock()
        self._entries[sha256] = Entry(sha256, self._entries[sha256].size_bytes, now)
        path = self.path(sha256)
        with suppress(OSError):
            os.utime(path, (now, now))
        return path

    def _make_room(self, size: int) -> None:
        in_use = set().union(*self._owners.values()) if self._owners else set()
        victims = choose_evictions(self._entries.values(), size + self._reserved_bytes,
                                   self.budget_bytes, in_use)
        for digest in victims:
            entry = self._entries.pop(digest)
            self.path(digest).unlink(missing_ok=True)
            log.info("evicted blob %s (%d bytes, unused for %.0f s) from the cache", digest,
                     entry.size_bytes, self.clock() - entry.last_used)

    def _fetch_verified(self, sha256: str, size: int) -> None:
        tmp = self.root / "tmp" / f"{sha256}.{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            with open(tmp, "wb") as f:
                sink = _HashingWriter(f)
                self.fetch(sha256, sink)  # type: ignore[arg-type]
            got, got_size = sink.hash.hexdigest(), sink.size
            if got != sha256 or got_size != size:
                raise BlobFetchError(f"refused blob {sha256}: the bytes received have SHA-256 "
                                     f"{got} ({got_size} bytes, {size} expected); the "
                                     "platform's copy may be corrupt: redeploy to upload it "
                                     "again")
            tmp.chmod(0o444)
            tmp.replace(self.path(sha256))
        finally:
            tmp.unlink(missing_ok=True)
        log.info("fetched blob %s (%d bytes) in %.2f s", sha256, size,
                 time.monotonic() - started)


class _HashingWriter:
    """What fetchers write to: the file, hashed on the way (no second pass over it)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._f.write(data)


def lay_out_models(root: Path, models: Iterable[ModelRef], cache: BlobCache) -> Path:
    """A BentoML model store at `root` holding exactly `models`, files linked to the cache
    (built aside and renamed into place: a concurrent start sees all of it or none)."""
    if (root / ".lowtide-ready").exists():
        return root
    tmp = root.with_name(f"{root.name}.{secrets.token_hex(4)}.tmp")
    try:
        for model in models:
            mdir = tmp / model.name / model.version
            for f in model.files:
                dest = mdir / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(cache.path(f.blob.sha256))
            (tmp / model.name / "latest").write_text(model.version)
        (tmp / ".lowtide-ready").write_text("")
        try:
            tmp.rename(root)
        except OSError:  # another start laid it out meanwhile
            if not (root / ".lowtide-ready").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@dataclass(frozen=True)
class Prepared:
    artifact: Path
    model_store: Path | None  # the replica's BentoML model store; None: no models


class DeploymentBlobs:
    """The agent's one entry point: a version's blobs on this host, held by an owner (a
    replica id, a build) until `release`; a version's model store (links only) is removed
    when its last owner releases it, and laid out again by the next start."""

    def __init__(self, redis: Redis, home: Path, budget_bytes: int, fetch: Fetch) -> None:
        self.redis = redis
        self.stores = home / "modelstores"
        self.cache = BlobCache(home / "blobs", budget_bytes, fetch)
        self._layouts: dict[str, Path] = {}  # owner -> the model store it uses
        self._layout_lock = threading.Lock()
        shutil.rmtree(self.stores, ignore_errors=True)  # a previous agent's: no owner now

    def manifest(self, endpoint: str, version: int) -> Manifest:
        raw = self.redis.get(_keys.artifact(endpoint, version))
        if raw is None:
            raise LookupError(f"deployment {endpoint} v{version} is gone")
        return Manifest.from_json(raw)

    def prepare(self, endpoint: str, version: int, owner: str) -> Prepared:
        manifest = self.manifest(endpoint, version)
        blobs = manifest.blobs()
        self.cache.acquire(owner, blobs)
        try:
            for digest, size in blobs.items():
                self.cache.get(digest, size)
            store = None
            if manifest.models:
                with self._layout_lock:
                    store = lay_out_models(self.stores / f"{endpoint}-v{version}",
                                           manifest.models, self.cache)
                    self._layouts[owner] = store
        except BaseException:
            self.release(owner)
            raise
        return Prepared(self.cache.path(manifest.artifact.sha256), store)

    def release(self, owner: str) -> None:
        self.cache.release(owner)
        with self._layout_lock:
            store = self._layouts.pop(owner, None)
            if store is not None and store not in self._layouts.values():
                shutil.rmtree(store, ignore_errors=True)

    @contextmanager
    def holding(self, endpoint: str, version: int, owner: str) -> Iterator[Prepared]:
        """`prepare` for the length of a with-block (a build)."""
        prepared = self.prepare(endpoint, version, owner)
        try:
            yield prepared
        finally:
            self.release(owner)


def use_model_store(path: Path) -> None:
    """In a replica: make `path` BentoML's model store, as `bentoml serve` does with a
    Bento's own models (`bentoml.models.get` and the framework loaders read it)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    BentoMLContainer.model_store.set(ModelStore(path))
