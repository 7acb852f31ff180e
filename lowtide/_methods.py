"""Class deployments: which methods of a class are callable, and its stop hooks.

Shared by the SDK (which records the methods and their parameter names in the spec) and the
replica (which builds one instance and serves those methods). Only `inspect`: the SDK's
imports stay light.

- Public methods are the names a caller may use in `POST /fn/{name}/{method}`: every plain,
  static or class method whose name does not start with `_`, plus `__call__` (served at
  `POST /fn/{name}`). Properties and other attributes are not methods.
- A stop hook is a method marked with `@lowtide.on_shutdown` (BentoML's name for the same
  hook; Modal calls it `@modal.exit()`): the replica runs it once when it stops, after its
  in-flight calls drained, to release GPU memory, flush buffers or close clients. It is not
  callable over HTTP.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

CALL = "__call__"
SHUTDOWN_MARK = "__lowtide_on_shutdown__"
MAX_METHODS = 200

F = TypeVar("F", bound=Callable[..., Any])


def on_shutdown(fn: F) -> F:
    """Mark a method of a deployed class to run when its replica stops (sync or async,
    no arguments besides self). Several may be marked; they run in name order."""
    setattr(fn, SHUTDOWN_MARK, True)
    return fn


def _function_of(attr: object) -> Callable[..., Any] | None:
    if isinstance(attr, (staticmethod, classmethod)):
        attr = attr.__func__
    return attr if inspect.isfunction(attr) or inspect.iscoroutinefunction(attr) else None


def _members(cls: type) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        fn = _function_of(inspect.getattr_static(cls, name, None))
        if fn is not None:
            found[name] = fn
    return found


def shutdown_hooks(cls: type) -> list[str]:
    return sorted(n for n, fn in _members(cls).items() if getattr(fn, SHUTDOWN_MARK, False))


def public_methods(cls: type) -> list[str]:
    """The callable method names of `cls`, `__call__` first when the class has one."""
    members = _members(cls)
    names = sorted(n for n, fn in members.items()
                   if not n.startswith("_") and not getattr(fn, SHUTDOWN_MARK, False))
    if CALL in members:
        names.insert(0, CALL)
    return names


def parameter_names(fn: Callable[..., Any], bound: bool = False) -> list[str] | None:
    """Names positional arguments bind to (without `self` for a method, `bound=True`), or
    None when the callable takes *args."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound and params and params[0].kind in (params[0].POSITIONAL_ONLY,
                                                params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def method_params(cls: type) -> dict[str, list[str] | None]:
    """Each public method -> its parameter names (None: it takes *args): the spec's
    `methods`, so the SDK binds positional arguments for any method."""
    out: dict[str, list[str] | None] = {}
    for name in public_methods(cls):
        attr = inspect.getattr_static(cls, name)
        fn = _function_of(attr)
        assert fn is not None
        out[name] = parameter_names(fn, bound=not isinstance(attr, staticmethod))
    return out


def describe(methods: list[str] | dict[str, Any]) -> str:
    """'__call__, embed, similarity' — for messages that list what can be called."""
    return ", ".join(methods) if methods else "none"
