"""The simulator's in-memory broker (fedbus/sim/broker.py): filters, retained messages, persistent
sessions, Last Wills and delivery latency, in virtual time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fedbus.sim.broker import LATENCY_S, MemoryBroker
from fedbus.sim.timeline import Timeline


@dataclass
class Inbox:
    """A connection's deliver callback: (topic, payload, retained, virtual time of arrival)."""

    timeline: Timeline
    got: list[tuple[str, bytes, bool, float]] = field(default_factory=list)

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        self.got.append((topic, payload, retained, self.timeline.now))

    @property
    def payloads(self) -> list[bytes]:
        return [payload for _, payload, _, _ in self.got]


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


@pytest.fixture
def broker(timeline: Timeline) -> MemoryBroker:
    return MemoryBroker(timeline)


def settle(timeline: Timeline) -> None:
    """Run every delivery in flight."""
    timeline.run(lambda: False, horizon=1e9)


def connected(broker: MemoryBroker, timeline: Timeline, ident: str, *filters: str, clean: bool = False,
              will: tuple[str, bytes] | None = None) -> Inbox:
    inbox = Inbox(timeline)
    broker.connect(ident, inbox, will=will, clean=clean)
    if filters:
        broker.subscribe(ident, *filters)
    return inbox


def test_a_publish_reaches_matching_subscribers_after_the_latency(timeline: Timeline, broker: MemoryBroker) -> None:
    """A message arrives at each subscriber whose filter matches, ``LATENCY_S`` of virtual time later."""
    inbox = connected(broker, timeline, "sub", "run/update/+")
    other = connected(broker, timeline, "other", "run/task/+")
    timeline.at(2.0, lambda: broker.publish("run/update/c1", b"hello"))
    settle(timeline)
    assert inbox.got == [("run/update/c1", b"hello", False, pytest.approx(2.0 + LATENCY_S))]
    assert other.got == []
    assert broker.published == 1
    assert broker.delivered == 1


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b/d", False),
    ("a/+/c", "a/x/c", True),
    ("a/+/c", "a/x/y/c", False),
    ("a/+", "a", False),
    ("a/#", "a/b/c/d", True),
    ("a/#", "b/c", False),
    ("#", "anything/at/all", True),
    ("a/b", "a/b/c", False),
])
def test_topic_filters_follow_mqtt_wildcards(timeline: Timeline, broker: MemoryBroker, topic_filter: str,
                                             topic: str, matches: bool) -> None:
    """``+`` matches one level and ``#`` the rest; anything else must match level for level."""
    inbox = connected(broker, timeline, "sub", topic_filter)
    broker.publish(topic, b"x")
    settle(timeline)
    assert bool(inbox.got) is matches


def test_overlapping_filters_deliver_once_per_session(timeline: Timeline, broker: MemoryBroker) -> None:
    """Two filters of one session that both match a topic deliver the message once."""
    inbox = connected(broker, timeline, "sub", "run/#", "run/update/+")
    broker.publish("run/update/c1", b"one")
    settle(timeline)
    assert inbox.payloads == [b"one"]


def test_subscribing_twice_to_one_filter_does_not_double_deliveries(timeline: Timeline,
                                                                    broker: MemoryBroker) -> None:
    """A repeated SUBSCRIBE of the same filter is one subscription."""
    inbox = connected(broker, timeline, "sub", "t/+")
    broker.subscribe("sub", "t/+")
    broker.publish("t/1", b"x")
    settle(timeline)
    assert inbox.payloads == [b"x"]


def test_a_retained_message_reaches_a_later_subscriber_flagged_retained(timeline: Timeline,
                                                                       broker: MemoryBroker) -> None:
    """The last retained message on a topic is delivered on subscribe, with ``retained`` set."""
    broker.publish("run/global", b"v1", retain=True)
    broker.publish("run/global", b"v2", retain=True)
    settle(timeline)
    inbox = connected(broker, timeline, "late", "run/+")
    settle(timeline)
    assert [(t, p, r) for t, p, r, _ in inbox.got] == [("run/global", b"v2", True)]


