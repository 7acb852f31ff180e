"""Models and large artifacts as blobs, with real processes: a 150 MiB BentoML model made in
the test is deployed, fetched by two agents with caches of their own, read in a replica on
each host with `bentoml.models.get`, and deployed again, under another name and under its
own, without a byte uploaded or fetched again.

The cluster is this module's own (Redis, platform, activator, two agents): the session
cluster's agent must not fetch these blobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from lowtide import Client, ConfigError
from lowtide._redisserver import free_port, new_password, start_redis_server
from lowtide.workers.blobcache import use_model_store
from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL_BYTES = 150 * 2**20
AGENTS = {"h1": ("--port", "0"), "h2": ("--port", "0")}


@dataclass
class BlobCluster:
    root: Path
    redis_url: str
    token: str
    platform_url: str
    activator_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LOWTIDE_", "BENTOML_")) and k != "REDIS_URL"}
        env.update(LOWTIDE_HOME=str(self.root / name), LOWTIDE_LOG_LEVEL="INFO")
        (self.root / name).mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "lowtide", *args, "--redis-url", self.redis_url],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"---- {n} ----\n" + "\n".join(self.log(n).splitlines()[-lines:])
                         for n in self.procs)

    def client(self) -> Client:
        return Client(self.platform_url, self.activator_url, self.token, timeout_s=120)

    def bytes_uploaded(self) -> float:
        text = httpx.get(f"{self.platform_url}/metrics", timeout=10).text
        m = re.search(r'^lowtide_platform_blob_bytes_total\{direction="in"\} (\S+)$', text,
                      re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def stop(self) -> None:
        for proc in self.procs.values():  # all at once: each stops cleanly on its own
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def blob_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobCluster]:
    root = tmp_path_factory.mktemp("blobs")
    redis_proc, redis_url = start_redis_server(root / "redis", appendonly=False,
                                                password=new_password())
    activator_port, platform_port = free_port(), free_port()
    bc = BlobCluster(root, redis_url, secrets.token_hex(8), f"http://127.0.0.1:{platform_port}",
                     f"http://127.0.0.1:{activator_port}")
    try:
        bc.spawn("platform", "platform", "--port", str(platform_port), "--token", bc.token,
                 "--public-url", bc.activator_url, "--keep-alive", "60")
        bc.spawn("activator", "activator", "--port", str(activator_port))
        for host_id, args in AGENTS.items():
            bc.spawn(host_id, "agent", "--host-id", host_id, "--home", str(root / host_id),
                     *args)

        def all_up() -> bool:
            for name, proc in bc.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{bc.logs()}")
            with contextlib.suppress(httpx.HTTPError, ConfigError):
                httpx.get(f"{bc.activator_url}/healthz", timeout=2).raise_for_status()
                with bc.client() as c:
                    return len(c.hosts()["hosts"]) == len(AGENTS)
            return False

        wait_for(all_up, 90, "platform, activator and two agents")
        yield bc
    finally:
        bc.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)  # ~600 MiB of model copies


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A 150 MiB model of random bytes in a temporary BentoML model store: (tag, sha256)."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer

    previous = BentoMLContainer.model_store.get()
    store = tmp_path_factory.mktemp("bentoml-home") / "models"
    use_model_store(store)
    data = os.urandom(MODEL_BYTES)
    with bentoml.models.create("big_blob", labels={"test": "blobs"}) as model:
        Path(model.path_of("weights.bin")).write_bytes(data)
    yield str(model.tag), hashlib.sha256(data).hexdigest()
    BentoMLContainer.model_store.set(previous)
    shutil.rmtree(store, ignore_errors=True)


def read_model() -> dict[str, str]:
    import hashlib
    from pathlib import Path

    import bentoml

    model = bentoml.models.get("big_blob:latest")
    with open(Path(model.path_of("weights.bin")), "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"tag": str(model.tag), "sha256": digest, "path": model.path}


def test_a_large_model_reaches_both_hosts_once_and_redeploys_upload_nothing(
        blob_cluster: BlobCluster, big_model: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    tag, digest = big_model
    bc = blob_cluster
    monkeypatch.setenv("LOWTIDE_HOME", str(bc.root / "client"))  # the SDK's file digests
    with bc.client() as client:
        ep = client.deploy(read_model, name="big-model", models=["big_blob:latest"],
                           min_replicas=2, memory="256Mi")
        assert client.status("big-model")["spec"]["models"] == [tag]
        uploaded = bc.bytes_uploaded()
        assert uploaded >= MODEL_BYTES

        def both_ready() -> list[dict[str, object]]:
            items = client.status("big-model")["replicas"]["items"]
            ready = [r for r in items if r["state"] == "ready"]
            return ready if len({r["host"] for r in ready}) == 2 else []

        ready = wait_for(both_ready, 180, "a ready replica on each host")
        assert isinstance(ready, list)
        for replica in ready:  # each replica directly: its own host's copy
            r = httpx.post(f"http://{replica['address']}/lt/invoke", json={}, timeout=60)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["tag"] == tag and answer["sha256"] == digest
            assert answer["path"].startswith(str(bc.root / str(replica["host"])))
        assert ep()["sha256"] == digest
        for host in AGENTS:  # in each host's cache, fetched once
            assert (bc.root / host / "blobs" / digest).stat().st_size == MODEL_BYTES
            assert bc.log(host).count(f"fetched blob {digest}") == 1, bc.log(host)

        # the same function and model under another name, and again under the first: the
        # platform has every blob, the hosts every blob too
        for name in ("big-model-2", "big-model"):
            client.deploy(read_model, name=name, models=[tag], memory="256Mi")
        assert bc.bytes_uploaded() == uploaded
        for host in AGENTS:
            assert bc.log(host).count(f"fetched blob {digest}") == 1
