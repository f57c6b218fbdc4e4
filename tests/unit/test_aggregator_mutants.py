"""The round aggregator and what both cores share, pinned where bench/mutation.py found behaviour no test held.

Each test fixes one rule of fedbus/aggregator/rounds.py, base.py, config.py or strategies.py that a mutant
(a small edit of the code) broke without any other test noticing: exact records (rejection details, run-finished
reasons, close reasons), the effects a step must (or must not) emit, and edge cases of round closing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
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
    UpdateAccepted,
    UpdateRejected,
)
from fedbus.aggregator.events import (
    ClientOffline,
    ClientOnline,
    Reduced,
    ReduceFailed,
    Started,
    TimerFired,
    UpdateMalformed,
    UpdateReceived,
)
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.strategies import STRATEGIES, carry_out, sentences
from fedbus.aggregator.stream import StreamAggregator
from fedbus.errors import LocalProtocolError
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import DataSpec, GlobalState, Task, Update, UpdateStats

RUN = "r1"
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=3, train_size=30, val_size=10, test_size=10)
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=0.5, llm_calls=3,
                    tokens=10, duration_s=0.1)
T = TypeVar("T")


def config(**overrides: object) -> AggregatorConfig:
    params: dict[str, object] = {"run": RUN, "rounds": 2, "expected_clients": 3, "initial_prompt": "P0",
                                 "engine": "surrogate", "data": DATA, "min_clients": 2, "min_updates": 1,
                                 "round_deadline_s": 10.0, "join_timeout_s": 5.0, "max_prompt_chars": 50}
    params.update(overrides)
    return AggregatorConfig(**params)  # type: ignore[arg-type]


def rounds(**overrides: object) -> RoundAggregator:
    return RoundAggregator(config(**overrides), random.Random(0))


def stream(**overrides: object) -> StreamAggregator:
    return StreamAggregator(config(**{"mode": "async", **overrides}), random.Random(0))


def update(client: str, rnd: int = 1, *, base: int = 0, prompt: str | None = None, msg: str | None = None) -> Update:
    return Update(run=RUN, round=rnd, client=client, msg_id=msg or f"{client}-{rnd}", sent=0.0, base_version=base,
                  prompt=f"Advice of {client}." if prompt is None else prompt, stats=STATS)


def online(core: RoundAggregator | StreamAggregator, *clients: str, now: float = 0.0) -> list[Effect]:
    out: list[Effect] = []
    for client in clients:
        out += core.handle(ClientOnline(client=client, now=now))
    return out


def send(core: RoundAggregator | StreamAggregator, u: Update, now: float) -> list[Effect]:
    return core.handle(UpdateReceived(update=u, now=now))


def first(effects: list[Effect], kind: type[T]) -> T:
    return next(e for e in effects if isinstance(e, kind))


def every(effects: list[Effect], kind: type[T]) -> list[T]:
    return [e for e in effects if isinstance(e, kind)]


def rejection(effects: list[Effect]) -> Rejection:
    (only,) = [e.rejection for e in effects if isinstance(e, UpdateRejected)]
    return only


def result(effects: list[Effect]) -> RoundResult:
    return first(effects, RoundClosed).result


def globals_in(effects: list[Effect]) -> list[GlobalState]:
    return [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, GlobalState)]


def open_round(core: RoundAggregator, *clients: str, now: float = 0.0) -> list[Effect]:
    """Start the run and bring ``clients`` online; the first round opens when the last one arrives."""
    return core.handle(Started(now=now)) + online(core, *clients, now=now)


CORES: list[Callable[..., RoundAggregator | StreamAggregator]] = [rounds, stream]


# ---------------------------------------------------------------------- what both cores share
def test_message_ids_count_up_from_one() -> None:
    """The aggregator's messages are numbered aggregator-<run>-1, -2, -3, ... in the order they are published."""
    effects = open_round(rounds(), "a", "b", "c")
    ids = [e.message.msg_id for e in effects if isinstance(e, Publish)]
    assert ids == [f"{AGGREGATOR}-{RUN}-{n}" for n in range(1, 6)]  # waiting, running, three tasks


