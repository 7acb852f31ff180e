"""What each callable of a replica needs beyond a plain call: a `Batcher` for a batched
function or method, a streamed answer for a generator.

A function deployment has one callable (""); a class deployment one per public method
("" is `__call__`). Each batched one gets its own batcher, with its own learned cost line,
its own queue and its own metrics (labelled by method), so `embed` and `rerank` never share
a batch. Generators (sync or async) stream, whichever method they are.

The replica's concurrency limit counts items across all of them (`combined_limit`): each
batcher admits its own two batches' worth (`Batcher.item_limit`), and the methods that are
not batched (plain calls and streams) add the limit the replica's limiter learned from
their latency. A function or class with no batched method keeps the limiter's limit alone.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

from .._batched import batch_spec
from .._methods import CALL
from .batching import Batcher
from .runtime import LoadedFunction
from .streaming import is_streaming


def combined_limit(plain_limit: int | None, batch_limits: list[int]) -> int:
    """Items the replica admits at once: the batchers' item limits, plus the limiter's
    limit for the unbatched methods (`plain_limit`, None when every method is batched)."""
    if not batch_limits:
        return max(1, plain_limit or 1)
    return sum(batch_limits) + (plain_limit or 0)


@dataclass
class Features:
    batchers: dict[str, Batcher]  # method ("" for __call__ or the function) -> its batcher
    streaming: frozenset[str]  # methods that are generators
    plain: bool  # some method is neither batched: the limiter's limit counts too
    is_class: bool = False

    @classmethod
    def build(cls, methods: dict[str, LoadedFunction], is_class: bool,
              executor: Executor | None, endpoint: str = "",
              fixed_wait_s: float | None = None) -> Features:
        """A `Batcher` for each `@lowtide.batched` callable, the generators marked."""
        batchers: dict[str, Batcher] = {}
        for name, fn in methods.items():
            spec = batch_spec(fn.fn)
            if spec is not None:
                batchers[name] = Batcher(fn, spec, executor, endpoint,
                                         fixed_wait_s=fixed_wait_s,
                                         name=(name or CALL) if is_class else "")
        streaming = frozenset(n for n, fn in methods.items() if is_streaming(fn))
        return cls(batchers, streaming, any(n not in batchers for n in methods), is_class)

    def streams(self, method: str) -> bool:
        return method in self.streaming

    def batcher(self, method: str) -> Batcher | None:
        return self.batchers.get(method)

    def limit(self, plain_limit: int) -> int:
        """The replica's item limit given the limiter's current one."""
        return combined_limit(plain_limit if self.plain else None,
                              [b.item_limit for b in self.batchers.values()])

    def limit_reason(self, plain_reason: str) -> str:
        if not self.batchers:
            return plain_reason
        parts = [f"{'' if not self.is_class else (name or CALL) + ': '}two batches of "
                 f"{b.policy.cap()} ({b.policy.cap_reason})"
                 for name, b in self.batchers.items()]
        if self.plain:
            parts.append(f"unbatched methods: {plain_reason}")
        return "; ".join(parts)

    def view(self) -> dict[str, object]:
        """For the heartbeat (and status): a batched function's `batch`; a class's
        `batches` by method name."""
        if not self.batchers:
            return {}
        if not self.is_class:
            return {"batch": next(iter(self.batchers.values())).view()}
        return {"batches": {(name or CALL): b.view() for name, b in self.batchers.items()}}

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
