"""The synchronous round aggregator core, driven with a fake clock (no broker)."""

from __future__ import annotations

import random

import pytest

from fedbus.aggregator.effects import (
    ArmTimer,
    Effect,
    Publish,
    Reduce,
    Rejection,
    RoundClosed,
    RoundOpened,
    RunFinished,
    UpdateAccepted,
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
from fedbus.aggregator.rounds import AggregatorConfig, RoundAggregator
from fedbus.errors import LocalProtocolError
from fedbus.protocol.messages import DataSpec, Failure, GlobalState, Task, Update, UpdateStats

RUN = "r1"
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=3, train_size=30, val_size=10, test_size=10)
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=0.5, llm_calls=3,
                    tokens=10, duration_s=0.1)


def make(**overrides: object) -> RoundAggregator:
    params: dict[str, object] = {"run": RUN, "rounds": 2, "expected_clients": 3, "initial_prompt": "P0",
                                 "engine": "surrogate", "data": DATA, "min_clients": 2, "min_updates": 1,
                                 "round_deadline_s": 10.0, "join_timeout_s": 5.0}
    params.update(overrides)
    return RoundAggregator(AggregatorConfig(**params), random.Random(0))  # type: ignore[arg-type]


def update(client: str, rnd: int = 1, *, base: int = 0, prompt: str | None = None, msg: str | None = None,
           run: str = RUN) -> Update:
    return Update(run=run, round=rnd, client=client, msg_id=msg or f"{client}-{rnd}", sent=0.0,
                  base_version=base, prompt=prompt if prompt is not None else f"prompt of {client}", stats=STATS)


def failure(client: str, rnd: int = 1, *, msg: str | None = None, run: str = RUN, reason: str = "HTTP 500",
            error_type: str = "EngineError") -> Failure:
    return Failure(run=run, round=rnd, client=client, msg_id=msg or f"{client}-f{rnd}", sent=0.0, base_version=0,
                   reason=reason, error_type=error_type)


def of(effects: list[Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in effects if isinstance(e, kind)]


def started(agg: RoundAggregator, clients: tuple[str, ...] = ("a", "b", "c")) -> list[Effect]:
    out = agg.handle(Started(now=0.0))
    for c in clients:
        out += agg.handle(ClientOnline(client=c, now=0.1))
    return out


def test_first_round_waits_for_every_expected_client() -> None:
    """Round 1 opens only once all expected clients are online (or the join timeout passes)."""
    agg = make()
    effects = agg.handle(Started(now=0.0))
    assert of(effects, RoundOpened) == []
    assert of(effects, Publish)[0].message.status == "waiting"
    agg.handle(ClientOnline(client="a", now=0.1))
    assert agg.handle(ClientOnline(client="b", now=0.2)) == []
    opened = of(agg.handle(ClientOnline(client="c", now=0.3)), RoundOpened)
    assert [o.selected for o in opened] == [("a", "b", "c")]


def test_join_timeout_opens_with_the_minimum() -> None:
    """After the join timeout, a round opens with min_clients clients online."""
    agg = make()
    agg.handle(Started(now=0.0))
    agg.handle(ClientOnline(client="a", now=0.1))
    agg.handle(ClientOnline(client="b", now=0.1))
    assert of(agg.handle(TimerFired(now=4.9)), RoundOpened) == []
    opened = of(agg.handle(TimerFired(now=5.0)), RoundOpened)
    assert opened and opened[0].selected == ("a", "b")


def test_join_timeout_without_enough_clients_aborts() -> None:
    """With fewer than min_clients online after the join timeout, the run ends as aborted (never hangs)."""
    agg = make()
    agg.handle(Started(now=0.0))
    agg.handle(ClientOnline(client="a", now=0.1))
    finished = of(agg.handle(TimerFired(now=5.0)), RunFinished)
    assert finished and finished[0].status == "aborted"
    assert agg.phase == "finished"


def test_round_publishes_one_task_per_selected_client_and_arms_the_deadline() -> None:
    """Opening a round sends each participant a task with the global prompt and version, then arms the deadline."""
    effects = started(make())
    tasks = [e.message for e in of(effects, Publish) if isinstance(e.message, Task)]
    assert sorted(t.client for t in tasks) == ["a", "b", "c"]
    assert all(t.prompt == "P0" and t.version == 0 and t.round == 1 for t in tasks)
    assert of(effects, ArmTimer)[-1].at == pytest.approx(0.1 + 10.0)


def test_quorum_reached_closes_early_and_reduces() -> None:
    """When every selected client answered, the round closes at once and asks for a reduce."""
    agg = make()
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    agg.handle(UpdateReceived(update=update("b"), now=1.1))
    effects = agg.handle(UpdateReceived(update=update("c"), now=1.2))
    reduce = of(effects, Reduce)
    assert len(reduce) == 1
    assert [c for c, _ in reduce[0].prompts] == ["a", "b", "c"]
    closed = of(agg.handle(Reduced(round=1, prompt="MERGED", now=1.3)), RoundClosed)
    assert closed[0].result.status == "aggregated"
    assert closed[0].result.close_reason == "all-answered"
    assert agg.version == 1 and agg.prompt == "MERGED"


def test_new_global_prompt_is_published_retained() -> None:
    """After a reduce, the new global prompt and version go out retained."""
    agg = make()
    started(agg)
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c), now=1.0))
    effects = agg.handle(Reduced(round=1, prompt="MERGED", now=1.3))
    globals_ = [e for e in of(effects, Publish) if isinstance(e.message, GlobalState)]
    assert globals_[0].retain and globals_[0].message.prompt == "MERGED" and globals_[0].message.version == 1


