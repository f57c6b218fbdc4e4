"""``fedbus run --dashboard``: the web server on a thread of its own, fed by the run.

The run hands over what its event log does not hold (its header, each round's record and global prompt, the
summary at the end, how to read the aggregator's client counts); the events themselves are read from
events.jsonl as it grows, so the page shows exactly what the log says. Serving pages on a thread of its own
keeps the run's event loop (aggregator, clients) free of HTTP work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fedbus.dashboard.bind import DashboardAccess
from fedbus.dashboard.state import DashboardState
from fedbus.errors import FedbusError
from fedbus.logs import structlog

log = structlog.get_logger("fedbus.dashboard")
TAIL_INTERVAL_S = 0.2  # how often events.jsonl is read for new lines
START_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 10.0  # the most the run waits for the page to read the workers' logs to their end


class CoreStatistics(Protocol):
    """What the dashboard reads of the aggregator core's ``statistics()``."""

    @property
    def live_clients(self) -> int: ...

    @property
    def known_clients(self) -> int: ...


class RunObserver(Protocol):
    """What ``fedbus run`` tells an observer (the dashboard); every method returns at once, from any thread."""

    def run_started(self, header: dict[str, Any], events: Path, statistics: Callable[[], CoreStatistics]) -> None:
        """The run's header, its events.jsonl, and how to read the aggregator's client counts."""

    def round_closed(self, record: dict[str, Any], prompt: str) -> None:
        """summary.json's record of a closed round, and the round's global prompt."""

    def run_ended(self, summary: dict[str, Any]) -> None:
        """summary.json's content."""

    def catch_up(self) -> None:
        """Read what the event logs hold now: the worker processes are done and their logs are about to be merged
        into events.jsonl and removed. Returns once read (or after a few seconds)."""


class EventTail:
    """Reads the complete lines appended to a JSONL file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""
        self._inode: int | None = None

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, 2)
                inode = os.fstat(handle.fileno()).st_ino
                replaced = self._inode is not None and inode != self._inode
                self._inode = inode
                if replaced or size < self.offset:  # merged with the worker parts (already tailed): nothing new
                    self.offset, self._partial = size, b""
                    return []
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a line a kill cut short
            if isinstance(record, dict):
                out.append(record)
        return out


class RunDashboard:
    """The dashboard of a run in this process: :meth:`start`, hand it to the run (a :class:`RunObserver`),
    then :meth:`stop`."""

    def __init__(self, access: DashboardAccess) -> None:
        self.access = access
        self.state = DashboardState(source="run")
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._tail: EventTail | None = None
        self._parts: dict[Path, EventTail] = {}  # worker processes' event logs, tailed while the run goes
        self._statistics: Callable[[], CoreStatistics] | None = None
        self._web_apply: Callable[[dict[str, Any]], None] = self._early
        self._web: Any = None  # the page's server, once it listens

    def _early(self, record: dict[str, Any]) -> None:
        self.state.apply(record)  # before the server exists: nobody to wake

    # ------------------------------------------------------------------ lifetime (the caller's thread)
    def start(self) -> str:
        """Listen (on the thread); return the page's URL. ``FedbusError`` if it cannot listen."""
        self._thread = threading.Thread(target=self._serve_thread, name="dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise FedbusError("dashboard: the web server did not start")
        if self._error is not None:
            raise self._error
        return self.url

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(10.0)

    def linger(self, seconds: float, note: Callable[[str], None]) -> None:
        """Keep the page up ``seconds`` after the run (Ctrl-C or SIGTERM ends it early: the run is over, so the
        command exits 0 either way)."""
        if seconds <= 0:
            return
        note(f"dashboard stays up {seconds:g} s at {self.url} (Ctrl-C ends it)")
        previous = None
        with contextlib.suppress(ValueError):  # not the main thread: SIGTERM stays as it is
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(seconds)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    # ------------------------------------------------------------------ RunObserver (any thread)
    def run_started(self, header: dict[str, Any], events: Path, statistics: Callable[[], CoreStatistics]) -> None:
        self._tail, self._statistics = EventTail(events), statistics
        self._submit({"event": "run-header", "t": 0.0, **header})

    def round_closed(self, record: dict[str, Any], prompt: str) -> None:
        self._submit({**record, "event": "round-summary", "prompt": prompt})

    def run_ended(self, summary: dict[str, Any]) -> None:
        self._submit({"event": "run-summary", "summary": summary})

    def catch_up(self) -> None:
        # the tail reads each worker's log every TAIL_INTERVAL_S: what a worker wrote after the last read (its last
        # events, flushed as it exits) would be lost once its log is merged (the merged file reads as one already
        # tailed) and removed; the page then counted 8 of 12 updates on a slow machine
        loop, web = self._loop, self._web
        if loop is None or web is None or loop.is_closed():
            return
        done = threading.Event()

        def poll() -> None:
            try:
                self._poll(web)
            finally:
                done.set()

        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(poll)
            done.wait(CATCH_UP_TIMEOUT_S)

    def _submit(self, record: dict[str, Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._apply, record)

    # ------------------------------------------------------------------ the dashboard's thread
    def _serve_thread(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # before listening: start() raises it; after: the run goes on without a page
            self._error = exc
            if self._ready.is_set():
                log.warning("dashboard stopped", error=str(exc))
        finally:
            self._ready.set()

    def _apply(self, record: dict[str, Any]) -> None:
        self._web_apply(record)

    async def _serve(self) -> None:
        from fedbus.dashboard.web import DashboardWeb

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        web = DashboardWeb(self.state, self.access)
        self._web_apply = web.apply
        self._web = web
        await web.start()
        self.url = web.url
        self._ready.set()
        try:
            while not self._stop.is_set():
                self._poll(web)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), TAIL_INTERVAL_S)
            self._poll(web)
        finally:
            await web.close()

    def _poll(self, web: Any) -> None:
        if self._tail is not None:
            for record in self._tail.read():
                web.apply(record)
            for part in sorted((self._tail.path.parent / "workers").glob("events-*.jsonl")):
                tail = self._parts.setdefault(part, EventTail(part))
                for record in tail.read():
                    web.apply(record)
        if self._statistics is not None:
            try:
                stats = self._statistics()  # the run's thread owns the core: a read here may race a change
            except RuntimeError:
                return
            if (stats.live_clients, stats.known_clients) != (self.state.live, self.state.known):
                web.apply({"event": "client-count", "live": stats.live_clients, "known": stats.known_clients})