@pytest.mark.parametrize("make", CORES)
def test_start_without_clients_publishes_waiting_and_arms_the_join_timeout(make: Callable[..., object]) -> None:
    """Started with nobody online: the retained 'waiting' state, then a timer at now + join_timeout_s."""
    core = make()
    assert isinstance(core, RoundAggregator | StreamAggregator)
    publish, timer = core.handle(Started(now=2.0))
    assert isinstance(publish, Publish) and publish.retain and isinstance(publish.message, GlobalState)
    assert publish.message.status == "waiting"
    assert timer == ArmTimer(at=7.0)


@pytest.mark.parametrize("make", CORES)
def test_clients_online_before_the_start_begin_at_once(make: Callable[..., object]) -> None:
    """Presence that arrived before Started counts: the start opens work at once and arms no join timeout."""
    core = make()
    assert isinstance(core, RoundAggregator | StreamAggregator)
    online(core, "a", "b", "c", now=0.0)
    effects = core.handle(Started(now=1.0))
    assert core.phase in ("collecting", "running")
    assert len([e for e in effects if isinstance(e, Publish) and isinstance(e.message, Task)]) == 3
    assert every(effects, ArmTimer) and all(t.at == 11.0 for t in every(effects, ArmTimer))  # task deadlines only


@pytest.mark.parametrize("make", CORES)
def test_started_twice_is_our_bug(make: Callable[..., object]) -> None:
    """A second Started is a LocalProtocolError that says so."""
    core = make()
    assert isinstance(core, RoundAggregator | StreamAggregator)
    core.handle(Started(now=0.0))
    with pytest.raises(LocalProtocolError, match=r"^Started twice$"):
        core.handle(Started(now=1.0))


@pytest.mark.parametrize("make", CORES)
def test_an_unknown_event_is_our_bug(make: Callable[..., object]) -> None:
    """Something that is not an event is a LocalProtocolError naming it."""
    core = make()
    assert isinstance(core, RoundAggregator | StreamAggregator)
    with pytest.raises(LocalProtocolError, match=r"^unknown event 'tick'$"):
        core.handle("tick")  # type: ignore[arg-type]


@pytest.mark.parametrize("make", CORES)
def test_a_malformed_update_is_recorded_with_its_detail_and_time(make: Callable[..., object]) -> None:
    """Bytes that did not decode: a rejection 'malformed:<reason>' with the decoder's detail and the time."""
    core = make()
    assert isinstance(core, RoundAggregator | StreamAggregator)
    core.handle(Started(now=0.0))
    effects = core.handle(UpdateMalformed(client="a", reason="not-json", detail="byte 3", now=4.0))
    assert rejection(effects) == Rejection(client="a", msg_id=None, round=None, reason="malformed:not-json",
                                           detail="byte 3", at=4.0)


def test_refusals_carry_their_detail_and_time() -> None:
    """An unknown client, a blank prompt and an update after the end are rejected with a detail and the time."""
    core = rounds(rounds=1)
    open_round(core, "a", "b", "c")
    assert rejection(send(core, update("ghost"), 1.0)) == Rejection(
        client="ghost", msg_id="ghost-1", round=1, reason="unknown-client", detail="never announced itself", at=1.0)
    blank = rejection(send(core, update("a", prompt="  "), 2.0))
    assert (blank.reason, blank.detail, blank.at) == ("empty-prompt", "the prompt is blank", 2.0)
    send(core, update("b"), 3.0)
    send(core, update("c"), 3.0)
    core.handle(Reduced(round=1, prompt="M", now=4.0))
    late = rejection(send(core, update("b", msg="b-again"), 5.0))
    assert (late.reason, late.detail, late.at) == ("run-finished", "arrived after the last round", 5.0)


def test_a_prompt_of_exactly_max_prompt_chars_is_accepted() -> None:
    """max_prompt_chars is the longest prompt allowed, not the first one refused."""
    core = rounds()
    open_round(core, "a", "b", "c")
    assert every(send(core, update("a", prompt="x" * 50), 1.0), UpdateAccepted)
    assert rejection(send(core, update("b", prompt="x" * 51), 1.0)).reason == "prompt-too-long"


