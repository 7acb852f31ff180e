"""Dashboard sign-in against the real platform app (in process, real Redis): one-time links,
the session cookie's attributes, no data without a session, CSRF on state changes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lowtide.platform.ui import sessions
from tests._apps import Apps

pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


@pytest.fixture(scope="module")
def apps(own_redis_url: str) -> Iterator[Apps]:
    running = Apps(own_redis_url).start()
    running.deploy("secret-ep")
    yield running
    running.stop()


def link(apps: Apps) -> str:
    r = apps.api("POST", "/v1/ui/login-links")
    assert r.status_code == 201, r.text
    assert r.json()["expires_in_s"] == sessions.LOGIN_TTL_S
    return apps.platform_url + r.json()["path"]


def signed_in(apps: Apps) -> httpx.Client:
    http = httpx.Client(base_url=apps.platform_url, timeout=10)
    r = http.get(link(apps))
    assert r.status_code == 200 and 'content="0; url=/ui/"' in r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    return http


def test_a_login_link_works_once_and_needs_the_token(apps: Apps) -> None:
    assert httpx.post(f"{apps.platform_url}/v1/ui/login-links").status_code == 401
    url = link(apps)
    first = httpx.get(url)
    assert first.status_code == 200 and sessions.COOKIE in first.cookies
    again = httpx.get(url)
    assert again.status_code == 401 and "already used or has expired" in again.text
    assert sessions.COOKIE not in again.cookies
    assert httpx.get(f"{apps.platform_url}/ui/login?code=made-up").status_code == 401


@pytest.mark.parametrize("cookie", [None, "not-a-session"])
@pytest.mark.parametrize("path", ["/ui/", "/ui/hosts", "/ui/endpoints/secret-ep"])
def test_without_a_session_every_page_is_the_sign_in_page(apps: Apps, path: str,
                                                          cookie: str | None) -> None:
    cookies = {sessions.COOKIE: cookie} if cookie else None
    r = httpx.get(apps.platform_url + path, cookies=cookies)
    assert r.status_code == 401 and "lowtide dashboard" in r.text
    assert "secret-ep" not in r.text and "lowtide-csrf" not in r.text
    api = httpx.get(f"{apps.platform_url}/v1/deployments", cookies=cookies)
    assert api.status_code in (401, 403) and "secret-ep" not in api.text


def test_a_session_reads_the_api_and_pages_carry_no_outside_url(apps: Apps) -> None:
    http = signed_in(apps)
    try:
        page = http.get("/ui/endpoints/secret-ep")
        assert page.status_code == 200 and 'data-name="secret-ep"' in page.text
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert "http" not in page.text.replace(apps.platform_url, "")
        assert http.get("/v1/deployments").json()["deployments"][0]["name"] == "secret-ep"
        series = http.get("/v1/deployments/secret-ep/series", params={"window": "10m"})
        assert series.status_code == 200 and series.json()["step_s"] == 2.0
        assert http.get("/v1/deployments/secret-ep/series?window=2d").status_code == 400
        assert http.get("/ui/static/vendor/uPlot.iife.min.js").status_code == 200
    finally:
        http.close()


def test_state_changes_with_a_session_need_the_csrf_token(apps: Apps) -> None:
    http = signed_in(apps)
    try:
        csrf = http.get("/ui/").text.split('name="lowtide-csrf" content="')[1].split('"')[0]
        body = {"access": "key"}
        assert http.patch("/v1/deployments/secret-ep", json=body).status_code == 403
        assert http.patch("/v1/deployments/secret-ep", json=body, headers={
            sessions.CSRF_HEADER: "wrong"}).status_code == 403
        assert http.patch("/v1/deployments/secret-ep", json=body, headers={
            sessions.CSRF_HEADER: csrf, "Origin": "http://evil.example"}).status_code == 403
        ok = http.patch("/v1/deployments/secret-ep", json=body, headers={
            sessions.CSRF_HEADER: csrf, "Origin": apps.platform_url})
        assert ok.status_code == 200, ok.text
        # a session cannot mint more sessions
        assert http.post("/v1/ui/login-links", headers={
            sessions.CSRF_HEADER: csrf}).status_code == 403
        assert http.post("/ui/logout", headers={sessions.CSRF_HEADER: csrf}).status_code == 204
        assert http.get("/ui/").status_code == 401
    finally:
        http.close()


def test_the_sdk_makes_a_link_and_the_cli_prints_it(apps: Apps, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lowtide.cli import main

    monkeypatch.setenv("LOWTIDE_PLATFORM_URL", apps.platform_url)
    monkeypatch.setenv("LOWTIDE_ACTIVATOR_URL", apps.activator_url)
    monkeypatch.setenv("LOWTIDE_TOKEN", apps.token)
    with pytest.raises(SystemExit) as done:
        main(["dashboard", "--url"])
    assert done.value.code == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith(f"{apps.platform_url}/ui/login?code=")
    assert apps.token not in url
    assert sessions.COOKIE in httpx.get(url).cookies
