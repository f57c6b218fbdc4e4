"""How long an event loop stood still: a busy machine, a paused VM, a blocking call.

A round's deadline is measured on the run's clock, which runs on wall time; but wall time in which the aggregator's
loop stood still is time in which it could read nothing, and in which clients that share its process (a one-machine
run) could compute nothing. On a fast-clock scenario a stall of 0.3 s is a whole collection window: the round would
close as no-quorum with every update on its way. :class:`StallWatch` schedules a tick every ``tick_s`` and counts
how late a tick runs, past ``stall_s``, as stalled; the aggregator's clock leaves that time out
(:mod:`fedbus.runtime.aggregator_node`), so a stall delays its deadlines instead of eating into them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TICK_S = 0.02  # wall seconds between looks at the clock
STALL_S = 0.05  # a tick this late is a stall (asyncio is late by far less on a busy machine)


class StallWatch:
    """The wall seconds ``loop`` stood still, from :meth:`start` to :meth:`stop`: how late its own tick runs, counted as
    soon as the tick is ``stall_s`` overdue and up to date at each :meth:`stalled` (a long stretch of busy work that
    looks at the clock often is still a stall: the tick did not run); ``on_stall(seconds)`` hears of each stall once,
    when its tick finally runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stall: Callable[[float], None] | None = None, *,
                 tick_s: float = TICK_S, stall_s: float = STALL_S) -> None:
        self._loop = loop
        self._on_stall = on_stall
        self._tick_s = tick_s
        self._stall_s = stall_s
        self._due = 0.0  # when the pending tick should run
        self._counted = 0.0  # how late the pending tick is already counted as
        self._total = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._counted = 0.0

    def stalled(self) -> float:
        """Wall seconds the loop stood still so far, a stall still going on counted up to now."""
        if self._handle is not None:
            late = self._loop.time() - self._due
            if late > self._stall_s and late > self._counted:
                self._total += late - self._counted
                self._counted = late
        return self._total

    def _schedule(self) -> None:
        self._due = self._loop.time() + self._tick_s
        self._counted = 0.0
        self._handle = self._loop.call_later(self._tick_s, self._tick)

    def _tick(self) -> None:
        self.stalled()
        stall = self._counted
        self._schedule()
        if stall and self._on_stall is not None:
            self._on_stall(stall)
