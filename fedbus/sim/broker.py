"""An in-memory MQTT-like broker for the simulator.

It keeps what fedbus relies on from a real broker (../../docs/PROTOCOL.md): topic filters with
``+`` and ``#``, retained messages delivered on subscribe, persistent sessions that queue QoS 1
messages while a client is away and deliver them when it reconnects, and the Last Will published when a
connection drops without DISCONNECT; and one thing a real broker lacks: a session forgotten while its client
sleeps (:meth:`MemoryBroker.forget`). Every delivery takes ``latency_s`` of virtual time. Payloads are bytes:
senders and receivers go through the real codec.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from fedbus.protocol.topics import filter_levels, matches, matches_levels
from fedbus.sim.timeline import Timeline

Deliver = Callable[[str, bytes, bool], None]  # topic, payload, retained
# Asked about a publish to a topic that no session subscribed to exactly: True when it connected a session that
# subscribes to it now (the simulator's virtual population instantiates a client when its first task comes)
Summon = Callable[[str], bool]
# A Last Will: its topic, and its payload or what makes it (called only when the will is published: building and
# signing one that a clean disconnect never sends costs as much, per connection, as the rest of connecting)
Will = tuple[str, "bytes | Callable[[], bytes]"]
LATENCY_S = 0.001


def _is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


@dataclass(slots=True)
class _Session:
    filters: list[str] = field(default_factory=list)
    deliver: Deliver | None = None  # None: not connected
    queued: list[tuple[str, bytes]] = field(default_factory=list)
    will: Will | None = None
    persistent: bool = True
    gone: bool = False  # forgotten (its client sleeps): ``filters`` are its own topics, which summon it again


class MemoryBroker:
    """Sessions, subscriptions and retained messages, in virtual time.

    Subscriptions are indexed: exact filters (every client's own topics) by topic, and the few wildcard filters
    (the aggregator's) each once, so a publish costs what it matches, not the number of sessions. Matching
    sessions get a message in the order the sessions were first created, as a scan of all sessions would."""

    def __init__(self, timeline: Timeline, latency_s: float = LATENCY_S, summon: Summon | None = None) -> None:
        self._timeline = timeline
        self._summon = summon
        self._latency = latency_s
        self._sessions: dict[str, _Session] = {}
        self._order: dict[str, int] = {}  # an ident's place among sessions, from its first connection
        self._exact: dict[str, set[str]] = {}  # topic -> idents subscribed to exactly it
        self._wildcard: dict[str, set[str]] = {}  # filter with + or # -> idents subscribed to it
        self._retained: dict[str, bytes] = {}
        self.published = 0
        self.delivered = 0
        # messages for a sleeping client's own topics that no summon took (a receipt after it slept): none is
        # expected, since a client sleeps only with nothing unanswered; counted so that one would show
        self.undeliverable = 0

    def connect(self, ident: str, deliver: Deliver, *, will: Will | None = None,
                clean: bool = False) -> None:
        """(Re)connect ``ident``; a persistent session gets the messages queued while it was away."""
        session = self._sessions.get(ident)
        if session is None or clean:
            if session is not None:
                self._unindex(ident, session.filters)
            session = self._sessions[ident] = _Session(persistent=not clean)
            self._order.setdefault(ident, len(self._order))
        session.deliver = deliver
        session.will = will
        queued, session.queued = session.queued, []
        for topic, payload in queued:
            self._send(ident, session, topic, payload, retained=False)

    def subscribe(self, ident: str, *filters: str) -> None:
        session = self._sessions[ident]
        for topic_filter in filters:
            if topic_filter not in session.filters:
                session.filters.append(topic_filter)
                index = self._wildcard if _is_wildcard(topic_filter) else self._exact
                index.setdefault(topic_filter, set()).add(ident)
            if not _is_wildcard(topic_filter):
                payload = self._retained.get(topic_filter)
                if payload is not None:
                    self._send(ident, session, topic_filter, payload, retained=True)
                continue
            for topic, payload in self._retained.items():
                if matches(topic_filter, topic):
                    self._send(ident, session, topic, payload, retained=True)

    def _unindex(self, ident: str, filters: list[str]) -> None:
        for topic_filter in filters:
            index = self._wildcard if _is_wildcard(topic_filter) else self._exact
            idents = index.get(topic_filter)
            if idents is not None:
                idents.discard(ident)
                if not idents:
                    del index[topic_filter]

    def forget(self, ident: str, own: Collection[str]) -> None:
        """End ``ident``'s connection cleanly (no Last Will) and drop its session: a client gone to sleep costs
        nothing here, the run's broadcasts no longer reach it, and a publish to one of its ``own`` topics asks
        the summoner for it again (as a push notification wakes a phone's app). One already on its way when it
        fell asleep does the same on arrival; a broadcast on its way is dropped."""
        session = self._sessions.pop(ident, None)
        if session is None:
            return
        self._unindex(ident, session.filters)
        session.filters = list(own)
        session.deliver = None
        session.will = None
        session.queued = []
        session.gone = True

    def _redeliver(self, ident: str, gone: _Session, topic: str, payload: bytes) -> None:
        if not any(matches(f, topic) for f in gone.filters):
            return  # a broadcast on its way to a client that went to sleep
        if ident not in self._sessions and self._summon is not None:
            self._summon(topic)
        session = self._sessions.get(ident)
        if session is not None and session.deliver is not None:
            self._send(ident, session, topic, payload, retained=False)
        else:
            self.undeliverable += 1

    def _subscribers(self, topic: str) -> list[str]:
        found = set(self._exact.get(topic, ()))
        levels = topic.split("/")
        for topic_filter, idents in self._wildcard.items():
            if matches_levels(filter_levels(topic_filter), levels):
                found |= idents
        return sorted(found, key=self._order.__getitem__) if len(found) > 1 else list(found)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published += 1
        if retain:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        if self._summon is not None and topic not in self._exact:
            self._summon(topic)
        for ident in self._subscribers(topic):
            session = self._sessions[ident]
            if session.deliver is not None:
                self._send(ident, session, topic, payload, retained=False)
            elif session.persistent:
                session.queued.append((topic, payload))

    def disconnect(self, ident: str, *, abrupt: bool) -> None:
        """End ``ident``'s connection; ``abrupt`` (no DISCONNECT) publishes its Last Will."""
        session = self._sessions.get(ident)
        if session is None or session.deliver is None:
            return
        session.deliver = None
        will, session.will = session.will, None
        if abrupt and will is not None:
            topic, payload = will
            self.publish(topic, payload() if callable(payload) else payload, retain=True)

    def _send(self, ident: str, session: _Session, topic: str, payload: bytes, *, retained: bool) -> None:
        def arrive() -> None:
            if session.deliver is not None:  # the connection it was sent on, or the one that resumed the session
                self.delivered += 1
                session.deliver(topic, payload, retained)
            elif session.gone:
                self._redeliver(ident, session, topic, payload)
            elif session.persistent and not retained:
                session.queued.append((topic, payload))  # unacknowledged QoS 1: redelivered on reconnect

        self._timeline.after(self._latency, arrive)
