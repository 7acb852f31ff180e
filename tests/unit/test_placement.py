"""place(): fit, GPU hosts only for GPU work with whole GPUs pinned, CPU work off GPU hosts
while CPU hosts have room, spread one endpoint, then pack; "does not fit" in words."""

from __future__ import annotations

from typing import Any

import pytest

from lowtide.platform.placement import (
    Allocation,
    Gpu,
    Host,
    Need,
    Placement,
    allocations,
    host_view,
    place,
)

GI = 2**30
CPU1 = Need(cpu=1, memory_bytes=GI)


def cpu_host(id: str, cores: float = 8, mem_gi: int = 32, used_cpu: float = 0,
             used_gi: int = 0, mine: int = 0) -> Host:
    return Host(id, cores, mem_gi * GI, (), Allocation(used_cpu, used_gi * GI), mine)


def gpu_host(id: str, gpus: list[int] | None = None, busy: tuple[int, ...] = (),
             cores: float = 16, mem_gi: int = 128, used_cpu: float = 0, mine: int = 0
             ) -> Host:
    sizes = gpus if gpus is not None else [80, 80]
    return Host(id, cores, mem_gi * GI, tuple(Gpu(i, s * GI) for i, s in enumerate(sizes)),
                Allocation(used_cpu, 0, frozenset(busy)), mine)


# the cluster: 2 CPU hosts + 1 host with 2 GPUs
CLUSTER = [cpu_host("cpu-a"), cpu_host("cpu-b"), gpu_host("gpu-1")]


@pytest.mark.parametrize(
    ("need", "hosts", "host", "gpus"),
    [
        pytest.param(CPU1, [cpu_host("a")], "a", (), id="single-host"),
        pytest.param(CPU1, CLUSTER, "cpu-a", (), id="cpu-work-on-a-cpu-host"),
        pytest.param(Need(1, GI, gpu=1), CLUSTER, "gpu-1", (0,), id="gpu-work-on-the-gpu-host"),
        pytest.param(Need(1, GI, gpu=2), CLUSTER, "gpu-1", (0, 1), id="two-whole-gpus"),
        pytest.param(Need(1, GI, gpu=1), [gpu_host("g", busy=(0,))], "g", (1,),
                     id="the-free-gpu-is-pinned"),
        pytest.param(Need(1, GI, gpu=1, gpu_memory_bytes=40 * GI),
                     [gpu_host("g", gpus=[24, 80, 48])], "g", (2,),
                     id="best-fit-smallest-gpu-big-enough"),
        pytest.param(Need(1, GI, gpu=1), [gpu_host("g", gpus=[24, 80, 24])], "g", (0,),
                     id="best-fit-then-lowest-index"),
        pytest.param(Need(1, GI, gpu=1),
                     [gpu_host("g1", busy=(0, 1)), gpu_host("g2")], "g2", (0,),
                     id="skip-a-gpu-host-whose-gpus-are-taken"),
        pytest.param(CPU1, [cpu_host("a", used_cpu=8), gpu_host("g")], "g", (),
                     id="cpu-work-spills-to-gpu-host-when-cpu-hosts-are-full"),
        pytest.param(CPU1, [cpu_host("a", used_gi=32), gpu_host("g")], "g", (),
                     id="memory-full-cpu-host-spills-too"),
        pytest.param(CPU1, [cpu_host("a", used_cpu=7), gpu_host("g")], "a", (),
                     id="cpu-host-with-room-beats-an-empty-gpu-host"),
        pytest.param(CPU1, [cpu_host("a", mine=1, used_cpu=4), cpu_host("b")], "b", (),
                     id="spread-one-endpoint"),
        pytest.param(CPU1, [cpu_host("a", used_cpu=4), cpu_host("b", used_cpu=1),
                            cpu_host("c")], "a", (), id="pack-most-allocated-first"),
        pytest.param(CPU1, [cpu_host("a", mine=1, used_cpu=6), cpu_host("b", mine=1),
                            cpu_host("c", mine=2)], "a", (), id="spread-then-pack"),
        pytest.param(CPU1, [cpu_host("a", used_cpu=7.5), cpu_host("b", used_cpu=1)], "b", (),
                     id="pack-only-where-it-fits"),
        pytest.param(Need(2, GI), [cpu_host("a", cores=2, used_cpu=0.5), cpu_host("b")], "b",
                     (), id="cores-must-fit"),
        pytest.param(Need(1, 8 * GI), [cpu_host("a", mem_gi=8, used_gi=1), cpu_host("b")], "b",
                     (), id="memory-must-fit"),
        pytest.param(CPU1, [cpu_host("b"), cpu_host("a")], "a", (), id="tie-lowest-id"),
        pytest.param(CPU1, [cpu_host("a", cores=1, used_cpu=0.5), cpu_host("b", cores=1)],
                     "b", (), id="exactly-full-does-not-fit"),
        pytest.param(Need(0.5, GI), [cpu_host("a", cores=1, used_cpu=0.5)], "a", (),
                     id="exactly-fits"),
    ],
)
def test_place(need: Need, hosts: list[Host], host: str, gpus: tuple[int, ...]) -> None:
    placed = place(need, hosts)
    assert (placed.host, placed.gpus) == (host, gpus), placed.reason


