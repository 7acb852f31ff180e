"""Blobs from the client side: the function's artifact and the files of the BentoML models a
deployment attaches, each named by its SHA-256 and uploaded only when the platform lacks it
(a redeploy of the same model sends nothing), streamed from disk, with a progress bar on a
terminal and nothing in a pipe.

Models come from the user's local BentoML model store (`bentoml.sklearn.save_model`,
`bentoml.models.create`...); `"iris_clf:latest"` is resolved here, to the version the store
holds now, so every replica of the deployment serves that version.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .._manifest import (
    HASH_CHUNK_BYTES,
    BlobRef,
    Manifest,
    ModelFile,
    ModelRef,
    sha256_of,
)
from ._errors import DeployError, error_from_response

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger(__name__)

UPLOAD_CHUNK_BYTES = 1 << 20
DIGESTS_FILE = "file-digests.json"  # in LOWTIDE_HOME


class DigestCache:
    """Digests of model files remembered across deploys, for files whose path, inode, size,
    mtime and ctime are unchanged (ctime cannot be set back by hand, so an edited file is
    hashed again): a redeploy of a large model does not read it again."""

    MAX_ENTRIES = 10_000

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        self._dirty = False
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                self._entries = {k: v for k, v in loaded.items()
                                 if isinstance(k, str) and isinstance(v, str)}
            except (OSError, ValueError, AttributeError):
                self._entries = {}

    @staticmethod
    def key(path: Path, st: os.stat_result) -> str:
        return f"{path}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, digest: str) -> None:
        self._entries[key] = digest
        self._dirty = True

    def save(self) -> None:
        if not self._dirty or self.path is None:
            return
        keep = dict(list(self._entries.items())[-self.MAX_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(keep))
            tmp.replace(self.path)
            self._dirty = False
        except OSError as exc:  # only a cache: the next deploy hashes again
            log.debug("cannot save file digests to %s: %s", self.path, exc)


_process_cache = DigestCache(None)  # without a home: remembered for this process


@dataclass(frozen=True)
class LocalBlob:
    ref: BlobRef
    label: str  # what it is, for progress and errors
    data: bytes | None = None
    path: Path | None = None

    def chunks(self, advance: Callable[[int], None]) -> Iterator[bytes]:
        if self.data is not None:
            for i in range(0, len(self.data), UPLOAD_CHUNK_BYTES):
                chunk = self.data[i:i + UPLOAD_CHUNK_BYTES]
                advance(len(chunk))
                yield chunk
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            while chunk := f.read(UPLOAD_CHUNK_BYTES):
                advance(len(chunk))
                yield chunk


def artifact_blob(data: bytes) -> LocalBlob:
    import hashlib

    return LocalBlob(BlobRef(hashlib.sha256(data).hexdigest(), len(data)), "the function",
                     data=data)


def file_blob(path: Path, label: str, cache: DigestCache = _process_cache) -> LocalBlob:
    """A file's blob; its digest is remembered while the file is unchanged."""
    st = path.stat()
    key = DigestCache.key(path, st)
    digest = cache.get(key)
    if digest is None:
        with open(path, "rb") as f:
            digest, _ = sha256_of(f)
        cache.put(key, digest)
    return LocalBlob(BlobRef(digest, st.st_size), label, path=path)


def export_model(tag: str, cache: DigestCache = _process_cache
                 ) -> tuple[ModelRef, list[LocalBlob]]:
    """A model of the local BentoML store (tag resolved) and the blobs of its files."""
    try:
        import bentoml
    except ImportError:
        raise DeployError("models=[...] attaches models from your BentoML model store: "
                          "`pip install bentoml`, then save them with bentoml") from None
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise DeployError(f"model {tag!r} is not in your BentoML model store ({exc}); "
                          "`bentoml models list` shows what is") from None
    root = Path(model.path)
    files, blobs = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            blob = file_blob(path, f"{model.tag}/{rel}", cache)
            files.append(ModelFile(rel, blob.ref))
            blobs.append(blob)
    return ModelRef(str(model.tag), tuple(files)), blobs


def prepare(artifact: bytes, models: Iterable[str], digests_file: Path | None = None
            ) -> tuple[Manifest, list[LocalBlob]]:
    """The manifest and blobs of a deployment; model file digests are remembered in
    `digests_file` (the SDK passes LOWTIDE_HOME's) between deploys."""
    refs, blobs = [], [artifact_blob(artifact)]
    models = list(models)
    cache = DigestCache(digests_file) if models and digests_file else _process_cache
    for tag in models:
        ref, files = export_model(tag, cache)
        refs.append(ref)
        blobs.extend(files)
    cache.save()
    return Manifest(blobs[0].ref, tuple(refs)), blobs


def _check(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        err = error_from_response(response.status_code, response.content)
        raise DeployError(f"{what}: {err.error}: {err.detail}")
    return response.json()


def upload(client: Client, blobs: list[LocalBlob], progress: bool | None = None) -> int:
    """Upload the blobs the platform lacks; the number of bytes sent."""
    unique = list({b.ref.sha256: b for b in blobs}.values())
    cfg = client.config
    headers = {"Authorization": f"Bearer {cfg.token}"}
    try:
        answer = _check(client._http.post(
            f"{cfg.platform_url}/v1/blobs/missing", headers=headers,
            json={"blobs": [b.ref.to_dict() for b in unique]}), "checking the blob store")
        missing = set(answer["missing"])
        todo = [b for b in unique if b.ref.sha256 in missing]
        total = sum(b.ref.size for b in todo)
        if not todo:
            log.info("all %d blobs are in the platform's store already", len(unique))
            return 0
        with _progress(total, len(todo), sys.stderr.isatty() if progress is None
                       else progress) as advance:
            for blob in todo:
                _check(client._http.put(
                    f"{cfg.platform_url}/v1/blobs/{blob.ref.sha256}",
                    content=blob.chunks(advance),
                    headers={**headers, "Content-Type": "application/octet-stream",
                             "Content-Length": str(blob.ref.size)},
                    timeout=httpx.Timeout(300.0, connect=30.0)), f"uploading {blob.label}")
    except httpx.TransportError as exc:
        raise DeployError(f"uploading to the platform at {cfg.platform_url} failed ({exc}); "
                          "deploy again: what arrived whole is kept") from None
    log.info("uploaded %d blob(s), %d bytes", len(todo), total)
    return total


def _progress(total: int, count: int, show: bool
              ) -> AbstractContextManager[Callable[[int], None]]:
    if not show or total < HASH_CHUNK_BYTES:
        return nullcontext(lambda n: None)
    return _RichProgress(total, count)


class _RichProgress:
    def __init__(self, total: int, count: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  DownloadColumn(), TransferSpeedColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True),
                                  transient=True)
        self._task = self._progress.add_task(f"uploading {count} blob(s)", total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