def test_deadline_closes_with_what_arrived_and_records_missing() -> None:
    """At the deadline the round closes with the updates that came; silent clients are listed as missing."""
    agg = make()
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    assert of(agg.handle(TimerFired(now=5.0)), Reduce) == []
    effects = agg.handle(TimerFired(now=10.3))
    assert len(of(effects, Reduce)) == 1
    result = of(agg.handle(Reduced(round=1, prompt="M", now=10.4)), RoundClosed)[0].result
    assert result.close_reason == "deadline"
    assert result.missing == ("b", "c")
    assert [a.client for a in result.accepted] == ["a"]


def test_no_quorum_keeps_the_prompt_and_goes_on() -> None:
    """Below min_updates at the deadline, the round closes as no-quorum and the global prompt stays."""
    agg = make(min_updates=2)
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    effects = agg.handle(TimerFired(now=10.3))
    closed = of(effects, RoundClosed)
    assert closed[0].result.status == "no-quorum"
    assert agg.version == 0 and agg.prompt == "P0"
    assert of(effects, RoundOpened)[0].round == 2


def test_crashed_participant_does_not_hold_the_round() -> None:
    """A selected client that goes offline is recorded as dropped; the round closes when the rest answered."""
    agg = make()
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    agg.handle(UpdateReceived(update=update("b"), now=1.0))
    effects = agg.handle(ClientOffline(client="c", now=1.5, reason="will"))
    assert len(of(effects, Reduce)) == 1
    result = of(agg.handle(Reduced(round=1, prompt="M", now=1.6)), RoundClosed)[0].result
    assert result.dropped == ("c",)
    assert result.missing == ()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (update("a", msg="a-1"), "duplicate"),
        (update("a", msg="a-other"), "second-update"),
        (update("zed"), "unknown-client"),
        (update("b", rnd=0), "stale-round"),
        (update("b", rnd=7), "future-round"),
        (update("b", run="other"), "wrong-run"),
        (update("b", base=3), "wrong-base-version"),
        (update("b", prompt="x" * 200), "prompt-too-long"),
        (update("b", prompt="   "), "empty-prompt"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason_and_never_crash(bad: Update, reason: str) -> None:
    """Duplicate, second, unknown, stale, future, foreign-run, wrong-base, oversized and blank updates are rejected."""
    agg = make(max_prompt_chars=100)
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    effects = agg.handle(UpdateReceived(update=bad, now=1.1))
    rejected = of(effects, UpdateRejected)
    assert [r.rejection.reason for r in rejected] == [reason]
    assert of(effects, UpdateAccepted) == []
    for c in "bc":
        agg.handle(UpdateReceived(update=update(c, msg=f"{c}-good"), now=1.2))
    agg.handle(TimerFired(now=20.0))
    result = of(agg.handle(Reduced(round=1, prompt="M", now=20.1)), RoundClosed)[0].result
    assert reason in [r.reason for r in result.rejected]


def test_not_selected_client_is_rejected() -> None:
    """A known client that was not selected for the round cannot slip an update in."""
    agg = make(fraction=0.1, min_clients=2, expected_clients=3)
    effects = started(agg)
    selected = of(effects, RoundOpened)[0].selected
    outsider = next(c for c in "abc" if c not in selected)
    rejected = of(agg.handle(UpdateReceived(update=update(outsider), now=1.0)), UpdateRejected)
    assert rejected[0].rejection.reason == "not-selected"


def test_malformed_update_is_recorded_in_the_round() -> None:
    """Bytes that did not decode on an update topic are rejected as malformed and show in the round result."""
    agg = make()
    started(agg)
    effects = agg.handle(UpdateMalformed(client="a", reason="not-json", detail="x", now=1.0))
    assert of(effects, UpdateRejected)[0].rejection.reason == "malformed:not-json"
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c), now=1.1))
    result = of(agg.handle(Reduced(round=1, prompt="M", now=1.2)), RoundClosed)[0].result
    assert [r.reason for r in result.rejected] == ["malformed:not-json"]