@pytest.mark.parametrize(
    ("need", "hosts", "reason"),
    [
        pytest.param(CPU1, [], "no live host to place a replica on; start `lowtide agent`",
                     id="no-hosts"),
        pytest.param(Need(1, GI, gpu=1), [cpu_host("a"), cpu_host("b")],
                     "needs 1 GPU; no host has a GPU (2 CPU hosts)", id="no-gpu-host"),
        pytest.param(Need(1, GI, gpu=1), [gpu_host("g", busy=(0, 1)), cpu_host("a")],
                     "needs 1 GPU; no host has a free GPU (2 GPUs on 1 host, 2 in use)",
                     id="all-gpus-taken"),
        pytest.param(Need(1, GI, gpu=2), [gpu_host("g", busy=(1,))],
                     "needs 2 GPUs; no host has 2 free GPUs (2 GPUs on 1 host, 1 in use)",
                     id="not-enough-free-gpus"),
        pytest.param(Need(1, GI, gpu=4), [gpu_host("g1"), gpu_host("g2")],
                     "needs 4 GPUs on one host; no host has that many such GPUs (at most 2 "
                     "GPUs on a host, up to 80 GiB each)", id="gpus-are-not-split-over-hosts"),
        pytest.param(Need(1, GI, gpu=1, gpu_memory_bytes=100 * GI), [gpu_host("g")],
                     "needs 1 GPU with 100 GiB on one host; no host has that many such GPUs "
                     "(at most 2 GPUs on a host, up to 80 GiB each)", id="gpus-too-small"),
        pytest.param(Need(32, GI, gpu=1), [gpu_host("g", cores=16)],
                     "needs 1 GPU, 32 cores, 1 GiB memory; the hosts with free GPUs lack cores "
                     "or memory (g: 16 cores, 128 GiB free)", id="gpu-free-but-cores-short"),
        pytest.param(Need(4, 2 * GI), [cpu_host("a", cores=2), cpu_host("b", mem_gi=1)],
                     "needs 4 cores, 2 GiB memory; no host has room (a: 2 cores, 32 GiB free; "
                     "b: 8 cores, 1 GiB free)", id="cpu-nothing-fits"),
        pytest.param(Need(0.5, 512 * 2**20), [cpu_host("a", cores=1, used_cpu=1)],
                     "needs 0.5 cores, 512 MiB memory; no host has room (a: 0 cores, 32 GiB "
                     "free)", id="sizes-in-words"),
    ],
)
def test_does_not_fit_says_why(need: Need, hosts: list[Host], reason: str) -> None:
    placed = place(need, hosts)
    assert placed == Placement(None, (), placed.reason)
    assert not placed.placed
    assert reason in placed.reason


def test_free_list_is_capped() -> None:
    hosts = [cpu_host(f"h{i}", cores=1, used_cpu=1) for i in range(6)]
    reason = place(CPU1, hosts).reason
    assert "h3: 0 cores" in reason and "h4" not in reason and "2 more" in reason


