"""The dashboard's web server: the page, server-sent events, ``/api/summary`` and ``/metrics``.

The one module of the dashboard that imports aiohttp. Every method runs on the event loop that started it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from importlib import resources
from typing import Any

from aiohttp import web

from fedbus.dashboard import metrics
from fedbus.dashboard.bind import DashboardAccess
from fedbus.dashboard.state import DashboardState
from fedbus.errors import FedbusError

STATIC = ("index.html", "app.js", "style.css")
CONTENT_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
PUSH_INTERVAL_S = 0.25  # at most four pushes a second to each page, however busy the run
KEEPALIVE_S = 15.0  # a comment line keeps idle connections (and proxies) open


def asset(name: str) -> bytes:
    """A static file shipped in the package (fedbus/dashboard/static)."""
    return resources.files("fedbus.dashboard").joinpath("static", name).read_bytes()


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

class DashboardWeb:
    """Serves ``state``; :meth:`apply` folds a record and wakes the open pages."""

    def __init__(self, state: DashboardState, access: DashboardAccess) -> None:
        self.state = state
        self.access = access
        self.port = access.address.port
        self._tick = asyncio.Event()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._assets = {name: asset(name) for name in STATIC}

    @property
    def url(self) -> str:
        return self.access.address.url(self.port)

    def apply(self, record: dict[str, Any]) -> None:
        if self.state.apply(record):
            self._wake()

    def _wake(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def start(self) -> None:
        """Listen; :attr:`port` is then the actual port. ``FedbusError`` if the address cannot be bound."""
        guards = [self._loopback_host] if self.access.address.loopback else []
        app = web.Application(middlewares=[*guards, self._guard] if self.access.logins else guards)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/summary", self._summary)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.access.address.host, self.access.address.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise FedbusError(f"dashboard: cannot listen on {self.access.address.host}:"
                                 f"{self.access.address.port}: {exc.strerror or exc}") from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._closing = True
        self._wake()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ handlers
    @web.middleware
    async def _loopback_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """On loopback, only a Host of a loopback name: a web page elsewhere cannot read the run through DNS
        rebinding (its requests carry its own host name)."""
        host = (request.host or "").rsplit(":", 1)[0].strip("[]").lower() if request.host else ""
        if host not in LOOPBACK_HOSTS and host != self.access.address.host:
            return web.Response(status=421, text=f"this dashboard answers to 127.0.0.1 or localhost, not {host!r}\n")
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """HTTP Basic against the broker's users (beyond loopback only)."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            expected = self.access.logins.get(user)
            if expected is not None and hmac.compare_digest(expected.encode(), password.encode()):
                response: web.StreamResponse = await handler(request)
                return response
        return web.Response(status=401, text="log in with one of the broker's users\n",
                            headers={"WWW-Authenticate": 'Basic realm="fedbus dashboard"'})

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._assets["index.html"], content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets:
            raise web.HTTPNotFound()
        return web.Response(body=self._assets[name], content_type=CONTENT_TYPES[name.rsplit(".", 1)[1]],
                            charset="utf-8")

    async def _summary(self, _request: web.Request) -> web.Response:
        return web.json_response(self.state.view(), dumps=_dumps)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(self.state).encode(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the whole view whenever it changed, at most every PUSH_INTERVAL_S."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sent = -1
        try:
            while not self._closing:
                if self.state.version != sent:
                    sent = self.state.version
                    await response.write(f"data: {_dumps(self.state.view())}\n\n".encode())
                    await asyncio.sleep(PUSH_INTERVAL_S)
                    continue
                tick = self._tick
                try:
                    await asyncio.wait_for(tick.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        return response


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
