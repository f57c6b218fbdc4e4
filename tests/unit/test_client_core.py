"""The client core: how a client's conditions turn into what it does (no broker, no clock)."""

from __future__ import annotations

from fedbus.client.core import (
    Alarm,
    ClientCore,
    ClientProfile,
    Connected,
    Disconnect,
    GlobalSeen,
    Note,
    Optimize,
    Reconnect,
    Send,
    SetAlarm,
    Stop,
    TaskSeen,
    WorkDone,
)
from fedbus.client.optimizer import LocalOutcome
from fedbus.faults.behaviour import is_hijack
from fedbus.protocol import topics
from fedbus.protocol.messages import DataSpec, Failure, GlobalState, Presence, Task, Update
from fedbus.scenario.conditions import Availability, ClientGroup, Latency, ScheduledEvent, Stragglers

DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=1, train_size=10, val_size=5, test_size=5)
OUTCOME = LocalOutcome(prompt="Base. Learned.", steps=2, accepted_steps=1, batch_acc_before=0.3,
                       batch_acc_after=0.6, llm_calls=9, tokens=100)


def task(rnd: int, version: int = 0, budget: int = 20_000) -> Task:
    return Task(run="r", round=rnd, client="c", msg_id=f"t{rnd}", sent=0.0, version=version, prompt="Base.",
                local_steps=2, batch_size=3, deadline_s=60.0, max_prompt_chars=budget)


def core(**group: object) -> ClientCore:
    params: dict[str, object] = {"name": "g", "count": 1}
    params.update(group)
    return ClientCore(ClientProfile(run="r", client="c", seed=7, group=ClientGroup(**params)))  # type: ignore[arg-type]


def kinds(effects: list[object]) -> list[str]:
    return [type(e).__name__ for e in effects]


def updates(effects: list[object]) -> list[Update]:
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, Update)]


def test_connect_announces_online_retained() -> None:
    """On connecting, a client publishes a retained 'online' presence; its will says 'offline'."""
    c = core()
    effects = c.handle(Connected(now=0.0))
    sends = [e for e in effects if isinstance(e, Send)]
    assert isinstance(sends[0].message, Presence) and sends[0].message.status == "online" and sends[0].retain
    will = c.will(0.0)
    assert isinstance(will.message, Presence) and will.message.status == "offline" and will.retain


def test_task_becomes_work_then_an_update_from_the_task_version() -> None:
    """A task starts local work with the group's latency; the result is an update based on the task's version."""
    c = core(latency=Latency(kind="constant", value_s=30))
    c.handle(Connected(now=0.0))
    work = [e for e in c.handle(TaskSeen(now=1.0, task=task(1, version=4))) if isinstance(e, Optimize)]
    assert work[0].delay_s == 30
    sent = updates(c.handle(WorkDone(now=31.0, task=work[0].task, outcome=OUTCOME)))
    assert sent[0].round == 1 and sent[0].base_version == 4 and sent[0].prompt == "Base. Learned."


def test_stragglers_are_slower_by_the_slowdown() -> None:
    """A client drawn as a straggler takes `slowdown` times the latency."""
    c = core(latency=Latency(kind="constant", value_s=10), stragglers=Stragglers(fraction=1.0, slowdown=5))
    c.handle(Connected(now=0.0))
    assert c.straggler
    work = [e for e in c.handle(TaskSeen(now=0.0, task=task(1))) if isinstance(e, Optimize)]
    assert work[0].delay_s == 50


def test_dropout_skips_the_round_and_says_so() -> None:
    """With dropout probability 1, every task is skipped and noted as a dropout."""
    c = core(availability=Availability(dropout_p=1.0))
    c.handle(Connected(now=0.0))
    effects = c.handle(TaskSeen(now=0.0, task=task(1)))
    assert "Optimize" not in kinds(effects)
    assert [e.event for e in effects if isinstance(e, Note)] == ["dropout"]


def test_crash_at_round_drops_the_connection_abruptly_and_rejoins() -> None:
    """A crash scheduled on round 2 aborts the connection (so the will fires) and schedules a reconnect."""
    c = core(availability=Availability(events=(ScheduledEvent(kind="crash", at_round=2, rejoin_after_s=30),)))
    c.handle(Connected(now=0.0))
    assert "Optimize" in kinds(c.handle(TaskSeen(now=1.0, task=task(1))))
    effects = c.handle(TaskSeen(now=10.0, task=task(2)))
    disconnect = [e for e in effects if isinstance(e, Disconnect)]
    assert disconnect and disconnect[0].abrupt
    assert [e.at for e in effects if isinstance(e, Reconnect)] == [40.0]
    assert "Optimize" not in kinds(effects)
    assert c.state == "down"
    assert "Send" in kinds(c.handle(Connected(now=40.0)))
    assert c.state == "up"


