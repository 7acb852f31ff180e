"""Functions are shipped by value with the user's own modules; installed packages are not."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest
import redis

import lowtide
from lowtide.sdk._pickling import is_user_module, parameter_names, pickle_function, user_modules


# ---- parameter_names ------------------------------------------------------------------
def p_plain(a: int, b: int = 1) -> None: ...
def p_kwonly(a: int, *, c: int) -> None: ...
def p_var_args(a: int, *rest: int) -> None: ...
def p_var_kwargs(a: int, **kw: int) -> None: ...
def p_only_kwargs(**kw: int) -> None: ...
def p_pos_only(a: int, /, b: int) -> None: ...
def p_none() -> None: ...


class Model:
    def __init__(self, weights: str, device: str = "cpu") -> None: ...

    def predict(self, x: int) -> None: ...

    def __call__(self, batch: list[int]) -> None: ...


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        pytest.param(p_plain, ["a", "b"], id="plain"),
        pytest.param(p_kwonly, ["a"], id="keyword-only-left-out"),
        pytest.param(p_var_args, None, id="var-args"),
        pytest.param(p_var_kwargs, ["a"], id="var-kwargs"),
        pytest.param(p_only_kwargs, [], id="only-kwargs"),
        pytest.param(p_pos_only, ["a", "b"], id="positional-only"),
        pytest.param(p_none, [], id="no-params"),
        pytest.param(lambda x, y=2: None, ["x", "y"], id="lambda"),
        pytest.param(lambda *a: None, None, id="lambda-var-args"),
        pytest.param(functools.partial(p_plain, 1), ["b"], id="partial"),
        pytest.param(Model("w").predict, ["x"], id="bound-method"),
        pytest.param(Model("w"), ["batch"], id="callable-instance"),
        pytest.param(Model, ["weights", "device"], id="class"),
    ],
)
def test_parameter_names(fn: Callable[..., Any], expected: list[str] | None) -> None:
    assert parameter_names(fn) == expected


# ---- is_user_module -------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [json, os, subprocess, redis, pytest, cloudpickle, lowtide, sys],
    ids=lambda m: m.__name__,
)
def test_not_user_modules(module: ModuleType) -> None:
    assert not is_user_module(module)


def test_main_is_not_a_user_module() -> None:
    assert not is_user_module(ModuleType("__main__"))  # cloudpickle ships __main__ itself


def test_module_without_a_file_is_not_a_user_module() -> None:
    assert not is_user_module(ModuleType("made_up"))


# ---- user modules written to tmp_path ---------------------------------------------------
HELPER = '''
def double(x):
    return 2 * x

class Scaler:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x
'''

APP = '''
import json

import {helper} as helper_module
from {helper} import Scaler, double

OFFSET = 5

def predict(x):
    return {{"double": double(x), "scaled": Scaler(3)(x),
            "again": helper_module.double(x) + OFFSET, "json": json.dumps(x)}}
'''


@pytest.fixture
def user_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """`lt_user_app_<pid>` importing `lt_user_helper_<pid>`, both only on tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir()
    names = {"app": f"lt_user_app_{os.getpid()}", "helper": f"lt_user_helper_{os.getpid()}"}
    (src / f"{names['helper']}.py").write_text(HELPER)
    (src / f"{names['app']}.py").write_text(APP.format(helper=names["helper"]))
    monkeypatch.syspath_prepend(str(src))
    try:
        yield importlib.import_module(names["app"])
    finally:
        for name in names.values():
            sys.modules.pop(name, None)


def test_modules_written_by_the_user_are_user_modules(user_app: ModuleType) -> None:
    helper = sys.modules[user_app.__name__.replace("app", "helper")]
    assert is_user_module(user_app) and is_user_module(helper)
    assert {user_app.__name__, helper.__name__} <= set(user_modules())


def test_a_module_under_a_given_root_is_not_a_user_module(user_app: ModuleType) -> None:
    assert not is_user_module(user_app, roots=[Path(str(user_app.__file__)).parent.resolve()])


def run_pickle_elsewhere(artifact: bytes, tmp_path: Path, code: str) -> Any:
    """Load `artifact` as `fn` in a fresh interpreter that cannot import the user's modules,
    run `code` there and return what it printed as JSON."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "fn.pkl").write_bytes(artifact)
    header = (
        "import importlib.util, json, pickle, sys\n"
        f"assert not any({str(tmp_path / 'src')!r} in p for p in sys.path), sys.path\n"
        "fn = pickle.loads(open('fn.pkl', 'rb').read())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", header + textwrap.dedent(code)],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_pickled_function_runs_where_its_modules_are_not_installed(
    user_app: ModuleType, tmp_path: Path,
) -> None:
    helper = user_app.__name__.replace("app", "helper")
    out = run_pickle_elsewhere(pickle_function(user_app.predict), tmp_path, f"""
        importable = [importlib.util.find_spec(m) is not None
                      for m in ({user_app.__name__!r}, {helper!r})]
        print(json.dumps({{"importable": importable, "result": fn(4)}}))
    """)
    assert out == {"importable": [False, False],
                   "result": {"double": 8, "scaled": 12, "again": 13, "json": "4"}}


def test_plain_cloudpickle_would_not_have_shipped_them(
    user_app: ModuleType, tmp_path: Path,
) -> None:
    """The control: without registering user modules the pickle refers to them by name."""
    with pytest.raises(AssertionError, match="No module named"):
        run_pickle_elsewhere(cloudpickle.dumps(user_app.predict), tmp_path, "fn(4)")


def test_pickle_function_leaves_the_registry_as_it_found_it(user_app: ModuleType) -> None:
    before = set(cloudpickle.list_registry_pickle_by_value())
    pickle_function(user_app.predict)
    assert set(cloudpickle.list_registry_pickle_by_value()) == before
    assert user_app.__name__ not in cloudpickle.list_registry_pickle_by_value()


def test_pickling_from_several_threads_at_once(user_app: ModuleType) -> None:
    """cloudpickle's by-value registry is global: deploys in threads must not unregister
    each other's modules mid-pickle (a ValueError before the lock) nor ship a pickle that
    refers to a user module by name."""
    before = set(cloudpickle.list_registry_pickle_by_value())

    def pickle_many(_: int) -> list[bytes]:
        return [pickle_function(user_app.predict) for _ in range(30)]

    with ThreadPoolExecutor(8) as pool:
        pickles = [p for batch in pool.map(pickle_many, range(8)) for p in batch]
    assert len(pickles) == 240
    by_name = cloudpickle.dumps(user_app.predict)
    assert all(len(p) > len(by_name) for p in pickles)  # each carries the modules' code
    assert set(cloudpickle.list_registry_pickle_by_value()) == before
