"""The events.jsonl records of the aggregator session (fedbus/aggregator/session.py), field for field.

test_session_intake.py checks where each delivery goes; these tests pin what the session writes about it
and about each core effect (the record's name, its fields, whether it is also logged and with which
message), and the times it hands the core, all found unpinned by bench/mutation.py.
"""

from __future__ import annotations

import random
from typing import Any

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import ArmTimer, Reduce, Rejection, RoundClosed, RoundResult
from fedbus.aggregator.events import Reduced, Started
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.session import AggregatorSession, Record, Send
from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import DataSpec, GlobalState, Message, Metrics, Presence, Update, UpdateStats

RUN = "run-1"
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=2, train_size=10, val_size=4, test_size=4)
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=0.5, llm_calls=3, tokens=10,
                    duration_s=0.0)
DEADLINE_S = 10.123456789  # more than six decimals: the round-opened record rounds it


def make_session() -> AggregatorSession:
    """A started session of one sync round for two expected clients, c-0 and c-1."""
    config = AggregatorConfig(run=RUN, rounds=1, expected_clients=2, initial_prompt="P0", engine="surrogate",
                              data=DATA, min_clients=2, round_deadline_s=DEADLINE_S, join_timeout_s=30.0)
    return AggregatorSession(RoundAggregator(config, random.Random(0)), codec.Limits())


def deliver(session: AggregatorSession, topic: str, message: Message | bytes, *, now: float,
            retained: bool = False) -> list[Any]:
    payload = message if isinstance(message, bytes) else codec.encode(message)
    return session.receive(topic, payload, retained, now)


def presence(client: str, status: str = "online", run: str = RUN) -> Presence:
    return Presence(run=run, round=0, client=client, msg_id=f"{client}-{status}", sent=0.0,
                    status=status)  # type: ignore[arg-type]


def update(client: str, msg_id: str) -> Update:
    return Update(run=RUN, round=1, client=client, msg_id=msg_id, sent=0.0, base_version=0,
                  prompt=f"Count every item ({client}).", stats=STATS)


def opened(session: AggregatorSession) -> list[Any]:
    """Start the run and bring both clients online: round 1 opens at time 0."""
    actions = session.handle(Started(now=0.0))
    for client in ("c-0", "c-1"):
        actions += deliver(session, topics.presence_topic(RUN, client), presence(client), now=0.0, retained=True)
    return actions


def named(actions: list[Any], event: str) -> list[Record]:
    return [a for a in actions if isinstance(a, Record) and a.event == event]


