"""The aggregator's journal: a run killed at any point and resumed from its journal ends as the
uninterrupted run did, decision for decision.

A simulated run records what its aggregator session was fed, as journal lines. Hypothesis picks the
kill point: a fresh session replays the lines before it (what ``fedbus run --resume`` does), then
goes on with the rest. The rounds, their results and the end must be exactly the uninterrupted ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbus.aggregator.effects import RoundResult
from fedbus.aggregator.events import Event
from fedbus.aggregator.session import AggregatorSession, NodeOutcome
from fedbus.plan import make_core, simulated_security
from fedbus.protocol import codec
from fedbus.protocol.ids import AGGREGATOR
from fedbus.runtime.journal import (
    Journal,
    Resendable,
    ResumeError,
    delivery_line,
    event_line,
    line_payload,
    read_journal,
    replay,
    unread_line,
)
from fedbus.scenario import Scenario, load_scenario
from fedbus.sim.run import sim_run_id, simulate

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("quickstart.yaml", "stragglers.yaml", "buffered-async.yaml", "dropouts.yaml",
             "lossy-network.yaml")  # the last has duplicate deliveries, journaled as their verdict


class _Recording:
    """Patches AggregatorSession so that a simulated run leaves its journal lines here."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines: list[dict[str, Any]] = []
        self.depth = 0
        receive, handle, evaluated = (AggregatorSession.receive, AggregatorSession.handle,
                                      AggregatorSession.round_evaluated)
        recording = self

        def rec_receive(session: AggregatorSession, topic: str, payload: bytes, retained: bool,
                        now: float) -> list[Any]:
            depth = recording.depth
            recording.depth += 1
            try:
                actions = receive(session, topic, payload, retained, now)
            finally:
                recording.depth -= 1
            if depth == 0:  # as the node journals it: a delivery that changed only counts, by its verdict
                unread = session.unread
                recording.lines.append(delivery_line(topic, payload, retained, now) if unread is None
                                       else unread_line(*unread, now))
            return actions

        def rec_handle(session: AggregatorSession, event: Event) -> list[Any]:
            if recording.depth == 0:
                recording.lines.append(event_line(event))
            recording.depth += 1
            try:
                return handle(session, event)
            finally:
                recording.depth -= 1

        def rec_evaluated(session: AggregatorSession, result: RoundResult, extra: dict[str, object]) -> list[Any]:
            recording.lines.append({"k": "x", "round": result.round, "extra": extra})
            return evaluated(session, result, extra)

        monkeypatch.setattr(AggregatorSession, "receive", rec_receive)
        monkeypatch.setattr(AggregatorSession, "handle", rec_handle)
        monkeypatch.setattr(AggregatorSession, "round_evaluated", rec_evaluated)


SESSIONS: dict[str, AggregatorSession] = {}  # each scenario's simulated session, as it ended


def _journal_of(name: str, tmp_path: Path) -> tuple[Scenario, list[dict[str, Any]], NodeOutcome]:
    scenario = load_scenario(ROOT / "scenarios" / name)
    with pytest.MonkeyPatch.context() as patch:
        recording = _Recording(patch)
        outcome_holder: list[NodeOutcome] = []
        original_init = AggregatorSession.__init__

        def keep(session: AggregatorSession, *args: Any, **kwargs: Any) -> None:
            original_init(session, *args, **kwargs)
            outcome_holder.append(session.outcome)
            SESSIONS.setdefault(name, session)

        patch.setattr(AggregatorSession, "__init__", keep)
        simulate(scenario, tmp_path / name, progress=False)
    # round-trip through JSON, as the journal file does
    lines = [json.loads(json.dumps(line, ensure_ascii=False)) for line in recording.lines]
    return scenario, lines, outcome_holder[0]


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Scenario, list[dict[str, Any]],
                                                                          NodeOutcome]]:
    tmp = tmp_path_factory.mktemp("journals")
    return {name: _journal_of(name, tmp) for name in SCENARIOS}