def test_refused_answer_counts_as_answered() -> None:
    """A participant whose update is refused (too long) has answered: the round does not wait for the deadline."""
    agg = make(max_prompt_chars=100)
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    agg.handle(UpdateReceived(update=update("b"), now=1.0))
    effects = agg.handle(UpdateReceived(update=update("c", prompt="y" * 500), now=1.0))
    assert len(of(effects, Reduce)) == 1


def test_update_during_reduce_is_late_and_lands_in_the_next_round() -> None:
    """An update arriving while the round is being reduced is rejected as late and recorded in the next round."""
    agg = make(rounds=3)
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    agg.handle(UpdateReceived(update=update("b"), now=1.0))
    agg.handle(TimerFired(now=10.4))
    effects = agg.handle(UpdateReceived(update=update("c"), now=10.5))
    assert of(effects, UpdateRejected)[0].rejection.reason == "late"
    agg.handle(Reduced(round=1, prompt="M", now=10.6))
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c, rnd=2, base=1), now=11.0))
    result = of(agg.handle(Reduced(round=2, prompt="M2", now=11.1)), RoundClosed)[0].result
    assert [r.reason for r in result.rejected] == ["late"]


def test_run_finishes_after_the_last_round() -> None:
    """After `rounds` rounds the aggregator publishes status finished and reports completion."""
    agg = make(rounds=1)
    started(agg)
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c), now=1.0))
    effects = agg.handle(Reduced(round=1, prompt="M", now=1.1))
    finished = of(effects, RunFinished)
    assert finished[0].status == "completed" and finished[0].version == 1
    assert [e.message.status for e in of(effects, Publish) if isinstance(e.message, GlobalState)][-1] == "finished"
    late = of(agg.handle(UpdateReceived(update=update("a", msg="a-late"), now=2.0)), UpdateRejected)
    assert late[0].rejection.reason == "run-finished"


def test_reduce_failure_closes_the_round_without_a_new_version() -> None:
    """If the aggregation strategy fails, the round closes as reduce-failed and the prompt stays."""
    agg = make()
    started(agg)
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c), now=1.0))
    closed = of(agg.handle(ReduceFailed(round=1, reason="llm down", now=1.1)), RoundClosed)
    assert closed[0].result.status == "reduce-failed" and agg.version == 0


def test_reduced_for_the_wrong_round_is_our_bug() -> None:
    """A Reduced event the core did not ask for is a LocalProtocolError, not silently applied."""
    agg = make()
    started(agg)
    with pytest.raises(LocalProtocolError):
        agg.handle(Reduced(round=1, prompt="M", now=1.0))


def test_selection_honours_fraction_and_minimum() -> None:
    """fraction of the live clients is selected, never fewer than min_clients."""
    clients = tuple(f"c{i}" for i in range(10))
    agg = make(fraction=0.3, min_clients=2, expected_clients=10)
    assert len(of(started(agg, clients), RoundOpened)[0].selected) == 3
    agg2 = make(fraction=0.1, min_clients=2, expected_clients=10)
    assert len(of(started(agg2, clients), RoundOpened)[0].selected) == 2


def test_same_events_same_effects() -> None:
    """Determinism: the same event sequence with the same seed yields the same effects."""
    def play() -> list[Effect]:
        agg = make(fraction=0.5, expected_clients=4)
        out = started(agg, ("a", "b", "c", "d"))
        out += agg.handle(UpdateReceived(update=update("a"), now=1.0))
        out += agg.handle(TimerFired(now=10.3))
        return out
    assert play() == play()


