"""`@lowtide.batched`: mark a function or method as taking a batch of calls at once.

Modal's convention: each parameter receives the list of the callers' values, and the
function returns a list of as many outputs, in order. Callers send and receive single
items, exactly as for any endpoint. The mark is an attribute of the function, so it travels
with it through cloudpickle; the replica reads it back (`batch_spec`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

ATTR = "__lowtide_batched__"
MAX_BATCH_SIZE = 4096

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class BatchSpec:
    max_batch_size: int | None = None  # a bound (memory), never required


@overload
def batched(fn: F, /) -> F: ...
@overload
def batched(*, max_batch_size: int | None = None) -> Callable[[F], F]: ...


def batched(fn: Any = None, /, *, max_batch_size: int | None = None) -> Any:
    """Batch concurrent calls of `fn`: `def embed(texts: list[str]) -> list[list[float]]`
    decorated with `@lowtide.batched` is called as `ep(texts="hello")`. The replica learns
    how long batches take and decides how many calls to take and how long to wait; the
    optional `max_batch_size` caps a batch (e.g. to bound GPU memory)."""
    if max_batch_size is not None and (
            isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
            or not 1 <= max_batch_size <= MAX_BATCH_SIZE):
        raise ValueError(f"max_batch_size={max_batch_size!r} must be an integer in "
                         f"[1, {MAX_BATCH_SIZE}] (or left out: the replica learns it)")

    def mark(f: F) -> F:
        check_batchable(f)
        setattr(f, ATTR, BatchSpec(max_batch_size))
        return f

    return mark if fn is None else mark(fn)


def check_batchable(fn: Callable[..., Any]) -> None:
    """A batched function takes named parameters (each gets a list) and returns a list."""
    if not callable(fn):
        raise TypeError(f"@lowtide.batched decorates a function or method, not a "
                        f"{type(fn).__name__}")
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} is a generator: a batched function "
                        "returns one list of outputs; stream or batch, not both")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    variadic = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        raise TypeError(f"a batched function takes named parameters, each receiving a list; "
                        f"{getattr(fn, '__name__', fn)!r} has *{variadic[0]}")


def batch_spec(fn: Any) -> BatchSpec | None:
    """The batching mark of a function or a bound method, if it has one."""
    spec = getattr(fn, ATTR, None)
    return spec if isinstance(spec, BatchSpec) else None
