"""Property-based fuzzing of the HTTP surface: random and malformed requests (methods, paths,
headers, bodies, and raw bytes on the socket) to the real platform and activator apps, with a
real Redis, never get a 500 from lowtide itself, never hang, and every error is JSON
{error, detail}. Example counts are bounded so the module takes seconds."""

from __future__ import annotations

import json
import logging
import socket
import string
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowtide._auth import new_key
from tests._apps import Apps

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")]

HANG_S = 10.0  # a request not answered within this is a hang
FUZZ = settings(max_examples=250, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
PUBLIC, LOCKED = "fz-public", "fz-locked"


class ErrorLog(logging.Handler):
    """Collects ERROR records of lowtide's loggers (an unhandled error logs one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def apps(own_redis_url: str) -> Iterator[Apps]:
    running = Apps(own_redis_url, activator_options={"max_body_bytes": 64 * 1024,
                                                 "max_queue_wait_s": 1.0}).start()
    for name, access in ((PUBLIC, "public"), (LOCKED, "key")):
        assert running.deploy(name, access=access, timeout_s=1).status_code in (200, 201)
        running.add_replica(name)
    key = running.api("POST", f"/v1/deployments/{LOCKED}/keys").json()["key"]
    running.key = key  # type: ignore[attr-defined]
    yield running
    running.stop()


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    logger = logging.getLogger("lowtide")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


# ---- strategies ---------------------------------------------------------------------------
TRICKS = ["..", ".", "%2e%2e", "..%2F..", "%2F", "%00", "%0A", "%E2%80%AE", "\u0430bc",
          "d\u00f3uble", "A", "a" * 70, "-", "_", "%", "%zz", "~", "*", "{name}", " ", ""]
segment = st.one_of(
    st.sampled_from([PUBLIC, LOCKED, "never-deployed", "keys", "0" * 32, "0" * 12, *TRICKS]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
    .map(lambda s: quote(s, safe="")),
)
prefix = st.sampled_from(["/v1/deployments", "/v1", "/v1/hosts", "/fn", "/requests",
                          "/healthz", "/metrics", "/openapi.json", "", "/v2"])
path = st.builds(lambda p, segs: p + "".join("/" + s for s in segs), prefix,
                 st.lists(segment, max_size=4))
method = st.one_of(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                    "HEAD"]),
                   st.text(alphabet=string.ascii_uppercase, min_size=1, max_size=8))
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                      max_size=60)


def authorization(apps: Apps) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.just(f"Bearer {apps.token}"),
                     st.just(f"Bearer {apps.key}"),  # type: ignore[attr-defined]
                     st.just(f"Bearer {new_key().key}"), st.just("Bearer"),
                     st.just("Basic dXNlcjpwYXNz"), header_text)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)
body = st.one_of(
    st.none(),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=512),
    st.integers(0, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(0, 3000).map(lambda n: b'{"a":' * n),
    st.sampled_from([b"{", b"\xff\xfe", b"\x00", b"[" * 50_000, b"NaN", b'"\\ud800"']),
)
content_type = st.one_of(st.none(), st.sampled_from([
    "application/json", "application/octet-stream", "text/plain", "multipart/form-data",
    "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
    "application/vnd.api+json", "application/json; charset=latin-1", ""]), header_text)
query = st.dictionaries(st.sampled_from(["async", "limit", "after", "wait_ms", "x"]),
                        st.one_of(st.integers(-5, 1500).map(str), header_text, st.just("1")),
                        max_size=3)


@st.composite
def requests(draw: st.DrawFn, apps: Apps) -> dict:
    headers = {}
    for header, value in (("Authorization", draw(authorization(apps))),
                          ("Content-Type", draw(content_type)),
                          ("X-Lowtide-Timeout", draw(st.none() | header_text | st.floats(
                              allow_nan=True).map(repr)))):
        if value is not None:
            headers[header] = value
    return {"method": draw(method), "path": draw(path), "headers": headers,
            "content": draw(body), "params": draw(query)}


# ---- checks ---------------------------------------------------------------------------
def check(response: httpx.Response, request: dict, component: str) -> None:
    status = response.status_code
    what = f"{request['method']} {request['path']} -> {status}: {response.text[:300]}"
    assert status != 500, what
    if component == "platform":
        assert status < 500, what
    else:  # 504: a deadline header of microseconds is honoured; nothing else may be 5xx
        assert status < 500 or status == 504, what
    protocol_level = status == 400 and response.headers.get(
        "Content-Type", "").startswith("text/plain")  # aiohttp's parser refused the request
    if status >= 400 and request["method"] != "HEAD" and not protocol_level:
        body = response.json()
        assert {"error", "detail"} <= set(body), what


def send(http: httpx.Client, base: str, request: dict, component: str) -> None:
    try:
        response = http.request(request["method"], base + request["path"],
                                 headers=request["headers"], content=request["content"],
                                 params=request["params"], timeout=HANG_S)
    except httpx.LocalProtocolError:
        return  # httpx itself refused to send it (e.g. a header value it cannot encode)
    except httpx.TimeoutException:
        pytest.fail(f"hang: {request['method']} {request['path']} got no answer in {HANG_S} s")
    check(response, request, component)


@pytest.mark.parametrize("component", ["platform", "activator"])
def test_random_requests_never_get_a_500_or_hang(apps: Apps, error_log: ErrorLog,
                                                 component: str) -> None:
    base = apps.platform_url if component == "platform" else apps.activator_url

    @FUZZ
    @given(request=requests(apps))
    def run(request: dict) -> None:
        send(http, base, request, component)

    with httpx.Client() as http:
        run()
    assert not error_log.records, [r.getMessage() for r in error_log.records[:3]]


@pytest.mark.parametrize("component", ["platform", "activator"])
def test_invoke_and_keys_bodies_never_get_a_500(apps: Apps, error_log: ErrorLog,
                                                component: str) -> None:
    """Focused on the handlers that read bodies: invoke, keys, access."""
    if component == "platform":
        base, paths = apps.platform_url, [f"/v1/deployments/{PUBLIC}/keys",
                                          f"/v1/deployments/{LOCKED}", "/v1/deployments"]
        auth = f"Bearer {apps.token}"
    else:
        base, paths = apps.activator_url, [f"/fn/{PUBLIC}", f"/fn/{LOCKED}"]
        auth = f"Bearer {apps.key}"  # type: ignore[attr-defined]

    @FUZZ
    @given(p=st.sampled_from(paths), content=body, ct=content_type,
           deadline=st.none() | st.floats(min_value=0.001, max_value=1e6).map(repr) | header_text,
           is_async=st.booleans(), credential=st.just(auth) | authorization(apps))
    def run(p: str, content: bytes | None, ct: str | None, deadline: str | None,
            is_async: bool, credential: str | None) -> None:
        headers = {"Authorization": credential} if credential else {}
        if ct is not None:
            headers["Content-Type"] = ct
        if deadline is not None:
            headers["X-Lowtide-Timeout"] = deadline
        method = "PATCH" if p == f"/v1/deployments/{LOCKED}" else "POST"
        send(http, base, {"method": method, "path": p, "headers": headers,
                          "content": content, "params": {"async": "1"} if is_async else {}},
             component)

    with httpx.Client() as http:
        run()
    assert not error_log.records, [r.getMessage() for r in error_log.records[:3]]


def raw_exchange(base: str, data: bytes) -> bytes:
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=HANG_S) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the server sees the end; it must not wait for more
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"hang on raw request {data[:80]!r}")
    return b"".join(chunks)


raw_line = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda m, p, v: m + b" " + p + b" " + v, st.sampled_from(
        [b"GET", b"POST", b"PATCH", b"G\x00T", b""]), st.binary(max_size=60),
              st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1x", b""])))
raw_headers = st.lists(st.one_of(
    st.binary(max_size=80),
    st.sampled_from([b"Content-Length: -1", b"Content-Length: 99999999999999999999",
                     b"Content-Length: 5", b"Transfer-Encoding: chunked",
                     b"Transfer-Encoding: gzip, chunked", b"Authorization: Bearer \xff",
                     b"Host:", b" folded: header", b"X-Lowtide-Timeout: \x80"])), max_size=5)


@pytest.mark.parametrize("component", ["platform", "activator"])
def test_malformed_http_never_gets_a_500_or_hang(apps: Apps, error_log: ErrorLog,
                                                 component: str) -> None:
    base = apps.platform_url if component == "platform" else apps.activator_url

    @settings(FUZZ, max_examples=120)
    @given(line=raw_line, headers=raw_headers, payload=st.binary(max_size=100))
    def run(line: bytes, headers: list[bytes], payload: bytes) -> None:
        data = b"\r\n".join([line, *headers]) + b"\r\n\r\n" + payload
        answer = raw_exchange(base, data)
        if answer.startswith(b"HTTP/"):
            status = int(answer.split(b" ", 2)[1][:3])
            assert status < 500, answer[:300]

    run()
    assert not error_log.records, [r.getMessage() for r in error_log.records[:3]]


def test_the_apps_still_answer_after_fuzzing(apps: Apps) -> None:
    assert httpx.get(apps.platform_url + "/healthz").status_code == 200
    assert httpx.get(apps.activator_url + "/healthz").status_code == 200
