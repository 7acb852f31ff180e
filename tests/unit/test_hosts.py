"""The hosts view (API and `lowtide status`), lost-host verdicts, GPU utilization for the
autoscaler, and the agent's host options."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from lowtide.cli import build_parser, print_hosts
from lowtide.platform import state
from lowtide.platform.scaler import Scaler, ScalerSettings
from lowtide.platform.snapshot import gpu_utilization
from lowtide.platform.state import ReplicaRecord, describe_hosts

GI = 2**30
NOW = 1_000_000.0


def _hosts() -> dict[str, dict[str, Any]]:
    return {
        "gpu-1": {"id": "gpu-1", "kind": "gpu", "state": "live", "address": "10.0.0.3",
                  "labels": {"zone": "a"}, "cpus": 16, "cpu_capacity": 64,
                  "memory_bytes": 128 * GI,
                  "gpus": [{"index": 0, "name": "H100", "memory_bytes": 80 * GI},
                           {"index": 1, "name": "H100", "memory_bytes": 80 * GI}],
                  "load": {"at": NOW - 0.5, "cpu_percent": 12.5, "memory_used_bytes": 9 * GI,
                           "gpus": [{"index": 0, "utilization_percent": 90.0,
                                     "memory_used_bytes": 20 * GI},
                                    {"index": 1, "utilization_percent": 0.0,
                                     "memory_used_bytes": 0}],
                           "replica_cpu_cores": {"r-gpu": 0.8},
                           "replica_gpu": {"r-gpu": {"memory_bytes": 19 * GI,
                                                     "utilization_percent": 88.0}}}},
        "cpu-1": {"id": "cpu-1", "state": "lost", "address": "10.0.0.2", "cpus": 4,
                  "memory_bytes": 16 * GI, "gpus": [], "load": None},
    }


def _replicas() -> dict[str, list[ReplicaRecord]]:
    return {
        "llm": [ReplicaRecord("r-gpu", 1, "ready", "gpu-1", cpu=2, memory_bytes=8 * GI,
                              gpus=[0])],
        "double": [ReplicaRecord("r-cpu", 3, "starting", "gpu-1", cpu=1, memory_bytes=GI),
                   ReplicaRecord("r-old", 3, "stopping", "cpu-1", cpu=1, memory_bytes=GI)],
    }


def test_describe_hosts_kind_capacity_allocated_utilization_replicas() -> None:
    gpu, cpu = describe_hosts(_hosts(), _replicas(), NOW)[::-1]
    assert (gpu["id"], gpu["kind"], gpu["state"], gpu["labels"]) == (
        "gpu-1", "gpu", "live", {"zone": "a"})
    assert gpu["last_heartbeat_age_s"] == 0.5
    assert gpu["capacity"]["cpus"] == 16 and gpu["capacity"]["cpu_schedulable"] == 64
    assert [g["index"] for g in gpu["capacity"]["gpus"]] == [0, 1]
    assert gpu["allocated"] == {"cpu": 3, "memory_bytes": 9 * GI, "gpus": [0]}
    assert gpu["utilization"]["cpu_percent"] == 12.5
    assert gpu["utilization"]["gpus"][0]["utilization_percent"] == 90.0
    by_id = {r["id"]: r for r in gpu["replicas"]}
    assert by_id["r-gpu"] == {"endpoint": "llm", "id": "r-gpu", "state": "ready", "gpus": [0],
                              "cpu_cores": 0.8, "gpu_memory_bytes": 19 * GI,
                              "gpu_utilization_percent": 88.0}
    assert by_id["r-cpu"]["cpu_cores"] is None  # not measured yet
    # an old record without kind, a lost host without a heartbeat
    assert (cpu["kind"], cpu["state"], cpu["last_heartbeat_age_s"]) == ("cpu", "lost", None)
    assert cpu["capacity"]["cpu_schedulable"] == 4
    assert [r["id"] for r in cpu["replicas"]] == ["r-old"]


def test_print_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    views = describe_hosts(_hosts(), _replicas(), NOW)
    print_hosts({"hosts": [v for v in views if v["state"] == "live"],
                 "lost": [v for v in views if v["state"] != "live"]})
    out = capsys.readouterr().out
    assert "host gpu-1  gpu  live  10.0.0.3  [zone=a]" in out
    assert "cpu     3/64 cores allocated (16 cores)  used 12.5%" in out
    assert "memory  9.0Gi/128.0Gi allocated  used 9.0Gi" in out
    assert "gpu 0   H100 80.0Gi  allocated  util 90.0%  memory 20.0Gi" in out
    assert "gpu 1   H100 80.0Gi  free" in out
    assert "replica r-gpu  llm  ready  cpu 0.8 cores  gpu 0" in out
    assert "host cpu-1  cpu  lost" in out
    assert out.index("gpu-1") < out.index("cpu-1")  # live hosts first


def test_print_no_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    print_hosts({"hosts": [], "lost": []})
    assert "no hosts: start `lowtide agent`" in capsys.readouterr().out


def test_replica_gpu_percent_from_heartbeats() -> None:
    assert state.replica_gpu_percent(_hosts()) == {"r-gpu": 88.0}


@pytest.mark.parametrize(
    ("measured", "gpus", "expected"),
    [
        ({}, 1, None),
        ({"a": 50.0}, 1, 0.5),
        ({"a": 50.0, "b": 100.0}, 1, 0.75),
        ({"a": 150.0}, 2, 0.75),  # two GPUs: 200 % is all busy
        ({"other": 90.0}, 1, None),  # not a ready replica of this endpoint
    ],
)
def test_gpu_utilization(measured: dict[str, float], gpus: int, expected: float | None
                         ) -> None:
    ready = [ReplicaRecord("a", 1, "ready"), ReplicaRecord("b", 1, "ready")]
    assert gpu_utilization(ready, measured, gpus) == expected


# ---- lost hosts -----------------------------------------------------------------------
def _problem(r: ReplicaRecord, hosts: dict[str, Any]) -> str | None:
    scaler = Scaler(None, None, ScalerSettings(), clock=lambda: NOW)  # type: ignore[arg-type]
    return asyncio.run(scaler.replicas.problem(r, hosts, NOW))


LIVE = {"h1": {"load": {"at": NOW}}}


@pytest.mark.parametrize(
    ("record", "hosts", "verdict"),
    [
        pytest.param(ReplicaRecord("r", 1, "ready", "h2", ready_at=NOW - 60), LIVE,
                     "replica r lost with its host h2 (no host heartbeat for over 5 s)",
                     id="ready-on-a-lost-host-at-once"),
        pytest.param(ReplicaRecord("r", 1, "ready", "h2", ready_at=NOW - 1), LIVE,
                     "replica r lost with its host h2", id="even-when-just-ready"),
        pytest.param(ReplicaRecord("r", 1, "starting", "h2", created_at=NOW - 1), LIVE,
                     "replica r lost while starting: host 'h2' stopped heartbeating",
                     id="starting-on-a-lost-host-is-no-failure"),
        pytest.param(ReplicaRecord("r", 1, "ready", "h1", ready_at=NOW - 1,
                                   alive={"at": NOW}), LIVE, None, id="healthy"),
        pytest.param(ReplicaRecord("r", 1, "ready", "h1", ready_at=NOW - 60), LIVE,
                     "replica r lost: no heartbeat for over 5 s", id="replica-silent"),
        pytest.param(ReplicaRecord("r", 1, "ready", "h1", ready_at=NOW - 60),
                     {"h1": {"load": {"at": NOW - 3.5}}},
                     "replica r lost: no heartbeat for over 5 s; host h1 last beat 3.5 s ago",
                     id="replica-silent-and-host-late"),
    ],
)
def test_lost_verdicts(record: ReplicaRecord, hosts: dict[str, Any], verdict: str | None
                       ) -> None:
    found = _problem(record, hosts)
    assert found == verdict if verdict is None else (found or "").startswith(verdict)
    if found:
        assert "failed" not in found  # losses are not the function's fault: no backoff


# ---- agent options --------------------------------------------------------------------
def _agent(tmp_path: Path, *argv: str, **env: str) -> argparse.Namespace:
    return build_parser({"LOWTIDE_HOME": str(tmp_path), **env}).parse_args(["agent", *argv])


def test_agent_host_options(tmp_path: Path) -> None:
    args = _agent(tmp_path, "--advertise-address", "10.0.0.7", "--label", "zone=a",
                  "--label", "disk=ssd", "--cpu-overcommit", "1", "--no-gpu")
    assert args.advertise_address == "10.0.0.7"
    assert (args.labels, args.cpu_overcommit, args.gpus) == (["zone=a", "disk=ssd"], 1.0,
                                                              False)
    defaults = _agent(tmp_path)
    assert (defaults.labels, float(defaults.cpu_overcommit), defaults.gpus) == ([], 4.0, True)
    from_env = _agent(tmp_path, LOWTIDE_HOST_LABELS="zone=b", LOWTIDE_CPU_OVERCOMMIT="2",
                      LOWTIDE_GPUS="0", LOWTIDE_ADVERTISE_ADDRESS="10.0.0.8")
    assert (from_env.labels, float(from_env.cpu_overcommit), from_env.gpus,
            from_env.advertise_address) == (["zone=b"], 2.0, False, "10.0.0.8")


@pytest.mark.parametrize("value", ["0.5", "65", "-1", "many"])
def test_agent_refuses_bad_overcommit(tmp_path: Path, value: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _agent(tmp_path, "--cpu-overcommit", value)
    assert exc.value.code == 2
    assert "--cpu-overcommit" in capsys.readouterr().err


def test_status_without_a_name_shows_hosts(tmp_path: Path) -> None:
    args = build_parser({"LOWTIDE_HOME": str(tmp_path)}).parse_args(["status"])
    assert args.name is None


# ---- GPU pinning ----------------------------------------------------------------------
def test_replicas_are_pinned_to_their_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from lowtide.workers.agent import Agent, AgentSettings
    from lowtide.workers.resources import GpuInfo, Gpus

    monkeypatch.setenv("BENTOML_HOME", "unset")  # the agent sets it; restored after
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    agent = Agent(AgentSettings("redis://127.0.0.1:1", tmp_path, pool=False, gpus=False))
    sup = agent.supervisor
    assert sup.gpu_env(()) == {}  # a CPU host: the environment is left alone
    sup.gpus = Gpus(None, [0, 1], [GpuInfo(0, "H100", 80 * GI), GpuInfo(1, "H100", 80 * GI)])
    assert sup.gpu_env((1,)) == {"CUDA_VISIBLE_DEVICES": "1",
                                    "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert sup.gpu_env((0, 1))["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert sup.gpu_env(())["CUDA_VISIBLE_DEVICES"] == ""  # CPU work on a GPU host: none


def test_agent_settings_refuse_bad_overcommit(tmp_path: Path) -> None:
    from lowtide.workers.agent import AgentSettings

    with pytest.raises(ValueError, match=r"cpu_overcommit=0\.5 must be in"):
        AgentSettings("redis://127.0.0.1:1", tmp_path, cpu_overcommit=0.5)