def test_statistics_snapshot() -> None:
    """statistics() reports counts as an immutable snapshot."""
    agg = make()
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    agg.handle(UpdateReceived(update=update("zed"), now=1.0))
    stats = agg.statistics()
    assert (stats.accepted, stats.rejected, stats.live_clients, stats.phase) == (1, 1, 3, "collecting")
    with pytest.raises(AttributeError):
        stats.accepted = 5  # type: ignore[misc]


def test_a_failure_report_answers_the_round_and_is_recorded_not_aggregated() -> None:
    """A participant whose local step failed says so: recorded as 'client-failed' (kind failure, with the error),
    counted as answered, so the round closes once the others answered; it is neither accepted nor missing."""
    agg = make()
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    recorded = of(agg.handle(FailureReceived(failure=failure("b"), now=1.5)), UpdateRejected)
    assert [r.rejection for r in recorded] == [Rejection(client="b", msg_id="b-f1", round=1, reason="client-failed",
                                                         detail="EngineError: HTTP 500", at=1.5, kind="failure")]
    effects = agg.handle(UpdateReceived(update=update("c"), now=2.0))
    assert [c for c, _ in of(effects, Reduce)[0].prompts] == ["a", "c"]
    result = of(agg.handle(Reduced(round=1, prompt="M", now=2.1)), RoundClosed)[0].result
    assert result.close_reason == "all-answered" and result.missing == () and result.dropped == ()
    assert [(r.client, r.reason, r.kind) for r in result.rejected] == [("b", "client-failed", "failure")]
    assert agg.statistics().rejected == 1 and agg.statistics().accepted == 2


def test_a_round_where_every_participant_failed_closes_at_once_without_quorum() -> None:
    """Everyone answered with a failure: the round closes then (no deadline wait), as no-quorum, 'all-answered'."""
    agg = make()
    started(agg)
    agg.handle(FailureReceived(failure=failure("a"), now=1.0))
    agg.handle(FailureReceived(failure=failure("b"), now=1.0))
    assert agg.phase == "collecting"
    closed = of(agg.handle(FailureReceived(failure=failure("c"), now=1.2)), RoundClosed)
    assert [(c.result.status, c.result.close_reason, c.result.closed_at) for c in closed] == [
        ("no-quorum", "all-answered", 1.2)]
    assert agg.version == 0


def test_participants_that_only_left_close_the_round_as_all_gone() -> None:
    """'all-gone' is kept for a round nobody answered: every participant went offline."""
    agg = make(expected_clients=2, min_clients=2)
    started(agg, ("a", "b"))
    agg.handle(ClientOffline(client="a", now=1.0))
    closed = of(agg.handle(ClientOffline(client="b", now=1.0)), RoundClosed)
    assert [c.result.close_reason for c in closed] == ["all-gone"]


@pytest.mark.parametrize(("bad", "reason"), [
    (failure("a", 2), "future-round"),
    (failure("a", run="other"), "wrong-run"),
    (failure("ghost"), "unknown-client"),
])
def test_a_failure_report_goes_through_the_senders_checks(bad: Failure, reason: str) -> None:
    """A failure from another run, an unknown client or for a round not yet open is refused like an update, and
    does not count as an answer."""
    agg = make()
    started(agg)
    recorded = of(agg.handle(FailureReceived(failure=bad, now=1.0)), UpdateRejected)
    assert [(r.rejection.reason, r.rejection.kind) for r in recorded] == [(reason, "failure")]
    agg.handle(UpdateReceived(update=update("b"), now=1.0))
    assert of(agg.handle(UpdateReceived(update=update("c"), now=1.0)), Reduce) == []  # still waits for a


def test_a_failure_after_an_accepted_update_is_a_second_answer() -> None:
    """A client whose update was accepted cannot take it back with a failure: 'second-update'."""
    agg = make()
    started(agg)
    agg.handle(UpdateReceived(update=update("a"), now=1.0))
    recorded = of(agg.handle(FailureReceived(failure=failure("a"), now=1.1)), UpdateRejected)
    assert [r.rejection.reason for r in recorded] == ["second-update"]
    assert "already sent a-1" in recorded[0].rejection.detail