def _fresh(scenario: Scenario) -> AggregatorSession:
    """A new session as the simulated run's was: the same core and, under protocol v2, the same keys (a resumed
    aggregator must verify and open what its journal holds)."""
    run_id = sim_run_id(scenario)
    return AggregatorSession(make_core(scenario, run_id), codec.Limits(max_bytes=scenario.max_message_bytes),
                             security=simulated_security(scenario, run_id).aggregator)


def _rounds(outcome: NodeOutcome) -> list[tuple[RoundResult, dict[str, object]]]:
    return [(result, json.loads(json.dumps(extra))) for result, extra in outcome.rounds]


def _resume_in_two(scenario: Scenario, lines: list[dict[str, Any]], kill: int) -> AggregatorSession:
    """Kill after ``kill`` lines, resume, and go on with the rest as the resumed driver would."""
    session = _fresh(scenario)
    resend = Resendable(sync=scenario.aggregation.mode == "sync")
    first = replay(session, lines[:kill], resend)
    rest = lines[kill:]
    # the driver evaluates a round whose evaluation the kill lost again: here, with the journaled one
    pending = list(first.unevaluated)
    extras = iter(line for line in rest if line.get("k") == "x")
    for result in pending:
        extra = next(extras)
        assert extra["round"] == result.round
        session.round_evaluated(result, extra["extra"])
    later = [line for line in rest if line.get("k") != "x"] + list(extras)
    replay(session, _in_order(rest, later), resend)
    return session


