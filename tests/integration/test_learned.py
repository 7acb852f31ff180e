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


def test_a_platform_restart_keeps_the_learned_keep_alive(lc: LocalComponents) -> None:
    name = f"l-{uuid.uuid4().hex[:6]}"
    redis = Redis.from_url(lc.config.redis_url, socket_timeout=5)
    with lc.client() as client:
        ep = client.deploy(lambda x: x + 1, name=name)
        for i in range(7):  # six idle gaps of about GAP_S: a clear pattern
            if i:
                time.sleep(GAP_S)
            assert ep(i) == i + 1

        def saved_with_the_last_call() -> dict[str, Any] | None:
            """The keep-alive status shows, once the scaler has seen the last call, learned
            from it, and saved that (at most every 10 s) in Redis."""
            raw = redis.get(_keys.learned(name))
            last_call_at = float(redis.hget(_keys.stats(name), "last_request_at") or 0)
            ka: dict[str, Any] = client.status(name)["keep_alive"]
            shown = re.search(r"of (\d+) idle gaps", ka["reason"])
            if raw is None or shown is None:
                return None
            saved = json.loads(raw)
            return ka if (saved["seen"]["request_at"] == last_call_at
                          and len(saved["idle_gaps"]["gaps"]) == int(shown.group(1))) else None

        before = wait_for(saved_with_the_last_call, 30, "the learned keep-alive saved",
                          interval_s=0.5)
        assert isinstance(before, dict) and before["keep_s"] < 60, before  # not the fixed 600 s
        assert client.status(name)["daily"] is None  # no idle night, no daily pattern

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
