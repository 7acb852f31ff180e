"""LOWTIDE_HOME: where `lowtide up` leaves the token and URLs for the SDK and the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_ACTIVATOR_URL = "http://127.0.0.1:8080"
DEFAULT_PLATFORM_URL = "http://127.0.0.1:8081"
CONFIG_FILE = "config.json"


def home_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("LOWTIDE_HOME") or Path.home() / ".lowtide").expanduser()


@dataclass(frozen=True)
class ClusterConfig:
    platform_url: str = DEFAULT_PLATFORM_URL
    activator_url: str = DEFAULT_ACTIVATOR_URL
    token: str = ""
    redis_url: str = ""

    def write(self, home: Path) -> Path:
        home.mkdir(parents=True, exist_ok=True)
        path = home / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover tmp file keeps its mode otherwise: it holds the token
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, home: Path) -> ClusterConfig | None:
        try:
            data = json.loads((home / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        known = {k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def resolve(
    platform_url: str | None = None,
    activator_url: str | None = None,
    token: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClusterConfig:
    """Explicit values first, then LOWTIDE_* variables, then LOWTIDE_HOME/config.json."""
    env = os.environ if environ is None else environ
    saved = ClusterConfig.read(home_dir(env)) or ClusterConfig()
    return ClusterConfig(
        platform_url=(platform_url or env.get("LOWTIDE_PLATFORM_URL") or saved.platform_url)
        .rstrip("/"),
        activator_url=(activator_url or env.get("LOWTIDE_ACTIVATOR_URL") or saved.activator_url)
        .rstrip("/"),
        token=token or env.get("LOWTIDE_TOKEN") or saved.token,
        redis_url=saved.redis_url,
    )
