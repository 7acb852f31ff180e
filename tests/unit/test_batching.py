"""The batch loop in process: each caller's own answer, errors, expiry, methods."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import generate_latest

import lowtide
from lowtide._batched import BatchSpec, batch_spec
from lowtide._protocol import JSON, Result
from lowtide.workers.batching import REGISTRY as BATCH_METRICS
from lowtide.workers.batching import Batcher, split_outputs
from lowtide.workers.features import Features, combined_limit
from lowtide.workers.runtime import LoadedFunction


def loaded(fn: Callable[..., Any]) -> LoadedFunction:
    return LoadedFunction(fn, inspect.signature(fn), inspect.iscoroutinefunction(fn))


def body(result: Result) -> Any:
    return json.loads(result.body)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


async def call_all(batcher: Batcher, bodies: list[bytes], timeout_s: float = 5.0
                   ) -> list[Result]:
    try:
        return await asyncio.gather(*(batcher.submit(JSON, b, timeout_s) for b in bodies))
    finally:
        await batcher.stop()


def test_decorator_marks_and_checks() -> None:
    @lowtide.batched
    def embed(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    @lowtide.batched(max_batch_size=16)
    def rank(q: list[str]) -> list[int]:
        return [0] * len(q)

    assert batch_spec(embed) == BatchSpec(None)
    assert batch_spec(rank) == BatchSpec(16)
    assert embed(["ab"]) == [2]  # still callable locally
    with pytest.raises(TypeError, match=r"\*args"):
        lowtide.batched(lambda *args: args)
    with pytest.raises(ValueError, match="max_batch_size=0"):
        lowtide.batched(max_batch_size=0)

    def gen(x: list[int]) -> Iterator[int]:
        yield 1
    with pytest.raises(TypeError, match="generator"):
        lowtide.batched(gen)


def test_each_caller_gets_its_own_answer_from_shared_batches(
        executor: ThreadPoolExecutor) -> None:
    sizes: list[int] = []

    def double(x: list[int], scale: list[int]) -> list[int]:
        sizes.append(len(x))
        time.sleep(0.01)
        return [v * s for v, s in zip(x, scale, strict=True)]

    batcher = Batcher(loaded(double), BatchSpec(), executor)
    bodies = [json.dumps({"x": i, "scale": 1 + i % 3}).encode() for i in range(40)]
    results = asyncio.run(call_all(batcher, bodies))
    assert [body(r) for r in results] == [i * (1 + i % 3) for i in range(40)]
    assert sum(sizes) == 40 and max(sizes) > 1  # they were batched
    view = batcher.view()
    assert view["batches"] == len(sizes) and view["item_limit"] >= 2


def test_defaults_positional_and_async(executor: ThreadPoolExecutor) -> None:
    async def fmt(prefix: list[str], /, name: list[str], punct: Any = "!") -> list[str]:
        await asyncio.sleep(0)
        return [f"{p}{n}{q}" for p, n, q in zip(prefix, name, punct, strict=True)]

    batcher = Batcher(loaded(fmt), BatchSpec(), executor)
    results = asyncio.run(call_all(batcher, [b'{"prefix": "hi ", "name": "a"}',
                                             b'{"prefix": "yo ", "name": "b", "punct": "?"}']))
    assert [body(r) for r in results] == ["hi a!", "yo b?"]


def test_a_raising_batch_answers_every_caller(executor: ThreadPoolExecutor) -> None:
    def boom(x: list[int]) -> list[int]:
        raise RuntimeError("model exploded")

    results = asyncio.run(call_all(Batcher(loaded(boom), BatchSpec(), executor),
                                   [b'{"x": 1}', b'{"x": 2}']))
    for r in results:
        assert r.status == 500
        assert body(r)["type"] == "RuntimeError" and "model exploded" in body(r)["detail"]


@pytest.mark.parametrize(("outputs", "detail"), [
    ([1], "returned 1 outputs for 2 inputs"),
    ("ab", "returned a str"),
    (None, "returned a NoneType"),
])
def test_a_wrong_result_is_a_clear_500(outputs: Any, detail: str) -> None:
    for r in split_outputs(outputs, 2):
        assert r.status == 500 and detail in body(r)["detail"]


def test_numpy_like_outputs_split_by_row() -> None:
    class Rows:
        def tolist(self) -> list[list[float]]:
            return [[1.0], [2.0]]

    assert [body(r) for r in split_outputs(Rows(), 2)] == [[1.0], [2.0]]


def test_bad_input_is_answered_alone(executor: ThreadPoolExecutor) -> None:
    def ident(x: list[int]) -> list[int]:
        return x

    results = asyncio.run(call_all(Batcher(loaded(ident), BatchSpec(), executor),
                                   [b'{"x": 1}', b'{"y": 2}', b"{bad"]))
    assert results[0].status == 200 and body(results[0]) == 1
    assert [r.status for r in results[1:]] == [400, 400]


def test_expired_items_leave_the_queue_and_never_run(executor: ThreadPoolExecutor) -> None:
    ran: list[int] = []

    def slow(x: list[int]) -> list[int]:
        ran.extend(x)
        time.sleep(0.3)
        return x

    async def scenario() -> list[Result]:
        b = Batcher(loaded(slow), BatchSpec(), executor)
        first = asyncio.ensure_future(b.submit(JSON, b'{"x": 1}', 5.0))
        await asyncio.sleep(0.05)  # the first batch runs; the next item waits behind it
        late = b.submit(JSON, b'{"x": 2}', 5.0, start_by=time.monotonic() + 0.1)
        try:
            return list(await asyncio.gather(first, late))
        finally:
            await b.stop()

    first, late = asyncio.run(scenario())
    assert first.status == 200
    assert late.status == 504 and "waited in the queue" in body(late)["detail"]
    assert ran == [1]


def test_a_batch_past_its_timeout_is_504_for_each(executor: ThreadPoolExecutor) -> None:
    async def stuck(x: list[int]) -> list[int]:
        await asyncio.sleep(10)
        return x

    results = asyncio.run(call_all(Batcher(loaded(stuck), BatchSpec(), executor),
                                   [b'{"x": 1}', b'{"x": 2}'], timeout_s=0.2))
    assert [r.status for r in results] == [504, 504]


def test_max_batch_size_caps_batches(executor: ThreadPoolExecutor) -> None:
    sizes: list[int] = []

    def f(x: list[int]) -> list[int]:
        sizes.append(len(x))
        time.sleep(0.005)
        return x

    asyncio.run(call_all(Batcher(loaded(f), BatchSpec(max_batch_size=3), executor),
                         [b"{\"x\": %d}" % i for i in range(20)]))
    assert max(sizes) <= 3 and sum(sizes) == 20


def test_a_batched_method_of_an_instance(executor: ThreadPoolExecutor) -> None:
    class Model:
        def __init__(self) -> None:
            self.offset = 100

        @lowtide.batched
        def predict(self, x: list[int]) -> list[int]:
            return [v + self.offset for v in x]

    method = Model().predict
    spec = batch_spec(method)
    assert spec is not None
    results = asyncio.run(call_all(Batcher(loaded(method), spec, executor),
                                   [b'{"x": 1}', b'{"x": 2}']))
    assert [body(r) for r in results] == [101, 102]


# ---- per method: a class's batched, streaming and plain methods ----------------------------
@pytest.mark.parametrize(("plain", "batches", "expected"), [
    (7, [], 7),  # nothing batched: the limiter's limit alone
    (None, [16], 16),  # only batched callables: their item limits
    (None, [16, 8], 24),  # each batcher admits its own two batches
    (4, [16], 20),  # unbatched methods run beside the batches
])
def test_combined_limit_counts_items_across_methods(plain: int | None, batches: list[int],
                                                    expected: int) -> None:
    assert combined_limit(plain, batches) == expected


def test_a_class_gets_a_batcher_per_batched_method(executor: ThreadPoolExecutor) -> None:
    class Model:
        @lowtide.batched
        def embed(self, texts: list[str]) -> list[int]:
            return [len(t) for t in texts]

        @lowtide.batched(max_batch_size=4)
        def __call__(self, x: list[int]) -> list[int]:
            return [v + 1 for v in x]

        def tokens(self, n: int) -> Iterator[int]:
            yield from range(n)

        def info(self) -> str:
            return "plain"

    instance = Model()
    methods = {"": loaded(instance.__call__), "embed": loaded(instance.embed),
               "tokens": loaded(instance.tokens), "info": loaded(instance.info)}
    features = Features.build(methods, True, executor, "ep")
    assert set(features.batchers) == {"", "embed"}
    assert features.streaming == {"tokens"} and features.streams("tokens")
    assert not features.streams("") and features.batcher("info") is None
    assert features.plain  # tokens and info are limited by the limiter
    item_limits = [b.item_limit for b in features.batchers.values()]
    assert features.limit(5) == sum(item_limits) + 5
    assert set(features.view()["batches"]) == {"__call__", "embed"}  # type: ignore[arg-type]
    assert "embed: two batches of" in features.limit_reason("learned")

    async def both() -> tuple[list[Result], list[Result]]:
        try:
            return await asyncio.gather(
                asyncio.gather(*(features.batchers["embed"].submit(JSON, b'{"texts": "%s"}'
                                                                   % (b"x" * i), 5.0)
                                 for i in range(1, 6))),
                asyncio.gather(*(features.batchers[""].submit(JSON, b'{"x": %d}' % i, 5.0)
                                 for i in range(5))))
        finally:
            await features.stop()

    embedded, called = asyncio.run(both())
    assert [body(r) for r in embedded] == [1, 2, 3, 4, 5]
    assert [body(r) for r in called] == [1, 2, 3, 4, 5]
    text = generate_latest(BATCH_METRICS).decode()
    assert 'lowtide_batch_size_count{endpoint="ep",function="embed"}' in text
    assert 'lowtide_batch_size_count{endpoint="ep",function="__call__"}' in text


def test_a_batched_function_keeps_its_single_view(executor: ThreadPoolExecutor) -> None:
    @lowtide.batched
    def embed(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    features = Features.build({"": loaded(embed)}, False, executor, "fn-ep")
    assert not features.plain and features.limit(99) == features.batchers[""].item_limit
    assert "fixed_ms" in features.view()["batch"]  # type: ignore[operator]


def test_outputs_are_encoded_in_the_batch_thread_and_its_time_learned(
        executor: ThreadPoolExecutor) -> None:
    """The JSON of each caller's answer is made in the executor thread with the call (the
    event loop does no per-item work while it serves callers), and the learned line gets
    the time the call and its encoding took there, read by the batcher's clock."""
    import threading

    encoded_in: list[str] = []
    ticks = iter(range(1000))

    class Rows:
        def __init__(self, n: int) -> None:
            self.n = n

        def tolist(self) -> list[int]:
            encoded_in.append(threading.current_thread().name)
            return list(range(self.n))

    def rows(x: list[int]) -> Rows:
        return Rows(len(x))

    batcher = Batcher(loaded(rows), BatchSpec(), executor, clock=lambda: float(next(ticks)))
    results = asyncio.run(call_all(batcher, [b'{"x": 1}'] * 3))
    assert [r.status for r in results] == [200] * 3
    assert encoded_in and threading.main_thread().name not in encoded_in
    fit = batcher.policy.line.fit()
    assert fit is not None and fit.predict_s(batcher.policy.largest) == 1.0  # one tick
