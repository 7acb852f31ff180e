"""Where a new replica goes: pure, table-tested.

`place(need, hosts)` takes what one replica asks for and a view of each live host (its
capacity and what its replicas already hold) and returns a `Placement`: a host and the GPUs
to pin, or no host and a reason in words. The rules, in order:

1. fit: free cores, free memory and, for a GPU endpoint, enough free whole GPUs, each with
   at least the GPU memory asked for. GPU endpoints go only to GPU hosts.
2. CPU-only replicas stay off GPU hosts while some CPU host has room.
3. spread: the host with the fewest replicas of this endpoint first.
4. pack: then the most allocated host, so idle hosts stay idle (and can be given back).
5. ties: the lowest host id, so the answer does not depend on dictionary order.

GPUs are assigned whole: best fit (the smallest GPUs that are big enough, then the lowest
index), and the agent pins them with CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GiB = 2**30


@dataclass(frozen=True)
class Need:
    """What one replica asks for."""

    cpu: float
    memory_bytes: int
    gpu: int = 0
    gpu_memory_bytes: int = 0  # per GPU; 0: any GPU

    def describe(self) -> str:
        parts = []
        if self.gpu:
            size = (f" with {_size(self.gpu_memory_bytes)}" if self.gpu_memory_bytes else "")
            parts.append(f"{self.gpu} GPU{'s' if self.gpu > 1 else ''}{size}")
        parts.append(f"{self.cpu:g} core{'s' if self.cpu != 1 else ''}")
        parts.append(f"{_size(self.memory_bytes)} memory")
        return ", ".join(parts)


@dataclass(frozen=True)
class Gpu:
    index: int
    memory_bytes: int
    name: str = ""


@dataclass(frozen=True)
class Allocation:
    """What the replicas placed on one host hold (from the replica records)."""

    cpu: float = 0.0
    memory_bytes: int = 0
    gpus: frozenset[int] = frozenset()
    replicas: int = 0

    def add(self, cpu: float, memory_bytes: int, gpus: Iterable[int]) -> Allocation:
        return Allocation(self.cpu + cpu, self.memory_bytes + memory_bytes,
                          self.gpus | frozenset(gpus), self.replicas + 1)


@dataclass(frozen=True)
class Host:
    id: str
    cpu_capacity: float  # schedulable cores (cores x the agent's CPU overcommit)
    memory_bytes: int
    gpus: tuple[Gpu, ...] = ()
    allocated: Allocation = field(default_factory=Allocation)
    endpoint_replicas: int = 0  # replicas of the endpoint being placed

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    @property
    def cpu_free(self) -> float:
        return self.cpu_capacity - self.allocated.cpu

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_bytes - self.allocated.memory_bytes

    def free_gpus(self, min_memory_bytes: int = 0) -> list[Gpu]:
        return [g for g in self.gpus
                if g.index not in self.allocated.gpus and g.memory_bytes >= min_memory_bytes]

    def fits_cpu_memory(self, need: Need) -> bool:
        return (need.cpu <= self.cpu_free + 1e-9
                and need.memory_bytes <= self.memory_free_bytes)

    def allocated_fraction(self) -> float:
        """How full the host is: the mean share of its cores, memory and GPUs held."""
        shares = [self.allocated.cpu / max(self.cpu_capacity, 1e-9),
                  self.allocated.memory_bytes / max(self.memory_bytes, 1)]
        if self.gpus:
            shares.append(len(self.allocated.gpus & {g.index for g in self.gpus})
                          / len(self.gpus))
        return sum(shares) / len(shares)


@dataclass(frozen=True)
class Placement:
    host: str | None
    gpus: tuple[int, ...] = ()
    reason: str = ""

    @property
    def placed(self) -> bool:
        return self.host is not None


def place(need: Need, hosts: Iterable[Host]) -> Placement:
    hosts = sorted(hosts, key=lambda h: h.id)
    if not hosts:
        return Placement(None, reason="no live host to place a replica on; start "
                         "`lowtide agent` on a machine")
    if need.gpu:
        return _place_gpu(need, hosts)
    return _place_cpu(need, hosts)


def _order(host: Host) -> tuple[int, float, str]:
    return (host.endpoint_replicas, -host.allocated_fraction(), host.id)


def _place_cpu(need: Need, hosts: list[Host]) -> Placement:
    fit = [h for h in hosts if h.fits_cpu_memory(need)]
    cpu_hosts = [h for h in fit if h.kind == "cpu"]
    if cpu_hosts:
        best = min(cpu_hosts, key=_order)
        return Placement(best.id, reason=f"on {best.id}: {_why(best)}")
    if fit:
        best = min(fit, key=_order)
        return Placement(best.id, reason=f"on GPU host {best.id} (no CPU host has room): "
                         f"{_why(best)}")
    return Placement(None, reason=f"needs {need.describe()}; no host has room "
                     f"({_free_list(hosts)})")


def _place_gpu(need: Need, hosts: list[Host]) -> Placement:
    what = f"{need.gpu} GPU{'s' if need.gpu > 1 else ''}" + (
        f" with {_size(need.gpu_memory_bytes)}" if need.gpu_memory_bytes else "")
    gpu_hosts = [h for h in hosts if h.gpus]
    if not gpu_hosts:
        return Placement(None, reason=f"needs {what}; no host has a GPU "
                         f"({len(hosts)} CPU host{'s' if len(hosts) > 1 else ''})")
    big = [h for h in gpu_hosts
           if sum(g.memory_bytes >= need.gpu_memory_bytes for g in h.gpus) >= need.gpu]
    if not big:
        largest = max(len(h.gpus) for h in gpu_hosts)
        return Placement(None, reason=f"needs {what} on one host; no host has that "
                         f"many such GPUs (at most {largest} GPU{'s' if largest > 1 else ''}"
                         f" on a host, up to {_size(_largest_gpu(gpu_hosts))} each)")
    free = [h for h in big if len(h.free_gpus(need.gpu_memory_bytes)) >= need.gpu]
    if not free:
        a = "a free GPU" if need.gpu == 1 else f"{need.gpu} free GPUs"
        return Placement(None, reason=f"needs {what}; no host has {a} "
                         f"({_gpus_in_use(big)})")
    fit = [h for h in free if h.fits_cpu_memory(need)]
    if not fit:
        return Placement(None, reason=f"needs {need.describe()}; the hosts with free GPUs "
                         f"lack cores or memory ({_free_list(free)})")
    best = min(fit, key=_order)
    chosen = sorted(best.free_gpus(need.gpu_memory_bytes),
                    key=lambda g: (g.memory_bytes, g.index))[: need.gpu]
    indices = tuple(sorted(g.index for g in chosen))
    return Placement(best.id, indices, reason=f"on {best.id}, GPU "
                     f"{','.join(map(str, indices))}: {_why(best)}")


def _why(host: Host) -> str:
    return (f"{host.endpoint_replicas} replica(s) of this endpoint there, "
            f"{host.allocated_fraction():.0%} allocated")


def _free_list(hosts: list[Host], most: int = 4) -> str:
    shown = [f"{h.id}: {max(h.cpu_free, 0):g} cores, {_size(max(h.memory_free_bytes, 0))} free"
             for h in hosts[:most]]
    if len(hosts) > most:
        shown.append(f"{len(hosts) - most} more")
    return "; ".join(shown)


def _gpus_in_use(hosts: list[Host]) -> str:
    total = sum(len(h.gpus) for h in hosts)
    return (f"{total} GPU{'s' if total > 1 else ''} on {len(hosts)} "
            f"host{'s' if len(hosts) > 1 else ''}, "
            f"{sum(len(h.allocated.gpus) for h in hosts)} in use")


def _largest_gpu(hosts: list[Host]) -> int:
    return max(g.memory_bytes for h in hosts for g in h.gpus)


def _size(n_bytes: int) -> str:
    if n_bytes >= GiB:
        return f"{n_bytes / GiB:.3g} GiB"
    return f"{n_bytes / 2**20:.3g} MiB"


# ---- from the records in Redis ------------------------------------------------------------
def host_view(record: Mapping[str, Any], allocated: Allocation | None = None,
              endpoint_replicas: int = 0) -> Host:
    """A host as registered by its agent (see workers/agent.py) -> a placement Host."""
    cpus = float(record.get("cpus") or 1)
    return Host(
        id=str(record["id"]),
        cpu_capacity=float(record.get("cpu_capacity") or cpus),
        memory_bytes=int(record.get("memory_bytes") or 0),
        gpus=tuple(Gpu(int(g["index"]), int(g.get("memory_bytes") or 0), str(g.get("name", "")))
                   for g in record.get("gpus") or []),
        allocated=allocated or Allocation(),
        endpoint_replicas=endpoint_replicas,
    )


def allocations(replicas: Iterable[Mapping[str, Any]]) -> dict[str, Allocation]:
    """host id -> what the replica records placed there hold (every state: a stopping
    replica holds its resources until it is gone)."""
    held: dict[str, Allocation] = {}
    for r in replicas:
        host = str(r.get("host") or "")
        if not host:
            continue
        held[host] = held.get(host, Allocation()).add(
            float(r.get("cpu") or 0.0), int(r.get("memory_bytes") or 0),
            (int(i) for i in r.get("gpus") or []))
    return held
