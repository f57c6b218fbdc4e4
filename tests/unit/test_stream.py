"""The buffered and asynchronous aggregator (StreamAggregator), driven step by step with a fake clock.

The state machines in tests/stateful check its bookkeeping over random runs; these tests pin the exact
effects and records of single steps that bench/mutation.py found unpinned: which effects a step emits,
what a result and a leftover rejection say, and the edge cases of pausing, timing out and finishing.
"""

from __future__ import annotations

import random
from typing import TypeVar

import pytest

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import (
    ArmTimer,
    Effect,
    Publish,
    Reduce,
    Rejection,
    RoundClosed,
    RoundOpened,
    RoundResult,
    RunFinished,
    UpdateRejected,
)
from fedbus.aggregator.events import (
    ClientOffline,
    ClientOnline,
    FailureReceived,
    Reduced,
    ReduceFailed,
    Started,
    TimerFired,
    UpdateMalformed,
    UpdateReceived,
)
from fedbus.aggregator.stream import StreamAggregator
from fedbus.errors import LocalProtocolError
from fedbus.protocol.messages import DataSpec, Failure, GlobalState, Task, Update, UpdateStats

RUN = "r1"
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=3, train_size=30, val_size=10, test_size=10)
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=0.5, llm_calls=3,
                    tokens=10, duration_s=0.1)
T = TypeVar("T")


class Driver:
    """One StreamAggregator, the tasks it handed out (the latest per client) and every effect so far."""

    def __init__(self, **overrides: object) -> None:
        params: dict[str, object] = {"run": RUN, "rounds": 3, "expected_clients": 2, "initial_prompt": "P0",
                                     "engine": "surrogate", "data": DATA, "min_clients": 1, "mode": "async",
                                     "round_deadline_s": 10.0, "join_timeout_s": 30.0, "max_prompt_chars": 50}
        params.update(overrides)
        self.core = StreamAggregator(AggregatorConfig(**params), random.Random(0))  # type: ignore[arg-type]
        self.task: dict[str, Task] = {}

    def feed(self, event: object) -> list[Effect]:
        effects = self.core.handle(event)  # type: ignore[arg-type]
        for e in effects:
            if isinstance(e, Publish) and isinstance(e.message, Task):
                self.task[e.message.client] = e.message
        return effects

    def start(self, *clients: str, now: float = 0.0) -> list[Effect]:
        out = self.feed(Started(now=now))
        for client in clients:
            out += self.feed(ClientOnline(client=client, now=now))
        return out

    def answer(self, client: str, now: float, *, prompt: str | None = None) -> list[Effect]:
        task = self.task[client]
        update = Update(run=RUN, round=task.round, client=client, msg_id=f"{client}-{task.round}", sent=now,
                        base_version=task.version, prompt=prompt or f"Advice {task.round} of {client}.",
                        stats=STATS)
        return self.feed(UpdateReceived(update=update, now=now))

    def fail(self, client: str, now: float, *, round_: int | None = None) -> list[Effect]:
        """``client`` reports that its local step failed on its latest task (or on task ``round_``)."""
        task = self.task[client]
        failure = Failure(run=RUN, round=task.round if round_ is None else round_, client=client,
                          msg_id=f"{client}-f{task.round}", sent=now, base_version=task.version,
                          reason="the engine is down", error_type="EngineError")
        return self.feed(FailureReceived(failure=failure, now=now))

    def reduce(self, effects: list[Effect], now: float) -> list[Effect]:
        """Carry out the Reduce in ``effects``: the merged prompt is the clients' prompts joined."""
        asked = first(effects, Reduce)
        return self.feed(Reduced(round=asked.round, prompt=" ".join(p for _, p in asked.prompts), now=now))


def first(effects: list[Effect], kind: type[T]) -> T:
    return next(e for e in effects if isinstance(e, kind))


def every(effects: list[Effect], kind: type[T]) -> list[T]:
    return [e for e in effects if isinstance(e, kind)]


def tasks(effects: list[Effect]) -> list[Task]:
    return [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, Task)]


def result(effects: list[Effect]) -> RoundResult:
    return first(effects, RoundClosed).result


