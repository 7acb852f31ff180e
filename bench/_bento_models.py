"""The examples' models written the BentoML way, for bench/models.py's baseline: one
`@bentoml.service` class each, served with `bentoml serve bench._bento_models:NAME`. Each
wraps the example's own class, so both sides run the same model code."""

from __future__ import annotations

import sys
from pathlib import Path

import bentoml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples import embeddings, iris_sklearn, tiny_torch


@bentoml.service(workers=1)
class IrisService:
    def __init__(self) -> None:
        self.impl = iris_sklearn.IrisClassifier()

    @bentoml.api
    def predict(self, features: list[float]) -> int:
        return self.impl(features)


@bentoml.service(workers=1)
class TinyTorchService:
    def __init__(self) -> None:
        self.impl = tiny_torch.TinyClassifier()

    @bentoml.api
    def predict(self, x: list[float]) -> int:
        return self.impl(x)


@bentoml.service(workers=1)
class EmbedderService:
    def __init__(self) -> None:
        self.impl = embeddings.Embedder()

    @bentoml.api
    def predict(self, text: str) -> list[float]:
        return self.impl(text)
