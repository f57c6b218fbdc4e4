"""The aggregator's side of the protocol as one pure session, driven by the MQTT node and the simulator.

h11-style: bytes and times in, actions out. :class:`AggregatorSession` owns the aggregator core and
everything between the core and the wire: it turns an incoming (topic, payload) into a core event or
a logged drop (foreign topics, malformed payloads, repeated deliveries, forged senders), encodes what
the core publishes, keeps the outcome for summary.json, and returns the events.jsonl lines as
:class:`Record` values. A driver only carries the actions out: publish bytes, arm a timer, reduce
prompts, evaluate a closed round, write records, and wait out the grace period after the end. It
never reads a clock or the network, so both drivers make the same decisions from the same inputs.

Beyond the core's own messages the session sends what belongs to the wire: a ``receipt`` to a client for
each of its updates the core accepted or rejected, the aggregator's retained presence (:meth:`presence`,
:meth:`heartbeat`, and :meth:`will` for the Last Will), and the run's ``max_message_bytes`` (its
``limits``) stamped on every task and global state it publishes, next to the core's ``max_prompt_chars``.

With a :class:`~fedbus.security.policy.Security` that signs (protocol v2, docs/SECURITY.md) everything it
publishes is signed as ``aggregator``, and every delivery is checked in this order: its size, its signature
(the signer must be the topic's client), on an update topic its sealed body, then the v1 decoder; duplicates
are keyed on the verified signer and id and remembered only once verified. A delivery that fails the size or
signature check is a *forgery*: recorded (``received-forged``, and in :attr:`NodeOutcome.forgeries`) and never
held against the client whose topic it came on: no rejection, no answer, no presence change. Without one (or
in mode ``none``) the session speaks protocol v1, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

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
    Event,
    FailureReceived,
    Reduced,
    ReduceFailed,
    TimerFired,
    UpdateMalformed,
    UpdateReceived,
)
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.stream import StreamAggregator
from fedbus.errors import RemoteProtocolError
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import (
    KIND_OF,
    MAX_DETAIL_CHARS,
    Failure,
    GlobalState,
    Message,
    Metrics,
    Presence,
    PresenceStatus,
    Receipt,
    Task,
    Update,
)
from fedbus.protocol.topics import TopicRef
from fedbus.security.checks import Checked, Job, Refused
from fedbus.security.errors import WireRejected
from fedbus.security.policy import Security
from fedbus.security.signing import PAIRED_MAGIC

FINISH_GRACE_S = 0.3  # wall seconds to collect messages already in flight when the run finishes
FORGERIES_KEPT = 20  # forgeries listed one by one in the outcome (all are counted, and each is in events.jsonl)
Core = RoundAggregator | StreamAggregator


@dataclass(frozen=True, slots=True)
class Record:
    """One events.jsonl line; ``log`` ('info' or 'warning') when it also deserves a log line, ``message``."""

    event: str
    fields: dict[str, Any]
    log: str | None = None
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Publish ``payload`` (already encoded) on ``topic``, QoS 1."""

    topic: str
    payload: bytes
    retain: bool = False


Action = Record | Send | ArmTimer | Reduce | RoundClosed | RunFinished


@dataclass(frozen=True, slots=True, kw_only=True)
class Forgery:
    """A delivery that failed authentication (protocol v2): too large to check, unsigned, or not signed by the
    client of its topic with that client's authorized key. ``claimed`` is the topic's client: whom it claimed
    to come from, never whom it is held against."""

    topic: str
    claimed: str | None
    reason: str  # a WireRejected reason, or 'oversized'
    detail: str
    at: float


@dataclass(slots=True)
class Forgeries:
    """Every forgery counted (by reason, by channel), the first :data:`FORGERIES_KEPT` kept whole."""

    total: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)
    first: list[Forgery] = field(default_factory=list)

    def add(self, forgery: Forgery, channel: str) -> None:
        self.total += 1
        self.by_reason[forgery.reason] = self.by_reason.get(forgery.reason, 0) + 1
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1
        if len(self.first) < FORGERIES_KEPT:
            self.first.append(forgery)


@dataclass(slots=True)
class NodeOutcome:
    """What the aggregator saw, for summary.json."""

    finished: RunFinished | None = None
    rounds: list[tuple[RoundResult, dict[str, object]]] = field(default_factory=list)
    late_rejections: list[Rejection] = field(default_factory=list)
    duplicates_dropped: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    forgeries: Forgeries = field(default_factory=Forgeries)
    stalls: int = 0  # times the driver's event loop stood still (its clock, and so the deadlines, left them out)
    stalled_s: float = 0.0  # wall seconds it stood still in all
    security: dict[str, object] = field(default_factory=lambda: Security.off().describe())


