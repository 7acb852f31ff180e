"""What a deployment version is made of, by content: the function's artifact and the files of
its BentoML models, each named by its SHA-256 digest (a *blob*).

The SDK builds it, the platform checks that every blob it names is in the blob store and
keeps it in Redis (metadata only, never the bytes), and each host agent fetches the blobs it
names into its cache and lays the models out as a BentoML model store for the replica.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO

SHA256 = re.compile(r"[0-9a-f]{64}")  # use with fullmatch
# BentoML's tag rules: lowercase letters, digits, '-', '_' and '.', at most 63 characters
_TAG_PART = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
MAX_MODELS = 32
MAX_FILES_PER_MODEL = 10_000
HASH_CHUNK_BYTES = 1 << 20


class ManifestError(ValueError):
    """A manifest or model tag is not allowed; the message says which and why."""


def check_digest(value: object) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise ManifestError(f"{value!r} is not a SHA-256 digest (64 lowercase hex digits)")
    return value


def check_model_tag(tag: object) -> str:
    """A concrete BentoML model tag, 'name:version' ('latest' is resolved by the SDK)."""
    if not isinstance(tag, str) or tag.count(":") != 1:
        raise ManifestError(f"model {tag!r} must be a BentoML model tag 'name:version', "
                            "e.g. 'iris_clf:latest'")
    name, version = tag.split(":")
    if not _TAG_PART.fullmatch(name) or not _TAG_PART.fullmatch(version):
        raise ManifestError(f"model {tag!r} is not a BentoML model tag: lowercase letters, "
                            "digits, '-', '_' and '.', at most 63 characters each side")
    if version == "latest":
        raise ManifestError(f"model {tag!r}: the SDK resolves 'latest' to the version in "
                            "your local model store before it deploys")
    return tag


def check_relative_path(value: object) -> str:
    """A file's path inside a model directory: relative, no '..', POSIX separators."""
    if not isinstance(value, str) or not value or len(value) > 1024 or "\\" in value:
        raise ManifestError(f"model file path {value!r} is not allowed")
    path = PurePosixPath(value)
    if path.is_absolute() or any(part in ("", ".", "..") for part in value.split("/")):
        raise ManifestError(f"model file path {value!r} must be relative, without '..'")
    return value


def sha256_of(f: BinaryIO) -> tuple[str, int]:
    """The digest and size of what is left in a binary file object."""
    h, size = hashlib.sha256(), 0
    while chunk := f.read(HASH_CHUNK_BYTES):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: Any) -> BlobRef:
        if not isinstance(data, dict):
            raise ManifestError("a blob reference must be {\"sha256\": ..., \"size\": ...}")
        size = data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"blob size {size!r} must be a number of bytes")
        return cls(check_digest(data.get("sha256")), size)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model's directory (model.yaml, saved_model.pkl...)
    blob: BlobRef


@dataclass(frozen=True)
class ModelRef:
    tag: str  # concrete 'name:version'
    files: tuple[ModelFile, ...]

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]

    @property
    def version(self) -> str:
        return self.tag.split(":")[1]

    @property
    def size(self) -> int:
        return sum(f.blob.size for f in self.files)


@dataclass(frozen=True)
class Manifest:
    artifact: BlobRef
    models: tuple[ModelRef, ...] = field(default_factory=tuple)

    def blobs(self) -> dict[str, int]:
        """Every blob it names, digest -> size (a file shared by two models, once)."""
        out = {self.artifact.sha256: self.artifact.size}
        for m in self.models:
            out.update((f.blob.sha256, f.blob.size) for f in m.files)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact.to_dict(),
                "models": [{"tag": m.tag, "files": [
                    {"path": f.path, **f.blob.to_dict()} for f in m.files]} for m in self.models]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict) or set(data) - {"artifact", "models"}:
            raise ManifestError("the manifest must be {\"artifact\": {...}, \"models\": [...]}")
        raw_models = data.get("models") or []
        if not isinstance(raw_models, list) or len(raw_models) > MAX_MODELS:
            raise ManifestError(f"models must be a list of at most {MAX_MODELS} models")
        models = tuple(_model_from_dict(m) for m in raw_models)
        tags = [m.tag for m in models]
        if len(set(tags)) != len(tags):
            raise ManifestError(f"a model is attached twice: {sorted(tags)}")
        return cls(BlobRef.from_dict(data.get("artifact")), models)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Manifest:
        try:
            return cls.from_dict(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"the manifest is not valid JSON: {exc}") from None


def _model_from_dict(data: Any) -> ModelRef:
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ManifestError("a model must be {\"tag\": \"name:version\", \"files\": [...]}")
    tag = check_model_tag(data.get("tag"))
    if not data["files"] or len(data["files"]) > MAX_FILES_PER_MODEL:
        raise ManifestError(f"model {tag} must have 1 to {MAX_FILES_PER_MODEL} files")
    files = []
    for f in data["files"]:
        if not isinstance(f, dict):
            raise ManifestError(f"model {tag}: a file must be {{\"path\", \"sha256\", \"size\"}}")
        files.append(ModelFile(check_relative_path(f.get("path")),
                               BlobRef.from_dict({"sha256": f.get("sha256"),
                                                  "size": f.get("size")})))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise ManifestError(f"model {tag} lists a file twice")
    if "model.yaml" not in paths:
        raise ManifestError(f"model {tag} has no model.yaml: it is not a BentoML model")
    return ModelRef(tag, tuple(files))
