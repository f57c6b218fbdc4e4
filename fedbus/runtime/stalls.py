"""How long an event loop stood still: a busy machine, a paused VM, a blocking call.

A round's deadline is measured on the run's clock, which runs on wall time; but wall time in which the aggregator's
loop stood still is time in which it could read nothing, and in which clients that share its process (a one-machine
run) could compute nothing. On a fast-clock scenario a stall of 0.3 s is a whole collection window: the round would
close as no-quorum with every update on its way. :class:`StallWatch` wakes every ``tick_s`` and counts a longer gap
between two looks at the clock as stalled; the aggregator's clock leaves that time out
(:mod:`fedbus.runtime.aggregator_node`), so a stall delays its deadlines instead of eating into them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TICK_S = 0.02  # wall seconds between looks at the clock
STALL_S = 0.05  # a gap this much longer than a tick is a stall (asyncio is late by far less on a busy machine)


class StallWatch:
    """The wall seconds ``loop`` stood still, seen at each tick (from :meth:`start` to :meth:`stop`) and at each
    call of :meth:`stalled`; ``on_stall(seconds)`` hears of each stall once, when it is first seen."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_stall: Callable[[float], None] | None = None, *,
                 tick_s: float = TICK_S, stall_s: float = STALL_S) -> None:
        self._loop = loop
        self._on_stall = on_stall
        self._tick_s = tick_s
        self._stall_s = stall_s
        self._seen = loop.time()
        self._total = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._seen = self._loop.time()
        self._handle = self._loop.call_later(self._tick_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def stalled(self) -> float:
        """Wall seconds the loop stood still so far, a stall that has just ended included."""
        now = self._loop.time()
        gap = now - self._seen
        self._seen = now
        if self._handle is not None and gap > self._tick_s + self._stall_s:  # not ticking: a gap says nothing
            stall = gap - self._tick_s
            self._total += stall
            if self._on_stall is not None:
                self._on_stall(stall)
        return self._total

    def _tick(self) -> None:
        self.stalled()
        self._handle = self._loop.call_later(self._tick_s, self._tick)
