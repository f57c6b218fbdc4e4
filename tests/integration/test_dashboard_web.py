"""The dashboard's web server on a real socket: pushes over server-sent events, the login beyond loopback,
the page's assets from the package."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp

from fedbus.dashboard.bind import DashboardAccess, DashboardAddress
from fedbus.dashboard.state import DashboardState
from fedbus.dashboard.web import DashboardWeb


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def next_event(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``data:`` event of a server-sent event stream (comments skipped), within 10 s."""
    async with asyncio.timeout(10):
        while True:
            line = (await response.content.readline()).decode()
            if line.startswith("data: "):
                event: dict[str, Any] = json.loads(line[6:])
                return event


async def test_events_push_each_change_without_a_reload() -> None:
    """An open /events stream gets the view at once, then again after a record changed it."""
    web = DashboardWeb(DashboardState(), DashboardAccess(address=DashboardAddress(port=0)))
    await web.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(web.url + "events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = await next_event(response)
            assert first["rounds"] == []
            web.apply({"event": "round-opened", "t": 1.0, "round": 1, "selected": ["a"]})
            second = await next_event(response)
            assert [r["round"] for r in second["rounds"]] == [1] and second["version"] > first["version"]
    finally:
        await web.close()


async def test_with_logins_every_path_asks_for_one() -> None:
    """With logins (a dashboard beyond loopback), no or a wrong login gets 401; a right one the page."""
    access = DashboardAccess(address=DashboardAddress(port=0), logins={"ops": "s3cret"})
    web = DashboardWeb(DashboardState(), access)
    await web.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("", "metrics", "api/summary", "static/app.js"):
                async with http.get(web.url + path) as response:
                    assert response.status == 401 and "Basic" in response.headers["WWW-Authenticate"]
            async with http.get(web.url + "metrics", headers=basic("ops", "wrong")) as response:
                assert response.status == 401
            async with http.get(web.url, headers=basic("ops", "s3cret")) as response:
                assert response.status == 200 and "<title>fedbus dashboard</title>" in await response.text()
    finally:
        await web.close()


async def test_the_page_fetches_nothing_from_elsewhere() -> None:
    """The page, its script and style come from the package and name no other host."""
    web = DashboardWeb(DashboardState(), DashboardAccess(address=DashboardAddress(port=0)))
    await web.start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("", "static/app.js", "static/style.css"):
                async with http.get(web.url + path) as response:
                    text = await response.text()
                    assert response.status == 200 and len(text) > 500
                    assert "http://" not in text and "https://" not in text and "//cdn" not in text
            async with http.get(web.url + "static/nothing.js") as response:
                assert response.status == 404
    finally:
        await web.close()


async def test_on_loopback_a_request_for_another_host_name_is_refused() -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example; the
    dashboard answers only to loopback names, and never shows a login's password in its repr."""
    access = DashboardAccess(address=DashboardAddress(port=0), logins={"ops": "s3cret"})
    assert "s3cret" not in repr(access)
    web = DashboardWeb(DashboardState(), DashboardAccess(address=DashboardAddress(port=0)))
    await web.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(web.url + "api/summary", headers={"Host": "evil.example"}) as response:
                assert response.status == 421
            async with http.get(web.url + "api/summary", headers={"Host": f"localhost:{web.port}"}) as response:
                assert response.status == 200
            async with http.get(web.url + "metrics") as response:  # Host: 127.0.0.1:PORT
                assert response.status == 200
    finally:
        await web.close()