def test_the_stream_core_refuses_sync_mode_by_name() -> None:
    """StreamAggregator runs buffered or async; a sync config is our bug and the error says which mode it got."""
    with pytest.raises(LocalProtocolError, match=r"^StreamAggregator runs buffered or async, not 'sync'$"):
        Driver(mode="sync")


def test_async_merges_every_update_whatever_the_buffer_size() -> None:
    """Async mode (FedAsync) reduces each accepted update on its own, even with buffer_size set."""
    d = Driver(mode="async", buffer_size=3)
    d.start("c0", "c1")
    reduce = first(d.answer("c0", 1.0), Reduce)
    assert reduce == Reduce(round=1, strategy="concat", current_prompt="P0", prompts=(("c0", "Advice 1 of c0."),),
                            max_chars=50, weights=(1.0,))


def test_buffered_with_a_buffer_of_one_merges_every_update() -> None:
    """Buffered mode with buffer_size 1 reduces after each update, like async."""
    d = Driver(mode="buffered", buffer_size=1)
    d.start("c0", "c1")
    assert every(d.answer("c0", 1.0), Reduce)


def test_starting_hands_out_numbered_tasks_each_with_its_timer_then_reports_them() -> None:
    """Work starts with the 'running' state, then per client a task (numbered 1, 2, ...) and its deadline
    timer, then one RoundOpened that lists them."""
    d = Driver()
    d.feed(Started(now=0.0))
    d.feed(ClientOnline(client="c0", now=0.0))
    effects = d.feed(ClientOnline(client="c1", now=0.0))
    assert [type(e) for e in effects] == [Publish, Publish, ArmTimer, Publish, ArmTimer, RoundOpened]
    state = effects[0].message  # type: ignore[union-attr]
    assert isinstance(state, GlobalState) and state.status == "running"
    assert [(t.client, t.round, t.deadline_s) for t in tasks(effects)] == [("c0", 1, 10.0), ("c1", 2, 10.0)]
    assert every(effects, ArmTimer) == [ArmTimer(at=10.0), ArmTimer(at=10.0)]
    assert effects[-1] == RoundOpened(round=2, version=0, selected=("c0", "c1"), live=2, opened_at=0.0, deadline=10.0)


def test_no_task_and_no_round_opened_while_the_allowed_clients_are_all_working() -> None:
    """With concurrency reached, a repeated presence from an idle client hands out nothing at all."""
    d = Driver(fraction=0.5)  # two clients live: one works at a time
    d.start("c0", "c1")
    (working,) = d.task
    idle = "c1" if working == "c0" else "c0"
    assert d.feed(ClientOnline(client=idle, now=1.0)) == []


def test_a_task_is_overdue_at_exactly_its_due_time() -> None:
    """A task due at t is overdue when the timer fires at t: the client gets a fresh task and counts as missing."""
    d = Driver(expected_clients=1)
    d.start("c0")
    assert [(t.client, t.round) for t in tasks(d.feed(TimerFired(now=10.0)))] == [("c0", 2)]
    closed = result(d.reduce(d.answer("c0", 11.0), 12.0))
    assert closed.missing == ("c0",)


def test_only_a_client_that_held_a_task_counts_as_dropped() -> None:
    """Going offline while working is a drop; going offline while idle is not."""
    d = Driver(expected_clients=3, fraction=0.34)  # three live: two work at a time
    d.start("c0", "c1", "c2")
    working = sorted(d.task)
    (idle,) = {"c0", "c1", "c2"} - set(working)
    d.feed(ClientOffline(client=idle, now=1.0))
    d.feed(ClientOffline(client=working[0], now=2.0))
    closed = result(d.reduce(d.answer(working[1], 3.0), 4.0))
    assert closed.dropped == (working[0],)


def test_the_last_client_leaving_pauses_and_arms_the_join_timeout() -> None:
    """With nobody left and nobody working, the core pauses ('waiting') and arms a timer at now + join_timeout_s."""
    d = Driver()
    d.start("c0", "c1")
    d.feed(ClientOffline(client="c0", now=1.0))
    assert d.feed(ClientOffline(client="c1", now=2.0)) == [ArmTimer(at=32.0)]
    assert d.core.phase == "waiting"


