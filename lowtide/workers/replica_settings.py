"""A replica's settings: what the agent passes in its environment (full path) or in the
/specialize body (pool path), read once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..limiter import LimiterConfig


@dataclass(frozen=True)
class ReplicaSettings:
    redis_url: str
    endpoint: str
    version: int
    replica_id: str
    address: str
    artifact_path: Path
    limiter: LimiterConfig = field(default_factory=LimiterConfig)
    drain_s: float = 10.0
    start_path: str = "full"  # "pool": a prewarmed worker specialized; "full": a new server
    spawned_at: float = 0.0  # when the agent began this start (process spawn or specialize)
    model_store: Path | None = None  # the attached BentoML models, laid out by the agent
    cpu: float | None = None  # the deployment's cores: compute threads fit to them
    batch_fixed_wait_s: float | None = None  # a fixed batch window instead of the learned

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ReplicaSettings:
        e = dict(os.environ if env is None else env)
        missing = [k for k in ("LOWTIDE_REDIS_URL", "LOWTIDE_ENDPOINT", "LOWTIDE_VERSION",
                               "LOWTIDE_REPLICA_ID", "LOWTIDE_ADDRESS", "LOWTIDE_ARTIFACT")
                   if not e.get(k)]
        if missing:
            raise RuntimeError(f"replica started without {', '.join(missing)}; replicas are "
                               "started by `lowtide agent`, not by hand")
        return cls(
            redis_url=e["LOWTIDE_REDIS_URL"],
            endpoint=e["LOWTIDE_ENDPOINT"],
            version=int(e["LOWTIDE_VERSION"]),
            replica_id=e["LOWTIDE_REPLICA_ID"],
            address=e["LOWTIDE_ADDRESS"],
            artifact_path=Path(e["LOWTIDE_ARTIFACT"]),
            limiter=_limiter_config(e.get("LOWTIDE_FIXED_CONCURRENCY")),
            start_path=e.get("LOWTIDE_START_PATH") or "full",
            spawned_at=float(e.get("LOWTIDE_SPAWNED_AT") or 0.0),
            model_store=Path(e["LOWTIDE_MODEL_STORE"]) if e.get("LOWTIDE_MODEL_STORE") else None,
            batch_fixed_wait_s=_fixed_wait_s(e.get("LOWTIDE_BATCH_FIXED_WAIT_MS")),
            cpu=float(e["LOWTIDE_CPU"]) if e.get("LOWTIDE_CPU") else None,
        )


def _fixed_wait_s(raw: str | None) -> float | None:
    """LOWTIDE_BATCH_FIXED_WAIT_MS: batches wait this long to fill instead of deciding
    per batch (the baseline of bench/batching.py, not a setting to tune)."""
    if not raw:
        return None
    try:
        wait_ms = float(raw)
    except ValueError:
        wait_ms = -1.0
    if not 0 <= wait_ms <= 10_000:
        raise RuntimeError(f"LOWTIDE_BATCH_FIXED_WAIT_MS={raw!r} must be milliseconds in "
                           "[0, 10000]")
    return wait_ms / 1000


def _limiter_config(fixed: str | None) -> LimiterConfig:
    """The learned limit, or a fixed one (LOWTIDE_FIXED_CONCURRENCY: an escape hatch, and
    the baseline of bench/limits.py)."""
    if not fixed:
        return LimiterConfig()
    try:
        n = int(fixed)
    except ValueError:
        n = 0
    if not 1 <= n <= 10_000:
        raise RuntimeError(f"LOWTIDE_FIXED_CONCURRENCY={fixed!r} must be an integer in "
                           "[1, 10000]")
    return LimiterConfig(initial_limit=n, min_limit=n, max_limit=n)