def test_run_finished_reports_the_rounds_the_version_and_the_prompt() -> None:
    """The last round's end: RunFinished('completed', '<n> rounds') with the count, the version and the prompt."""
    core = rounds(rounds=1)
    open_round(core, "a", "b", "c")
    for client in ("a", "b", "c"):
        send(core, update(client), 1.0)
    effects = core.handle(Reduced(round=1, prompt="Merged.", now=2.0))
    assert first(effects, RunFinished) == RunFinished(status="completed", reason="1 rounds", rounds_closed=1,
                                                      version=1, prompt="Merged.", leftover_rejections=())


def test_an_abort_says_how_many_clients_were_missing_for_how_long() -> None:
    """Too few clients by the join timeout: RunFinished('aborted') names min_clients and the timeout."""
    core = rounds()
    core.handle(Started(now=0.0))
    online(core, "a")
    finished = first(core.handle(TimerFired(now=5.0)), RunFinished)
    assert (finished.status, finished.reason) == ("aborted", "fewer than 2 clients online after 5 s")


def test_statistics_count_known_and_live_clients() -> None:
    """statistics(): every client that ever announced itself is known; only those online are live."""
    core = rounds()
    core.handle(Started(now=0.0))
    online(core, "a", "b")
    core.handle(ClientOffline(client="b", now=1.0))
    stats = core.statistics()
    assert (stats.known_clients, stats.live_clients) == (2, 1)


def test_an_unknown_mode_is_refused_by_name() -> None:
    """AggregatorConfig names the modes it knows when given another."""
    with pytest.raises(ValueError, match=r"^mode must be one of \('sync', 'buffered', 'async'\), got 'fedavg'$"):
        config(mode="fedavg")


# ---------------------------------------------------------------------- rounds: opening and the global state
def test_each_round_opening_publishes_the_running_state_then_the_tasks() -> None:
    """A round opens with RoundOpened, the retained 'running' state for it, one task per participant, its timer."""
    effects = open_round(rounds(), "a", "b", "c")[2:]  # after 'waiting' and its join timer
    assert [type(e) for e in effects] == [RoundOpened, Publish, Publish, Publish, Publish, ArmTimer]
    (running,) = globals_in(effects)
    assert (running.status, running.round, running.version) == ("running", 1, 0)


def test_the_new_global_prompt_is_published_even_when_no_round_follows() -> None:
    """An aggregated round publishes the new prompt at once; with too few clients left, a join timer follows."""
    core = rounds(min_clients=3)
    open_round(core, "a", "b", "c")
    send(core, update("a"), 1.0)
    send(core, update("b"), 1.0)
    core.handle(ClientOffline(client="c", now=2.0))  # the round closes, and only two clients are left
    effects = core.handle(Reduced(round=1, prompt="Merged.", now=3.0))
    assert [type(e) for e in effects] == [Publish, RoundClosed, ArmTimer]
    (state,) = globals_in(effects)
    assert (state.status, state.version, state.prompt) == ("running", 1, "Merged.")
    assert effects[2] == ArmTimer(at=8.0)
    assert core.phase == "waiting"


def test_a_round_without_quorum_publishes_no_global_state() -> None:
    """A no-quorum round changes nothing: no new global state, only the round record (and a join timer)."""
    core = rounds(min_clients=3, min_updates=2)
    open_round(core, "a", "b", "c")
    send(core, update("a"), 1.0)
    core.handle(ClientOffline(client="c", now=2.0))
    effects = core.handle(TimerFired(now=10.0))
    assert [type(e) for e in effects] == [RoundClosed, ArmTimer]
    assert result(effects).status == "no-quorum"


def test_later_rounds_open_with_min_clients_without_waiting_for_everyone() -> None:
    """expected_clients only delays the first round: the next one opens at once with min_clients online."""
    core = rounds(expected_clients=3, min_clients=2)
    open_round(core, "a", "b", "c")
    core.handle(ClientOffline(client="c", now=1.0))
    send(core, update("a"), 2.0)
    send(core, update("b"), 2.0)
    opened = first(core.handle(Reduced(round=1, prompt="Merged.", now=3.0)), RoundOpened)
    assert (opened.round, opened.selected) == (2, ("a", "b"))


# ---------------------------------------------------------------------- rounds: the adaptive deadline
def answer_all(core: RoundAggregator, rnd: int, base: int, times: dict[str, float]) -> None:
    for client, at in times.items():
        send(core, update(client, rnd, base=base), at)


