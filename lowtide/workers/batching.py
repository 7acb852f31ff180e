"""The replica's batch loop for a `@lowtide.batched` function or method (one `Batcher`
each): callers' items in, one call per batch, each caller's own answer out.

Thin: every decision (how many, how long to wait) is `batcher.BatchPolicy`'s. Items come
from direct calls and from the stream puller alike (both hold one replica slot per item),
so a batch mixes both. An item whose latest start passes while it waits is answered 504 and
leaves the queue; it never runs late. A batch runs for at most the shortest time its items
have left; a batch that raises answers each of its callers with the exception, and a result
that is not a list of one output per item is a 500 for each, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from .._batched import BatchSpec
from .._protocol import Result, error_result, timeout_result
from .batcher import BatchObservation, BatchPolicy, FixedWaitPolicy
from .runtime import (
    CANCEL_GRACE_S,
    BadInput,
    LoadedFunction,
    bind_arguments,
    encode_value,
    parse_arguments,
    queue_expired_result,
    raised,
)

log = logging.getLogger(__name__)

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
WAIT_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1)


@dataclass(eq=False)
class _Item:
    arguments: dict[str, Any]  # by parameter name, defaults applied
    arrived: float  # monotonic
    start_by: float  # monotonic: an item still queued then is answered 504
    end_by: float  # monotonic: when its caller's run time is up
    timeout_s: float
    answer: asyncio.Future[Result] = field(default_factory=lambda: (
        asyncio.get_running_loop().create_future()))


REGISTRY = CollectorRegistry(auto_describe=False)  # the replica's /lt/metrics
_SIZES = Histogram("lowtide_batch_size", "Items per batch", ["endpoint", "function"],
                   buckets=SIZE_BUCKETS, registry=REGISTRY)
_WAITS = Histogram("lowtide_batch_wait_seconds", "Time an item waited for its batch to start",
                   ["endpoint", "function"], buckets=WAIT_BUCKETS, registry=REGISTRY)


class BatchStats:
    """Batch sizes and waits, for status and the replica's /metrics."""

    def __init__(self, endpoint: str, function: str) -> None:
        self.sizes = _SIZES.labels(endpoint, function)
        self.waits = _WAITS.labels(endpoint, function)
        self.batches = 0
        self.items = 0
        self.size_counts: dict[int, int] = {}  # by power-of-two bucket upper bound
        self.wait_sum_s = 0.0
        self.last_reason = ""

    def observe(self, size: int, waits_s: list[float], reason: str) -> None:
        self.batches += 1
        self.items += size
        bucket = next(b for b in SIZE_BUCKETS if size <= b)
        self.size_counts[bucket] = self.size_counts.get(bucket, 0) + 1
        self.sizes.observe(size)
        for w in waits_s:
            self.waits.observe(w)
        self.wait_sum_s += sum(waits_s)
        self.last_reason = reason


