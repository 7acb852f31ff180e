"""Prewarmed workers: cold starts served by a specialized pool worker; endpoints whose
requirements the worker environment lacks take the full path; nothing leaks."""

from __future__ import annotations

import contextlib
import signal
import zipfile
from pathlib import Path

import httpx
import psutil
import pytest

from lowtide import Client
from tests.conftest import start_cluster, wait_for

pytestmark = pytest.mark.integration


def _pool(cluster) -> dict:
    hosts = httpx.get(f"{cluster.config.platform_url}/v1/hosts",
                      headers={"Authorization": f"Bearer {cluster.config.token}"}).json()
    return hosts["hosts"][0]["load"]["pool"]


def _startup(client: Client, name: str) -> dict:
    items = client.status(name)["replicas"]["items"]
    assert len(items) == 1, items
    return items[0]["startup"]


def test_cold_endpoint_is_served_by_a_specialized_pool_worker(cluster, client: Client,
                                                               unique_name: str) -> None:
    wait_for(lambda: _pool(cluster)["ready"] >= 1, 60, "an idle pool worker")
    assert _pool(cluster)["idle_memory_bytes"] > 10 * 2**20  # visible in the host's status
    ep = client.deploy(lambda x: x - 1, name=unique_name)
    assert ep(10) == 9
    startup = _startup(client, unique_name)
    assert startup["path"] == "pool"
    assert set(startup) >= {"queue_s", "start_s", "load_s", "total_s", "first_response_s"}
    reasons = [e["reason"] for e in ep.events() if e["kind"] == "replica"]
    assert any("via a prewarmed worker" in r for r in reasons), reasons


def test_a_cold_start_gets_a_worker_with_its_packages_already_imported(
        cluster, client: Client, unique_name: str) -> None:
    def sorts(x):
        import sortedcontainers  # installed on the workers, imported by no pool worker yet

        return list(sortedcontainers.SortedList(x))

    first = client.deploy(sorts, name=unique_name)
    assert client.status(unique_name)["spec"]["packages"] == ["sortedcontainers"]
    assert first([3, 1, 2]) == [1, 2, 3]  # this cold start teaches the host's pool
    wait_for(lambda: "sortedcontainers" in _pool(cluster)["ready_packages"], 90,
             "an idle pool worker with sortedcontainers imported")
    second = client.deploy(sorts, name=f"{unique_name}-b")
    assert second([2, 1]) == [1, 2]
    startup = _startup(client, f"{unique_name}-b")
    assert startup["path"] == "pool"
    # the session cluster's pool also preloads what earlier modules' cold starts referenced
    # (numpy, in a full run: test_numpy's), each once
    preloaded = startup["preloaded"]
    assert "sortedcontainers" in preloaded and len(preloaded) == len(set(preloaded)), startup


def _wheel(tmp_path: Path) -> Path:
    """A tiny pure-Python wheel (not on any index: the cluster finds it in its wheelhouse)."""
    path = tmp_path / "ltprobe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("ltprobe/__init__.py", "ANSWER = 'from the full path'\n")
        whl.writestr("ltprobe-0.1.dist-info/METADATA",
                     "Metadata-Version: 2.1\nName: ltprobe\nVersion: 0.1\n")
        whl.writestr("ltprobe-0.1.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                     "Tag: py3-none-any\n")
        whl.writestr("ltprobe-0.1.dist-info/RECORD", "")
    return path


def test_unsatisfied_requirement_takes_the_full_path(client: Client, unique_name: str,
                                                     wheelhouse: Path) -> None:
    _wheel(wheelhouse)  # the cluster's agent installs from there (PIP_FIND_LINKS)

    def probe(x):
        import ltprobe  # installed only in the endpoint's own environment

        return f"{ltprobe.ANSWER} {x}"

    ep = client.deploy(probe, name=unique_name, requirements=["ltprobe==0.1"])
    assert ep(1) == "from the full path 1"
    assert _startup(client, unique_name)["path"] == "full"


def test_a_pool_worker_whose_server_is_killed_while_it_starts_exits(tmp_path: Path) -> None:
    """A pool server SIGKILLed (the OOM killer, say) while its worker still imports
    BentoML's machinery (seconds, before any start hook runs): the worker must not live on
    as an orphan holding memory (it used to)."""
    cluster = start_cluster(tmp_path / "home", keep_alive_s=60)
    try:
        def importing_worker() -> tuple[psutil.Process, psutil.Process] | None:
            for proc in psutil.Process(cluster.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "_bentoml_impl.worker" in " ".join(proc.cmdline()):
                        ready = _pool_ready(cluster)
                        return (proc.parent(), proc) if ready == 0 else None
            return None

        server, worker = wait_for(importing_worker, 60, "a pool worker still starting")
        server.send_signal(signal.SIGKILL)
        wait_for(lambda: not worker.is_running() or worker.status() == "zombie", 20,
                 "the orphaned pool worker to exit")
    finally:
        cluster.stop()


def _pool_ready(cluster) -> int:
    try:
        return int(_pool(cluster)["ready"])
    except (IndexError, KeyError, httpx.HTTPError):  # the host is not registered yet
        return 0


def test_killing_the_agent_leaves_no_pool_worker_or_replica(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "home", keep_alive_s=60)
    try:
        wait_for(lambda: _pool(cluster)["ready"] >= 1, 60, "an idle pool worker")
        with cluster.client() as client:
            assert client.deploy(lambda x: x, name="keep").call(x=3) == 3
        agent = next(p for p in psutil.Process(cluster.proc.pid).children()
                     if "agent" in " ".join(p.cmdline()))
        tree = agent.children(recursive=True)
        assert any("bentoml" in " ".join(p.cmdline()) for p in tree)
        agent.send_signal(signal.SIGKILL)
        wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != "zombie"],
                 20, "the agent's pool workers and replicas to exit")
    finally:
        cluster.stop()