def test_work_from_before_a_crash_is_discarded() -> None:
    """Work that finishes after the client crashed and came back is not sent."""
    c = core(availability=Availability(events=(ScheduledEvent(kind="crash", at_s=5, rejoin_after_s=1),)))
    c.handle(Connected(now=0.0))
    work = [e for e in c.handle(TaskSeen(now=1.0, task=task(1))) if isinstance(e, Optimize)]
    c.handle(Alarm(now=5.0))
    c.handle(Connected(now=6.0))
    effects = c.handle(WorkDone(now=7.0, task=work[0].task, outcome=OUTCOME))
    assert updates(effects) == []
    assert [e.event for e in effects if isinstance(e, Note)] == ["work-discarded"]


def test_hang_ignores_tasks_but_keeps_the_connection() -> None:
    """A hanging client neither disconnects nor answers until the hang is over."""
    c = core(availability=Availability(events=(ScheduledEvent(kind="hang", at_s=10, duration_s=50),)))
    effects = c.handle(Connected(now=0.0))
    assert SetAlarm(at=10) in effects
    c.handle(Alarm(now=10.0))
    during = c.handle(TaskSeen(now=20.0, task=task(1)))
    assert "Disconnect" not in kinds(during) and "Optimize" not in kinds(during)
    assert "Optimize" in kinds(c.handle(TaskSeen(now=61.0, task=task(2))))


def test_leave_is_clean_and_says_offline_first() -> None:
    """A scheduled leave publishes a retained 'offline' presence, then disconnects cleanly."""
    c = core(availability=Availability(events=(ScheduledEvent(kind="leave", at_s=5),)))
    c.handle(Connected(now=0.0))
    effects = c.handle(Alarm(now=5.0))
    assert kinds(effects)[:2] == ["Send", "Disconnect"]
    assert isinstance(effects[0], Send) and effects[0].message.status == "offline"  # type: ignore[union-attr]
    assert not effects[1].abrupt  # type: ignore[union-attr]
    assert [e.event for e in effects if isinstance(e, Note)] == ["gone"]


def test_one_task_at_a_time_late_update_still_goes_out() -> None:
    """A task arriving during work waits; the late update is sent, then the queued task starts."""
    c = core(latency=Latency(kind="constant", value_s=100))
    c.handle(Connected(now=0.0))
    first = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1))) if isinstance(e, Optimize))
    assert "Optimize" not in kinds(c.handle(TaskSeen(now=50.0, task=task(2))))
    effects = c.handle(WorkDone(now=100.0, task=first.task, outcome=OUTCOME))
    assert [u.round for u in updates(effects)] == [1]
    assert [e.task.round for e in effects if isinstance(e, Optimize)] == [2]


def test_hostile_client_uploads_a_hijack() -> None:
    """A hostile client's update carries an instruction hijack or an off-task prompt."""
    c = core(behaviour="hostile")
    c.handle(Connected(now=0.0))
    work = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1))) if isinstance(e, Optimize))
    assert is_hijack(updates(c.handle(WorkDone(now=1.0, task=work.task, outcome=OUTCOME)))[0].prompt)


def test_stale_client_replays_its_first_update() -> None:
    """A 'stale' client re-sends its first update's round, base and prompt under a new message id."""
    c = core(behaviour="stale")
    c.handle(Connected(now=0.0))
    first_work = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1))) if isinstance(e, Optimize))
    first = updates(c.handle(WorkDone(now=1.0, task=first_work.task, outcome=OUTCOME)))[0]
    later_work = next(e for e in c.handle(TaskSeen(now=2.0, task=task(3, version=2))) if isinstance(e, Optimize))
    replay = updates(c.handle(WorkDone(now=3.0, task=later_work.task, outcome=OUTCOME)))[0]
    assert (replay.round, replay.base_version, replay.prompt) == (first.round, first.base_version, first.prompt)
    assert replay.msg_id != first.msg_id


