"""What a host has and uses: cores and memory (psutil), GPUs (NVML through pynvml).

Probing only, no decisions. NVML is optional: no library, no driver or no device makes a
CPU host (`Gpus.open()` returns an empty set, with the reason logged once), never a crash.
The per-replica sampler keeps its psutil.Process objects between samples because
`cpu_percent(interval=None)` measures since the previous call on the same object.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int  # NVML index (PCI bus order); replicas get CUDA_DEVICE_ORDER=PCI_BUS_ID
    name: str
    memory_bytes: int
    uuid: str = ""


@dataclass(frozen=True)
class GpuUse:
    index: int
    utilization_percent: float
    memory_used_bytes: int


class Gpus:
    """The host's NVIDIA GPUs as NVML sees them; empty (a CPU host) when NVML is unusable."""

    def __init__(self, nvml: Any, handles: list[Any], info: list[GpuInfo]) -> None:
        self._nvml = nvml
        self._handles = handles
        self.info = info
        self._last_sample_us: dict[int, int] = {}

    @classmethod
    def none(cls) -> Gpus:
        return cls(None, [], [])

    @classmethod
    def open(cls) -> Gpus:
        try:
            import pynvml
        except ImportError:
            log.info("no pynvml (nvidia-ml-py): a CPU host")
            return cls.none()
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            info = [GpuInfo(i, _text(pynvml.nvmlDeviceGetName(h)),
                            int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                            _text(pynvml.nvmlDeviceGetUUID(h)))
                    for i, h in enumerate(handles)]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("NVML unavailable (%s): a CPU host", exc)
            return cls.none()
        if not info:
            log.info("NVML found no GPU: a CPU host")
        for g in info:
            log.info("GPU %d: %s, %.1f GiB", g.index, g.name, g.memory_bytes / 2**30)
        return cls(pynvml, handles, info)

    def usage(self) -> list[GpuUse]:
        """Utilization and memory in use of every GPU; a GPU that cannot be read is left out."""
        used = []
        for g, handle in zip(self.info, self._handles, strict=True):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:
                log.debug("cannot read GPU %d: %s", g.index, exc)
                continue
            used.append(GpuUse(g.index, float(util.gpu), int(mem.used)))
        return used

    def process_usage(self) -> dict[int, tuple[int, float]]:
        """pid -> (GPU memory bytes, GPU utilization percent), summed over the GPUs."""
        found: dict[int, tuple[int, float]] = {}
        for g, handle in zip(self.info, self._handles, strict=True):
            for pid, memory_bytes in self._process_memory(handle):
                mem, util = found.get(pid, (0, 0.0))
                found[pid] = (mem + memory_bytes, util)
            for pid, util_percent in self._process_utilization(g.index, handle):
                mem, util = found.get(pid, (0, 0.0))
                found[pid] = (mem, util + util_percent)
        return found

    def _process_memory(self, handle: Any) -> list[tuple[int, int]]:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:
            return []
        return [(int(p.pid), int(p.usedGpuMemory or 0)) for p in procs]

    def _process_utilization(self, index: int, handle: Any) -> list[tuple[int, float]]:
        """SM utilization per process since the previous sample (the latest sample each)."""
        since = self._last_sample_us.get(index, 0)
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(handle, since)
        except Exception:  # NVMLError_NotFound: no sample since; NotSupported on old GPUs
            return []
        latest: dict[int, tuple[int, float]] = {}
        for s in samples:
            if s.timeStamp >= latest.get(s.pid, (0, 0.0))[0]:
                latest[int(s.pid)] = (int(s.timeStamp), float(s.smUtil))
        if latest:
            self._last_sample_us[index] = max(ts for ts, _ in latest.values())
        return [(pid, util) for pid, (_, util) in latest.items()]

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> float:
    """Cores this process may use: the CPU affinity, lowered by a cgroup CPU quota (a
    container's `--cpus`), which psutil.cpu_count() does not see."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(psutil.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup)
    return max(1.0, min(cores, quota)) if quota else max(1.0, cores)


def _cgroup_cpu_quota(cgroup: Path) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        return None if limit == "max" else math.ceil(int(limit) / int(period) * 100) / 100
    with contextlib.suppress(OSError, ValueError):  # v1
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else math.ceil(quota_us / period_us * 100) / 100
    return None


def usable_memory_bytes(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The machine's memory, lowered by a cgroup memory limit (a container's `--memory`)."""
    total = int(psutil.virtual_memory().total)
    for path in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            if text != "max":
                return min(total, int(text))  # v1 says "no limit" with a huge number
    return total


def host_capacity(gpus: Gpus) -> dict[str, Any]:
    """Registration fields: what the host has."""
    return {
        "cpus": usable_cpus(),
        "memory_bytes": usable_memory_bytes(),
        "gpus": [asdict(g) for g in gpus.info],
        "kind": "gpu" if gpus.info else "cpu",
    }


def host_usage(gpus: Gpus) -> dict[str, Any]:
    """Heartbeat fields: what the host uses now."""
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_used_bytes": memory.total - memory.available,
        "gpus": [asdict(u) for u in gpus.usage()],
    }


@dataclass(frozen=True)
class ReplicaUse:
    cpu_cores: float  # cores the process tree used since the previous sample
    gpu_memory_bytes: int = 0
    gpu_utilization_percent: float = 0.0


class ReplicaSampler:
    """Per-replica use of CPU (its whole process tree) and GPU (its processes, via NVML)."""

    def __init__(self, gpus: Gpus) -> None:
        self._gpus = gpus
        self._procs: dict[int, psutil.Process] = {}  # kept: cpu_percent needs a baseline

    def sample(self, replicas: Mapping[str, int]) -> dict[str, ReplicaUse]:
        """replica id -> process id of its leader  =>  replica id -> use."""
        seen: dict[int, psutil.Process] = {}
        trees: dict[str, list[int]] = {}
        cores: dict[str, float] = {}
        for replica_id, pid in replicas.items():
            tree = _tree(pid)
            if tree is None:
                continue
            total = 0.0
            for p in tree:  # the first sample of a process reads 0: its baseline
                proc = seen[p.pid] = self._procs.get(p.pid, p)
                with contextlib.suppress(psutil.Error):
                    total += proc.cpu_percent(interval=None) / 100.0
            cores[replica_id] = round(total, 3)
            trees[replica_id] = [p.pid for p in tree]
        self._procs = seen
        gpu = self._gpus.process_usage() if self._gpus.info else {}
        return {rid: _with_gpu(cores[rid], trees[rid], gpu) for rid in cores}


def _tree(pid: int) -> list[psutil.Process] | None:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return None


def _with_gpu(cores: float, pids: Iterable[int], gpu: Mapping[int, tuple[int, float]]
              ) -> ReplicaUse:
    mine = [gpu[p] for p in pids if p in gpu]
    return ReplicaUse(cores, sum(m for m, _ in mine), round(sum(u for _, u in mine), 1))


def parse_labels(raw: Iterable[str]) -> dict[str, str]:
    """['zone=a', 'disk=ssd'] or ['zone=a,disk=ssd'] -> {'zone': 'a', 'disk': 'ssd'}."""
    labels: dict[str, str] = {}
    for item in raw:
        for pair in item.split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"label {pair!r} is not key=value (e.g. zone=eu-1)")
            labels[key.strip()] = value.strip()
    return labels
