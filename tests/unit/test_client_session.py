"""The client session (the protocol side both drivers share): partitions, the offline queue, oversized sends, the
limits, receipts and presence the aggregator announces, failure reports."""

from __future__ import annotations

from typing import Any

from fedbus.client.core import ClientProfile, Send, WorkDone
from fedbus.client.session import ClientSession, FeedLater, Leave, Publish, Record, Work
from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import (
    DataSpec,
    Failure,
    GlobalState,
    Message,
    Presence,
    Receipt,
    Task,
    Update,
    UpdateStats,
)
from fedbus.scenario.conditions import ClientGroup

RUN = "run-s"
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0, llm_calls=1, tokens=1,
                    duration_s=0.1)


def session(max_bytes: int = codec.DEFAULT_MAX_BYTES) -> ClientSession:
    return ClientSession(ClientProfile(run=RUN, client="c0", seed=1, group=ClientGroup(name="c", count=1)),
                         codec.Limits(max_bytes=max_bytes))


def leaves(actions: list[object]) -> list[Leave]:
    return [a for a in actions if isinstance(a, Leave)]


def test_a_partition_while_connected_cuts_at_once() -> None:
    """Connected: the cut is an abrupt Leave that comes back when the partition heals; the core is not told."""
    s = session()
    s.connected_now(0.0)
    assert leaves(s.partition(30.0)) == [Leave(abrupt=True, reason="network partition", back_at=30.0)]
    s.disconnected(Leave(abrupt=True, reason="network partition", back_at=30.0))
    actions = s.connected_now(30.0)
    sent = [a.send.message for a in actions if isinstance(a, Publish)]
    assert [getattr(m, "status", None) for m in sent] == ["online"]  # the process kept running: presence only


def test_a_partition_that_begins_while_connecting_applies_at_the_connect() -> None:
    """A cut that starts before the connection is up is not lost: the connect that follows is cut at once, and
    a connect after the partition healed is not."""
    s = session()
    assert s.partition(20.0) == []
    assert leaves(s.connected_now(1.0)) == [Leave(abrupt=True, reason="network partition", back_at=20.0)]
    late = session()
    late.partition(5.0)
    assert leaves(late.connected_now(6.0)) == []


def test_what_the_core_sends_while_down_is_queued_and_flushed_on_connect() -> None:
    """An update the core sends while the connection is down is queued (recorded) and published on reconnect."""
    s = session()
    update = Update(run=RUN, round=1, client="c0", msg_id="c0-0-9", sent=0.0, base_version=0, prompt="p",
                    stats=STATS)
    actions = s._send(Send(topic=topics.update_topic(RUN, "c0"), message=update))
    assert [a.event for a in actions if isinstance(a, Record)] == ["queued-offline"]
    published = [a for a in s.connected_now(1.0) if isinstance(a, Publish)]
    assert update in [p.send.message for p in published]


def test_an_update_over_the_size_limit_is_refused_with_a_record() -> None:
    """The sender checks max_message_bytes: an oversized update is not published, and says so."""
    s = session(max_bytes=600)
    s.connected_now(0.0)
    update = Update(run=RUN, round=1, client="c0", msg_id="c0-0-9", sent=0.0, base_version=0, prompt="x" * 700,
                    stats=STATS)
    actions = s._send(Send(topic=topics.update_topic(RUN, "c0"), message=update))
    assert not [a for a in actions if isinstance(a, Publish)]
    [refused] = [a for a in actions if isinstance(a, Record)]
    assert refused.event == "send-refused" and "exceeds the run's max_message_bytes (600)" in refused.fields["reason"]


DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=1, train_size=4, val_size=4, test_size=4)
_n = iter(range(1, 10_000))


def from_aggregator(message: Message) -> bytes:
    return codec.encode(message)


def state(max_message_bytes: int = codec.DEFAULT_MAX_BYTES, run: str = RUN) -> GlobalState:
    return GlobalState(run=run, round=1, client=AGGREGATOR, msg_id=f"g-{next(_n)}", sent=0.0, version=0,
                       prompt="P", status="running", engine="surrogate", data=DATA, rounds=2,
                       max_message_bytes=max_message_bytes)


