"""A small PyTorch model: its weights in the BentoML model store (any files:
`bentoml.models.create`), loaded once per replica by a class deployment.

    pip install 'lowtide[torch]'        # torch==2.13.0 (the CPU build where it is on disk)
    lowtide up                          # in another terminal
    python examples/tiny_torch.py
"""

from __future__ import annotations

import bentoml

import lowtide

MODEL = "tiny_mlp"
INPUTS = 64


def build():  # type: ignore[no-untyped-def]
    import torch

    return torch.nn.Sequential(torch.nn.Linear(INPUTS, 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 10))


def save() -> str:
    import torch

    torch.manual_seed(0)
    net = build()
    with bentoml.models.create(MODEL) as model:
        torch.save(net.state_dict(), model.path_of("weights.pt"))
    return str(model.tag)


class TinyClassifier:
    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # one core per replica: scale out, not up
        path = bentoml.models.get(f"{MODEL}:latest").path_of("weights.pt")
        self.net = build()
        self.net.load_state_dict(torch.load(path, weights_only=True))
        self.net.eval()
        self.torch = torch

    def __call__(self, x: list[float]) -> int:
        with self.torch.no_grad():
            return int(self.net(self.torch.tensor([x])).argmax())


if __name__ == "__main__":
    tag = save()
    ep = lowtide.deploy(TinyClassifier, models=[tag], memory="1Gi")
    print(ep.url)
    print("class:", ep([0.01 * i for i in range(INPUTS)]))
