"""The dashboard in a real browser (headless Chromium over its DevTools protocol) against a
real cluster: sign in through a one-time link, the endpoints list, a chart with a decision
marker and its reason after a burst, no request outside the cluster, and no data without a
valid session."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from lowtide import Client
from tests._browser import Browser, find_chromium
from tests.conftest import RunningCluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_chromium() is None, reason=(
        "no chromium on PATH: .ci/run installs Debian's chromium; here `apt-get install "
        "chromium` (or set LOWTIDE_CHROMIUM to a Chrome/Chromium binary)")),
]


def work(x: int) -> int:
    import time

    time.sleep(0.05)
    return x + 1


async def burst(url: str, n: int) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        answers = await asyncio.gather(*(http.post(url, json={"x": i}) for i in range(n)))
    assert {a.status_code for a in answers} == {200}


async def test_dashboard_in_a_browser(cluster: RunningCluster, client: Client,
                                      unique_name: str) -> None:
    ep = client.deploy(work, name=unique_name, max_replicas=1)  # one replica start: lean
    await burst(ep.url, 30)  # wakes it: a scaling decision (0 -> 1) with its reason
    decided = {e["reason"] for e in client.events(unique_name) if e["from"] != e["to"]}
    assert decided
    base = cluster.config.platform_url
    async with Browser.start() as b:
        await b.goto(client.dashboard_link())
        await b.wait_for("location.pathname === '/ui/'", what="the dashboard after sign-in")
        await b.wait_for(f"[...document.querySelectorAll('#endpoints td.name a')]"
                         f".some(a => a.textContent === {json.dumps(unique_name)})",
                         what="the endpoint in the endpoints list")

        await b.goto(f"{base}/ui/endpoints/{unique_name}")
        await b.wait_for("document.querySelectorAll('#chart-rps canvas').length > 0",
                         what="the requests chart")
        reasons = await b.wait_for(
            "(() => { const m = [...document.querySelectorAll('#chart-rep .marker')]"
            ".map(x => x.dataset.reason); return m.length ? m : null; })()",
            what="a decision marker on the replicas chart")
        assert set(reasons) & decided  # (later decisions may be marked too)
        await b.wait_for("document.querySelector('#facts .fact') !== null", what="the facts")
        tip = None
        for _ in range(20):  # the time axis moves every 2 s, the marker with it: aim again
            if "marker" in await b.hover("#chart-rep .marker"):
                await asyncio.sleep(0.2)
                tip = await b.evaluate("(() => { const t = document.querySelector('.tip'); "
                                       "return t && !t.hidden && t.textContent; })()")
                if tip:
                    break
            await asyncio.sleep(0.3)
        assert tip, "no tooltip on hovering a decision marker"
        assert any(r in tip for r in reasons)
        listed = await b.evaluate("document.querySelector('#decisions').textContent")
        assert all(r in listed for r in reasons)

        await b.wait_for("(document.querySelector('#version-table') || {}).textContent"
                         "?.includes('current')", what="the versions table")

        outside = [u for u in b.requests if not u.startswith(base) and u != "about:blank"]
        assert outside == [], outside

        # a wrong session, then none: the sign-in page, never data
        await b.send("Network.setCookie", name="lowtide_session", value="forged",
                     url=base, httpOnly=True, sameSite="Strict")
        for _ in range(2):
            await b.goto(f"{base}/ui/endpoints/{unique_name}")
            text = await b.evaluate("document.body.innerText")
            assert "lowtide dashboard" in text and unique_name not in text
            assert await b.evaluate("typeof uPlot") == "undefined"  # no app script ran
            await b.send("Network.clearBrowserCookies")