def test_a_live_subscriber_gets_a_retained_publish_unflagged(timeline: Timeline, broker: MemoryBroker) -> None:
    """A retained publish to a subscriber already there arrives as a normal message (retained False)."""
    inbox = connected(broker, timeline, "sub", "run/global")
    broker.publish("run/global", b"state", retain=True)
    settle(timeline)
    assert [(p, r) for _, p, r, _ in inbox.got] == [(b"state", False)]


def test_an_empty_retained_payload_clears_the_retained_message(timeline: Timeline, broker: MemoryBroker) -> None:
    """Publishing b'' with retain removes what was retained on that topic, as in MQTT."""
    broker.publish("run/global", b"state", retain=True)
    broker.publish("run/global", b"", retain=True)
    inbox = connected(broker, timeline, "late", "run/global")
    settle(timeline)
    assert inbox.got == []


def test_a_non_retained_publish_is_not_kept_for_later_subscribers(timeline: Timeline, broker: MemoryBroker) -> None:
    """Only retained messages are replayed on subscribe."""
    broker.publish("run/update/c1", b"gone")
    inbox = connected(broker, timeline, "late", "run/update/+")
    settle(timeline)
    assert inbox.got == []


def test_a_persistent_session_queues_while_away_and_delivers_on_reconnect(timeline: Timeline,
                                                                         broker: MemoryBroker) -> None:
    """Messages published while a persistent session is disconnected arrive, in order, when it reconnects."""
    first = connected(broker, timeline, "client", "run/task/client")
    broker.disconnect("client", abrupt=False)
    broker.publish("run/task/client", b"t1")
    broker.publish("run/task/client", b"t2")
    settle(timeline)
    assert first.got == []
    second = Inbox(timeline)
    broker.connect("client", second)  # no subscribe: the session keeps its filters
    settle(timeline)
    assert second.payloads == [b"t1", b"t2"]
    assert all(not retained for _, _, retained, _ in second.got)
    broker.publish("run/task/client", b"t3")
    settle(timeline)
    assert second.payloads == [b"t1", b"t2", b"t3"]


def test_a_message_in_flight_when_the_connection_drops_is_redelivered_on_reconnect(
        timeline: Timeline, broker: MemoryBroker) -> None:
    """A QoS 1 delivery that finds its session disconnected on arrival is queued, not lost."""
    first = connected(broker, timeline, "client", "run/task/client")
    broker.publish("run/task/client", b"in-flight")
    broker.disconnect("client", abrupt=True)  # before the latency has passed
    settle(timeline)
    assert first.got == []
    second = Inbox(timeline)
    broker.connect("client", second)
    settle(timeline)
    assert second.payloads == [b"in-flight"]


def test_a_clean_session_forgets_subscriptions_and_queued_messages(timeline: Timeline,
                                                                  broker: MemoryBroker) -> None:
    """Connecting with ``clean`` starts over: nothing queued is delivered and old filters are gone."""
    connected(broker, timeline, "client", "run/task/client")
    broker.disconnect("client", abrupt=False)
    broker.publish("run/task/client", b"queued")
    fresh = connected(broker, timeline, "client", clean=True)
    broker.publish("run/task/client", b"after")
    settle(timeline)
    assert fresh.got == []


def test_a_clean_session_does_not_queue_while_away(timeline: Timeline, broker: MemoryBroker) -> None:
    """A non-persistent session drops what is published while it is disconnected."""
    connected(broker, timeline, "agg", "run/update/+", clean=True)
    broker.disconnect("agg", abrupt=False)
    broker.publish("run/update/c1", b"missed")
    back = Inbox(timeline)
    broker.connect("agg", back)  # resumes the same (non-persistent) session object
    settle(timeline)
    assert back.got == []


