"""The aggregator session's intake (fedbus/aggregator/session.py): each delivery reaches the core as an event,
or is dropped with a logged reason (foreign topic, malformed, duplicate delivery, forged sender); after the
run finished, late updates are still rejected with a reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fedbus.aggregator.effects import Reduce, RoundClosed, RunFinished
from fedbus.aggregator.events import Reduced, Started, TimerFired
from fedbus.aggregator.session import AggregatorSession, Record, Send
from fedbus.plan import make_core
from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import (
    DataSpec,
    Failure,
    GlobalState,
    Message,
    Metrics,
    Presence,
    Receipt,
    Task,
    Update,
    UpdateStats,
)
from fedbus.scenario import scenario_from_mapping

RUN = "run-1"
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=0.5, llm_calls=3, tokens=10,
                    duration_s=0.0)


def make_session(limits: codec.Limits | None = None, rounds: int = 2) -> AggregatorSession:
    """A started session for two expected clients c-0 and c-1 (a round opens once both are online)."""
    scenario = scenario_from_mapping({
        "name": "intake", "seed": 1, "rounds": rounds, "task": {"train_size": 10, "val_size": 4, "test_size": 4},
        "clients": {"count": 2, "local_steps": 1, "batch_size": 2, "id_prefix": "c"},
        "participation": {"min_clients": 2, "min_updates": 1, "round_deadline_s": 60, "join_timeout_s": 60},
    })
    session = AggregatorSession(make_core(scenario, RUN), limits or codec.Limits())
    session.handle(Started(now=0.0))
    return session


def feed(session: AggregatorSession, topic: str, message: Message | bytes, retained: bool = False,
         now: float = 1.0) -> list[Any]:
    payload = message if isinstance(message, bytes) else codec.encode(message)
    return session.receive(topic, payload, retained, now)


def records(actions: list[Any], event: str | None = None) -> list[dict[str, Any]]:
    return [{"event": a.event, **a.fields} for a in actions
            if isinstance(a, Record) and (event is None or a.event == event)]


def presence(client: str, status: str = "online", msg_id: str | None = None, run: str = RUN) -> Presence:
    return Presence(run=run, round=0, client=client, msg_id=msg_id or f"{client}-p-{status}", sent=0.0,
                    status=status)  # type: ignore[arg-type]


def update(client: str, msg_id: str | None = None, round_: int = 1) -> Update:
    return Update(run=RUN, round=round_, client=client, msg_id=msg_id or f"{client}-u-{round_}", sent=0.0,
                  base_version=0, prompt=f"Count every item ({client}).", stats=STATS)


def online(session: AggregatorSession, *clients: str) -> list[Any]:
    actions: list[Any] = []
    for client in clients:
        actions += feed(session, topics.presence_topic(RUN, client), presence(client), retained=True)
    return actions


def live(session: AggregatorSession) -> int:
    return session.core.statistics().live_clients


def test_an_online_presence_on_its_own_topic_makes_the_client_live() -> None:
    """A client announcing itself on its own presence topic is live; both online: round 1 opens."""
    session = make_session()
    actions = online(session, "c-0")
    assert live(session) == 1
    [received] = records(actions, "received")
    assert received["kind"] == "presence" and received["client"] == "c-0" and received["retained"] is True
    assert records(online(session, "c-1"), "round-opened")


def test_an_offline_presence_takes_the_client_out() -> None:
    """'offline' on a client's own presence topic (its Last Will, or a clean leave) removes it from the live set."""
    session = make_session()
    online(session, "c-0")
    feed(session, topics.presence_topic(RUN, "c-0"), presence("c-0", "offline"))
    assert live(session) == 0


@pytest.mark.parametrize(("claimed", "status"), [("c-1", "offline"), ("ghost", "online")])
def test_a_presence_on_another_clients_topic_is_dropped_as_forged(claimed: str, status: str) -> None:
    """A presence claiming another client on c-0's topic changes no membership and is logged as received-forged."""
    session = make_session()
    online(session, "c-0", "c-1")
    before = session.core.statistics()
    actions = feed(session, topics.presence_topic(RUN, "c-0"), presence(claimed, status))
    assert session.core.statistics() == before
    [forged] = records(actions, "received-forged")
    assert f"'{claimed}'" in forged["detail"] and "'c-0'" in forged["detail"]
    assert forged["topic"] == topics.presence_topic(RUN, "c-0")
    assert [a.log for a in actions if isinstance(a, Record) and a.event == "received-forged"] == ["warning"]