def test_after_a_pause_work_resumes_as_soon_as_min_clients_are_back() -> None:
    """Once work has begun, a paused core resumes with min_clients online; it does not wait for everyone again."""
    d = Driver(expected_clients=2, min_clients=1)
    d.start("c0", "c1")
    d.feed(ClientOffline(client="c0", now=1.0))
    d.feed(ClientOffline(client="c1", now=2.0))
    effects = d.feed(ClientOnline(client="c0", now=3.0))
    assert d.core.phase == "running"
    assert [m.status for m in (e.message for e in every(effects, Publish)) if isinstance(m, GlobalState)] == ["running"]
    assert [t.client for t in tasks(effects)] == ["c0"]


def test_a_timer_before_the_join_timeout_does_not_abort() -> None:
    """Waiting for clients: a timer that fires early changes nothing; at the join timeout the run aborts."""
    d = Driver()
    d.feed(Started(now=0.0))
    assert d.feed(TimerFired(now=10.0)) == []
    finished = first(d.feed(TimerFired(now=30.0)), RunFinished)
    assert (finished.status, finished.reason) == ("aborted", "fewer than 1 clients online after 30 s")


def test_rejections_during_the_run_are_reported_in_the_next_result() -> None:
    """A rejection while the run goes on lands in the next aggregation's result, not in the leftovers."""
    d = Driver(expected_clients=1)
    d.start("c0")
    garbage = d.feed(UpdateMalformed(client="c0", reason="not-json", detail="byte 0", now=0.5))
    (rejected,) = [e.rejection for e in garbage if isinstance(e, UpdateRejected)]
    assert result(d.reduce(d.answer("c0", 1.0), 2.0)).rejected == (rejected,)


def test_results_carry_status_reason_and_their_time_window() -> None:
    """Each result: 'aggregated' with '<n> buffered' or 'reduce-failed', opened when the previous one closed."""
    d = Driver(expected_clients=1)
    d.start("c0")
    one = result(d.reduce(d.answer("c0", 1.0), 2.0))
    reduce = first(d.answer("c0", 3.0), Reduce)
    two = result(d.feed(ReduceFailed(round=reduce.round, reason="llm down", now=4.0)))
    assert (one.round, one.status, one.close_reason, one.opened_at, one.closed_at) == (1, "aggregated", "1 buffered",
                                                                                      0.0, 2.0)
    assert (two.round, two.status, two.close_reason, two.opened_at, two.closed_at) == (2, "reduce-failed",
                                                                                      "reduce-failed", 2.0, 4.0)
    assert (two.version_before, two.version_after) == (1, 1)
    finished = first(d.reduce(d.answer("c0", 5.0), 6.0), RunFinished)
    assert (finished.status, finished.reason, finished.rounds_closed) == ("completed", "3 aggregations", 3)


def test_a_buffered_update_at_the_end_becomes_a_leftover_rejection() -> None:
    """The last aggregation ends the run; an update still buffered is a 'run-finished' leftover, and counted."""
    d = Driver(rounds=1)
    d.start("c0", "c1")
    first_reduce = d.answer("c0", 1.0)
    d.answer("c1", 2.0)  # buffered while the first update is being reduced
    finished = first(d.reduce(first_reduce, 3.0), RunFinished)
    assert finished.leftover_rejections == (Rejection(client="c1", msg_id="c1-2", round=2, reason="run-finished",
                                                      detail="buffered when the run ended", at=3.0),)
    assert d.core.statistics().rejected == 1


def test_an_abort_during_a_reduce_turns_the_batch_into_leftovers_and_ignores_its_result() -> None:
    """Aborted while a batch is out: its updates are 'run-finished' leftovers; the late Reduced changes nothing."""
    d = Driver(expected_clients=1)
    d.start("c0")
    in_flight = d.answer("c0", 1.0)
    d.feed(ClientOffline(client="c0", now=2.0))
    finished = first(d.feed(TimerFired(now=32.0)), RunFinished)
    assert (finished.status, finished.reason) == ("aborted", "fewer than 1 clients online after 30 s")
    assert finished.leftover_rejections == (Rejection(client="c0", msg_id="c0-1", round=1, reason="run-finished",
                                                      detail="being aggregated when the run ended", at=32.0),)
    assert d.core.statistics().rejected == 1
    assert d.reduce(in_flight, 33.0) == []