def closed_round(session: AggregatorSession, now: float) -> RoundResult:
    """Both clients answer and the reduce comes back: the round's result."""
    actions = deliver(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-u"), now=now)
    actions += deliver(session, topics.update_topic(RUN, "c-1"), update("c-1", "c-1-u"), now=now)
    reduce = next(a for a in actions if isinstance(a, Reduce))
    done = session.handle(Reduced(round=reduce.round, prompt="Merged.", now=now))
    return next(a for a in done if isinstance(a, RoundClosed)).result


def test_a_published_message_is_a_sent_record_then_its_bytes() -> None:
    """Each publish: a 'sent' record (kind, topic, id, client, round, retain), then the encoded bytes, counted."""
    session = make_session()
    record, send, timer = session.handle(Started(now=0.0))
    topic = topics.global_topic(RUN)
    assert record == Record("sent", {"kind": "globalstate", "topic": topic, "id": f"{AGGREGATOR}-{RUN}-1",
                                     "client": AGGREGATOR, "round": 0, "retain": True})
    assert isinstance(send, Send) and (send.topic, send.retain) == (topic, True)
    state = codec.decode(send.payload)
    assert isinstance(state, GlobalState) and state.status == "waiting"
    assert timer == ArmTimer(at=30.0)
    assert session.outcome.messages_sent == 1


def test_a_round_opening_is_recorded_and_logged_with_its_rounded_deadline() -> None:
    """'round-opened' lists round, version, participants, live count, deadline and deadline_s (6 decimals)."""
    session = make_session()
    actions = opened(session)
    assert named(actions, "round-opened") == [Record(
        "round-opened", {"round": 1, "version": 0, "selected": ["c-0", "c-1"], "live": 2, "deadline": DEADLINE_S,
                         "deadline_s": 10.123457}, log="info", message="round opened")]
    sends = [a for a in actions if isinstance(a, Send)]
    assert [s.retain for s in sends] == [True, True, False, False]  # waiting, running, two tasks
    assert session.outcome.messages_sent == len(sends) == 4


def test_a_received_message_is_recorded_with_its_kind_topic_id_client_round_and_retained_flag() -> None:
    """Every delivery that decodes gets a 'received' record before anything else happens to it."""
    session = make_session()
    session.handle(Started(now=0.0))
    topic = topics.presence_topic(RUN, "c-0")
    received = named(deliver(session, topic, presence("c-0"), now=0.0, retained=True), "received")
    assert received == [Record("received", {"kind": "presence", "topic": topic, "id": "c-0-online", "client": "c-0",
                                            "round": 0, "retained": True})]


def test_accepted_and_rejected_updates_are_recorded_field_for_field() -> None:
    """'accepted' gives client, id, round and prompt length; 'rejected' adds reason and detail and is logged."""
    session = make_session()
    opened(session)
    topic = topics.update_topic(RUN, "c-0")
    first = update("c-0", "c-0-u")
    assert named(deliver(session, topic, first, now=1.0), "accepted") == [
        Record("accepted", {"client": "c-0", "id": "c-0-u", "round": 1, "prompt_chars": len(first.prompt)})]
    assert named(deliver(session, topic, update("c-0", "c-0-again"), now=2.0), "rejected") == [
        Record("rejected", {"client": "c-0", "id": "c-0-again", "round": 1, "reason": "second-update",
                            "detail": "already sent c-0-u for this round", "kind": "update"}, log="info",
               message="update rejected")]


def test_the_end_of_the_run_is_recorded_with_status_reason_rounds_and_version() -> None:
    """'run-finished' carries the status, the reason, the rounds closed and the final version."""
    session = make_session()
    opened(session)
    actions = deliver(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-u"), now=1.0)
    actions += deliver(session, topics.update_topic(RUN, "c-1"), update("c-1", "c-1-u"), now=1.0)
    reduce = next(a for a in actions if isinstance(a, Reduce))
    done = session.handle(Reduced(round=reduce.round, prompt="Merged.", now=2.0))
    assert named(done, "run-finished") == [Record("run-finished", {"status": "completed", "reason": "1 rounds",
                                                                   "rounds": 1, "version": 1})]
    assert session.finished


def test_an_evaluated_round_is_recorded_with_the_drivers_measures() -> None:
    """round_evaluated: a 'round-closed' record (round, status, close reason, then the driver's fields), kept."""
    session = make_session()
    opened(session)
    result = closed_round(session, 1.0)
    assert session.round_evaluated(result, {"accuracy": 0.5}) == [Record(
        "round-closed", {"round": 1, "status": "aggregated", "close_reason": "all-answered", "accuracy": 0.5})]
    assert session.outcome.rounds == [(result, {"accuracy": 0.5})]


def test_garbage_on_an_update_topic_is_logged_and_rejected_with_the_decoders_reason_and_time() -> None:
    """Undecodable bytes: a logged 'received-malformed' record with the decoder's message, and a rejection
    'malformed:<reason>' whose detail is that message cut at 200 characters, at the delivery time."""
    session = make_session()
    opened(session)
    topic = topics.update_topic(RUN, "c-0")
    garbage = b'{"v": 1, "kind": "' + b"k" * 300 + b'"}'
    message = f"unknown-kind: kind {'k' * 300!r}"
    actions = deliver(session, topic, garbage, now=0.5)
    assert named(actions, "received-malformed") == [Record(
        "received-malformed", {"topic": topic, "client": "c-0", "reason": message}, log="warning",
        message="malformed message")]
    assert closed_round(session, 1.0).rejected == (Rejection(client="c-0", msg_id=None, round=None,
                                                             reason="malformed:unknown-kind", detail=message[:200],
                                                             at=0.5),)


def test_an_update_on_another_clients_topic_is_logged_as_forged_and_rejected_at_its_time() -> None:
    """A sender mismatch on an update topic: a logged 'received-forged' record and a 'client-mismatch'
    rejection at the delivery time."""
    session = make_session()
    opened(session)
    topic = topics.update_topic(RUN, "c-0")
    detail = "message says client 'c-1' but arrived on 'c-0''s topic"
    actions = deliver(session, topic, update("c-1", "c-1-forged"), now=0.5)
    assert named(actions, "received-forged") == [Record("received-forged", {"topic": topic, "detail": detail},
                                                        log="warning", message="forged sender")]
    assert closed_round(session, 1.0).rejected == (Rejection(client="c-0", msg_id=None, round=None,
                                                             reason="malformed:client-mismatch", detail=detail,
                                                             at=0.5),)


def test_a_presence_for_another_run_is_recorded_as_forged_without_a_log_line() -> None:
    """A presence naming another run on this run's topic: a 'received-forged' record only."""
    session = make_session()
    session.handle(Started(now=0.0))
    topic = topics.presence_topic(RUN, "c-0")
    assert named(deliver(session, topic, presence("c-0", run="other"), now=0.0), "received-forged") == [
        Record("received-forged", {"topic": topic, "detail": "presence for run 'other' on this run's topic"})]


def test_a_message_of_the_wrong_kind_on_an_update_topic_is_rejected_naming_its_kind() -> None:
    """A presence sent on an update topic is rejected as 'wrong-kind', naming the kind, at the delivery time."""
    session = make_session()
    opened(session)
    deliver(session, topics.update_topic(RUN, "c-0"), presence("c-0", status="offline"), now=0.5)
    assert closed_round(session, 1.0).rejected == (Rejection(client="c-0", msg_id=None, round=None,
                                                             reason="malformed:wrong-kind",
                                                             detail="Presence on an update topic", at=0.5),)


def test_an_offline_presence_reaches_the_core_at_its_time() -> None:
    """Both participants going offline close the round then (nobody left to answer)."""
    session = make_session()
    opened(session)
    deliver(session, topics.presence_topic(RUN, "c-0"), presence("c-0", "offline"), now=3.0)
    actions = deliver(session, topics.presence_topic(RUN, "c-1"), presence("c-1", "offline"), now=4.0)
    result = next(a for a in actions if isinstance(a, RoundClosed)).result
    assert (result.status, result.close_reason, result.closed_at) == ("no-quorum", "all-gone", 4.0)


def test_metrics_on_a_topic_that_is_not_a_metrics_topic_are_not_recorded_as_metrics() -> None:
    """Only the metrics channel yields 'metrics' records; the same message on a presence topic yields none."""
    session = make_session()
    session.handle(Started(now=0.0))
    def metrics(msg_id: str) -> Metrics:
        return Metrics(run=RUN, round=1, client="c-0", msg_id=msg_id, sent=0.0, values=(("accuracy", 0.5),))

    assert named(deliver(session, topics.presence_topic(RUN, "c-0"), metrics("m-1"), now=1.0), "metrics") == []
    assert named(deliver(session, topics.metrics_topic(RUN, "c-0"), metrics("m-2"), now=1.0), "metrics") == [
        Record("metrics", {"client": "c-0", "round": 1, "values": {"accuracy": 0.5}})]