class Batcher:
    def __init__(self, fn: LoadedFunction, spec: BatchSpec, executor: Executor | None,
                 endpoint: str = "", clock: Callable[[], float] = time.monotonic,
                 fixed_wait_s: float | None = None, name: str = "") -> None:
        """`name`: the metrics' `function` label (a class's method name; default the
        function's name)."""
        self.fn = fn
        self.policy = BatchPolicy(spec.max_batch_size) if fixed_wait_s is None else (
            FixedWaitPolicy(fixed_wait_s, spec.max_batch_size))
        self.stats = BatchStats(endpoint, name or getattr(fn.fn, "__name__", "function"))
        self._executor = executor
        self._clock = clock
        self._queue: deque[_Item] = deque()
        self._running = 0
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._last_arrival = clock()

    @property
    def item_limit(self) -> int:
        return self.policy.item_limit

    async def submit(self, content_type: str, body: bytes, timeout_s: float,
                     start_by: float | None = None) -> Result:
        """One caller's item; its answer once its batch ran. `start_by` (monotonic): the
        latest start of a buffered request."""
        try:
            arguments = self._arguments(content_type, body)
        except BadInput as exc:
            return error_result(400, "bad input", str(exc))
        now = self._clock()
        end_by = now + timeout_s
        item = _Item(arguments, now, min(end_by, start_by or end_by), end_by, timeout_s)
        self.policy.on_arrival(now)
        self._last_arrival = now
        self._queue.append(item)
        self._ensure_loop()
        self._wake.set()
        try:
            return await asyncio.shield(item.answer)
        except asyncio.CancelledError:
            if item in self._queue:  # its caller left before the batch formed
                self._queue.remove(item)
            raise

    def _arguments(self, content_type: str, body: bytes) -> dict[str, Any]:
        args, kwargs = bind_arguments(self.fn, *parse_arguments(content_type, body))
        if self.fn.signature is None:
            if args:
                raise BadInput("send the arguments as a JSON object of parameter names")
            return kwargs
        bound = self.fn.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    # ---- the loop -----------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._batches) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            self._expire(now)
            decision = self.policy.decide(self._observe(now), now)
            if decision.take:
                self._start(decision.take, decision.reason, now)
                continue
            if not self._queue and not self._running:
                return  # idle: the next submit starts the loop again
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._wait_s(decision.wait_s, now))

    def _wait_s(self, wait_s: float | None, now: float) -> float | None:
        """Until the policy's time, or the next item's latest start (to answer it then)."""
        expiry_s = min((i.start_by - now for i in self._queue), default=None)
        if expiry_s is None:
            return wait_s
        return max(0.0, expiry_s) if wait_s is None else max(0.0, min(wait_s, expiry_s))

    def _observe(self, now: float) -> BatchObservation:
        q = self._queue
        return BatchObservation(
            queued=len(q), oldest_wait_s=now - q[0].arrived if q else 0.0,
            since_arrival_s=now - self._last_arrival, running=self._running,
            timeout_s=min((i.end_by - now for i in q), default=float("inf")))

    def _expire(self, now: float) -> None:
        if not any(i.start_by <= now for i in self._queue):
            return
        keep: deque[_Item] = deque()
        for item in self._queue:
            if item.start_by > now:
                keep.append(item)
            elif not item.answer.done():
                item.answer.set_result(queue_expired_result(now - item.start_by)
                                       if item.start_by < item.end_by
                                       else timeout_result(item.timeout_s))
        self._queue = keep

    def _start(self, take: int, reason: str, now: float) -> None:
        batch = [self._queue.popleft() for _ in range(min(take, len(self._queue)))]
        self.stats.observe(len(batch), [now - i.arrived for i in batch], reason)
        self._running += 1
        task = asyncio.create_task(self._run(batch), name="batch")
        self._batches.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._running -= 1
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch failed", exc_info=task.exception())

    async def _run(self, batch: list[_Item]) -> None:
        try:
            results, run_s = await self._call(
                batch, min(i.end_by for i in batch) - self._clock())
        except BaseException as exc:  # an answer for every caller, whatever happened
            results = [error_result(500, "internal error", f"{type(exc).__name__} while "
                                    "running a batch (see `lowtide logs`)")] * len(batch)
            if isinstance(exc, asyncio.CancelledError):
                _answer(batch, results)
                raise
        else:
            if run_s is not None:
                self.policy.on_batch(len(batch), run_s)
        _answer(batch, results)

    async def _call(self, batch: list[_Item], timeout_s: float
                    ) -> tuple[list[Result], float | None]:
        """Each caller's answer, and how long the batch ran (None: it timed out). A sync
        function's call and its outputs' encoding both run in the executor thread, timed
        there: the learned line then counts the batch's own cost, not the event loop's
        delay in noticing it ended, and the loop thread does no per-item JSON work while
        it serves callers (it would compete with the next batch for the GIL)."""
        args, kwargs = self._columns(batch)
        fn, n, clock = self.fn, len(batch), self._clock

        def run_and_encode() -> tuple[list[Result], float]:
            started = clock()
            try:
                outputs = fn.fn(*args, **kwargs)
            except BaseException as exc:
                return [raised(exc)] * n, clock() - started
            return split_outputs(outputs, n), clock() - started

        if fn.is_async:
            call: asyncio.Future[Any] = asyncio.ensure_future(
                _timed_async(fn.fn(*args, **kwargs), n, clock))
        else:
            call = asyncio.get_running_loop().run_in_executor(self._executor, run_and_encode)
        done, _ = await asyncio.wait({call}, timeout=max(0.0, timeout_s))
        if not done:
            call.cancel()
            if fn.is_async:
                await asyncio.wait({call}, timeout=CANCEL_GRACE_S)
            return [timeout_result(round(timeout_s, 3))] * n, None
        results, run_s = call.result()
        return results, run_s

    def _columns(self, batch: list[_Item]) -> tuple[list[list[Any]], dict[str, list[Any]]]:
        """One list per parameter, in the callers' order."""
        names = list(batch[0].arguments)
        positional: set[str] = set()
        if self.fn.signature is not None:
            params = self.fn.signature.parameters.values()
            names = [p.name for p in params]
            positional = {p.name for p in params if p.kind is p.POSITIONAL_ONLY}
        columns = {n: [i.arguments.get(n) for i in batch] for n in names}
        args = [columns.pop(n) for n in names if n in positional]
        return args, columns

    def view(self) -> dict[str, object]:
        s = self.stats
        return {**self.policy.view(), "item_limit": self.item_limit, "batches": s.batches,
                "mean_size": round(s.items / s.batches, 2) if s.batches else None,
                "mean_wait_ms": round(s.wait_sum_s / s.items * 1000, 3) if s.items else None,
                "sizes": {f"<={b}": n for b, n in sorted(s.size_counts.items())},
                "last_reason": s.last_reason}


def split_outputs(outputs: Any, n: int) -> list[Result]:
    """Each caller's answer from the batch's outputs, or a 500 for each saying what was
    wrong with them."""
    if hasattr(outputs, "tolist") and not isinstance(outputs, (list, tuple)):
        outputs = outputs.tolist()  # a numpy array or a tensor: one row per input
    if isinstance(outputs, (str, bytes, dict)) or not hasattr(outputs, "__len__") \
            or not hasattr(outputs, "__getitem__"):
        return [error_result(500, "bad batch result",
                             f"the batched function returned a {type(outputs).__name__}; it "
                             f"must return a list with one output per input ({n} here)")] * n
    if len(outputs) != n:
        return [error_result(500, "bad batch result",
                             f"the batched function returned {len(outputs)} outputs for {n} "
                             "inputs; return exactly one output per input, in order")] * n
    return [encode_value(outputs[i]) for i in range(n)]


async def _timed_async(coro: Any, n: int, clock: Callable[[], float]
                       ) -> tuple[list[Result], float]:
    started = clock()
    try:
        outputs = await coro
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return [raised(exc)] * n, clock() - started
    return split_outputs(outputs, n), clock() - started


def _answer(batch: list[_Item], results: list[Result]) -> None:
    for item, result in zip(batch, results, strict=True):
        if not item.answer.done():
            item.answer.set_result(result)