def test_answer_does_not_depend_on_host_order() -> None:
    hosts = [cpu_host("c", used_cpu=2), cpu_host("a", used_cpu=2), cpu_host("b", used_cpu=2)]
    assert place(CPU1, hosts).host == place(CPU1, list(reversed(hosts))).host == "a"


def _simulate(need: Need, hosts: dict[str, Host], count: int) -> list[Placement]:
    """Place `count` replicas of one endpoint one by one, as the scaler does."""
    placed = []
    for _ in range(count):
        p = place(need, hosts.values())
        placed.append(p)
        if p.host is None:
            continue
        h = hosts[p.host]
        hosts[p.host] = Host(h.id, h.cpu_capacity, h.memory_bytes, h.gpus,
                             h.allocated.add(need.cpu, need.memory_bytes, p.gpus),
                             h.endpoint_replicas + 1)
    return placed


def test_replicas_of_one_endpoint_spread_over_cpu_hosts_only() -> None:
    hosts = {h.id: h for h in CLUSTER}
    placed = _simulate(CPU1, hosts, 4)
    assert [p.host for p in placed] == ["cpu-a", "cpu-b", "cpu-a", "cpu-b"]


def test_gpu_replicas_take_whole_gpus_until_none_is_left() -> None:
    hosts = {h.id: h for h in CLUSTER}
    placed = _simulate(Need(2, 4 * GI, gpu=1), hosts, 3)
    assert [(p.host, p.gpus) for p in placed[:2]] == [("gpu-1", (0,)), ("gpu-1", (1,))]
    assert placed[2].host is None
    assert placed[2].reason.startswith("needs 1 GPU; no host has a free GPU")


def test_a_second_endpoint_packs_onto_the_busier_host() -> None:
    hosts = {h.id: h for h in [cpu_host("a"), cpu_host("b")]}
    first = _simulate(CPU1, hosts, 1)[0]
    hosts = {i: Host(h.id, h.cpu_capacity, h.memory_bytes, h.gpus, h.allocated, 0)
             for i, h in hosts.items()}  # another endpoint: none of its replicas anywhere
    assert place(CPU1, hosts.values()).host == first.host == "a"


def test_need_describe() -> None:
    assert Need(1, GI).describe() == "1 core, 1 GiB memory"
    assert Need(2, 512 * 2**20, gpu=2, gpu_memory_bytes=40 * GI).describe() == (
        "2 GPUs with 40 GiB, 2 cores, 512 MiB memory")


# ---- from the records in Redis ------------------------------------------------------------
def test_host_view_from_an_agent_record() -> None:
    record: dict[str, Any] = {
        "id": "gpu-1", "cpus": 16, "cpu_capacity": 64, "memory_bytes": 128 * GI,
        "gpus": [{"index": 0, "name": "H100", "memory_bytes": 80 * GI, "uuid": "GPU-x"},
                 {"index": 1, "name": "H100", "memory_bytes": 80 * GI, "uuid": "GPU-y"}]}
    host = host_view(record, Allocation(2, GI, frozenset({1}), 1), endpoint_replicas=1)
    assert host.kind == "gpu" and host.cpu_capacity == 64 and host.cpu_free == 62
    assert [g.index for g in host.free_gpus()] == [0]
    assert host.endpoint_replicas == 1


def test_host_view_of_an_old_record_uses_its_cores() -> None:
    host = host_view({"id": "a", "cpus": 4, "memory_bytes": GI, "gpus": []})
    assert (host.kind, host.cpu_capacity, host.allocated) == ("cpu", 4.0, Allocation())


def test_allocations_sum_the_replica_records_per_host() -> None:
    held = allocations([
        {"host": "a", "cpu": 1, "memory_bytes": GI, "gpus": []},
        {"host": "a", "cpu": 0.5, "memory_bytes": GI, "gpus": [1]},
        {"host": "b", "cpu": 2, "memory_bytes": 2 * GI, "gpus": [0, 1]},
        {"host": "", "cpu": 9, "memory_bytes": GI},  # not placed: holds nothing
        {"host": "c"},  # an old record without resources
    ])
    assert held == {
        "a": Allocation(1.5, 2 * GI, frozenset({1}), 2),
        "b": Allocation(2, 2 * GI, frozenset({0, 1}), 1),
        "c": Allocation(0, 0, frozenset(), 1),
    }