def task(round_: int = 1, max_message_bytes: int = codec.DEFAULT_MAX_BYTES) -> Task:
    return Task(run=RUN, round=round_, client="c0", msg_id=f"t-{next(_n)}", sent=0.0, version=0, prompt="P",
                local_steps=1, batch_size=1, deadline_s=9.0, max_message_bytes=max_message_bytes)


def receipt(outcome: str = "accepted", reason: str = "", client: str = "c0") -> Receipt:
    return Receipt(run=RUN, round=1, client=client, msg_id=f"r-{next(_n)}", sent=0.0, update_id="c0-0-3",
                   outcome=outcome, reason=reason, detail="why" if reason else "")  # type: ignore[arg-type]


def aggregator(status: str, run: str = RUN) -> Presence:
    return Presence(run=run, round=0, client=AGGREGATOR, msg_id=f"p-{next(_n)}", sent=0.0,
                    status=status)  # type: ignore[arg-type]


def events(actions: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(a.event, a.fields) for a in actions if isinstance(a, Record)]


def test_a_client_listens_to_its_receipts_and_the_aggregators_presence() -> None:
    """Four subscriptions: the global state, its tasks, its receipts, the aggregator's presence."""
    assert session().subscriptions() == (topics.global_topic(RUN), topics.task_topic(RUN, "c0"),
                                         topics.receipt_topic(RUN, "c0"), topics.aggregator_topic(RUN))


def test_receipts_are_recorded_as_update_accepted_or_rejected() -> None:
    """A receipt for this client is an update-accepted / update-rejected record with the update's id, round,
    reason and detail; one for another client is dropped, and so is one for an update it never sent (under protocol
    v1 anyone can send an update as this client: the aggregator's rejection of that forgery is not about this
    client's work, which it logged as its own 'update-rejected')."""
    s = session()
    s.connected_now(0.0)
    forged = from_aggregator(receipt("rejected", "stale-round"))
    [(event, fields)] = events(s.receive(topics.receipt_topic(RUN, "c0"), forged, 0.5))
    assert event == "dropped" and "did not send" in fields["reason"] and fields["id"] == "c0-0-3"
    mine = Update(run=RUN, round=1, client="c0", msg_id="c0-0-3", sent=0.0, base_version=0, prompt="p", stats=STATS)
    s.published(Publish(send=Send(topic=topics.update_topic(RUN, "c0"), message=mine), payload=b""))
    assert events(s.receive(topics.receipt_topic(RUN, "c0"), from_aggregator(receipt()), 1.0)) == [
        ("update-accepted", {"client": "c0", "id": "c0-0-3", "round": 1, "reason": "", "detail": ""})]
    assert events(s.receive(topics.receipt_topic(RUN, "c0"), from_aggregator(receipt("rejected", "stale-round")),
                            2.0)) == [("update-rejected", {"client": "c0", "id": "c0-0-3", "round": 1,
                                                           "reason": "stale-round", "detail": "why"})]
    [(event, fields)] = events(s.receive(topics.receipt_topic(RUN, "c1"), from_aggregator(receipt(client="c1")), 3.0))
    assert event == "dropped" and fields["reason"] == "unexpected Receipt"


def test_the_aggregators_presence_is_tracked_and_changes_are_recorded() -> None:
    """aggregator_online starts unknown (None); online / offline presences set it, and only a change is
    recorded (aggregator-online / aggregator-offline)."""
    s = session()
    s.connected_now(0.0)
    assert s.aggregator_online is None
    topic = topics.aggregator_topic(RUN)
    assert [e for e, _ in events(s.receive(topic, from_aggregator(aggregator("online")), 1.0))] == ["aggregator-online"]
    assert s.aggregator_online is True
    assert events(s.receive(topic, from_aggregator(aggregator("online")), 2.0)) == []  # a heartbeat
    assert [e for e, _ in events(s.receive(topic, from_aggregator(aggregator("offline")), 3.0))] == [
        "aggregator-offline"]
    assert s.aggregator_online is False
    assert [e for e, _ in events(s.receive(topic, from_aggregator(aggregator("online")), 4.0))] == ["aggregator-online"]
    s.receive(topic, from_aggregator(aggregator("offline", run="other")), 5.0)
    assert s.aggregator_online is True, "another run's aggregator says nothing about this one"


