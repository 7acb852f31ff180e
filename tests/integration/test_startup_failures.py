"""Start-up failures reach the callers fast, with the reason: a constructor that raises, a
package missing on the workers, a requirement pip cannot install, an endpoint no host can
place. While failing, calls are answered at once; a redeploy or a delete resets the backoff."""

from __future__ import annotations

import time

import httpx
import pytest

import lowtide
from lowtide import Client
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

FAST_S = 15.0  # a failure reaches its caller well before this (queue wait: 120 s)


class BrokenModel:
    def __init__(self):
        raise ValueError("weights file is corrupt")

    def __call__(self, x):
        return x


class NeedsMissingPackage:
    def __init__(self):
        import lowtide_missing_package  # noqa: F401  (installed nowhere)

    def __call__(self, x):
        return x


class FixedModel:
    def __call__(self, x):
        return x + 1


def _startup_error(call) -> tuple[lowtide.StartupError, float]:
    started = time.monotonic()
    with pytest.raises(lowtide.StartupError) as exc:
        call()
    return exc.value, time.monotonic() - started


def test_a_constructor_that_raises_is_answered_fast_then_at_once_until_a_redeploy(
    client: Client, http: httpx.Client, unique_name: str
) -> None:
    ep = client.deploy(BrokenModel, name=unique_name)
    err, _ = _startup_error(lambda: ep(1))  # a cold start (slow here), then the failure
    answered_at = time.time()
    assert err.reason == "ValueError: weights file is corrupt", err.body
    assert err.status == 503
    failed = [e for e in ep.events() if e["kind"] == "replica" and "failed" in e["reason"]]
    assert failed and answered_at - max(e["at"] for e in failed) < FAST_S, failed
    assert err.retry_in_s is not None and err.retry_in_s > 5, err.body
    in_backoff = time.monotonic() + err.retry_in_s - 1.0  # (a loaded machine may be late)
    # while failing: the same answer at once, over HTTP too, with Retry-After
    err, took_s = _startup_error(lambda: ep(2))
    assert err.reason == "ValueError: weights file is corrupt"
    r = http.post(f"/fn/{unique_name}", json={"x": 1})
    failing = client.status(unique_name)["failing"]
    if time.monotonic() < in_backoff:
        assert took_s < 1.0
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"] == "startup failed"
        assert failing["failures"] >= 1 and "failed start" in failing["summary"], failing
        assert "next try in" in failing["summary"]
    # a redeploy resets the backoff: the fixed version starts at once
    fixed = client.deploy(FixedModel, name=unique_name)
    assert client.status(unique_name)["failing"] is None
    assert fixed(1) == 2
    fixed.delete()


def test_a_missing_package_is_answered_with_the_import_error_and_delete_resets(
    client: Client, unique_name: str
) -> None:
    ep = client.deploy(NeedsMissingPackage, name=unique_name)
    h = ep.submit(1)  # a buffered call is answered with the reason too
    with pytest.raises(lowtide.StartupError) as exc:
        h.result(timeout=150)  # a cold start, slow on a loaded machine
    assert exc.value.reason == ("ModuleNotFoundError: No module named "
                                "'lowtide_missing_package'")
    ep.delete()
    again = client.deploy(FixedModel, name=unique_name)  # a new endpoint: no old backoff
    assert client.status(unique_name)["failing"] is None
    assert again(41) == 42
    again.delete()


def test_a_requirement_pip_cannot_install_is_answered_with_pip_s_error(
    client: Client, unique_name: str
) -> None:
    ep = client.deploy(lambda x: x, name=unique_name,
                       requirements=["lowtide-no-such-package==1.0"])
    err, _ = _startup_error(lambda: ep(1))
    assert "pip could not install lowtide-no-such-package==1.0" in err.reason, err.body
    assert "No matching distribution" in err.reason
    ep.delete()


def test_an_endpoint_no_host_can_place_is_answered_at_once(
    client: Client, unique_name: str
) -> None:
    ep = client.deploy(lambda x: x, name=unique_name, gpu=1)
    err, took_s = _startup_error(lambda: ep(1))
    assert err.error == "cannot be placed" and "no host has a GPU" in err.reason, err.body
    assert took_s < FAST_S
    wait_for(lambda: client.status(unique_name)["failing"], 5, "the failing state")
    err, took_s = _startup_error(lambda: ep(1))
    assert took_s < 1.0
    ep.delete()
