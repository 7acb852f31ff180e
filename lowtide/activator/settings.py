"""The activator's settings: read once at the edge (CLI flags, LOWTIDE_* variables)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .admission import WaitConfig


@dataclass(frozen=True)
class ActivatorSettings:
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # how clients reach this activator; "" = the request's own host
    max_body_bytes: int = 10 * 2**20
    max_timeout_s: float = 3600.0
    max_queue_wait_s: float = 120.0  # how long a request may wait for a replica (cold starts)
    workers: int = 1  # processes serving one port (SO_REUSEPORT)
    max_queued: int = 10_000  # per endpoint, approximately (see activator/backlog.py): 429 above
    wait: WaitConfig = field(default_factory=WaitConfig)  # waits in memory (admission.py)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535]")
        if not 0 < self.max_queue_wait_s <= 3600:
            raise ValueError(f"max_queue_wait_s={self.max_queue_wait_s} must be in (0, 3600]")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers={self.workers} must be in [1, 64]")
        if self.workers > 1 and self.port == 0:
            raise ValueError("workers > 1 needs a fixed port (port=0 would give each worker "
                             "its own)")
        if not 1 <= self.max_queued <= 10_000_000:
            raise ValueError(f"max_queued={self.max_queued} must be in [1, 10000000]")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={self.max_body_bytes} must be positive")
