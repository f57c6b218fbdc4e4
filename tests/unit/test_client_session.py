"""The client session (the protocol side both drivers share): partitions, the offline queue, oversized sends."""

from __future__ import annotations

from fedbus.client.core import ClientProfile, Send
from fedbus.client.session import ClientSession, Leave, Publish, Record
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Update, UpdateStats
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
