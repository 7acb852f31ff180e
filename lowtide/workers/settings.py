"""A host agent's settings (shared by the agent and its replica supervisor)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AgentSettings:
    redis_url: str
    home: Path
    host_id: str = field(default_factory=lambda: socket.gethostname())
    advertise_address: str = "127.0.0.1"
    bind_host: str = "127.0.0.1"
    stop_grace_s: float = 10.0
    port: int = 8082  # /healthz and /metrics; 0 picks a free port
    pool: bool = True  # keep prewarmed generic workers for fast cold starts
    labels: dict[str, str] = field(default_factory=dict)
    # schedulable cores = cores x this: CPU time is shared (replicas learn their concurrency
    # and the autoscaler watches CPU), memory and GPUs are never overcommitted
    cpu_overcommit: float = 4.0
    gpus: bool = True  # probe GPUs with NVML; False: a CPU host whatever is installed
    blob_cache_bytes: int = 50 * 2**30  # disk for fetched artifacts and models (LRU)
    platform_url: str = ""  # where to fetch blobs; "" = the URL the platform publishes
    replica_user: str = ""  # one user for replicas when root ("": a uid per process)

    def __post_init__(self) -> None:
        if not 1.0 <= self.cpu_overcommit <= 64.0:
            raise ValueError(f"cpu_overcommit={self.cpu_overcommit!r} must be in [1, 64] "
                             "(LOWTIDE_CPU_OVERCOMMIT / --cpu-overcommit)")
        if self.blob_cache_bytes < 2**20:
            raise ValueError(f"blob_cache_bytes={self.blob_cache_bytes!r} must be at least "
                             "1 MiB (LOWTIDE_BLOB_CACHE_BYTES / --blob-cache-bytes)")

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"
