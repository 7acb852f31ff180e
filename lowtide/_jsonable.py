"""Array values as JSON: numpy arrays and scalars, and torch tensors, become lists and
numbers, on the way in (the SDK's arguments) and on the way out (a function's result).

Used as `json.dumps(value, default=jsonable)`: it is asked only about values the JSON
encoder does not know, so plain values cost nothing, and neither numpy nor torch is
imported here (a value is recognised by its type's module). A tensor on a GPU is copied to
the CPU first. Anything else stays a TypeError naming the type and what to send instead.
"""

from __future__ import annotations

from typing import Any


def _module_of(value: Any) -> str:
    return type(value).__module__.split(".", 1)[0]


def jsonable(value: Any) -> Any:
    """The JSON-compatible form of a numpy array/scalar or a torch tensor."""
    module = _module_of(value)
    if module == "numpy":
        if hasattr(value, "tolist"):  # ndarray, and scalars (np.float32(1).tolist() == 1.0)
            return value.tolist()
    elif module == "torch" and hasattr(value, "detach"):
        return value.detach().cpu().tolist()
    raise TypeError(f"a {type(value).__name__} is not JSON: send JSON values (numbers, "
                    "strings, lists, dicts; numpy arrays and torch tensors become lists), "
                    "or bytes alone")