def test_an_abrupt_disconnect_publishes_the_last_will_retained(timeline: Timeline, broker: MemoryBroker) -> None:
    """Dropping without DISCONNECT fires the Will: subscribers get it and it stays retained."""
    watcher = connected(broker, timeline, "agg", "run/presence/+")
    connected(broker, timeline, "c1", will=("run/presence/c1", b"offline"))
    broker.disconnect("c1", abrupt=True)
    settle(timeline)
    assert watcher.payloads == [b"offline"]
    late = connected(broker, timeline, "late", "run/presence/+")
    settle(timeline)
    assert [(p, r) for _, p, r, _ in late.got] == [(b"offline", True)]


def test_a_clean_disconnect_does_not_publish_the_last_will(timeline: Timeline, broker: MemoryBroker) -> None:
    """A client that says DISCONNECT leaves without its Will being published."""
    watcher = connected(broker, timeline, "agg", "run/presence/+")
    connected(broker, timeline, "c1", will=("run/presence/c1", b"offline"))
    broker.disconnect("c1", abrupt=False)
    broker.disconnect("c1", abrupt=True)  # already gone: nothing more happens
    settle(timeline)
    assert watcher.got == []
    assert broker.published == 0


def test_a_will_fires_once_and_a_reconnect_sets_a_new_one(timeline: Timeline, broker: MemoryBroker) -> None:
    """The Will belongs to one connection: it fires once, and the next connection's Will replaces it."""
    watcher = connected(broker, timeline, "agg", "run/presence/+")
    connected(broker, timeline, "c1", will=("run/presence/c1", b"offline-1"))
    broker.disconnect("c1", abrupt=True)
    broker.disconnect("c1", abrupt=True)
    connected(broker, timeline, "c1", will=("run/presence/c1", b"offline-2"))
    broker.disconnect("c1", abrupt=True)
    settle(timeline)
    assert watcher.payloads == [b"offline-1", b"offline-2"]


def test_a_will_given_as_a_maker_is_made_only_when_it_fires(timeline: Timeline, broker: MemoryBroker) -> None:
    """The simulator's clients hand their Will's payload as a function: a clean disconnect never builds it."""
    made: list[str] = []

    def will(name: str) -> Callable[[], bytes]:
        return lambda: made.append(name) or name.encode()

    watcher = connected(broker, timeline, "agg", "run/presence/+")
    connected(broker, timeline, "c1", will=("run/presence/c1", will("c1")))
    connected(broker, timeline, "c2", will=("run/presence/c2", will("c2")))
    broker.disconnect("c1", abrupt=False)
    broker.disconnect("c2", abrupt=True)
    settle(timeline)
    assert made == ["c2"] and watcher.payloads == [b"c2"]


def test_disconnecting_an_unknown_client_is_harmless(timeline: Timeline, broker: MemoryBroker) -> None:
    """A disconnect for an id that never connected changes nothing."""
    broker.disconnect("nobody", abrupt=True)
    settle(timeline)
    assert broker.published == broker.delivered == 0


def test_latency_is_configurable_and_orders_deliveries(timeline: Timeline) -> None:
    """Each delivery takes the broker's latency; messages published in order arrive in order."""
    broker = MemoryBroker(timeline, latency_s=0.5)
    inbox = connected(broker, timeline, "sub", "t")

    def burst() -> None:
        for i in range(3):
            broker.publish("t", bytes([i]))

    timeline.at(1.0, burst)
    settle(timeline)
    assert [(p, at) for _, p, _, at in inbox.got] == [(b"\x00", 1.5), (b"\x01", 1.5), (b"\x02", 1.5)]


def test_matching_sessions_get_a_message_in_the_order_they_first_connected(timeline: Timeline,
                                                                         broker: MemoryBroker) -> None:
    arrivals: list[str] = []
    for ident in ("zeta", "alpha", "mid"):
        broker.connect(ident, lambda t, p, r, ident=ident: arrivals.append(ident))
    broker.subscribe("mid", "a/b")
    broker.subscribe("alpha", "a/+")
    broker.subscribe("zeta", "#")
    broker.connect("alpha", lambda t, p, r: arrivals.append("alpha"), clean=True)  # same place, filters gone
    broker.subscribe("alpha", "a/b")
    broker.publish("a/b", b"x")
    settle(timeline)
    assert arrivals == ["zeta", "alpha", "mid"]