def test_a_failure_from_a_client_not_selected_is_refused() -> None:
    """Only a participant of the open round can answer it, with an update or a failure."""
    agg = make(fraction=0.3, min_clients=1, expected_clients=3)
    opened = of(started(agg), RoundOpened)[0]
    outsider = next(c for c in "abc" if c not in opened.selected)
    recorded = of(agg.handle(FailureReceived(failure=failure(outsider), now=1.0)), UpdateRejected)
    assert [r.rejection.reason for r in recorded] == ["not-selected"]
    assert agg.phase == "collecting"


def test_failures_for_old_rounds_late_ones_and_after_the_end() -> None:
    """A failure during the reduce is late, one for a past round stale, one after the last round run-finished."""
    agg = make(rounds=2)
    started(agg)
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c), now=1.0))
    late = of(agg.handle(FailureReceived(failure=failure("a", msg="a-late"), now=1.1)), UpdateRejected)
    assert [r.rejection.reason for r in late] == ["late"]
    agg.handle(Reduced(round=1, prompt="M", now=1.2))
    stale = of(agg.handle(FailureReceived(failure=failure("a", msg="a-old"), now=1.3)), UpdateRejected)
    assert [r.rejection.reason for r in stale] == ["stale-round"]
    for c in "abc":
        agg.handle(FailureReceived(failure=failure(c, 2), now=1.4))
    assert agg.phase == "finished"
    after = of(agg.handle(FailureReceived(failure=failure("a", 2, msg="a-after"), now=1.5)), UpdateRejected)
    assert [r.rejection.reason for r in after] == ["run-finished"]


@pytest.mark.parametrize(("error_type", "reason", "detail"), [
    ("EngineError", "HTTP 500", "EngineError: HTTP 500"),
    ("RuntimeError", "RuntimeError: a bug", "RuntimeError: a bug"),
    ("", "the engine is down", "the engine is down"),
    ("E", "x" * 300, "E: " + "x" * 297),
])
def test_a_client_failed_detail_names_the_error_once_and_is_short(error_type: str, reason: str, detail: str) -> None:
    """The detail is 'type: reason' (not the type twice when the reason begins with it), cut at 300 characters."""
    agg = make()
    started(agg)
    recorded = of(agg.handle(FailureReceived(failure=failure("a", reason=reason, error_type=error_type), now=1.0)),
                  UpdateRejected)
    assert recorded[0].rejection.detail == detail


def test_tasks_and_global_states_announce_the_prompt_budget() -> None:
    """Every task and global state carries the run's max_prompt_chars, so clients stay within it."""
    effects = started(make(max_prompt_chars=345))
    messages = [e.message for e in of(effects, Publish)]
    assert {type(m) for m in messages} == {GlobalState, Task}
    assert all(m.max_prompt_chars == 345 for m in messages if isinstance(m, GlobalState | Task))


def test_a_round_that_opens_at_once_carries_the_new_version_in_the_only_global() -> None:
    """After an aggregation the next round opens in the same step when enough clients are live: its global (the new
    version and prompt, the next round) is the one published; the aggregated round's own would be replaced on the
    broker before any client needed it. When the next round has to wait, the aggregated global goes out."""
    agg = make(rounds=3)
    started(agg)
    for c in "abc":
        agg.handle(UpdateReceived(update=update(c), now=1.0))
    effects = agg.handle(Reduced(round=1, prompt="MERGED", now=1.3))
    globals_ = [e.message for e in of(effects, Publish) if isinstance(e.message, GlobalState)]
    assert [(g.round, g.version, g.prompt) for g in globals_] == [(2, 1, "MERGED")]
    assert of(effects, RoundOpened)[0].round == 2
    agg.handle(ClientOffline(client="b", now=1.4))  # round 3 must wait: one live client, min_clients 2
    agg.handle(ClientOffline(client="c", now=1.4))
    agg.handle(UpdateReceived(update=update("a", 2, base=1), now=1.5))
    effects = agg.handle(TimerFired(now=11.3)) + agg.handle(Reduced(round=2, prompt="M2", now=11.4))
    globals_ = [e.message for e in of(effects, Publish) if isinstance(e.message, GlobalState)]
    assert [(g.round, g.version, g.prompt) for g in globals_] == [(2, 2, "M2")]
    assert of(effects, RoundOpened) == []