def test_last_heard_is_the_time_of_the_latest_message_from_the_aggregator() -> None:
    """Global states, tasks, receipts and the aggregator's presence move last_heard; nothing else does."""
    s = session()
    s.connected_now(0.0)
    assert s.last_heard is None
    s.receive(topics.global_topic(RUN), from_aggregator(state()), 1.0)
    assert s.last_heard == 1.0
    s.receive(topics.task_topic(RUN, "c0"), from_aggregator(task()), 2.0)
    assert s.last_heard == 2.0
    s.receive(topics.receipt_topic(RUN, "c0"), from_aggregator(receipt()), 3.0)
    assert s.last_heard == 3.0
    s.receive(topics.aggregator_topic(RUN), from_aggregator(aggregator("online")), 4.0)
    assert s.last_heard == 4.0
    s.receive(topics.global_topic(RUN), from_aggregator(state(run="other")), 5.0)
    s.receive(topics.receipt_topic(RUN, "c1"), from_aggregator(receipt(client="c1")), 6.0)
    s.receive(topics.task_topic(RUN, "c0"), b"garbage", 7.0)
    presence = Presence(run=RUN, round=0, client="c9", msg_id="c9-1", sent=0.0, status="online")
    s.receive(topics.aggregator_topic(RUN), from_aggregator(presence), 8.0)
    assert s.last_heard == 4.0


def test_the_announced_message_size_limit_applies_to_what_the_client_sends() -> None:
    """The driver's limit holds until the aggregator announces the run's: then the client refuses to send more
    than the run allows, and decodes as much as it announced."""
    s = session()
    s.connected_now(0.0)
    assert s.send_limits == s.limits
    s.receive(topics.global_topic(RUN), from_aggregator(state(max_message_bytes=600)), 1.0)
    assert s.send_limits.max_bytes == 600
    update = Update(run=RUN, round=1, client="c0", msg_id="c0-0-9", sent=0.0, base_version=0, prompt="x" * 700,
                    stats=STATS)
    [(event, fields)] = events(s._send(Send(topic=topics.update_topic(RUN, "c0"), message=update)))
    assert event == "send-refused" and "max_message_bytes (600)" in fields["reason"]
    s.receive(topics.task_topic(RUN, "c0"), from_aggregator(task(max_message_bytes=900_000)), 2.0)
    assert s.send_limits.max_bytes == 900_000
    big = from_aggregator(Task(run=RUN, round=2, client="c0", msg_id="t-big", sent=0.0, version=0,
                               prompt="y" * 300_000, local_steps=1, batch_size=1, deadline_s=1.0))
    assert [e for e, _ in events(s.receive(topics.task_topic(RUN, "c0"), big, 3.0))] == ["received"]


def test_a_failed_optimizer_becomes_a_failure_report_with_its_error_type() -> None:
    """optimized() with an error, then WorkDone from a driver that does not pass the error's type on: the failure
    report sent to the aggregator still names it."""
    s = session()
    s.connected_now(0.0)
    s.receive(topics.global_topic(RUN), from_aggregator(state()), 0.0)
    feed = [a for a in s.receive(topics.task_topic(RUN, "c0"), from_aggregator(task()), 1.0)
            if isinstance(a, FeedLater)]
    [work] = [a for a in s.handle(feed[0].event) if isinstance(a, Work)]
    assert events(s.optimized(work.task, None, "HTTP 500", "EngineError")) == [
        ("local-error", {"client": "c0", "round": 1, "error_type": "EngineError", "reason": "HTTP 500"})]
    actions = s.handle(WorkDone(now=2.0, task=work.task, outcome=None, error="HTTP 500"))
    [publish] = [a for a in actions if isinstance(a, Publish)]
    failure = codec.decode(publish.payload)
    assert isinstance(failure, Failure) and (failure.error_type, failure.reason) == ("EngineError", "HTTP 500")
    assert publish.send.topic == topics.update_topic(RUN, "c0")
    assert ("local-failed", {"client": "c0", "detail": "HTTP 500", "round": 1}) in events(actions)
    assert events(s.published(publish)) == [("sent", {"client": "c0", "kind": "failure", "id": failure.msg_id,
                                                      "round": 1})]