def _in_order(rest: list[dict[str, Any]], keep: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    wanted = {id(line) for line in keep}
    return (line for line in rest if id(line) in wanted)


@pytest.mark.parametrize("name", SCENARIOS)
def test_replaying_the_whole_journal_rebuilds_the_run(journals: dict[str, Any], name: str) -> None:
    scenario, lines, outcome = journals[name]
    session = _fresh(scenario)
    state = replay(session, lines, Resendable(sync=scenario.aggregation.mode == "sync"))
    assert _rounds(session.outcome) == _rounds(outcome)
    assert session.outcome.finished == outcome.finished
    assert state.finished is not None and not state.unevaluated and not state.pending_reduces
    assert session.outcome.duplicates_dropped == outcome.duplicates_dropped  # journaled as verdicts ('u' lines)
    assert session.outcome.messages_received == outcome.messages_received
    if name == "lossy-network.yaml":
        assert outcome.duplicates_dropped > 0 and any(line.get("k") == "u" for line in lines)
    # the seen ids in the same LRU order: a duplicate freshens its id, in the run and on replay
    assert list(session._seen._ids) == list(SESSIONS[name]._seen._ids)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_run_killed_anywhere_and_resumed_ends_as_the_uninterrupted_one(journals: dict[str, Any],
                                                                         data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(SCENARIOS), label="scenario")
    scenario, lines, outcome = journals[name]
    kill = data.draw(st.integers(min_value=0, max_value=len(lines)), label="kill after line")
    session = _resume_in_two(scenario, lines, kill)
    assert _rounds(session.outcome) == _rounds(outcome)
    assert session.outcome.finished == outcome.finished
    assert session.core.prompt == outcome.finished.prompt  # type: ignore[union-attr]


def test_the_state_after_a_kill_says_what_the_driver_must_redo(journals: dict[str, Any]) -> None:
    scenario, lines, _ = journals["quickstart.yaml"]
    closing = max(i for i, line in enumerate(lines) if line.get("k") == "x")  # the last round's evaluation
    session = _fresh(scenario)
    state = replay(session, lines[:closing], Resendable(sync=True))
    assert [r.round for r in state.unevaluated] == [lines[closing]["round"]]
    reduced = max(i for i, line in enumerate(lines) if line.get("event") == "reduced")
    state = replay(_fresh(scenario), lines[:reduced], Resendable(sync=True))
    assert list(state.pending_reduces) == [lines[reduced]["round"]]
    assert state.last_now == max(float(line["now"]) for line in lines[:reduced] if "now" in line)


def test_a_resumed_aggregator_sends_the_global_and_the_open_tasks_again(journals: dict[str, Any]) -> None:
    scenario, lines, _ = journals["quickstart.yaml"]
    opened = next(i for i, line in enumerate(lines) if line.get("k") == "x")  # round 1 closed, round 2 open
    resend = Resendable(sync=True)
    replay(_fresh(scenario), lines[:opened + 1], resend)
    sends = resend.sends()
    assert sends[0].retain and sends[0].topic.endswith("/global")
    security = simulated_security(scenario, sim_run_id(scenario))  # each client pins the aggregator's key
    # a task is a paired frame: each verifies with the key its own client shares with the aggregator
    tasks = [codec.decode(security.client(s.topic.rsplit("/", 1)[1]).authenticate(s.payload, signer=AGGREGATOR))
             for s in sends[1:]]
    assert sorted(t.client for t in tasks) == [f"client-{i}" for i in range(scenario.clients.count)]
    assert {t.round for t in tasks} == {2}


def test_a_line_torn_by_a_kill_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.write({"k": "e", "event": "started", "now": 0.0})
    journal.close()
    with (tmp_path / "journal.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"k": "d", "topic": "fedbus/v1/r/pres')
    assert read_journal(tmp_path / "journal.jsonl") == [{"k": "e", "event": "started", "now": 0.0}]


def test_a_folder_without_a_journal_cannot_be_resumed(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="not the folder of a fedbus run"):
        read_journal(tmp_path / "journal.jsonl")


def test_a_resumed_journal_appends_after_the_torn_line_not_onto_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.write({"k": "e", "event": "started", "now": 0.0})
    journal.close()
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"k": "d", "topic": "fedbus/v1/r/pres')  # the kill
    resumed = Journal(path)
    resumed.write({"k": "e", "event": "timer", "now": 1.0})
    resumed.close()
    assert read_journal(path) == [{"k": "e", "event": "started", "now": 0.0},
                                  {"k": "e", "event": "timer", "now": 1.0}]


def test_a_forgery_is_journaled_as_its_verdict_and_replays_to_the_same_counts() -> None:
    """A 250 KB junk frame on a client's update topic: the journal keeps the verdict (a few hundred bytes; a
    flood of such frames wrote 1.2 GB in ten seconds when each was kept whole), and a resumed session that
    replays it counts the same forgery, by reason and channel, and the same message received."""
    from fedbus.protocol import topics

    scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    session = _fresh(scenario)
    topic = topics.update_topic(sim_run_id(scenario), "client-0")
    session.receive(topic, b"FB2S" + bytes(range(256)) * 1000, False, 3.0)
    assert session.unread is not None and session.unread[0] == "forged"
    line = json.loads(json.dumps(unread_line(*session.unread, 3.0)))
    assert len(json.dumps(line)) < 600
    again = _fresh(scenario)
    replay(again, [line], Resendable(sync=True))
    for outcome in (session.outcome, again.outcome):
        assert outcome.forgeries.total == 1 and outcome.messages_received == 1
    assert again.outcome.forgeries.by_reason == session.outcome.forgeries.by_reason
    assert again.outcome.forgeries.by_channel == session.outcome.forgeries.by_channel == {"update": 1}
    assert again.outcome.forgeries.first == session.outcome.forgeries.first


def test_a_revocation_is_journaled_and_fed_again_on_replay() -> None:
    """The driver's ClientOffline for a client whose key line was removed is an input of the core like a timer:
    journaled before it acts, and the same event on replay."""
    from fedbus.aggregator.events import ClientOffline, Revoked
    from fedbus.runtime.journal import line_event

    event = Revoked(client="mallory", now=12.5, key="fedbus-pk:AAAA")
    line = json.loads(json.dumps(event_line(event)))
    assert line == {"k": "e", "event": "revoked", "now": 12.5, "client": "mallory", "key": "fedbus-pk:AAAA"}
    assert line_event(line) == event and event.reason == "revoked"
    with pytest.raises(ValueError, match="does not feed ClientOffline"):
        event_line(ClientOffline(client="mallory", now=1.0, reason="left"))  # a delivery's, journaled as such


def test_a_duplicate_replayed_as_its_verdict_freshens_its_seen_id_as_the_delivery_did() -> None:
    """The seen ids are an LRU (100,000): a live duplicate moves its id to the end; its journal verdict must too,
    or after a resume a long run evicts other ids than the original did."""
    from fedbus.protocol import topics

    scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    session = _fresh(scenario)
    for msg_id in ("A", "B"):
        session._seen.first_time(f"client-0\x00{msg_id}")
    session.replay_unread("duplicate", {"topic": topics.update_topic(sim_run_id(scenario), "client-0"), "id": "A",
                                        "client": "client-0"}, 1.0)
    assert list(session._seen._ids) == ["client-0\x00B", "client-0\x00A"]
    assert session.outcome.duplicates_dropped == 1


def _remote_session(scenario: Scenario, run_id: str, secret: bytes,
                    keys_file: Path) -> tuple[AggregatorSession, Any]:
    """A fresh aggregator session of a signed run whose remote clients' keys are in ``keys_file``, and those keys."""
    from fedbus.plan import run_security
    from fedbus.runtime.run_keys import RemoteKeys

    remote = RemoteKeys([keys_file])
    security = run_security(scenario, secret, remote=remote)
    return AggregatorSession(make_core(scenario, run_id), codec.Limits(max_bytes=scenario.max_message_bytes),
                             security=security.aggregator), remote


def test_a_revoked_clients_earlier_messages_still_check_on_replay(tmp_path: Path) -> None:
    """mallory announces itself, is then revoked (its line taken out), and the aggregator is killed. Replayed with
    the key file as it is now, its journaled presence failed as 'unknown-signer' and the resumed session went on
    from another state than the run had; with the key the revocation journaled, it replays as it ran."""
    from fedbus.aggregator.events import Revoked, Started
    from fedbus.protocol import topics
    from fedbus.protocol.messages import Presence
    from fedbus.runtime.run_keys import RemoteKeys, revoked_keys
    from fedbus.scenario.loader import scenario_from_mapping
    from fedbus.security.crypto import derive, generate, random_bytes
    from fedbus.security.keys import authorized_line
    from fedbus.security.policy import Security

    scenario = scenario_from_mapping({"name": "rev", "rounds": 2, "task": {"name": "surrogate-skills"},
                                      "clients": {"count": 2, "remote": 1}})
    run_id, secret, key = "rev-1", random_bytes(32), generate()
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(authorized_line("mallory", key.public), encoding="utf-8")

    def session() -> tuple[AggregatorSession, RemoteKeys]:
        return _remote_session(scenario, run_id, secret, keys_file)

    first, _ = session()
    lines: list[dict[str, Any]] = [event_line(Started(now=0.0))]
    first.handle(Started(now=0.0))
    mallory = Security.for_client("mallory", key, derive(secret, AGGREGATOR).public, mode="signed+sealed")
    limits = codec.Limits(max_bytes=scenario.max_message_bytes)
    hello = Presence(run=run_id, round=0, client="mallory", msg_id="mallory-p-1", sent=1.0, status="online")
    topic, wire = topics.presence_topic(run_id, "mallory"), mallory.wrap(codec.encode(hello, limits))
    first.receive(topic, wire, False, 1.0)
    lines.append(delivery_line(topic, wire, False, 1.0))
    keys_file.write_text("", encoding="utf-8")
    revoked = Revoked(client="mallory", now=5.0, key=key.public.text())
    first.handle(revoked)
    lines.append(event_line(revoked))
    lines = [json.loads(json.dumps(line)) for line in lines]
    again, remote = session()
    remote.replaying = revoked_keys(lines)
    replay(again, lines, Resendable(sync=True), remote.revoked_now)
    assert first.outcome.forgeries.total == again.outcome.forgeries.total == 0
    assert again.core.statistics() == first.core.statistics() and not remote.replaying



def _presence_line(run_id: str, client: str, token: str, status: str, now: float, *, seq: int) -> dict[str, Any]:
    from fedbus.protocol import topics
    from fedbus.protocol.messages import Presence

    message = Presence(run=run_id, round=0, client=client, msg_id=f"{client}-{token}-{seq}", sent=now,
                       status=status)  # type: ignore[arg-type]
    return json.loads(json.dumps(delivery_line(topics.presence_topic(run_id, client), codec.encode(message), False,
                                               now)))


def test_a_resumed_session_takes_its_own_clients_last_wills_from_before_the_kill_as_stale() -> None:
    """Killed mid-round over an external broker, the run's own clients die with it, and their Last Wills (queued
    for the aggregator's persistent session) reach the resumed one: they closed the open round as all gone
    (no-quorum) before the clients it starts again could answer. Now a presence of a client an earlier session
    started (its id's token ``0``, ``r1``, ...) is recorded as stale and changes nothing; a remote client's (a
    random token) still counts; and what the earlier session itself was told replays as it was, while a stale
    verdict replays as that verdict."""
    from fedbus.aggregator.events import Started

    scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    run_id = sim_run_id(scenario)
    clients = [f"client-{i}" for i in range(scenario.clients.count)]

    def session(boot: str) -> AggregatorSession:
        return AggregatorSession(make_core(scenario, run_id), codec.Limits(max_bytes=scenario.max_message_bytes),
                                 boot=boot)

    first = [_presence_line(run_id, c, "0", "online", 0.1, seq=1) for c in clients] + \
        [event_line(Started(now=0.2))]
    resumed = session("r1")
    replay(resumed, first, Resendable(sync=True))
    assert (resumed.core.statistics().phase, resumed.core.statistics().round) == ("collecting", 1), "round 1 open"
    wills = [_presence_line(run_id, c, "0", "offline", 0.5, seq=2) for c in clients]
    for line in wills:  # live, in the resumed session
        actions = resumed.receive(line["topic"], line_payload(line), False, line["now"])
        assert resumed.unread is not None and resumed.unread[0] == "stale"
        assert [a.event for a in actions if hasattr(a, "event")] == ["received", "stale-presence"]
    assert resumed.core.statistics().phase == "collecting", "round 1 still open"
    assert resumed.core.statistics().rounds_closed == 0
    # the same wills fed to the session that wrote them (its own clients' token): they end the round
    original = session("0")
    replay(original, first + wills, Resendable(sync=True))
    assert original.core.statistics().rounds_closed == 1, "the round closed as all gone"
    # ... and so does a journal of that session replayed by a later one: they were news then
    later = session("r2")
    replay(later, first + wills, Resendable(sync=True))
    assert later.core.statistics().rounds_closed == 1
    # the stale verdict, journaled as such, replays as that verdict
    stale = json.loads(json.dumps(unread_line(*resumed.unread, 0.5)))
    again = session("r2")
    replay(again, [*first, stale], Resendable(sync=True))
    assert again.core.statistics().rounds_closed == 0 and again.outcome.messages_received == len(clients) + 1
    # a client started elsewhere draws a random token: its Last Will counts in any session
    remote = _presence_line(run_id, clients[0], "3f9a1c2e", "offline", 0.6, seq=1)
    resumed.receive(remote["topic"], line_payload(remote), False, remote["now"])
    assert resumed.unread is None


def test_a_checkpoint_written_before_adaptive_deadline_was_refused_outside_sync_still_resumes(tmp_path: Path) -> None:
    """A buffered run stored with participation.adaptive_deadline (accepted then, and ignored) must not become
    impossible to resume now that the scenario check refuses it there: the setting did nothing, and is dropped."""
    from fedbus.runtime.checkpoint import Checkpoint
    from fedbus.scenario import scenario_to_mapping

    scenario = load_scenario(ROOT / "scenarios" / "buffered-async.yaml")
    Checkpoint.new(tmp_path, run_id="b-1-abc", scenario=scenario, scenario_file="b.yaml",
                   broker={"kind": "embedded", "url": "mqtt://127.0.0.1:1"})
    stored = json.loads((tmp_path / "checkpoint.json").read_text())
    stored["scenario"]["participation"]["adaptive_deadline"] = {"k": 3, "window": 16}
    (tmp_path / "checkpoint.json").write_text(json.dumps(stored))
    resumed = Checkpoint.open(tmp_path).scenario()
    assert scenario_to_mapping(resumed) == scenario_to_mapping(scenario)
