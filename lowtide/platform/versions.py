"""Versions and rollback.

Every deploy of a name is a version: its spec, its manifest (the digests of the function's
artifact and of its models' files), who deployed it (as the client says: the token is
shared) and when. The last KEEP_VERSIONS stay, with their manifests, so a rollback needs
no upload: `rollback(to=N)` deploys version N's spec and manifest again as a new version
("v7: rollback to v5"), so versions only grow and every switch is one more deploy that the
routing, the agents' caches and the events already handle. Without `to`, the target is
the version before the current one (two rollbacks in a row toggle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .. import _keys
from .._manifest import Manifest

KEEP_VERSIONS = 10
MAX_WHO_CHARS = 100


@dataclass(frozen=True)
class VersionRecord:
    version: int
    spec: dict[str, Any]
    manifest: str  # Manifest JSON
    deployed_by: str
    deployed_at: float
    origin: str  # "deploy" or "rollback to vN"

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "spec": self.spec,
                           "manifest": self.manifest, "deployed_by": self.deployed_by,
                           "deployed_at": self.deployed_at, "origin": self.origin})

    @classmethod
    def from_json(cls, raw: str | bytes) -> VersionRecord:
        d = json.loads(raw)
        return cls(int(d["version"]), d["spec"], d["manifest"], d.get("deployed_by", ""),
                   float(d["deployed_at"]), d.get("origin", "deploy"))

    def view(self, current: int) -> dict[str, Any]:
        """What the API shows: everything but the raw manifest, digests instead."""
        return {"version": self.version, "current": self.version == current,
                "deployed_by": self.deployed_by, "deployed_at": self.deployed_at,
                "origin": self.origin, "digests": digests(Manifest.from_json(self.manifest)),
                "spec": self.spec}


def digests(manifest: Manifest) -> dict[str, Any]:
    return {"artifact": f"sha256:{manifest.artifact.sha256}",
            "models": [{"tag": m.tag, "files": len(m.files), "bytes": m.size}
                       for m in manifest.models]}


def clean_who(text: str | None) -> str:
    """The client's self-description ('alice@laptop'), printable and bounded."""
    return "".join(ch for ch in (text or "") if ch.isprintable())[:MAX_WHO_CHARS] or "unknown"


def to_prune(kept: list[int], keep: int = KEEP_VERSIONS) -> list[int]:
    """The versions to forget: all but the newest `keep`."""
    return sorted(kept)[:-keep] if len(kept) > keep else []


def rollback_target(kept: list[int], current: int, to: int | None) -> int:
    """The version a rollback deploys again; ValueError saying why when there is none."""
    if to is not None:
        if to not in kept:
            raise LookupError(f"version {to} is not kept (kept: "
                              f"{', '.join(map(str, sorted(kept))) or 'none'}; the last "
                              f"{KEEP_VERSIONS} are)")
        if to == current:
            raise ValueError(f"version {to} is the current version already")
        return to
    older = [v for v in kept if v < current]
    if not older:
        raise LookupError(f"no version before v{current} is kept: nothing to roll back to")
    return max(older)


async def load_all(redis: Redis, name: str) -> dict[int, VersionRecord]:
    raw = await redis.hgetall(_keys.versions(name))
    return {int(k): VersionRecord.from_json(v) for k, v in raw.items()}


async def record(redis: Redis, name: str, rec: VersionRecord) -> None:
    """Keep `rec` and forget versions beyond KEEP_VERSIONS (with their manifests)."""
    await redis.hset(_keys.versions(name), str(rec.version), rec.to_json())
    kept = [int(k) for k in await redis.hkeys(_keys.versions(name))]
    old = to_prune(kept)
    if old:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hdel(_keys.versions(name), *map(str, old))
            pipe.delete(*[_keys.artifact(name, v) for v in old])
            await pipe.execute()


async def forget(redis: Redis, name: str) -> None:
    """On delete: every kept version and its manifest."""
    kept = [int(k) for k in await redis.hkeys(_keys.versions(name))]
    keys = [_keys.versions(name), *[_keys.artifact(name, v) for v in kept]]
    await redis.delete(*keys)
