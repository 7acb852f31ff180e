"""Pure pieces of class deployments and start-up failures: method discovery, the target a
replica builds, the activator's method check, and the failed-starts backoff (fake clock)."""

from __future__ import annotations

import asyncio
import json

import pytest

import lowtide
from lowtide._failing import PLACEMENT, START, Failing, start_backoff_s
from lowtide._http import NotFound
from lowtide._methods import method_params, public_methods, shutdown_hooks
from lowtide.activator.app import check_method
from lowtide.activator.routes import EndpointRoute
from lowtide.platform.failing import StartFailures
from lowtide.workers.target import Target, exception_text


class Model:
    built = 0

    def __init__(self):
        type(self).built += 1
        self.stopped = False

    def __call__(self, x):
        return x

    def predict(self, a, b=1):
        return a * b

    @staticmethod
    def version(tag):
        return tag

    async def ping(self):
        return "ok"

    def _hidden(self):
        return None

    @lowtide.on_shutdown
    def close(self):
        self.stopped = True


def test_public_methods_and_their_parameters() -> None:
    assert public_methods(Model) == ["__call__", "ping", "predict", "version"]
    assert method_params(Model) == {"__call__": ["x"], "ping": [], "predict": ["a", "b"],
                                    "version": ["tag"]}
    assert shutdown_hooks(Model) == ["close"]


def test_a_target_builds_one_instance_and_runs_its_stop_hooks() -> None:
    Model.built = 0
    target = Target.build(Model)
    assert Model.built == 1 and target.class_name == "Model"
    assert set(target.methods) == {"", "ping", "predict", "version"}
    assert target.get("_hidden") is None and target.get("close") is None
    missing = json.loads(target.not_found("nope").body)
    assert missing["methods"] == ["__call__", "ping", "predict", "version"]
    instance = target.hooks[0].__self__
    asyncio.run(target.shutdown())
    assert instance.stopped


def test_exception_text_is_one_line() -> None:
    assert exception_text(ModuleNotFoundError("No module named 'tabulate'")) == (
        "ModuleNotFoundError: No module named 'tabulate'")
    assert exception_text(ValueError("first\nsecond")) == "ValueError: first"


@pytest.mark.parametrize(("methods", "asked", "ok"), [
    (None, "", ""), (frozenset({"__call__", "embed"}), "embed", "embed"),
    (frozenset({"__call__"}), "__call__", ""),
])
def test_check_method_accepts(methods, asked, ok) -> None:
    assert check_method(EndpointRoute("e", 1, 60.0, methods=methods), asked) == ok


@pytest.mark.parametrize(("methods", "asked", "says"), [
    (None, "embed", "is a function"),
    (frozenset({"__call__", "embed"}), "nope", "its methods: embed"),
    (frozenset({"embed"}), "", "has no __call__"),
])
def test_check_method_refuses_naming_the_methods(methods, asked, says) -> None:
    with pytest.raises(NotFound, match=says):
        check_method(EndpointRoute("e", 1, 60.0, methods=methods), asked)


def test_failed_starts_back_off_and_a_new_version_starts_afresh() -> None:
    starts = StartFailures(first_backoff_s=10.0)
    first = starts.failed("e", 1, "ValueError: x", now=100.0)
    assert (first.failures, first.until) == (1, 110.0)
    assert not starts.may_start("e", 1, now=105.0) and starts.may_start("e", 1, now=110.0)
    second = starts.failed("e", 1, "ValueError: x", now=110.0)
    assert (second.failures, second.until) == (2, 130.0)
    assert starts.may_start("e", 2, now=111.0)  # a redeploy: no old backoff
    assert starts.current("e", 2) is None
    assert [start_backoff_s(n, 10.0) for n in (1, 2, 3, 6, 9)] == [10, 20, 40, 300, 300]


def test_failing_round_trips_and_says_what_comes_next() -> None:
    f = Failing(START, "ValueError: x", 3, 3, until=140.0)
    assert Failing.from_json(f.to_json()) == f and Failing.from_json(b"garbage") is None
    assert f.active(3, 100.0) and not f.active(4, 100.0) and not f.active(3, 140.0)
    assert f.summary(100.0).startswith("3 failed starts; next try in 40 s")
    body = json.loads(f.result("e", 100.0).body)
    assert (body["error"], body["reason"], body["retry_in_s"]) == (
        "startup failed", "ValueError: x", 40.0)
    placed = json.loads(Failing(PLACEMENT, "needs 1 GPU", 1, 0, 110.0).result("e", 100.0).body)
    assert placed["error"] == "cannot be placed"
    route = EndpointRoute("e", 3, 60.0, failing=f)
    assert route.failing_now(100.0) is f and route.failing_now(141.0) is None