def test_finished_run_says_goodbye_and_stops() -> None:
    """The global state 'finished' makes the client publish 'offline' and stop."""
    c = core()
    c.handle(Connected(now=0.0))
    state = GlobalState(run="r", round=3, client="aggregator", msg_id="g", sent=0.0, version=3, prompt="P",
                        status="finished", engine="surrogate", data=DATA, rounds=3)
    effects = c.handle(GlobalSeen(now=9.0, state=state))
    assert kinds(effects) == ["Send", "Stop"]
    assert isinstance(effects[1], Stop)
    assert c.handle(TaskSeen(now=10.0, task=task(4))) == []


def test_same_profile_same_decisions() -> None:
    """Two cores with the same profile make the same decisions for the same events (replay)."""
    def play() -> list[object]:
        c = core(latency=Latency(kind="lognormal", median_s=20, sigma=0.7), availability=Availability(dropout_p=0.4),
                 stragglers=Stragglers(fraction=0.5, slowdown=3))
        out: list[object] = list(c.handle(Connected(now=0.0)))
        for r in range(1, 8):
            out += c.handle(TaskSeen(now=float(r), task=task(r)))
            for e in list(out):
                if isinstance(e, Optimize) and e.task.round == r:
                    out += c.handle(WorkDone(now=r + 0.5, task=e.task, outcome=OUTCOME))
        return out
    assert play() == play()


def test_a_failed_local_step_is_reported_to_the_aggregator_at_once() -> None:
    """The optimizer failed: the client notes local-failed and sends a failure report on its update topic (round
    and base version of the task, the error and its type), then starts the task that waited."""
    c = core(latency=Latency(kind="constant", value_s=5))
    c.handle(Connected(now=0.0))
    work = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1, version=3))) if isinstance(e, Optimize))
    c.handle(TaskSeen(now=1.0, task=task(2, version=3)))
    effects = c.handle(WorkDone(now=5.0, task=work.task, outcome=None, error="HTTP 500", error_type="EngineError"))
    assert [(e.event, e.detail, e.round) for e in effects if isinstance(e, Note)] == [("local-failed", "HTTP 500", 1)]
    [send] = [e for e in effects if isinstance(e, Send)]
    assert send.topic == topics.update_topic("r", "c") and not send.retain
    failure = send.message
    assert isinstance(failure, Failure)
    assert (failure.round, failure.base_version, failure.reason, failure.error_type, failure.sent) == (
        1, 3, "HTTP 500", "EngineError", 5.0)
    assert [e.task.round for e in effects if isinstance(e, Optimize)] == [2]
    assert updates(effects) == []


def test_a_failure_reports_text_is_cut_to_the_protocols_bounds() -> None:
    """A long error and type are cut (300 and 64 characters), so the report is always a valid message."""
    c = core()
    c.handle(Connected(now=0.0))
    work = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1))) if isinstance(e, Optimize))
    effects = c.handle(WorkDone(now=1.0, task=work.task, outcome=None, error="e" * 999, error_type="T" * 99))
    [failure] = [e.message for e in effects if isinstance(e, Send)]
    assert isinstance(failure, Failure) and (len(failure.reason), len(failure.error_type)) == (300, 64)


def test_an_outcome_over_the_tasks_budget_is_cut_before_sending_and_noted() -> None:
    """The task says max_prompt_chars: an outcome longer than it is cut to its first max_prompt_chars characters
    (so the aggregator will not reject it as prompt-too-long), and the cut is noted."""
    c = core()
    c.handle(Connected(now=0.0))
    work = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1, budget=8))) if isinstance(e, Optimize))
    effects = c.handle(WorkDone(now=1.0, task=work.task, outcome=OUTCOME))
    assert [u.prompt for u in updates(effects)] == ["Base. Le"]
    assert [(e.event, e.detail, e.round) for e in effects if isinstance(e, Note)] == [
        ("prompt-cut", "14 > 8 characters: kept the first 8", 1)]


def test_an_outcome_at_the_budget_goes_out_whole() -> None:
    """max_prompt_chars is the longest prompt allowed: one of exactly that length is not cut."""
    c = core()
    c.handle(Connected(now=0.0))
    work = next(e for e in c.handle(TaskSeen(now=0.0, task=task(1, budget=14))) if isinstance(e, Optimize))
    effects = c.handle(WorkDone(now=1.0, task=work.task, outcome=OUTCOME))
    assert [u.prompt for u in updates(effects)] == ["Base. Learned."]
    assert [e for e in effects if isinstance(e, Note)] == []
