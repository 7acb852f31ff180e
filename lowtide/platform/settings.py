"""The platform's settings: read once at the edge (CLI flags, LOWTIDE_* variables)."""

from __future__ import annotations

from dataclasses import dataclass

from .._home import DEFAULT_ACTIVATOR_URL


@dataclass(frozen=True)
class PlatformSettings:
    redis_url: str
    token: str
    host: str = "127.0.0.1"
    port: int = 8081
    public_activator_url: str = DEFAULT_ACTIVATOR_URL
    keep_alive_s: float | None = None  # None: the platform's own policy
    max_artifact_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the platform needs an API token: set LOWTIDE_TOKEN or --token")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535]")
        if self.keep_alive_s is not None and self.keep_alive_s < 0:
            raise ValueError(f"keep_alive_s={self.keep_alive_s} must be >= 0")