def test_a_publish_costs_what_it_matches_not_the_number_of_sessions(timeline: Timeline, broker: MemoryBroker,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import fedbus.sim.broker as module

    calls = 0
    real = module.matches

    def counting(topic_filter: str, topic: str) -> bool:
        nonlocal calls
        calls += 1
        return real(topic_filter, topic)

    monkeypatch.setattr(module, "matches", counting)
    for i in range(2000):
        broker.connect(f"c{i}", Inbox(timeline))
        broker.subscribe(f"c{i}", f"run/task/c{i}", "run/global")
    broker.connect("aggregator", Inbox(timeline))
    broker.subscribe("aggregator", "run/update/+")
    calls = 0
    broker.publish("run/task/c7", b"t")
    broker.publish("run/update/c7", b"u")
    assert calls <= 2  # one wildcard filter per publish, however many sessions
    settle(timeline)
    assert broker.delivered == 2



class Summoner:
    """The simulator's summoner in small: a publish to ``run/task/<id>`` with no subscriber connects ``id``."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.broker: MemoryBroker | None = None
        self.inboxes: dict[str, Inbox] = {}
        self.summoned: list[tuple[str, float]] = []

    def __call__(self, topic: str) -> bool:
        if not topic.startswith("run/task/") or self.broker is None:
            return False
        ident = topic.removeprefix("run/task/")
        self.summoned.append((ident, self.timeline.now))
        self.inboxes[ident] = connected(self.broker, self.timeline, ident, "run/global", topic)
        return True


@pytest.fixture
def summoner(timeline: Timeline) -> Summoner:
    summoner = Summoner(timeline)
    summoner.broker = MemoryBroker(timeline, summon=summoner)
    return summoner


def test_a_forgotten_session_costs_no_broadcast_and_its_own_topic_summons_it(timeline: Timeline,
                                                                            summoner: Summoner) -> None:
    broker = summoner.broker
    assert broker is not None
    first = connected(broker, timeline, "c", "run/global", "run/task/c")
    broker.forget("c", own=("run/task/c",))
    broker.publish("run/global", b"g1", retain=True)
    settle(timeline)
    assert first.got == [] and summoner.summoned == [] and broker.delivered == 0  # not even queued
    broker.publish("run/task/c", b"t1")
    assert summoner.summoned == [("c", 0.0)]
    settle(timeline)
    # the new connection gets the retained global it subscribed to, then its task
    assert summoner.inboxes["c"].payloads == [b"g1", b"t1"] and first.got == []


def test_a_message_on_its_way_when_its_client_fell_asleep_summons_it_a_broadcast_is_dropped(
        timeline: Timeline, summoner: Summoner) -> None:
    broker = summoner.broker
    assert broker is not None
    first = connected(broker, timeline, "c", "run/global", "run/task/c")
    broker.publish("run/global", b"g")
    broker.publish("run/task/c", b"t")
    broker.forget("c", own=("run/task/c",))  # before either arrives
    settle(timeline)
    assert first.got == [] and [ident for ident, _ in summoner.summoned] == ["c"]
    assert summoner.inboxes["c"].payloads == [b"t"]  # the task, not the broadcast (it was not retained)


def test_a_message_for_a_sleeping_clients_own_topic_that_no_summon_takes_is_counted(
        timeline: Timeline, summoner: Summoner) -> None:
    broker = summoner.broker
    assert broker is not None
    connected(broker, timeline, "c", "run/global", "run/task/c", "run/receipt/c")
    broker.publish("run/receipt/c", b"r")
    broker.forget("c", own=("run/task/c", "run/receipt/c"))
    broker.publish("run/global", b"g")  # a broadcast: not its own, not counted
    settle(timeline)
    assert summoner.summoned == [] and broker.undeliverable == 1
