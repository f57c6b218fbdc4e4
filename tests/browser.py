"""Headless Chromium (Debian's package) driven over the DevTools protocol, with aiohttp: no browser downloads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"DevTools {method}: no answer in {timeout_s:g} s")
            message = await self._ws.receive(timeout=left)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection ended: {message.type}")
            data = json.loads(message.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise AssertionError(f"DevTools {method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` evaluated in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def open_page(chromium: str, profile: Path, width: int = 1300, height: int = 1500) -> AsyncIterator[Page]:
    """Start headless Chromium and yield a blank tab (:meth:`Page.goto` a page); stop Chromium afterwards."""
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        port = 0
        deadline = time.monotonic() + 60.0
        while not port:
            port = await asyncio.to_thread(_devtools_port, profile)
            if not port and (process.returncode is not None or time.monotonic() > deadline):
                raise AssertionError(f"chromium did not start (exit code {process.returncode})")
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as response:
                target = await response.json(content_type=None)
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Runtime.enable")
                yield page
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def _devtools_port(profile: Path) -> int:
    """The port Chromium wrote to its profile (--remote-debugging-port=0), or 0 before it did."""
    try:
        first = (profile / "DevToolsActivePort").read_text().split()
    except FileNotFoundError:
        return 0
    return int(first[0]) if first else 0
