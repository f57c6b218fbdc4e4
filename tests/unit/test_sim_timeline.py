"""The simulator's virtual time (fedbus/sim/timeline.py): order, ties, the past, stop and horizon."""

from __future__ import annotations

from collections.abc import Callable

from fedbus.sim.timeline import Timeline


def recorder(timeline: Timeline, log: list[tuple[str, float]]) -> Callable[[str], Callable[[], None]]:
    """An action factory: each action appends (its name, the virtual time it ran at)."""
    def make(name: str) -> Callable[[], None]:
        return lambda: log.append((name, timeline.now))
    return make


def never() -> bool:
    return False


def test_actions_run_in_time_order_whatever_order_they_were_scheduled_in() -> None:
    """Scheduled out of order, actions run by virtual time, and ``now`` is each action's time."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)
    timeline.at(3.0, act("c"))
    timeline.at(1.0, act("a"))
    timeline.at(2.5, act("b"))
    timeline.run(never, horizon=100.0)
    assert log == [("a", 1.0), ("b", 2.5), ("c", 3.0)]
    assert timeline.now == 3.0
    assert timeline.steps == 3


def test_actions_at_the_same_time_run_in_scheduling_order() -> None:
    """Ties are broken by the order of scheduling (first in, first out), never by the action."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)
    for name in ("first", "second", "third", "fourth"):
        timeline.at(5.0, act(name))
    timeline.run(never, horizon=100.0)
    assert [name for name, _ in log] == ["first", "second", "third", "fourth"]


def test_a_time_in_the_past_runs_now_not_back_in_time() -> None:
    """An action scheduled before ``now`` runs at ``now``, after those already due at ``now``."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)

    def at_two() -> None:
        log.append(("two", timeline.now))
        timeline.at(0.5, act("past"))
        timeline.at(2.0, act("same-time"))

    timeline.at(2.0, at_two)
    timeline.at(2.0, act("already-due"))
    timeline.at(3.0, act("later"))
    timeline.run(never, horizon=100.0)
    assert log == [("two", 2.0), ("already-due", 2.0), ("past", 2.0), ("same-time", 2.0), ("later", 3.0)]


def test_after_is_relative_to_now_and_a_negative_delay_means_now() -> None:
    """``after(d)`` runs ``d`` virtual seconds after the current time; a negative delay does not go back."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)

    def at_ten() -> None:
        timeline.after(2.5, act("plus-2.5"))
        timeline.after(-4.0, act("negative"))
        timeline.after(0.0, act("zero"))

    timeline.at(10.0, at_ten)
    timeline.run(never, horizon=100.0)
    assert log == [("negative", 10.0), ("zero", 10.0), ("plus-2.5", 12.5)]


def test_actions_scheduled_while_running_are_run_too() -> None:
    """An action can schedule more actions; the loop runs them until nothing is left."""
    timeline = Timeline()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(timeline.now)
        if len(ticks) < 5:
            timeline.after(1.0, tick)

    timeline.at(0.0, tick)
    timeline.run(never, horizon=100.0)
    assert ticks == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert timeline.steps == 5


def test_stop_is_checked_before_every_action() -> None:
    """Once ``stop()`` is true no further action runs, even one due at the same time."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)
    done = []
    timeline.at(1.0, act("a"))
    timeline.at(2.0, lambda: done.append(True))
    timeline.at(2.0, act("same-time-after-stop"))
    timeline.at(3.0, act("later"))
    timeline.run(lambda: bool(done), horizon=100.0)
    assert log == [("a", 1.0)]
    assert timeline.now == 2.0
    assert timeline.steps == 2


def test_an_action_exactly_at_the_horizon_still_runs() -> None:
    """The horizon is inclusive: what is due at it runs; what is due after it does not."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)
    timeline.at(5.0, act("at-horizon"))
    timeline.at(5.5, act("beyond"))
    timeline.run(never, horizon=5.0)
    assert log == [("at-horizon", 5.0)]


def test_the_horizon_stops_the_clock_at_the_horizon() -> None:
    """Actions past the horizon do not run, and ``now`` ends at the horizon, not at the last action run."""
    timeline = Timeline()
    log: list[tuple[str, float]] = []
    act = recorder(timeline, log)
    timeline.at(4.0, act("inside"))
    timeline.at(5.5, act("beyond"))
    timeline.at(9.0, act("far-beyond"))
    timeline.run(never, horizon=5.0)
    assert log == [("inside", 4.0)]
    assert timeline.now == 5.0
    assert timeline.steps == 1


def test_an_empty_timeline_returns_at_once() -> None:
    """With nothing scheduled, run returns without moving the clock."""
    timeline = Timeline()
    timeline.run(never, horizon=10.0)
    assert timeline.now == 0.0
    assert timeline.steps == 0
