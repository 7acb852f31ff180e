"""The autoscaler's learned keep-alive survives a SIGKILL of the platform: it is kept in
Redis and read back, so the restarted platform does not fall back to the fixed window."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from lowtide import _keys
from lowtide._local import LocalComponents
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

GAP_S = 2.5  # between calls: idle gaps, with a histogram of 1 s bins (not the default 60 s)


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalComponents]:
    cluster = LocalComponents(tmp_path_factory.mktemp("learned"),
                              env={"LOWTIDE_KEEP_ALIVE_BIN_S": "1"})
    cluster.start()
    yield cluster
    cluster.stop()


def cli_env(lc: LocalComponents) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOWTIDE_")}
    return {**env, "LOWTIDE_HOME": str(lc.home), "LOWTIDE_TOKEN": lc.config.token,
            "LOWTIDE_PLATFORM_URL": lc.config.platform_url,
            "LOWTIDE_ACTIVATOR_URL": lc.config.activator_url}


def saved_gaps(redis: Redis, name: str) -> int:
    raw = redis.get(_keys.learned(name))
    return len(json.loads(raw)["idle_gaps"]["gaps"]) if raw else -1


def test_a_platform_restart_keeps_the_learned_keep_alive(lc: LocalComponents) -> None:
    name = f"l-{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(lc.config.redis_url, socket_timeout=5)
    with lc.client() as client:
        ep = client.deploy(lambda x: x + 1, name=name)
        for i in range(7):  # six idle gaps of about GAP_S: a clear pattern
            if i:
                time.sleep(GAP_S)
            assert ep(i) == i + 1

        def learned() -> dict[str, Any] | None:
            ka: dict[str, Any] = client.status(name)["keep_alive"]
            return ka if re.search(r"of \d+ idle gaps", ka["reason"]) else None

        before = wait_for(learned, 10, "a keep-alive learned from the idle gaps")
        assert isinstance(before, dict) and before["keep_s"] < 60, before  # not the fixed 600 s
        assert client.status(name)["daily"] is None  # no idle night, no daily pattern
        gaps = int(re.search(r"of (\d+) idle gaps", before["reason"]).group(1))  # type: ignore[union-attr]
        # saved at most every 10 s: wait until what the status shows is in Redis
        wait_for(lambda: saved_gaps(redis, name) == gaps, 25, f"{gaps} gaps saved in Redis")
        assert client.status(name)["keep_alive"] == before

        lc.restart("platform")  # SIGKILL: no clean shutdown, no last save
        lc.wait_ready()
        assert client.status(name)["keep_alive"] == before  # right after the restart

        cli = subprocess.run([sys.executable, "-m", "lowtide", "status", name],
                             env=cli_env(lc),
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        assert f"keep-alive {before['keep_s']:g} s ({before['reason']})" in cli.stdout

        client.delete(name)
        assert redis.get(_keys.learned(name)) is None  # a new endpoint of that name starts fresh
    redis.close()