def test_the_adaptive_deadline_is_median_plus_k_mad_of_arrival_times_since_opening() -> None:
    """Round 2's deadline: now + median + k * MAD of round 1's arrival times, counted from when round 1 opened."""
    core = rounds(min_clients=3, round_deadline_s=100.0, adaptive_deadline_k=2.0, adaptive_window=3, rounds=3)
    open_round(core, "a", "b", "c", now=1.0)  # round 1 opens at 1.0
    answer_all(core, 1, 0, {"a": 2.0, "b": 3.0, "c": 7.0})  # arrivals 1, 2, 6: median 2, MAD 1
    opened = first(core.handle(Reduced(round=1, prompt="Merged.", now=7.0)), RoundOpened)
    assert opened.deadline == pytest.approx(7.0 + 2.0 + 2.0 * 1.0, abs=1e-5)


def test_the_adaptive_deadline_uses_only_the_last_window_arrivals() -> None:
    """adaptive_window = 3: the deadline looks at the three most recent arrival times, not all of them."""
    core = rounds(min_clients=3, round_deadline_s=100.0, adaptive_deadline_k=2.0, adaptive_window=3, rounds=3)
    open_round(core, "a", "b", "c")
    answer_all(core, 1, 0, {"a": 1.0, "b": 2.0, "c": 6.0})
    core.handle(Reduced(round=1, prompt="One.", now=6.0))  # round 2 opens at 6.0
    answer_all(core, 2, 1, {"a": 6.5, "b": 7.0, "c": 7.5})  # arrivals 0.5, 1, 1.5: median 1, MAD 0.5
    opened = first(core.handle(Reduced(round=2, prompt="Two.", now=8.0)), RoundOpened)
    assert opened.deadline == pytest.approx(8.0 + 1.0 + 2.0 * 0.5, abs=1e-5)


# ---------------------------------------------------------------------- rounds: closing
def test_over_commitment_closes_with_reason_target_reached() -> None:
    """With over-commitment the round closes at the target and the result says 'target-reached'."""
    core = rounds(expected_clients=4, min_clients=1, fraction=0.5, overcommit=1.0)
    open_round(core, "a", "b", "c", "d")  # target 2, all four selected
    send(core, update("a"), 1.0)
    reduce = first(send(core, update("b"), 2.0), Reduce)
    closed = result(core.handle(Reduced(round=reduce.round, prompt="Merged.", now=3.0)))
    assert (closed.close_reason, closed.missing) == ("target-reached", ("c", "d"))


def test_a_participant_leaving_during_the_reduce_is_missing_not_dropped() -> None:
    """Dropped means gone while the round collected; one that leaves during the reduce was simply missing."""
    core = rounds()
    open_round(core, "a", "b", "c")
    send(core, update("a"), 1.0)
    send(core, update("b"), 1.0)
    core.handle(TimerFired(now=10.0))  # the deadline: the round reduces without c
    core.handle(ClientOffline(client="c", now=11.0))
    closed = result(core.handle(Reduced(round=1, prompt="Merged.", now=12.0)))
    assert (closed.dropped, closed.missing) == ((), ("c",))


def test_a_participant_that_leaves_and_comes_back_to_answer_is_not_dropped() -> None:
    """A participant that drops out, rejoins and answers within the round counts as an answer, not a drop."""
    core = rounds()
    open_round(core, "a", "b", "c")
    core.handle(ClientOffline(client="a", now=1.0))
    online(core, "a", now=2.0)
    for client in ("a", "b", "c"):
        send(core, update(client), 3.0)
    closed = result(core.handle(Reduced(round=1, prompt="Merged.", now=4.0)))
    assert closed.dropped == () and [a.client for a in closed.accepted] == ["a", "b", "c"]


def test_an_update_for_another_round_is_not_the_participants_answer() -> None:
    """A participant's update for a future round is refused and the round keeps waiting for its real answer."""
    core = rounds(expected_clients=2)
    open_round(core, "a", "b")
    assert rejection(send(core, update("a", 2), 1.0)).reason == "future-round"
    assert not every(send(core, update("b"), 2.0), Reduce)
    reduce = first(send(core, update("a"), 3.0), Reduce)
    assert [client for client, _ in reduce.prompts] == ["a", "b"]


