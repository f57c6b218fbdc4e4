"""Shrunk counterexamples of the state machines, as named tests. Each pinned a core bug, now fixed."""

from __future__ import annotations

import random

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import Effect, Publish, Reduce, RoundClosed, RunFinished, UpdateAccepted, UpdateRejected
from fedbus.aggregator.events import (
    ClientOffline,
    ClientOnline,
    Reduced,
    ReduceFailed,
    Started,
    TimerFired,
    UpdateReceived,
)
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.stream import StreamAggregator
from fedbus.protocol.messages import Task
from tests.stateful import DATA, INITIAL_PROMPT, MAX_CHARS, OTHER_RUN, RUN, make_update, reduce_and_check


def config(**overrides: object) -> AggregatorConfig:
    params: dict[str, object] = {"run": RUN, "rounds": 2, "expected_clients": 1, "initial_prompt": INITIAL_PROMPT,
                                 "engine": "surrogate", "data": DATA, "min_clients": 1, "round_deadline_s": 10.0,
                                 "join_timeout_s": 30.0, "max_prompt_chars": MAX_CHARS}
    params.update(overrides)
    return AggregatorConfig(**params)  # type: ignore[arg-type]


def stream(**overrides: object) -> StreamAggregator:
    return StreamAggregator(config(**overrides), random.Random(0))


def tasks(effects: list[Effect]) -> list[Task]:
    return [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, Task)]


def answer(core: StreamAggregator | RoundAggregator, task: Task, msg_id: str, now: float) -> list[Effect]:
    update = make_update(client=task.client, rnd=task.round, base=task.version, prompt=f"Be brief {msg_id}.",
                         msg_id=msg_id)
    return core.handle(UpdateReceived(update=update, now=now))


def reasons(effects: list[Effect]) -> list[str]:
    return [e.rejection.reason for e in effects if isinstance(e, UpdateRejected)]

def test_sync_update_for_a_closed_round_is_not_called_future() -> None:
    """Sync: an update for round 1 arriving after round 1 closed (all-gone) is stale, not from the future."""
    core = RoundAggregator(config(fraction=0.3), random.Random(0))
    core.handle(Started(now=0.0))
    opened = core.handle(ClientOnline(client="c0", now=0.0))
    closed = core.handle(ClientOffline(client="c0", now=0.0, reason="will"))  # round 1 closes: all gone
    assert [e.result.close_reason for e in closed if isinstance(e, RoundClosed)] == ["all-gone"]
    assert core.phase == "waiting"
    effects = answer(core, tasks(opened)[0], "c0-m1", 0.0)
    assert reasons(effects) in (["stale-round"], ["late"])

def test_stream_update_from_another_run_leaves_the_task_open() -> None:
    """Stream: a wrong-run update with a client's task number neither cancels nor replaces that client's task."""
    core = stream(mode="buffered", buffer_size=2)
    core.handle(Started(now=0.0))
    task = tasks(core.handle(ClientOnline(client="c0", now=0.0)))[0]
    foreign = make_update(client="c0", rnd=task.round, base=task.version, prompt="Wrong run.", msg_id="c0-x",
                          run=OTHER_RUN)
    effects = core.handle(UpdateReceived(update=foreign, now=0.0))
    assert reasons(effects) == ["wrong-run"]
    assert tasks(effects) == []
    assert reasons(answer(core, task, "c0-m2", 1.0)) == []

def test_stream_round_numbers_close_once_after_a_failed_reduce() -> None:
    """Stream: after a ReduceFailed, the next aggregation closes under a new round number."""
    core = stream(mode="buffered", buffer_size=2, expected_clients=2)
    core.handle(Started(now=0.0))
    work = tasks(core.handle(ClientOnline(client="c1", now=0.0)) + core.handle(ClientOnline(client="c3", now=0.0)))
    effects: list[Effect] = []
    for i, task in enumerate(work):
        effects += answer(core, task, f"first-{i}", 1.0)
    failed = core.handle(ReduceFailed(round=1, reason="llm down", now=2.0))
    work = tasks(effects)
    effects = []
    for i, task in enumerate(work):
        effects += answer(core, task, f"second-{i}", 3.0)
    reduce = next(e for e in effects if isinstance(e, Reduce))
    done = core.handle(Reduced(round=reduce.round, prompt=reduce_and_check(reduce), now=4.0))
    rounds = [e.result.round for e in failed + done if isinstance(e, RoundClosed)]
    assert len(set(rounds)) == len(rounds) == 2

def test_stream_abort_reports_the_rejections_it_collected() -> None:
    """Stream: a rejection recorded before an abort ends up in RunFinished.leftover_rejections."""
    core = stream(mode="buffered", buffer_size=2)
    core.handle(Started(now=0.0))
    task = tasks(core.handle(ClientOnline(client="c0", now=0.0)))[0]
    core.handle(ClientOffline(client="c0", now=0.0, reason="will"))  # nobody left: the core pauses
    foreign = make_update(client="c0", rnd=task.round, base=0, prompt="Wrong run.", msg_id="c0-x", run=OTHER_RUN)
    assert reasons(core.handle(UpdateReceived(update=foreign, now=10.0))) == ["wrong-run"]
    finished = [e for e in core.handle(TimerFired(now=30.0)) if isinstance(e, RunFinished)]
    assert finished and finished[0].status == "aborted"
    assert [r.msg_id for r in finished[0].leftover_rejections] == ["c0-x"]

def test_stream_abort_accounts_for_accepted_updates() -> None:
    """Stream: updates accepted before an abort are in a result or rejected, never silently gone."""
    core = stream(mode="async")
    core.handle(Started(now=0.0))
    task = tasks(core.handle(ClientOnline(client="c0", now=0.0)))[0]
    first = answer(core, task, "c0-m1", 1.0)  # accepted, reduced on its own: Reduce in flight
    assert any(isinstance(e, Reduce) for e in first)
    second = answer(core, tasks(first)[0], "c0-m2", 2.0)  # accepted, waits in the buffer
    assert [e.accepted.msg_id for e in first + second if isinstance(e, UpdateAccepted)] == ["c0-m1", "c0-m2"]
    core.handle(ClientOffline(client="c0", now=3.0, reason="will"))  # the core pauses, the reduce still out
    finished = [e for e in core.handle(TimerFired(now=33.0)) if isinstance(e, RunFinished)]
    assert finished and finished[0].status == "aborted"
    accounted = {a.msg_id for r in core.results for a in r.accepted}
    accounted |= {r.msg_id for r in finished[0].leftover_rejections}
    assert accounted == {"c0-m1", "c0-m2"}

def test_stream_full_buffer_is_reduced_after_a_pause() -> None:
    """Stream: an update buffered while paused is reduced once the reduce in flight returns and clients are back."""
    core = stream(mode="async")
    core.handle(Started(now=0.0))
    task = tasks(core.handle(ClientOnline(client="c0", now=0.0)))[0]
    first = answer(core, task, "c0-m1", 1.0)  # Reduce in flight
    answer(core, tasks(first)[0], "c0-m2", 2.0)  # buffered
    core.handle(ClientOffline(client="c0", now=3.0, reason="will"))  # paused
    reduce = next(e for e in first if isinstance(e, Reduce))
    effects = core.handle(Reduced(round=reduce.round, prompt=reduce_and_check(reduce), now=4.0))
    assert [a.msg_id for a in core.buffered] == ["c0-m2"]
    effects += core.handle(ClientOnline(client="c0", now=5.0))  # running again
    assert core.buffered == ()
    assert any(isinstance(e, Reduce) for e in effects)
