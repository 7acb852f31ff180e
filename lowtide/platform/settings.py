"""The platform's settings: read once at the edge (CLI flags, LOWTIDE_* variables)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .._home import DEFAULT_ACTIVATOR_URL, home_dir
from .keepalive import KeepAliveSettings
from .policy import AutoscalerSettings


@dataclass(frozen=True)
class PlatformSettings:
    redis_url: str
    token_sha256: str  # hex SHA-256 of the API token: the platform never holds the token
    host: str = "127.0.0.1"
    port: int = 8081
    public_activator_url: str = DEFAULT_ACTIVATOR_URL
    keep_alive_s: float | None = None  # None: the platform's own policy
    keep_alive_bin_s: float = 60.0  # resolution of the learned keep-alive's idle-gap histogram
    blob_dir: Path = field(default_factory=lambda: home_dir() / "blobs")  # the blob store
    max_blob_bytes: int = 64 * 2**30  # one artifact or model file; over it: 413
    advertise_url: str = ""  # where agents reach this platform; "" = http://HOST:PORT
    instance_id: str = ""  # names this platform in shard leases and events; "": generated

    def __post_init__(self) -> None:
        if not self.token_sha256:
            raise ValueError("the platform needs an API token: set LOWTIDE_TOKEN_SHA256 (or "
                             "--token-sha256) to the token's hex SHA-256 digest, or "
                             "LOWTIDE_TOKEN (--token) to the token itself")
        if not re.fullmatch(r"[0-9a-f]{64}", self.token_sha256):
            raise ValueError("token_sha256 must be 64 lowercase hex digits (the output of "
                             "`printf %s TOKEN | sha256sum`)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535]")
        if self.keep_alive_s is not None and self.keep_alive_s < 0:
            raise ValueError(f"keep_alive_s={self.keep_alive_s} must be >= 0")
        if not 1 <= self.max_blob_bytes <= 2**50:
            raise ValueError(f"max_blob_bytes={self.max_blob_bytes} must be in [1, 2**50] "
                             "(bytes; the default is 64 GiB)")
        if not self.keep_alive_bin_s > 0:
            raise ValueError(f"keep_alive_bin_s={self.keep_alive_bin_s} must be > 0 (seconds; "
                             "the default is 60)")


@dataclass(frozen=True)
class ScalerSettings:
    keep_alive_s: float | None = None  # None: the platform's policy
    tick_s: float = 1.0
    start_timeout_s: float = 600.0
    failure_backoff_s: float = 10.0  # the first wait after a failed start; doubles to 300 s
    learned_save_s: float = 10.0  # an endpoint's learned state is written at most this often
    keep_alive_bin_s: float = 60.0  # the idle-gap histogram's resolution

    def policy(self) -> AutoscalerSettings:
        return AutoscalerSettings(keep_alive_s=self.keep_alive_s,
                                  keep_alive=KeepAliveSettings(bin_s=self.keep_alive_bin_s))
