"""Schemathesis against the hand-written OpenAPI document (lowtide/openapi.py): requests
generated from the document, valid and invalid, to the real platform and activator apps with a
real Redis. Checked: no 5xx, only documented status codes and content types, invalid data
refused, 405 with Allow. Not checked: that every schema-valid request is accepted (the document
cannot say that a spec's Python must be the workers' or max_replicas >= min_replicas)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from lowtide.openapi import document
from tests._apps import Apps

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

schema = schemathesis.openapi.from_dict(document("platform"))
INVOKE_PREFIXES = ("/fn/", "/requests/")
MAX_WAIT_MS = 200  # the logs long poll may wait 30 s; keep the run short


@pytest.fixture(scope="module")
def apps(redis_url: str) -> Iterator[Apps]:
    running = Apps(redis_url, activator_options={"max_queue_wait_s": 1.0}).start()
    yield running
    running.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None)
def test_api_conforms_to_its_openapi_document(case, apps: Apps) -> None:  # type: ignore[no-untyped-def]
    base = apps.activator_url if case.path.startswith(INVOKE_PREFIXES) else apps.platform_url
    wait_ms = (case.query or {}).get("wait_ms")
    if isinstance(wait_ms, int) and wait_ms > MAX_WAIT_MS:
        case.query["wait_ms"] = MAX_WAIT_MS
    case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {apps.token}"},
                           timeout=15,
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