def test_a_reduce_result_nobody_asked_for_is_our_bug() -> None:
    """Reduced with no batch out, or for another aggregation than the one out, is a LocalProtocolError."""
    d = Driver(expected_clients=1)
    d.start("c0")
    with pytest.raises(LocalProtocolError, match=r"^reduce result for 1 while idle$"):
        d.feed(Reduced(round=1, prompt="M", now=1.0))
    d.answer("c0", 1.0)
    with pytest.raises(LocalProtocolError, match=r"^reduce result for 2 while reducing$"):
        d.feed(Reduced(round=2, prompt="M", now=2.0))


def test_a_too_stale_update_is_refused_with_its_staleness() -> None:
    """An update more than max_staleness versions old is refused; the detail gives its staleness and the bound."""
    d = Driver(expected_clients=1, max_staleness=1, rounds=5)
    d.start("c0")
    d.reduce(d.answer("c0", 1.0), 1.5)  # version 1
    d.feed(ClientOnline(client="c1", now=2.0))  # c1 works from version 1
    assert d.task["c1"].version == 1
    d.reduce(d.answer("c0", 3.0), 3.5)  # version 2
    d.reduce(d.answer("c0", 4.0), 4.5)  # version 3
    (refused,) = [e.rejection for e in d.answer("c1", 5.0) if isinstance(e, UpdateRejected)]
    assert (refused.reason, refused.detail) == ("too-stale", "staleness 2 > max_staleness 1")


def test_a_failure_frees_the_slot_for_an_idle_client_at_once() -> None:
    """One of two clients works at a time: when the worker reports a failure, the idle one gets a task then, the
    failure is recorded as 'client-failed' (kind failure) and nothing is aggregated."""
    d = Driver(fraction=0.5)
    d.start("c0", "c1")
    (working,) = d.task
    idle = "c1" if working == "c0" else "c0"
    effects = d.fail(working, 1.0)
    (recorded,) = every(effects, UpdateRejected)
    assert (recorded.rejection.client, recorded.rejection.reason, recorded.rejection.kind, recorded.rejection.at) == (
        working, "client-failed", "failure", 1.0)
    assert recorded.rejection.detail == "EngineError: the engine is down"
    assert [(t.client, t.round) for t in tasks(effects)] == [(idle, 2)]
    assert every(effects, Reduce) == [] and d.core.statistics().accepted == 0


def test_a_client_that_failed_gets_no_new_task_before_its_failed_tasks_deadline() -> None:
    """The only client reports a failure at t=1: no task at once (it would spin through tasks), none at t=9.9,
    a fresh one when the failed task's timer fires at t=10."""
    d = Driver(expected_clients=1)
    d.start("c0")
    assert tasks(d.fail("c0", 1.0)) == []
    assert tasks(d.feed(TimerFired(now=9.9))) == []
    assert [(t.client, t.round) for t in tasks(d.feed(TimerFired(now=10.0)))] == [("c0", 2)]


def test_a_failed_client_is_recorded_in_the_next_result_not_as_missing() -> None:
    """The failure lands in the next aggregation's result; the client answered, so it is not missing."""
    d = Driver(expected_clients=1)
    d.start("c0")
    d.fail("c0", 1.0)
    d.feed(TimerFired(now=10.0))
    closed = result(d.reduce(d.answer("c0", 11.0), 12.0))
    assert [(r.client, r.reason, r.kind) for r in closed.rejected] == [("c0", "client-failed", "failure")]
    assert closed.missing == ()


def test_a_failure_for_a_task_the_client_does_not_hold_is_not_assigned() -> None:
    """A failure naming another task round is refused as not-assigned; the open task stays open."""
    d = Driver(expected_clients=1)
    d.start("c0")
    effects = d.fail("c0", 1.0, round_=7)
    assert [(e.rejection.reason, e.rejection.kind, e.rejection.detail, e.rejection.at)
            for e in every(effects, UpdateRejected)] == [("not-assigned", "failure", "no open task 7 for c0", 1.0)]
    assert tasks(effects) == []
    assert every(d.answer("c0", 2.0), Reduce) != []  # the task was still open: its update is accepted


def test_stream_tasks_announce_the_prompt_budget() -> None:
    """Buffered/async tasks carry max_prompt_chars too."""
    d = Driver(expected_clients=1)
    assert [t.max_prompt_chars for t in tasks(d.start("c0"))] == [50]
