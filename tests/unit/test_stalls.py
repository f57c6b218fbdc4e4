"""StallWatch (fedbus/runtime/stalls.py) on a hand-driven clock: what counts as a stall, and what does not."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from fedbus.runtime.stalls import STALL_S, TICK_S, StallWatch


class HandClock:
    """The two things StallWatch asks of a loop: the time, and a callback after a delay (run when the test says)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        entry = (self.t + delay, callback)
        self.pending.append(entry)
        return _Handle(self, entry)

    def run_until(self, t: float) -> None:
        """Ticks due by ``t`` run when they are due; the clock ends at ``t``."""
        while self.pending and min(self.pending)[0] <= t:
            entry = min(self.pending, key=lambda e: e[0])
            self.pending.remove(entry)
            self.t = max(self.t, entry[0])
            entry[1]()
        self.t = t

    def stall(self, seconds: float) -> None:
        """Nothing runs for ``seconds``; then the overdue tick runs at once."""
        self.run_until(self.t)
        self.t += seconds
        self.run_until(self.t)


class _Handle:
    def __init__(self, clock: HandClock, entry: tuple[float, Callable[[], None]]) -> None:
        self.clock, self.entry = clock, entry

    def cancel(self) -> None:
        if self.entry in self.clock.pending:
            self.clock.pending.remove(self.entry)


def watch(seen: list[float] | None = None) -> tuple[HandClock, StallWatch]:
    clock = HandClock()
    stalls = StallWatch(cast(asyncio.AbstractEventLoop, clock), None if seen is None else seen.append)
    return clock, stalls


def test_a_loop_that_keeps_its_ticks_never_stalls() -> None:
    clock, stalls = watch()
    stalls.start()
    clock.run_until(clock.t + 60.0)
    assert stalls.stalled() == 0.0


def test_a_tick_late_by_less_than_the_threshold_is_no_stall() -> None:
    clock, stalls = watch()
    stalls.start()
    clock.stall(TICK_S + STALL_S * 0.9)
    assert stalls.stalled() == 0.0


def test_a_stall_counts_once_and_is_heard_of_once() -> None:
    seen: list[float] = []
    clock, stalls = watch(seen)
    stalls.start()
    clock.run_until(clock.t + 1.0)
    clock.stall(0.5)
    first = stalls.stalled()
    assert 0.5 - TICK_S <= first <= 0.5
    clock.run_until(clock.t + 1.0)
    assert stalls.stalled() == first  # a later look adds nothing
    assert seen == [first]
    clock.stall(2.0)
    assert stalls.stalled() >= first + 2.0 - TICK_S
    assert len(seen) == 2


def test_a_stall_just_ended_counts_before_its_tick_runs() -> None:
    """A timer that fires at the end of a stall, before the watch's own tick, already sees it."""
    clock, stalls = watch()
    stalls.start()
    clock.run_until(clock.t + 0.1)
    clock.t += 0.7  # nothing ran: the tick is overdue
    assert stalls.stalled() >= 0.7 - TICK_S


def test_time_before_start_and_after_stop_is_no_stall() -> None:
    """A gap between looks says nothing while the watch does not tick (awaiting a connection is not a stall)."""
    clock, stalls = watch()
    clock.t += 5.0
    assert stalls.stalled() == 0.0
    stalls.start()
    clock.run_until(clock.t + 0.2)
    stalls.stop()
    assert clock.pending == []
    clock.t += 5.0
    assert stalls.stalled() == 0.0


def test_a_busy_stretch_that_looks_at_the_clock_often_is_still_a_stall() -> None:
    """A second of work that reads the clock every 30 ms (deliveries handled back to back, each stamped with the
    time) never lets the tick run: it counts, and is up to date at every look."""
    clock, stalls = watch()
    stalls.start()
    clock.run_until(clock.t + 0.1)
    seen = []
    for _ in range(34):
        clock.t += 0.03
        seen.append(stalls.stalled())
    assert seen == sorted(seen)
    assert seen[-1] >= 1.0 - TICK_S - 0.03
    clock.run_until(clock.t)  # the overdue tick runs at last
    assert stalls.stalled() == seen[-1]