def test_a_presence_for_another_run_on_this_runs_topic_is_dropped_as_forged() -> None:
    """A presence whose body names another run does not make the client live in this one."""
    session = make_session()
    actions = feed(session, topics.presence_topic(RUN, "c-0"), presence("c-0", run="other-run"))
    assert live(session) == 0
    [forged] = records(actions, "received-forged")
    assert "other-run" in forged["detail"]


def test_an_update_on_its_own_topic_reaches_the_core() -> None:
    """A selected client's update on its own update topic is accepted."""
    session = make_session()
    online(session, "c-0", "c-1")
    actions = feed(session, topics.update_topic(RUN, "c-0"), update("c-0"))
    assert [(r["client"], r["id"]) for r in records(actions, "accepted")] == [("c-0", "c-0-u-1")]


def test_an_update_on_another_clients_topic_is_rejected_as_client_mismatch() -> None:
    """A forged update is not dropped silently: the core rejects it as malformed:client-mismatch under the
    client whose topic it used, and the claimed client's slot stays open."""
    session = make_session()
    online(session, "c-0", "c-1")
    actions = feed(session, topics.update_topic(RUN, "c-0"), update("c-1"))
    [rejected] = records(actions, "rejected")
    assert (rejected["client"], rejected["reason"]) == ("c-0", "malformed:client-mismatch")
    assert "'c-1'" in rejected["detail"] and "'c-0'" in rejected["detail"]
    assert records(actions, "accepted") == []
    assert records(feed(session, topics.update_topic(RUN, "c-1"), update("c-1", "c-1-real")), "accepted")


@pytest.mark.parametrize("topic", [
    topics.update_topic("other-run", "c-0"),
    topics.presence_topic("other-run", "c-0"),
    "sensors/kitchen/temperature",
    f"fedbus/v1/{RUN}/update/c-0/extra",
    f"fedbus/v1/{RUN}/bogus/c-0",
    f"fedbus/v2/{RUN}/update/c-0",
    f"fedbus/v1/{RUN}/global/c-0",
])
def test_a_message_on_a_topic_that_is_not_ours_is_dropped_with_a_reason(topic: str) -> None:
    """Anything outside this run's topics is dropped before decoding, logged with the topic and a reason, and
    the core never sees it."""
    session = make_session()
    online(session, "c-0", "c-1")
    before = session.core.statistics()
    actions = feed(session, topic, update("c-0"))
    assert actions == [Record("dropped", {"topic": topic, "reason": "not a topic of this run"})]
    assert session.core.statistics() == before
    assert session.outcome.duplicates_dropped == 0


def test_a_foreign_topic_drop_does_not_burn_the_message_id() -> None:
    """A message dropped for its topic is not remembered, so the same message on the right topic still counts."""
    session = make_session()
    online(session, "c-0", "c-1")
    message = update("c-0")
    feed(session, topics.update_topic("other-run", "c-0"), message)
    assert records(feed(session, topics.update_topic(RUN, "c-0"), message), "accepted")


def test_a_repeated_delivery_is_dropped_and_counted() -> None:
    """The same message id again (a broker redelivery) is logged as duplicate-delivery, counted, and never
    reaches the core (no 'duplicate' rejection)."""
    session = make_session()
    online(session, "c-0", "c-1")
    message = update("c-0")
    topic = topics.update_topic(RUN, "c-0")
    assert records(feed(session, topic, message), "accepted")
    for _ in range(2):
        actions = feed(session, topic, message)
        assert records(actions) == [{"event": "duplicate-delivery", "topic": topic, "id": message.msg_id,
                                     "client": "c-0"}]
    assert session.outcome.duplicates_dropped == 2
    assert session.core.statistics().rejected == 0


def test_a_repeated_presence_is_dropped_too() -> None:
    """Deduplication covers every kind: a redelivered 'online' after an 'offline' does not revive the client."""
    session = make_session()
    online(session, "c-0")
    feed(session, topics.presence_topic(RUN, "c-0"), presence("c-0", "offline"))
    online(session, "c-0")  # the same 'online' message (same id) delivered again
    assert live(session) == 0
    assert session.outcome.duplicates_dropped == 1


