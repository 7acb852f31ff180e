"""Schemathesis against the hand-written OpenAPI document (lowtide/openapi.py): requests
generated from the document, valid and invalid, to the real platform and activator apps with a
real Redis. Checked: no 5xx, only documented status codes, content types and headers, 405
with Allow. Not checked: that every schema-valid request is accepted (the document cannot say
that a spec's Python must be the workers' or that max_replicas >= min_replicas), nor that every
schema-invalid one is refused (unknown query parameters are ignored, as most APIs do)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from lowtide._protocol import TIMEOUT_HEADER
from lowtide.openapi import document
from tests._apps import Apps

schemathesis = pytest.importorskip("schemathesis")

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

schema = schemathesis.openapi.from_dict(document("platform"))
INVOKE_PREFIXES = ("/fn/", "/requests/")
MAX_WAIT_MS = 200  # the logs long poll may wait 30 s; keep the run short


@pytest.fixture(scope="module")
def apps(own_redis_url: str) -> Iterator[Apps]:
    running = Apps(own_redis_url, activator_options={"max_queue_wait_s": 1.0}).start()
    yield running
    running.stop()


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None, derandomize=True)
def test_api_conforms_to_its_openapi_document(case, apps: Apps) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {apps.token}"}
    base = apps.platform_url
    if case.path.startswith(INVOKE_PREFIXES):
        base = apps.activator_url
        # an endpoint the run deployed has no replica: a call waits for the queue limit plus
        # the function's timeout (up to an hour); keep that short
        headers[TIMEOUT_HEADER] = "1"
    wait_ms = (case.query or {}).get("wait_ms")
    if isinstance(wait_ms, int) and wait_ms > MAX_WAIT_MS:
        case.query["wait_ms"] = MAX_WAIT_MS
    response = case.call(base_url=base, headers=headers, timeout=15)
    excluded = [schemathesis.checks.positive_data_acceptance,
                schemathesis.checks.negative_data_rejection]
    if base == apps.activator_url and response.status_code in (503, 504):
        # documented answers for an endpoint these apps never give a replica (no agent):
        # 503 "no replica became ready", or 504 once a deadline passed
        excluded.append(schemathesis.checks.not_a_server_error)
    case.validate_response(response, excluded_checks=excluded)