class AggregatorSession:
    """The aggregator core between bytes on topics and the actions a driver carries out."""

    def __init__(self, core: Core, limits: codec.Limits, boot: str = "0", security: Security | None = None) -> None:
        self.core = core
        self.run_id = core.config.run
        self.limits = limits
        self.security = Security.off() if security is None else security
        if self.security.signs and self.security.owner != AGGREGATOR:
            raise ValueError(f"the aggregator signs as {AGGREGATOR!r}, not {self.security.owner!r}")
        self.outcome = NodeOutcome(security=self.security.describe())
        self._seen = SeenIds()
        # What the last delivery came to when it changed nothing but counts (a forgery, a duplicate): a driver's
        # journal keeps that verdict instead of the bytes, which a flood of junk would otherwise write to disk
        self.unread: tuple[str, dict[str, Any]] | None = None
        # The aggregator's presences are no input of the core (a replayed session does not repeat them), so
        # they take ids of their own, unique across restarts by the driver's ``boot`` token.
        self._boot = boot
        self._presences = 0

    @property
    def finished(self) -> bool:
        return self.outcome.finished is not None

    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters the aggregator listens on."""
        return tuple(topics.channel_filter(self.run_id, channel) for channel in ("presence", "update", "metrics"))

    def receive(self, topic: str, payload: bytes, retained: bool, now: float,
                checked: Checked | None = None, *, live: bool = True) -> list[Action]:
        """One delivery from the broker. ``checked``: its signature and seal checked ahead by the driver
        (:mod:`fedbus.security.checks`), taken instead of checking them here; the outcome is the same.
        ``live``: False for a journal's delivery fed again, which its own session found current (one it found
        stale the journal keeps as that verdict, :attr:`unread`)."""
        self.outcome.messages_received += 1
        self.unread = None
        out: list[Action] = []
        event = self._to_event(topic, payload, retained, now, out, checked=checked, live=live)
        if event is not None:
            out += self.handle(event)
        return out

    def handle(self, event: Event) -> list[Action]:
        """Feed the core one event. After the end only late messages still go through it (to be rejected
        as 'run-finished' with a record); timers and reduce results no longer matter."""
        if self.finished and isinstance(event, TimerFired | Reduced | ReduceFailed):
            return []
        out: list[Action] = []
        for effect in self.core.handle(event):
            self._effect(effect, out)
        return out

    # ------------------------------------------------------------------ the aggregator's presence
    def _presence(self, now: float, status: PresenceStatus) -> Presence:
        self._presences += 1
        msg_id = f"{AGGREGATOR}-{self.run_id}-presence-{self._boot}-{self._presences}"
        return Presence(run=self.run_id, round=0, client=AGGREGATOR, msg_id=msg_id, sent=now, status=status)

    def presence(self, now: float, status: PresenceStatus) -> Send:
        """The aggregator's retained presence: publish 'online' at start, 'offline' on a clean finish."""
        self.outcome.messages_sent += 1
        return Send(topic=topics.aggregator_topic(self.run_id), payload=self._wire(self._presence(now, status)),
                    retain=True)

    def heartbeat(self, now: float) -> Send:
        """A fresh 'online' presence, for a driver to publish every few seconds: clients see the aggregator alive."""
        return self.presence(now, "online")

    def will(self, now: float) -> tuple[str, bytes]:
        """The Last Will to register before (each) connect: topic and payload of a retained 'offline' presence."""
        return topics.aggregator_topic(self.run_id), self._wire(self._presence(now, "offline"))

    def _wire(self, m: Message) -> bytes:
        """``m`` as published: encoded (v1), signed as ``aggregator`` under v2; ``MessageTooLarge`` past the
        run's limit, which applies to what the broker carries."""
        # a task or receipt is for its client alone: a paired frame, which it checks in microseconds
        to = m.client if isinstance(m, Task | Receipt) else None
        wire = self.security.wrap(codec.encode(m, self.limits), to=to)
        if len(wire) > self.limits.max_bytes:
            raise codec.MessageTooLarge(KIND_OF[type(m)], len(wire), self.limits.max_bytes)
        return wire

    def round_evaluated(self, result: RoundResult, extra: dict[str, object]) -> list[Action]:
        """A driver evaluated a closed round (``extra``: accuracy, prompt measures); keep it and log it."""
        self.outcome.rounds.append((result, extra))
        cut = ([Record("aggregate-cut", {"round": result.round, "aggregate_chars": result.aggregate_chars,
                                         "kept_chars": len(result.prompt), "lost_chars": result.cut_chars})]
               if result.cut_chars else [])
        context = extra.get("context")
        if isinstance(context, dict) and context.get("overflow"):
            cut.append(Record("context-overflow", {"round": result.round, "prompt_chars": len(result.prompt),
                                                   **context}))
        return [*cut, Record("round-closed", {"round": result.round, "status": result.status,
                                              "close_reason": result.close_reason, **extra})]

    # ------------------------------------------------------------------ incoming
    def _to_event(self, topic: str, payload: bytes, retained: bool, now: float, out: list[Action], *,
                  checked: Checked | None, live: bool = True) -> Event | None:
        ref = topics.parse(topic)
        if ref is None or ref.run != self.run_id:
            out.append(Record("dropped", {"topic": topic, "reason": "not a topic of this run"}))
            return None
        if ref.channel == "aggregator":  # its own presence, echoed back: nothing to act on
            return None
        if (checked is not None and checked.key is not None and self.security.authorized is not None
                and ref.client is not None and self.security.authorized.get(ref.client) != checked.key):
            checked = None  # its key changed while it was checked ahead: check it with the key in force now
        if self.security.signs:
            inner = self._authenticate(ref, topic, payload, now, out, checked=checked)
            if inner is None:
                return None
            payload = inner
        try:
            if self.security.signs and ref.channel == "update":  # the signer's own doing from here on
                payload = self._opened(payload, checked)
            message = codec.decode(payload, self.limits)
        except RemoteProtocolError as exc:
            reason = getattr(exc, "reason", "malformed")
            out.append(Record("received-malformed", {"topic": topic, "client": ref.client, "reason": str(exc)},
                              log="warning", message="malformed message"))
            if ref.channel == "update":
                return UpdateMalformed(client=ref.client, reason=reason, detail=str(exc)[:200], now=now)
            return None
        # keyed on the topic's client too: another sender reusing an id must not shadow this one's message (under
        # v2 the topic's client is the verified signer, and a forger's ids are never recorded: _authenticate)
        if not self._seen.first_time(f"{ref.client}\x00{message.msg_id}"):
            self._duplicate(topic, message.msg_id, message.client, out)
            return None
        out.append(Record("received", {"kind": type(message).__name__.lower(), "topic": topic, "id": message.msg_id,
                                       "client": message.client, "round": message.round, "retained": retained}))
        if message.client != ref.client and ref.channel != "global":
            detail = f"message says client {message.client!r} but arrived on {ref.client!r}'s topic"
            out.append(Record("received-forged", {"topic": topic, "detail": detail}, log="warning",
                              message="forged sender"))
            if ref.channel == "update":
                return UpdateMalformed(client=ref.client, reason="client-mismatch", detail=detail, now=now)
            return None
        if ref.channel == "presence" and isinstance(message, Presence):
            if message.client == AGGREGATOR:
                return None
            if message.run != self.run_id:
                detail = f"presence for run {message.run!r} on this run's topic"
                out.append(Record("received-forged", {"topic": topic, "detail": detail}))
                return None
            if live and (session := self._earlier_session(message)) is not None:
                self._stale_presence({"topic": topic, "id": message.msg_id, "client": message.client,
                                      "status": message.status, "session": session}, out)
                return None
            if message.status == "online":
                return ClientOnline(client=message.client, now=now)
            return ClientOffline(client=message.client, now=now, reason="offline")
        if ref.channel == "update":
            if isinstance(message, Update):
                return UpdateReceived(update=message, now=now)
            if isinstance(message, Failure):
                return FailureReceived(failure=message, now=now)
            return UpdateMalformed(client=ref.client, reason="wrong-kind",
                                   detail=f"{type(message).__name__} on an update topic", now=now)
        if ref.channel == "metrics" and isinstance(message, Metrics):
            out.append(Record("metrics", {"client": message.client, "round": message.round,
                                          "values": dict(message.values)}))
        return None

    def _opened(self, payload: bytes, checked: Checked | None) -> bytes:
        if checked is None or checked.opened is None:
            return self.security.open_sealed(payload)
        if isinstance(checked.opened, Refused):
            raise checked.opened.error()
        return checked.opened

    def job(self, topic: str, payload: bytes) -> Job | None:
        """What a driver may check ahead for this delivery (:mod:`fedbus.security.checks`), or None where there is
        nothing costly to check: protocol v1, a paired frame (a tag and at most one X25519 exchange: cheaper here
        than the hop to another process), a topic the aggregator does not read, an unknown signer."""
        if (not self.security.signs or self.security.authorized is None or len(payload) > self.limits.max_bytes
                or payload[:len(PAIRED_MAGIC)] == PAIRED_MAGIC):
            return None
        ref = topics.parse(topic)
        if (ref is None or ref.run != self.run_id or ref.client is None or ref.client == AGGREGATOR
                or ref.channel not in ("presence", "update", "metrics")):
            return None
        key = self.security.authorized.get(ref.client)
        return None if key is None else Job(wire=payload, signer=ref.client, key=key, update=ref.channel == "update")

    def _authenticate(self, ref: TopicRef, topic: str, payload: bytes, now: float, out: list[Action], *,
                      checked: Checked | None) -> bytes | None:
        """Protocol v2: the payload inside a delivery, verified as signed by the topic's client; or None, with
        the forgery recorded. Only presence, update and metrics topics carry a client's messages: anything else
        here (the aggregator's own kinds) is dropped unread."""
        if ref.channel not in ("presence", "update", "metrics") or ref.client is None:
            out.append(Record("dropped", {"topic": topic, "reason": "not a topic the aggregator reads"}))
            return None
        try:
            if len(payload) > self.limits.max_bytes:
                raise WireRejected("oversized", f"{len(payload)} bytes > limit {self.limits.max_bytes}")
            if ref.client == AGGREGATOR:  # nobody signs as the aggregator on a client's topic
                raise WireRejected("wrong-signer", f"{AGGREGATOR!r} is not a client")
            if checked is None:
                return self.security.authenticate(payload, signer=ref.client)
            if isinstance(checked.inner, Refused):
                raise checked.inner.error()
            return checked.inner
        except WireRejected as exc:
            self._forged(Forgery(topic=topic, claimed=ref.client, reason=exc.reason,
                                 detail=exc.detail[:MAX_DETAIL_CHARS], at=now), ref.channel, out)
            return None

    def _forged(self, forgery: Forgery, channel: str, out: list[Action]) -> None:
        forgeries = self.outcome.forgeries
        forgeries.add(forgery, channel)
        total = forgeries.total  # a flood is logged at its start and then at 100, 1,000, ...: every one is recorded
        loud = total <= FORGERIES_KEPT or (total >= 100 and str(total).rstrip("0") == "1")
        out.append(Record("received-forged", {"topic": forgery.topic, "claimed": forgery.claimed,
                                              "reason": forgery.reason, "detail": forgery.detail},
                          log="warning" if loud else None,
                          message=f"forged or unverifiable message dropped ({total} so far)"))
        self.unread = ("forged", {"topic": forgery.topic, "claimed": forgery.claimed, "reason": forgery.reason,
                                  "detail": forgery.detail, "channel": channel})

    def _duplicate(self, topic: str, msg_id: str, client: str, out: list[Action]) -> None:
        self.outcome.duplicates_dropped += 1
        out.append(Record("duplicate-delivery", {"topic": topic, "id": msg_id, "client": client}))
        self.unread = ("duplicate", {"topic": topic, "id": msg_id, "client": client})

    def _earlier_session(self, message: Presence) -> str | None:
        """The boot token of an earlier session of this run when ``message`` is the presence of a client that
        session started itself (ids ``{client}-{boot}-{n}``, ``boot`` ``0`` or ``rN``: PROTOCOL.md), else None.
        Such a client died with its session, and this one starts it again: what it said then (its Last Will,
        which the broker kept for the aggregator's persistent session while the run was down, or delivers once
        it notices the dead connection) is not news of the client this session runs, and must not end its open
        round as all gone before it reconnects. A client started elsewhere draws a random token: never stale."""
        prefix = f"{message.client}-"
        if not message.msg_id.startswith(prefix):
            return None
        token = message.msg_id[len(prefix):].rpartition("-")[0]
        own = token == "0" or (token[:1] == "r" and token[1:].isdigit())
        return token if own and token != self._boot else None

    def _stale_presence(self, stale: dict[str, str], out: list[Action]) -> None:
        """``stale``: the presence's topic, id, client and status, and the earlier ``session`` it came from."""
        out.append(Record("stale-presence", {**stale, "current": self._boot}))
        self.unread = ("stale", stale)

    def replay_unread(self, what: str, fields: dict[str, Any], now: float) -> list[Action]:
        """A delivery a journal kept as its verdict (:attr:`unread`), fed again: the same counts and records."""
        self.outcome.messages_received += 1
        out: list[Action] = []
        if what == "forged":
            self._forged(Forgery(topic=str(fields["topic"]), claimed=fields.get("claimed"),
                                 reason=str(fields["reason"]), detail=str(fields.get("detail", "")), at=now),
                         str(fields["channel"]), out)
        elif what == "duplicate":
            ref = topics.parse(str(fields["topic"]))
            # as the delivery did: the seen ids are an LRU, and a repeat freshens its id (keyed on the topic's client)
            self._seen.first_time(f"{ref.client if ref is not None else None}\x00{fields['id']}")
            self._duplicate(str(fields["topic"]), str(fields["id"]), str(fields["client"]), out)
        elif what == "stale":
            self._stale_presence({key: str(fields[key]) for key in ("topic", "id", "client", "status", "session")},
                                 out)
        else:
            raise ValueError(f"a journal line of an unknown verdict {what!r}")
        return out

    # ------------------------------------------------------------------ effects
    def _publish(self, topic: str, m: Message, retain: bool, out: list[Action]) -> None:
        if isinstance(m, Task | GlobalState):  # the wire's limit is the session's: announce it with the core's
            m = replace(m, max_message_bytes=self.limits.max_bytes)
        out.append(Record("sent", {"kind": type(m).__name__.lower(), "topic": topic, "id": m.msg_id,
                                   "client": m.client, "round": m.round, "retain": retain}))
        out.append(Send(topic=topic, payload=self._wire(m), retain=retain))
        self.outcome.messages_sent += 1

    def _receipt(self, client: str, update_id: str, round_: int, *, at: float, rejection: Rejection | None,
                 out: list[Action]) -> None:
        """Tell ``client`` what became of its update ``update_id``: accepted, or ``rejection``."""
        receipt = Receipt(run=self.run_id, round=round_, client=client, msg_id=self.core.next_id(), sent=at,
                          update_id=update_id, outcome="accepted" if rejection is None else "rejected",
                          reason="" if rejection is None else rejection.reason,
                          detail="" if rejection is None else rejection.detail[:MAX_DETAIL_CHARS])
        self._publish(topics.receipt_topic(self.run_id, client), receipt, False, out)

    def _effect(self, effect: Effect, out: list[Action]) -> None:
        if isinstance(effect, Publish):
            self._publish(effect.topic, effect.message, effect.retain, out)
        elif isinstance(effect, RoundOpened):
            out.append(Record("round-opened", {"round": effect.round, "version": effect.version,
                                               "selected": list(effect.selected), "live": effect.live,
                                               "deadline": effect.deadline,
                                               "deadline_s": round(effect.deadline_s, 6)},
                              log="info", message="round opened"))
        elif isinstance(effect, UpdateAccepted):
            a = effect.accepted
            out.append(Record("accepted", {"client": a.client, "id": a.msg_id, "round": a.round,
                                           "prompt_chars": len(a.prompt)}))
            self._receipt(a.client, a.msg_id, a.round, at=a.at, rejection=None, out=out)
        elif isinstance(effect, UpdateRejected):
            r = effect.rejection
            out.append(Record("rejected", {"client": r.client, "id": r.msg_id, "round": r.round, "reason": r.reason,
                                           "detail": r.detail, "kind": r.kind}, log="info",
                              message="update rejected" if r.kind == "update" else "failure report recorded"))
            if self.finished:  # after RunFinished: not in any round result, nor in the leftovers
                self.outcome.late_rejections.append(r)
            # a receipt answers an update from its sender; not garbage (no id) nor a failure report
            if r.kind == "update" and r.client is not None and r.msg_id is not None:
                self._receipt(r.client, r.msg_id, r.round or 0, at=r.at, rejection=r, out=out)
        elif isinstance(effect, RunFinished):
            out.append(Record("run-finished", {"status": effect.status, "reason": effect.reason,
                                               "rounds": effect.rounds_closed, "version": effect.version}))
            self.outcome.finished = effect
            out.append(effect)
        elif isinstance(effect, ArmTimer | Reduce | RoundClosed):
            out.append(effect)