def test_a_refused_answer_is_neither_missing_nor_accepted() -> None:
    """A participant whose answer was refused answered: the result does not list it as missing."""
    core = rounds(expected_clients=2)
    open_round(core, "a", "b")
    send(core, update("a", prompt=""), 1.0)
    send(core, update("b"), 2.0)
    closed = result(core.handle(Reduced(round=1, prompt="Merged.", now=3.0)))
    assert closed.missing == () and [a.client for a in closed.accepted] == ["b"]
    assert [r.reason for r in closed.rejected] == ["empty-prompt"]


def test_a_refused_last_answer_closes_the_round_at_that_moment() -> None:
    """When the last outstanding answer is refused the round closes then (here without quorum)."""
    core = rounds(expected_clients=2, min_updates=2)
    open_round(core, "a", "b")
    send(core, update("a"), 1.0)
    closed = result(send(core, update("b", prompt=" "), 3.0))
    assert (closed.status, closed.close_reason, closed.closed_at) == ("no-quorum", "all-answered", 3.0)


def test_an_accepted_last_answer_without_quorum_closes_the_round_at_that_moment() -> None:
    """When the last outstanding answer is accepted but too few were, the round closes then as no-quorum."""
    core = rounds(expected_clients=2, min_updates=2)
    open_round(core, "a", "b")
    send(core, update("a", prompt=""), 1.0)
    closed = result(send(core, update("b"), 4.0))
    assert (closed.status, closed.close_reason, closed.closed_at) == ("no-quorum", "all-answered", 4.0)


# ---------------------------------------------------------------------- rounds: reduce results
def reducing(**overrides: object) -> RoundAggregator:
    core = rounds(**overrides)
    open_round(core, "a", "b", "c")
    for client in ("a", "b", "c"):
        send(core, update(client), 1.0)
    assert core.phase == "reducing"
    return core


def test_a_reduce_failure_closes_the_round_with_its_reason() -> None:
    """ReduceFailed: the round closes as 'reduce-failed' and its close reason carries the runtime's reason."""
    closed = result(reducing().handle(ReduceFailed(round=1, reason="llm down", now=2.0)))
    assert (closed.status, closed.close_reason, closed.version_after) == ("reduce-failed", "reduce-failed: llm down", 0)


def test_reduce_results_for_another_round_are_our_bug() -> None:
    """Reduced or ReduceFailed for a round that is not being reduced is a LocalProtocolError that names it."""
    core = reducing()
    with pytest.raises(LocalProtocolError, match=r"^Reduced for round 2 while reducing round 1$"):
        core.handle(Reduced(round=2, prompt="M", now=2.0))
    with pytest.raises(LocalProtocolError, match=r"^ReduceFailed for round 2 while reducing$"):
        core.handle(ReduceFailed(round=2, reason="?", now=2.0))


def test_a_reduce_failure_while_collecting_is_our_bug() -> None:
    """ReduceFailed for the open round before it asked for a reduce is a LocalProtocolError."""
    core = rounds()
    open_round(core, "a", "b", "c")
    with pytest.raises(LocalProtocolError, match=r"^ReduceFailed for round 1 while collecting$"):
        core.handle(ReduceFailed(round=1, reason="?", now=1.0))


# ---------------------------------------------------------------------- strategies
def test_a_strategy_is_handed_the_character_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """carry_out passes max_chars on to the strategy (a plugin may use it) and returns its result whole."""
    monkeypatch.setitem(STRATEGIES, "budget-echo", lambda current, prompts, max_chars: f"{max_chars} chars" * 9)
    assert carry_out("budget-echo", "P0", [("a", "x")], 12) == "12 chars" * 9


def test_carrying_out_concat_of_blank_prompts_keeps_the_current_prompt() -> None:
    """concat_unique: a Reduce whose prompts are all blank leaves the global prompt as it was."""
    assert carry_out("concat_unique", "Keep me.", [("a", "  "), ("b", "\n")], 100) == "Keep me."


def test_sentences_keep_the_spacing_inside_a_sentence() -> None:
    """Sentences end after . ! ? and a space; the spaces and tabs inside one are kept as written."""
    assert sentences("Use  two\tspaces. Next one!") == ["Use  two\tspaces.", "Next one!"]
