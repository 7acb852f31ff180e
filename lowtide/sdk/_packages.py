"""Which installed packages a deployed function or class needs at start-up and call time,
recorded in the spec (`packages`) so the agents' prewarmed workers import them ahead.

Two sources, both cheap and exact about names:
- the artifact: what unpickling imports. cloudpickle writes an object of an installed package
  (an sklearn estimator in a closure, a numpy array) by reference, module and name, and a
  module it refers to (`torch` as a global) as a `subimport("torch")` call;
- the code pickled by value: `import x` statements in its bodies (a constructor's
  `import torch`), and the globals, closure cells and defaults its code names, followed into
  the user's own functions and classes (methods, properties, bases).
Only top-level names of installed distributions count (not the standard library, not the
user's modules, not lowtide itself).
"""

from __future__ import annotations

import dis
import functools
import importlib.metadata
import importlib.util
import pickletools
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

from ._pickling import is_user_module

IGNORED = frozenset({"lowtide", "cloudpickle", "__main__", "builtins"})
MAX_PACKAGES = 32
_SUBIMPORTS = frozenset({"subimport", "dynamic_subimport"})


def referenced_packages(obj: Any, artifact: bytes) -> list[str]:
    names = set(_pickle_modules(artifact))
    names.update(_code_modules(obj))
    installed = _installed_top_levels()
    tops = {n.split(".")[0] for n in names}
    return sorted(t for t in tops
                  if t in installed and t not in IGNORED and not t.startswith("_")
                  and t not in sys.stdlib_module_names)[:MAX_PACKAGES]


@functools.lru_cache(maxsize=1)
def _installed_top_levels() -> frozenset[str]:
    return frozenset(importlib.metadata.packages_distributions())


def _pickle_modules(artifact: bytes) -> Iterator[str]:
    """Modules unpickling the artifact imports: GLOBAL / STACK_GLOBAL modules, and the
    argument of cloudpickle's subimport."""
    memo: dict[int, Any] = {}
    stack: list[Any] = []  # recent pushed values (strings, else None); enough for globals
    after_subimport = False
    try:
        for op, arg, _ in pickletools.genops(artifact):
            name = op.name
            value: Any = None
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                value = arg
                if after_subimport:
                    yield str(arg)
                    after_subimport = False
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield module
                after_subimport = attr in _SUBIMPORTS
                continue
            elif name == "STACK_GLOBAL":
                if len(stack) >= 2 and isinstance(stack[-2], str):
                    yield stack[-2]
                    after_subimport = stack[-1] in _SUBIMPORTS
                stack.append(None)
                continue
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                value = memo.get(int(str(arg)))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(str(arg))] = stack[-1] if stack else None
                continue
            stack.append(value)
            del stack[:-4]
    except ValueError:  # not a pickle we can walk: the code walk still counts
        return


def _code_modules(root: Any) -> set[str]:
    found: set[str] = set()
    seen: set[int] = set()
    todo = [root]
    while todo and len(seen) < 10_000:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, types.ModuleType):
            found.add(obj.__name__)
        elif isinstance(obj, (types.FunctionType, type)):
            module = sys.modules.get(getattr(obj, "__module__", "") or "")
            if module is not None and obj.__module__ != "__main__" and not is_user_module(
                    module):
                found.add(obj.__module__)  # an installed package's: by reference
            elif isinstance(obj, types.FunctionType):
                todo.extend(_function_refs(obj, found))
            else:
                todo.extend(_class_refs(obj))
        elif isinstance(obj, (staticmethod, classmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, property):
            todo.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, types.MethodType):
            todo.append(obj.__func__)
        elif obj is not None and not isinstance(obj, (str, bytes, int, float, bool)):
            found.add(type(obj).__module__)  # an instance: its class's module
    return found


def _function_refs(fn: types.FunctionType, found: set[str]) -> list[Any]:
    refs: list[Any] = []
    names: set[str] = set()
    for code in _codes(fn.__code__):
        names.update(code.co_names)
        for ins in dis.get_instructions(code):
            if ins.opname == "IMPORT_NAME":
                found.add(str(ins.argval))
    refs.extend(fn.__globals__[n] for n in names if n in fn.__globals__)
    found.update(_framework_submodules(fn, names))
    for cell in fn.__closure__ or ():
        try:
            refs.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    refs.extend(fn.__defaults__ or ())
    refs.extend((fn.__kwdefaults__ or {}).values())
    return refs


def _framework_submodules(fn: types.FunctionType, names: set[str]) -> set[str]:
    """`bentoml.sklearn.load_model(...)` imports sklearn: an attribute of a module global
    that is a submodule named like an installed package counts as that package."""
    values = [fn.__globals__.get(n) for n in names]
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    modules = [v for v in values if isinstance(v, types.ModuleType)]
    if not modules:
        return set()
    installed = _installed_top_levels()
    found = set()
    for name in names & installed:
        for module in modules:
            if name == module.__name__.split(".")[0]:
                continue
            sub = f"{module.__name__}.{name}"
            try:
                with warnings.catch_warnings():  # a framework's deprecated shims warn
                    warnings.simplefilter("ignore")
                    if sub in sys.modules or importlib.util.find_spec(sub) is not None:
                        found.add(name)
            except (ImportError, ValueError):
                continue
    return found


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _class_refs(cls: type) -> list[Any]:
    refs: list[Any] = [b for b in cls.__bases__ if b is not object]
    refs.extend(vars(cls).values())
    return refs
