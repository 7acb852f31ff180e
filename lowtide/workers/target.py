"""What a replica serves: a deployed function, or one instance of a deployed class.

A class deployment is built once per replica, before the replica takes any request: its
constructor is where a model is loaded (BentoML services, Ray Serve deployments and Modal's
`@enter` work the same way). `POST /fn/{name}` calls `__call__`, `POST /fn/{name}/{method}`
any other public method (`lowtide._methods`); sync methods run on the replica's executor,
async ones on its event loop, as functions do. Hooks marked `@lowtide.on_shutdown` run once
when the replica stops.

`load_artifact` and `Target.build` raise whatever the user's code raised (an import error
while unpickling, an exception in the constructor): the replica reports that as the reason
it cannot start.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle

from .._methods import CALL, describe, public_methods, shutdown_hooks
from .._protocol import Result, error_result
from .runtime import LoadedFunction

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 30.0


def load_artifact(path: Path) -> Any:
    """Unpickle the deployed function or class (imports the modules it references)."""
    obj = cloudpickle.loads(path.read_bytes())
    if not callable(obj):
        raise TypeError(f"artifact holds a {type(obj).__name__}, not a function or a class")
    return obj


def exception_text(exc: BaseException) -> str:
    """'ModuleNotFoundError: No module named 'tabulate'' — what callers are told."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:500]


@dataclass(frozen=True)
class Target:
    """The callables of one replica: "" is `__call__` (or the function)."""

    methods: dict[str, LoadedFunction]
    class_name: str = ""  # the deployed class; "" for a function
    hooks: list[Callable[[], Any]] = field(default_factory=list)

    @classmethod
    def build(cls, obj: Any) -> Target:
        """A function as is; a class constructed once (without arguments)."""
        if not inspect.isclass(obj):
            return cls({"": LoadedFunction.of(obj)})
        instance = obj()
        methods = {("" if name == CALL else name): LoadedFunction.of(getattr(instance, name))
                   for name in public_methods(obj)}
        hooks = [getattr(instance, name) for name in shutdown_hooks(obj)]
        return cls(methods, obj.__name__, hooks)

    def get(self, method: str) -> LoadedFunction | None:
        return self.methods.get(method)

    def names(self) -> list[str]:
        return [CALL if name == "" else name for name in self.methods]

    def not_found(self, method: str) -> Result:
        """The answer to a call of a method this target does not have."""
        listed = describe(self.names())
        if not self.class_name:
            return error_result(404, "not found", "this endpoint is a function: it has no "
                                f"method {method!r}; call it at /fn/{{name}}")
        if method == "":
            return error_result(404, "not found", f"{self.class_name} has no __call__; "
                                f"call one of its methods at /fn/{{name}}/METHOD: {listed}",
                                methods=self.names())
        return error_result(404, "not found", f"{self.class_name} has no public method "
                            f"{method!r}; its methods: {listed}", methods=self.names())

    async def shutdown(self, executor: Any = None) -> None:
        """Run the stop hooks once, each bounded by SHUTDOWN_TIMEOUT_S; their errors are
        logged (the replica stops anyway)."""
        loop = asyncio.get_running_loop()
        for hook in self.hooks:
            name = getattr(hook, "__name__", "hook")
            try:
                if inspect.iscoroutinefunction(hook):
                    await asyncio.wait_for(hook(), SHUTDOWN_TIMEOUT_S)
                else:
                    await asyncio.wait_for(loop.run_in_executor(executor, hook),
                                           SHUTDOWN_TIMEOUT_S)
                log.info("stop hook %s.%s ran", self.class_name, name)
            except asyncio.TimeoutError:
                log.error("stop hook %s.%s did not return within %g s", self.class_name,
                          name, SHUTDOWN_TIMEOUT_S)
            except Exception:
                log.exception("stop hook %s.%s raised", self.class_name, name)
