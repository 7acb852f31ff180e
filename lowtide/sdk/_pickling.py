"""Serialize a function by value, with the user's own modules, so workers need not have them.

Functions from `__main__`, lambdas and closures are pickled by value by cloudpickle itself.
Modules the user wrote (not in the standard library, not installed in site-packages) are
registered for pickling by value too; installed packages such as numpy stay by reference.
"""

from __future__ import annotations

import functools
import inspect
import site
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

# a module's file -> whether it is the user's: resolving every imported module's path cost
# two thirds of a deploy (~40 ms with a few hundred modules imported); files do not move
_USER_FILE: dict[str, bool] = {}


@functools.cache
def _installed_roots() -> list[Path]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        paths.add(site.getusersitepackages())
    return [Path(p).resolve() for p in paths if p]


def is_user_module(module: ModuleType, roots: list[Path] | None = None) -> bool:
    """A module with a source file outside the standard library and site-packages."""
    name = getattr(module, "__name__", "")
    if name == "__main__" or name.split(".")[0] == "lowtide":
        return False
    file = getattr(module, "__file__", None)
    if not file:
        return False
    if roots is None and file in _USER_FILE:
        return _USER_FILE[file]
    path = Path(file).resolve()
    mine = not any(path.is_relative_to(root) for root in (roots or _installed_roots()))
    if roots is None:
        _USER_FILE[file] = mine
    return mine


def user_modules() -> list[str]:
    """Top-level names of the user's own imported modules."""
    tops = set()
    for name, module in list(sys.modules.items()):
        if module is not None and "." not in name and is_user_module(module):
            tops.add(name)
    return sorted(tops)


# cloudpickle's by-value registry is global: deploys from several threads at once would
# unregister each other's modules mid-pickle (seen: "is not registered for pickle by value")
_PICKLING = threading.Lock()


def pickle_function(fn: Callable[..., Any]) -> bytes:
    with _PICKLING:
        return _pickle_by_value(fn)


def _pickle_by_value(fn: Callable[..., Any]) -> bytes:
    registered = []
    for name in user_modules():
        try:
            cloudpickle.register_pickle_by_value(sys.modules[name])
            registered.append(name)
        except ValueError:
            continue
    try:
        return cloudpickle.dumps(fn)
    finally:
        for name in registered:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])


def parameter_names(fn: Callable[..., Any]) -> list[str] | None:
    """Names positional arguments bind to, or None when the function takes *args."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
