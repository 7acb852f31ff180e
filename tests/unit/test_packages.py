"""The SDK records the installed packages a function or class references (spec `packages`):
module globals, imports in bodies (a constructor's `import x`), objects of a package in
closures and containers (what unpickling imports), followed through the user's own helpers
and methods; not the standard library, not lowtide."""

from __future__ import annotations

import json
import os

import cloudpickle
import numpy as np
import sortedcontainers
from sortedcontainers import SortedList

from lowtide.sdk._packages import referenced_packages

TABLE = {"weights": np.zeros(3)}


def helper() -> object:
    return sortedcontainers.SortedDict()


def packages(obj: object) -> list[str]:
    return referenced_packages(obj, cloudpickle.dumps(obj))


def test_a_module_global_and_an_import_in_the_body_count() -> None:
    def uses_global(x: list[int]) -> float:
        return float(np.sum(x))

    def imports_inside(x: object) -> object:
        import yaml

        return yaml.safe_dump(x)

    assert packages(uses_global) == ["numpy"]
    assert packages(imports_inside) == ["yaml"]


def test_objects_of_a_package_in_closures_and_containers_count() -> None:
    table = {"sorted": SortedList([2, 1])}

    def reads() -> object:
        return table["sorted"], TABLE["weights"]

    assert packages(reads) == ["numpy", "sortedcontainers"]


def test_a_class_counts_its_methods_and_helpers() -> None:
    class Model:
        def __init__(self) -> None:
            import yaml

            self.ready = yaml is not None

        def __call__(self, x: int) -> object:
            return helper()

        @staticmethod
        def describe() -> str:
            return json.dumps({"weights": TABLE["weights"].tolist()})

    assert packages(Model) == ["numpy", "sortedcontainers", "yaml"]


def test_the_standard_library_and_lowtide_do_not_count() -> None:
    import lowtide

    def plain(x: str) -> object:
        return os.path.join(x, json.dumps(lowtide.__name__))

    assert packages(plain) == []


def test_a_framework_loader_counts_its_framework() -> None:
    import bentoml

    def load() -> object:
        return bentoml.sklearn.load_model("iris_clf:latest")

    assert "sklearn" in packages(load) or not _installed("sklearn")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