def test_another_message_from_the_same_client_is_not_a_duplicate_delivery() -> None:
    """Only the message id decides: a second update with a new id reaches the core (which refuses it itself)."""
    session = make_session()
    online(session, "c-0", "c-1")
    topic = topics.update_topic(RUN, "c-0")
    feed(session, topic, update("c-0", "c-0-a"))
    [rejected] = records(feed(session, topic, update("c-0", "c-0-b")), "rejected")
    assert rejected["reason"] == "second-update"
    assert session.outcome.duplicates_dropped == 0


def test_a_message_id_used_by_another_client_does_not_shadow_an_update() -> None:
    """A presence from mallory reusing c-0's (predictable: CLIENT-BOOT-SEQ) message id must not make c-0's real
    update vanish as a 'duplicate delivery'."""
    session = make_session()
    online(session, "c-0", "c-1")
    feed(session, topics.presence_topic(RUN, "mallory"), presence("mallory", msg_id="c-0-0-7"))
    assert records(feed(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-0-7")), "accepted")


def test_garbage_on_an_update_topic_is_rejected_as_malformed() -> None:
    """Bytes that do not decode on an update topic are rejected as malformed:<code> under the topic's client."""
    session = make_session()
    actions = feed(session, topics.update_topic(RUN, "c-0"), b"\x00not json")
    [logged] = records(actions, "received-malformed")
    assert logged["client"] == "c-0" and logged["reason"].startswith("not-json")
    [rejected] = records(actions, "rejected")
    assert (rejected["client"], rejected["reason"]) == ("c-0", "malformed:not-json")


def test_an_oversized_update_is_rejected_with_the_codecs_reason() -> None:
    """The session decodes with the run's size limit and passes the codec's reason on."""
    session = make_session(codec.Limits(max_bytes=4096))
    big = dataclasses.replace(update("c-0"), prompt="x" * 5000)
    [rejected] = records(feed(session, topics.update_topic(RUN, "c-0"), big), "rejected")
    assert rejected["reason"] == "malformed:oversized"


def test_garbage_on_a_presence_topic_is_logged_and_dropped() -> None:
    """A malformed presence changes nothing in the core; it is logged as received-malformed."""
    session = make_session()
    actions = feed(session, topics.presence_topic(RUN, "c-0"), b"{}")
    assert [r["event"] for r in records(actions)] == ["received-malformed"]
    assert live(session) == 0


def test_a_non_update_on_an_update_topic_is_rejected_as_wrong_kind() -> None:
    """A presence published on an update topic is a malformed update (wrong-kind), not a membership change."""
    session = make_session()
    actions = feed(session, topics.update_topic(RUN, "c-0"), presence("c-0"))
    [rejected] = records(actions, "rejected")
    assert (rejected["client"], rejected["reason"]) == ("c-0", "malformed:wrong-kind")
    assert live(session) == 0


def test_the_aggregators_own_presence_is_ignored() -> None:
    """The aggregator's presence echoes back on the presence filter; it is not a client coming online."""
    session = make_session()
    actions = feed(session, topics.presence_topic(RUN, AGGREGATOR), presence(AGGREGATOR))
    assert live(session) == 0
    assert [r["event"] for r in records(actions)] == ["received"]


def test_the_global_state_is_not_a_forgery() -> None:
    """The global topic names no client, so the aggregator's own retained state is not flagged as forged."""
    session = make_session()
    state = GlobalState(run=RUN, round=0, client=AGGREGATOR, msg_id="g-1", sent=0.0, version=0, prompt="p",
                        status="running", engine="surrogate", rounds=1,
                        data=DataSpec(task="surrogate-skills", seed=1, num_shards=1, train_size=1, val_size=1,
                                      test_size=1))
    actions = feed(session, topics.global_topic(RUN), state, retained=True)
    assert [r["event"] for r in records(actions)] == ["received"]


def test_metrics_are_logged_and_feed_no_event() -> None:
    """A client's metrics end up in events.jsonl with their values; the core does not see them."""
    session = make_session()
    before = session.core.statistics()
    metrics = Metrics(run=RUN, round=2, client="c-0", msg_id="m-1", sent=0.0, values=(("acc", 0.5), ("tokens", 9)))
    [logged] = records(feed(session, topics.metrics_topic(RUN, "c-0"), metrics), "metrics")
    assert logged == {"event": "metrics", "client": "c-0", "round": 2, "values": {"acc": 0.5, "tokens": 9}}
    assert session.core.statistics() == before


def test_every_delivery_is_counted_as_received() -> None:
    """messages_received counts deliveries, whatever becomes of them (summary.json's totals)."""
    session = make_session()
    feed(session, "elsewhere/topic", b"x")
    feed(session, topics.update_topic(RUN, "c-0"), b"garbage")
    online(session, "c-0")
    online(session, "c-0")
    assert session.outcome.messages_received == 4


def test_an_update_after_the_last_round_is_kept_as_a_late_rejection() -> None:
    """Once the run finished, an update still goes through the core and is kept for rejected_after_last_round
    (reason run-finished); timers and reduce results no longer do anything."""
    session = make_session(rounds=1)
    online(session, "c-0", "c-1")
    feed(session, topics.update_topic(RUN, "c-0"), update("c-0"))
    actions = feed(session, topics.update_topic(RUN, "c-1"), update("c-1"))
    [reduce] = [a for a in actions if isinstance(a, Reduce)]
    finish = session.handle(Reduced(round=reduce.round, prompt="merged", now=2.0))
    assert [type(a) for a in finish if isinstance(a, RoundClosed | RunFinished)] == [RoundClosed, RunFinished]
    assert session.finished and session.outcome.late_rejections == []
    actions = feed(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-late"), now=3.0)
    [rejected] = records(actions, "rejected")
    assert (rejected["id"], rejected["reason"]) == ("c-0-late", "run-finished")
    [late] = session.outcome.late_rejections
    assert (late.client, late.msg_id, late.reason, late.at) == ("c-0", "c-0-late", "run-finished", 3.0)
    assert session.handle(TimerFired(now=100.0)) == []
    assert session.handle(Reduced(round=reduce.round, prompt="a stale result", now=100.0)) == []


def test_the_aggregator_never_publishes_past_the_size_limit() -> None:
    """What the aggregator sends is encoded against the run's limit: a global state larger than max_bytes is
    refused before it reaches the broker (which would reset the connection), naming both sizes."""
    with pytest.raises(codec.MessageTooLarge, match=r"global of \d+ bytes exceeds the run's max_message_bytes"):
        make_session(codec.Limits(max_bytes=200))


def sent(actions: list[Any]) -> list[Message]:
    """What the session published in ``actions``, decoded."""
    return [codec.decode(a.payload) for a in actions if isinstance(a, Send)]


def receipts(actions: list[Any]) -> list[tuple[str, Receipt]]:
    return [(a.topic, m) for a in actions if isinstance(a, Send)
            for m in [codec.decode(a.payload)] if isinstance(m, Receipt)]


def failure(client: str, msg_id: str | None = None, round_: int = 1) -> Failure:
    return Failure(run=RUN, round=round_, client=client, msg_id=msg_id or f"{client}-f-{round_}", sent=0.0,
                   base_version=0, reason="HTTP 500 after 2 attempts", error_type="EngineError")


def test_an_accepted_update_gets_a_receipt_on_the_senders_receipt_topic() -> None:
    """After 'accepted', the session publishes (not retained) a receipt to the sender: its update's id and round,
    outcome accepted, no reason; it is a 'sent' record and counts as a message sent."""
    session = make_session()
    online(session, "c-0", "c-1")
    before = session.outcome.messages_sent
    actions = feed(session, topics.update_topic(RUN, "c-0"), update("c-0"), now=1.5)
    [(topic, receipt)] = receipts(actions)
    assert topic == topics.receipt_topic(RUN, "c-0")
    assert (receipt.run, receipt.client, receipt.round, receipt.sent) == (RUN, "c-0", 1, 1.5)
    assert (receipt.update_id, receipt.outcome, receipt.reason, receipt.detail) == ("c-0-u-1", "accepted", "", "")
    assert receipt.msg_id.startswith(f"{AGGREGATOR}-{RUN}-")
    assert next(a for a in actions if isinstance(a, Send) and a.topic == topic).retain is False
    [record] = [r for r in records(actions, "sent") if r["kind"] == "receipt"]
    assert (record["topic"], record["client"], record["id"]) == (topic, "c-0", receipt.msg_id)
    assert session.outcome.messages_sent == before + 1


def test_a_rejected_update_gets_a_receipt_with_the_reason_and_detail() -> None:
    """A second update from c-0 is rejected: its receipt says rejected, second-update and why."""
    session = make_session()
    online(session, "c-0", "c-1")
    feed(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-a"))
    [(topic, receipt)] = receipts(feed(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-b")))
    assert topic == topics.receipt_topic(RUN, "c-0")
    assert (receipt.update_id, receipt.outcome, receipt.reason, receipt.round) == (
        "c-0-b", "rejected", "second-update", 1)
    assert receipt.detail == "already sent c-0-a for this round"


def test_a_late_update_after_the_end_still_gets_a_receipt() -> None:
    """After the run finished an update is rejected as run-finished, and told so."""
    session = make_session(rounds=1)
    online(session, "c-0", "c-1")
    feed(session, topics.update_topic(RUN, "c-0"), update("c-0"))
    actions = feed(session, topics.update_topic(RUN, "c-1"), update("c-1"))
    [reduce] = [a for a in actions if isinstance(a, Reduce)]
    session.handle(Reduced(round=reduce.round, prompt="merged", now=2.0))
    [(_, receipt)] = receipts(feed(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-late"), now=3.0))
    assert (receipt.update_id, receipt.outcome, receipt.reason) == ("c-0-late", "rejected", "run-finished")


def test_a_receipt_names_the_updates_own_round_even_round_zero() -> None:
    """An update for round 0 (before any round) is stale; its receipt says round 0, the update's."""
    session = make_session()
    online(session, "c-0", "c-1")
    [(_, receipt)] = receipts(feed(session, topics.update_topic(RUN, "c-0"), update("c-0", "c-0-z", round_=0)))
    assert (receipt.reason, receipt.round) == ("stale-round", 0)


def test_garbage_and_forgeries_on_an_update_topic_get_no_receipt() -> None:
    """A rejection without an update id (malformed bytes, a forged sender) answers nobody: no receipt."""
    session = make_session()
    online(session, "c-0", "c-1")
    assert receipts(feed(session, topics.update_topic(RUN, "c-0"), b"\x00not json")) == []
    assert receipts(feed(session, topics.update_topic(RUN, "c-0"), update("c-1"))) == []
    assert receipts(feed(session, topics.update_topic(RUN, "c-0"), presence("c-0"))) == []


def test_a_failure_on_its_own_update_topic_is_recorded_as_client_failed_without_a_receipt() -> None:
    """A failure report reaches the core: recorded as a 'rejected' of kind failure (client-failed, with the error),
    logged as a failure report; the sender gets no receipt, and the round closes once c-1 answers."""
    session = make_session()
    online(session, "c-0", "c-1")
    actions = feed(session, topics.update_topic(RUN, "c-0"), failure("c-0"), now=1.0)
    [received] = records(actions, "received")
    assert received["kind"] == "failure"
    assert records(actions, "rejected") == [{
        "event": "rejected", "client": "c-0", "id": "c-0-f-1", "round": 1, "reason": "client-failed",
        "detail": "EngineError: HTTP 500 after 2 attempts", "kind": "failure"}]
    assert [(a.log, a.message) for a in actions if isinstance(a, Record) and a.event == "rejected"] == [
        ("info", "failure report recorded")]
    assert receipts(actions) == []
    closing = feed(session, topics.update_topic(RUN, "c-1"), update("c-1"), now=2.0)
    assert [a for a in closing if isinstance(a, Reduce)]


def test_a_failure_on_another_clients_topic_is_a_client_mismatch() -> None:
    """Nobody can report a failure for someone else: malformed:client-mismatch under the topic's client."""
    session = make_session()
    online(session, "c-0", "c-1")
    [rejected] = records(feed(session, topics.update_topic(RUN, "c-0"), failure("c-1")), "rejected")
    assert (rejected["client"], rejected["reason"]) == ("c-0", "malformed:client-mismatch")


def test_a_receipt_or_task_on_an_update_topic_is_still_the_wrong_kind() -> None:
    """Only update and failure are allowed on an update topic."""
    session = make_session()
    receipt = Receipt(run=RUN, round=1, client="c-0", msg_id="r-1", sent=0.0, update_id="u", outcome="accepted",
                      reason="", detail="")
    [rejected] = records(feed(session, topics.update_topic(RUN, "c-0"), receipt), "rejected")
    assert rejected["reason"] == "malformed:wrong-kind" and rejected["detail"] == "Receipt on an update topic"


def test_tasks_and_globals_carry_the_runs_limits() -> None:
    """What the session publishes announces max_prompt_chars (the core's) and max_message_bytes (the session's)."""
    session = make_session(codec.Limits(max_bytes=50_000))
    published = sent(online(session, "c-0", "c-1"))
    announcing = [m for m in published if isinstance(m, Task | GlobalState)]
    assert {type(m) for m in announcing} == {Task, GlobalState}
    assert all((m.max_prompt_chars, m.max_message_bytes) == (20_000, 50_000) for m in announcing)


def test_the_aggregators_presence_and_heartbeat_are_retained_on_its_topic_with_fresh_ids() -> None:
    """presence() and heartbeat() are retained presences from 'aggregator' on fedbus/v1/{run}/aggregator, each
    with a new id; each counts as a message sent."""
    session = make_session()
    before = session.outcome.messages_sent
    sends = [session.presence(1.0, "online"), session.heartbeat(2.0), session.presence(3.0, "offline")]
    assert {(s.topic, s.retain) for s in sends} == {(topics.aggregator_topic(RUN), True)}
    messages = [codec.decode(s.payload) for s in sends]
    assert [(m.client, m.status, m.sent, m.round) for m in messages if isinstance(m, Presence)] == [
        (AGGREGATOR, "online", 1.0, 0), (AGGREGATOR, "online", 2.0, 0), (AGGREGATOR, "offline", 3.0, 0)]
    assert [m.msg_id for m in messages] == [f"{AGGREGATOR}-{RUN}-presence-0-{n}" for n in (1, 2, 3)]
    assert session.outcome.messages_sent == before + 3


def test_the_aggregators_presences_take_ids_of_their_own_unique_by_boot() -> None:
    """Presences draw no id from the core (a replayed session would reissue them); a restarted driver's boot token
    keeps them unique across restarts."""
    session = make_session()
    core_before = session.core.statistics()
    first = AggregatorSession(session.core, codec.Limits(), boot="b1").heartbeat(1.0)
    again = AggregatorSession(session.core, codec.Limits(), boot="b2").heartbeat(1.0)
    assert codec.decode(first.payload).msg_id == f"{AGGREGATOR}-{RUN}-presence-b1-1"
    assert codec.decode(first.payload).msg_id != codec.decode(again.payload).msg_id
    global_ids = [m.msg_id for m in sent(online(session, "c-0", "c-1")) if isinstance(m, GlobalState)]
    assert global_ids[0] == f"{AGGREGATOR}-{RUN}-2"  # 1 was the 'waiting' state: presences took none
    assert session.core.statistics().round == core_before.round + 1


def test_the_aggregators_presences_are_encoded_against_the_runs_size_limit() -> None:
    """Presence, heartbeat and Last Will go through the same size check as everything the aggregator sends."""
    session = make_session()
    session.limits = codec.Limits(max_bytes=60)
    for build in (lambda: session.presence(1.0, "online"), lambda: session.heartbeat(1.0), lambda: session.will(1.0)):
        with pytest.raises(codec.MessageTooLarge, match="presence of"):
            build()


def test_the_aggregators_last_will_says_offline_on_its_topic() -> None:
    """will() is the (topic, payload) of an 'offline' presence for the Last Will, with its own id."""
    session = make_session()
    topic, payload = session.will(0.5)
    will = codec.decode(payload)
    assert topic == topics.aggregator_topic(RUN)
    assert isinstance(will, Presence) and (will.client, will.status, will.sent) == (AGGREGATOR, "offline", 0.5)
    assert will.msg_id != codec.decode(session.heartbeat(1.0).payload).msg_id


def test_the_aggregators_own_topic_is_ignored() -> None:
    """A message on fedbus/v1/{run}/aggregator (its own presence echoed back) is neither recorded nor an event."""
    session = make_session()
    before = session.core.statistics()
    assert session.receive(topics.aggregator_topic(RUN), session.heartbeat(1.0).payload, True, 1.0) == []
    assert feed(session, topics.aggregator_topic(RUN), presence("c-0")) == []
    assert session.core.statistics() == before and live(session) == 0
