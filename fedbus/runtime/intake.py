"""The aggregator's side of the protocol, shared by the MQTT node and the simulator.

:class:`Intake` turns an incoming (topic, payload) into an aggregator event, or into a logged
rejection: foreign topics, malformed payloads, repeated deliveries and forged senders.
:func:`record_effect` writes an effect's line in events.jsonl. Neither does I/O beyond the event
log, so the asyncio node and the discrete-event simulator log the same things the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from fedbus.aggregator.effects import (
    Effect,
    Publish,
    RoundOpened,
    RunFinished,
    UpdateAccepted,
    UpdateRejected,
)
from fedbus.aggregator.events import ClientOffline, ClientOnline, Event, UpdateMalformed, UpdateReceived
from fedbus.aggregator.session import FINISH_GRACE_S, NodeOutcome
from fedbus.errors import RemoteProtocolError
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import Metrics, Presence, Update
from fedbus.runtime.eventlog import EventLog

__all__ = ["FINISH_GRACE_S", "Intake", "NodeOutcome", "record_effect"]

log = structlog.get_logger("fedbus.aggregator")


class Intake:
    """Incoming messages to aggregator events, with a logged reason for each one it drops."""

    def __init__(self, run_id: str, events: EventLog, outcome: NodeOutcome, limits: codec.Limits,
                 now: Callable[[], float]) -> None:
        self.run_id = run_id
        self.events = events
        self.outcome = outcome
        self.limits = limits
        self.now = now
        self._seen = SeenIds()

    def to_event(self, topic: str, payload: bytes, retained: bool) -> Event | None:
        """The event for one delivery, or None (logged) when the aggregator has nothing to do with it."""
        ref = topics.parse(topic)
        now = self.now()
        if ref is None or ref.run != self.run_id:
            self.events.record("dropped", topic=topic, reason="not a topic of this run")
            return None
        try:
            message = codec.decode(payload, self.limits)
        except RemoteProtocolError as exc:
            reason = getattr(exc, "reason", "malformed")
            self.events.record("received-malformed", topic=topic, client=ref.client, reason=str(exc))
            log.warning("malformed message", topic=topic, reason=str(exc))
            if ref.channel == "update":
                return UpdateMalformed(client=ref.client, reason=reason, detail=str(exc)[:200], now=now)
            return None
        if not self._seen.first_time(message.msg_id):
            self.outcome.duplicates_dropped += 1
            self.events.record("duplicate-delivery", topic=topic, id=message.msg_id, client=message.client)
            return None
        self.events.record("received", kind=type(message).__name__.lower(), topic=topic, id=message.msg_id,
                           client=message.client, round=message.round, retained=retained)
        if message.client != ref.client and ref.channel != "global":
            detail = f"message says client {message.client!r} but arrived on {ref.client!r}'s topic"
            self.events.record("received-forged", topic=topic, detail=detail)
            log.warning("forged sender", topic=topic, detail=detail)
            if ref.channel == "update":
                return UpdateMalformed(client=ref.client, reason="client-mismatch", detail=detail, now=now)
            return None
        if ref.channel == "presence" and isinstance(message, Presence):
            if message.client == AGGREGATOR:
                return None
            if message.run != self.run_id:
                self.events.record("received-forged", topic=topic,
                                   detail=f"presence for run {message.run!r} on this run's topic")
                return None
            if message.status == "online":
                return ClientOnline(client=message.client, now=now)
            return ClientOffline(client=message.client, now=now, reason="offline")
        if ref.channel == "update":
            if isinstance(message, Update):
                return UpdateReceived(update=message, now=now)
            return UpdateMalformed(client=ref.client, reason="wrong-kind",
                                   detail=f"{type(message).__name__} on an update topic", now=now)
        if ref.channel == "metrics" and isinstance(message, Metrics):
            self.events.record("metrics", client=message.client, round=message.round, values=dict(message.values))
        return None


def record_effect(events: EventLog, effect: Effect, finished: bool) -> None:
    """The events.jsonl line (and log line) of an effect that changes nothing outside the aggregator.

    ``finished``: the run is over, so a rejection is a late one.
    """
    if isinstance(effect, Publish):
        m = effect.message
        events.record("sent", kind=type(m).__name__.lower(), topic=effect.topic, id=m.msg_id, client=m.client,
                      round=m.round, retain=effect.retain)
    elif isinstance(effect, RoundOpened):
        events.record("round-opened", round=effect.round, version=effect.version, selected=list(effect.selected),
                      live=effect.live, deadline=effect.deadline,
                      deadline_s=round(effect.deadline_s, 6))
        log.info("round opened", round=effect.round, selected=len(effect.selected), live=effect.live)
    elif isinstance(effect, UpdateAccepted):
        a = effect.accepted
        events.record("accepted", client=a.client, id=a.msg_id, round=a.round, prompt_chars=len(a.prompt))
    elif isinstance(effect, UpdateRejected):
        r = effect.rejection
        events.record("rejected", client=r.client, id=r.msg_id, round=r.round, reason=r.reason, detail=r.detail)
        log.info("update rejected", client=r.client, round=r.round, reason=r.reason, detail=r.detail,
                 late=finished)
    elif isinstance(effect, RunFinished):
        events.record("run-finished", status=effect.status, reason=effect.reason, rounds=effect.rounds_closed,
                      version=effect.version)
