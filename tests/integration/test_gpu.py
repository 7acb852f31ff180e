"""On a machine with an NVIDIA GPU (NVML sees it, torch has CUDA): a small torch model
deployed with gpu=1 runs on CUDA, pinned to the GPU placement assigned, and the hosts view
shows the GPU allocated and in use. Skipped cleanly elsewhere (no NVML, no GPU, no torch).

Run it with `.venv/bin/pytest -m gpu` on a GPU host with torch installed in the venv
(`pip install torch`): the agent's environment must already satisfy `torch`, as a GPU
machine without network cannot install it for the replica.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import lowtide
from lowtide import Client
from lowtide.workers.resources import Gpus
from tests.conftest import wait_for


def _gpu_skip_reason() -> str | None:
    gpus = Gpus.open()
    try:
        if not gpus.info:
            return "no NVIDIA GPU visible through NVML"
    finally:
        gpus.close()
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch)"
    return None


_SKIP = _gpu_skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.integration, pytest.mark.timeout(600),
              pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


def infer(x):
    import os

    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 1)).to("cuda")
    with torch.no_grad():
        out = model(torch.full((1, 4), float(x), device="cuda"))
    return {"device": str(out.device), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
            "value": float(out.item())}


def test_torch_model_with_one_gpu_runs_on_cuda(client: Client, unique_name: str) -> None:
    ep = client.deploy(infer, name=unique_name, gpu=1, requirements=["torch"], timeout=300)
    result: Any = ep.call(x=1.0)
    print("gpu replica answered:", result)
    assert result["device"] == "cuda:0", result
    assert result["count"] == 1  # pinned: the replica sees exactly its one GPU

    status = client.status(unique_name)
    replica = next(r for r in status["replicas"]["items"] if r["state"] == "ready")
    assert len(replica["gpus"]) == 1
    assert result["visible"] == str(replica["gpus"][0])

    def gpu_host() -> dict[str, Any] | None:
        hosts = {h["id"]: h for h in client.hosts()["hosts"]}
        host = hosts.get(replica["host"])
        return host if host and host["utilization"]["gpus"] else None

    host = wait_for(gpu_host, 10, "GPU utilization in the host's heartbeat")
    assert isinstance(host, dict)
    print("host view:", host)
    assert host["kind"] == "gpu"
    assert replica["gpus"][0] in host["allocated"]["gpus"]
    used = {g["index"]: g for g in host["utilization"]["gpus"]}
    assert used[replica["gpus"][0]]["memory_used_bytes"] > 0  # the model's CUDA context
    mine = next(r for r in host["replicas"] if r["id"] == replica["id"])
    print("replica GPU use (NVML per process; 0 where PIDs are namespaced):",
          mine.get("gpu_memory_bytes"), mine.get("gpu_utilization_percent"))
    ep.delete()


class CudaModel:
    """A class deployment whose constructor puts a small torch model on the GPU, once per
    replica; the stop hook gives its memory back."""

    def __init__(self):
        import torch

        torch.manual_seed(0)
        self.torch = torch
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                         torch.nn.Linear(16, 1)).to("cuda").eval()
        self.loaded_on = str(next(self.model.parameters()).device)

    def __call__(self, x):
        with self.torch.no_grad():
            out = self.model(self.torch.full((1, 4), float(x), device="cuda"))
        return {"device": str(out.device), "loaded_on": self.loaded_on,
                "value": float(out.item())}

    def memory(self):
        return self.torch.cuda.memory_allocated()

    @lowtide.on_shutdown
    def release(self):
        del self.model
        self.torch.cuda.empty_cache()


def test_a_class_deployment_loads_its_torch_model_onto_cuda_once(
    client: Client, unique_name: str
) -> None:
    ep = client.deploy(CudaModel, name=unique_name, gpu=1, requirements=["torch"],
                       timeout=300)
    first: Any = ep(1.0)
    print("class replica answered:", first)
    assert first["device"] == "cuda:0" and first["loaded_on"] == "cuda:0", first
    assert ep(1.0)["value"] == first["value"]  # the same weights: built once
    assert ep.memory() > 0  # the model's parameters live on the GPU
    replica = next(r for r in client.status(unique_name)["replicas"]["items"]
                   if r["state"] == "ready")
    print("startup:", replica["startup"])
    assert replica["startup"]["setup_s"] > 0  # the constructor ran before ready
    ep.delete()
