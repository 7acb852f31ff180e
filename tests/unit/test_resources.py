"""Host probing: no NVML means a CPU host (no crash); NVML answers are read per GPU and per
process; a replica's CPU is its whole process tree; labels parse with clear errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lowtide.workers.resources import (
    GpuInfo,
    Gpus,
    ReplicaSampler,
    host_capacity,
    host_usage,
    parse_labels,
)

GI = 2**30


def test_this_machine_without_nvml_is_a_cpu_host() -> None:
    gpus = Gpus.open()  # no NVIDIA driver here: must not raise
    if gpus.info:
        pytest.skip("this machine has GPUs")
    capacity = host_capacity(gpus)
    assert capacity["kind"] == "cpu" and capacity["gpus"] == []
    assert capacity["cpus"] >= 1 and capacity["memory_bytes"] > 0
    usage = host_usage(gpus)
    assert usage["gpus"] == [] and 0 < usage["memory_used_bytes"] <= capacity["memory_bytes"]
    assert gpus.process_usage() == {}
    gpus.close()


class FakeNvml:
    """The few pynvml calls Gpus makes, answering for two GPUs (a table, not a driver)."""

    class NotFound(Exception):
        pass

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        if h == 1:
            raise self.NotFound("GPU is lost")
        return SimpleNamespace(gpu=70, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 * GI, used=(h + 1) * GI)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=100, usedGpuMemory=GI),
                SimpleNamespace(pid=200 + h, usedGpuMemory=None)]

    def nvmlDeviceGetProcessUtilization(self, h: int, since: int) -> list[Any]:
        if since:
            raise self.NotFound("no sample since")
        return [SimpleNamespace(pid=100, timeStamp=5, smUtil=20),
                SimpleNamespace(pid=100, timeStamp=9, smUtil=40),  # the latest counts
                SimpleNamespace(pid=200 + h, timeStamp=7, smUtil=5)]


def _fake_gpus() -> Gpus:
    info = [GpuInfo(0, "H100", 80 * GI), GpuInfo(1, "H100", 80 * GI)]
    return Gpus(FakeNvml(), [0, 1], info)


def test_gpu_usage_leaves_out_a_gpu_it_cannot_read() -> None:
    assert [(u.index, u.utilization_percent, u.memory_used_bytes)
            for u in _fake_gpus().usage()] == [(0, 70.0, GI)]


def test_process_usage_sums_over_gpus_and_takes_the_latest_sample() -> None:
    gpus = _fake_gpus()
    assert gpus.process_usage() == {100: (2 * GI, 80.0), 200: (0, 5.0), 201: (0, 5.0)}
    # the next read asks only for newer samples; none: memory only
    assert gpus.process_usage() == {100: (2 * GI, 0.0), 200: (0, 0.0), 201: (0, 0.0)}


def test_host_capacity_of_a_gpu_host() -> None:
    capacity = host_capacity(_fake_gpus())
    assert capacity["kind"] == "gpu"
    assert [g["index"] for g in capacity["gpus"]] == [0, 1]
    assert capacity["gpus"][0]["memory_bytes"] == 80 * GI


def test_replica_sampler_measures_the_process_tree() -> None:
    # a parent that sleeps and a child that spins: the CPU is the child's
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'while True: pass'])")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        sampler = ReplicaSampler(Gpus.none())
        deadline = time.monotonic() + 30
        cores = 0.0
        while cores <= 0.05 and time.monotonic() < deadline:
            time.sleep(0.3)
            use = sampler.sample({"r-1": proc.pid, "r-gone": 2**22 + 12345})
            assert "r-gone" not in use  # a replica whose process is gone is left out
            cores = use["r-1"].cpu_cores
        assert cores > 0.05
        assert use["r-1"].gpu_memory_bytes == 0
    finally:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("raw", "labels"),
    [
        ([], {}),
        (["zone=eu-1"], {"zone": "eu-1"}),
        (["zone=eu-1,disk=ssd", "gpu=h100"], {"zone": "eu-1", "disk": "ssd", "gpu": "h100"}),
        (["a = 1 ,"], {"a": "1"}),
        (["empty="], {"empty": ""}),
    ],
)
def test_parse_labels(raw: list[str], labels: dict[str, str]) -> None:
    assert parse_labels(raw) == labels


@pytest.mark.parametrize("bad", ["zone", "=x", "a=1,b"])
def test_parse_labels_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="is not key=value"):
        parse_labels([bad])


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], expected: float | None
                          ) -> None:
    from lowtide.workers.resources import _cgroup_cpu_quota

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_cpu_quota(tmp_path) == expected


def test_usable_cpus_and_memory_follow_the_cgroup(tmp_path: Path) -> None:
    import psutil

    from lowtide.workers.resources import usable_cpus, usable_memory_bytes

    assert 1 <= usable_cpus(tmp_path) <= (psutil.cpu_count() or 1)
    assert usable_memory_bytes(tmp_path) == psutil.virtual_memory().total
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "memory.max").write_text(f"{GI}\n")
    assert (usable_cpus(tmp_path), usable_memory_bytes(tmp_path)) == (1.0, GI)
    (tmp_path / "memory.max").write_text("max\n")
    assert usable_memory_bytes(tmp_path) == psutil.virtual_memory().total
