"""The client's side of the protocol as one pure session, driven over MQTT and in virtual time.

h11-style: bytes, times and finished work in; actions out. :class:`ClientSession` wraps the client's
decisions (:class:`~fedbus.client.core.ClientCore`) with everything between them and the wire: it
decodes and deduplicates what arrives, routes updates going up and tasks coming down through the
link's fault plan (loss, duplication, delay, reordering), keeps an offline queue for what the core
sends while the connection is down, handles partitions (the network goes, the process stays), and
returns the events.jsonl lines as records. A driver (``fedbus.runtime.client_node`` over MQTT,
``fedbus.sim.client`` on the timeline) only connects, publishes bytes, schedules what the session
asks for and runs the optimizer, so both make the same decisions from the same inputs.

It also keeps what the aggregator announces: the run's limits (``max_message_bytes`` for what the client
sends; ``max_prompt_chars`` travels in each task to the optimizer and the core), the receipts for the
client's updates (recorded as ``update-accepted`` / ``update-rejected``), and whether the aggregator is
online and when it was last heard from (:attr:`ClientSession.aggregator_online`,
:attr:`ClientSession.last_heard`), for a driver that leaves when the aggregator falls silent.

With a :class:`~fedbus.security.policy.Security` that signs (protocol v2, docs/SECURITY.md), everything that
arrives must be signed by the aggregator with the key the client pinned: anything else (a forged task, a forged
retained ``global`` saying the run finished, a forged aggregator presence, a v1 payload) is dropped unread and
recorded (``dropped``, reason ``forged:<reason>``), and deduplication (on the pair ``aggregator``, id) only ever
sees verified messages. Everything the client sends is signed, update and failure bodies sealed to the
aggregator first; the run's size limit applies to the frame as published. Without one (or in mode ``none``)
the session speaks protocol v1, byte for byte.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedbus.client.core import (
    Carried,
    ClientCore,
    ClientEffect,
    ClientEvent,
    ClientProfile,
    Connected,
    Disconnect,
    GlobalSeen,
    Note,
    Optimize,
    Reconnect,
    Send,
    SetAlarm,
    Stop,
    TaskSeen,
    WorkDone,
)
from fedbus.client.optimizer import LocalOutcome
from fedbus.errors import RemoteProtocolError
from fedbus.faults.link import LinkFaults, LinkQueue
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import (
    KIND_OF,
    DataSpec,
    Failure,
    GlobalState,
    Message,
    Presence,
    Receipt,
    Task,
    Update,
)
from fedbus.security.errors import WireRejected
from fedbus.security.policy import Security

# an update without a receipt is sent again at the second aggregator presence after it (heartbeats: ~5 s)
RESEND_AFTER_PRESENCES = 2
MAX_UNRECEIPTED = 8
SENT_UPDATES_KEPT = 256  # update ids remembered, for their receipts (one update a round: rounds enough to spare)

Deliveries = tuple[tuple[Send, int], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """One events.jsonl line of this client (the session adds ``client``)."""

    event: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """Publish ``payload`` ``copies`` times (QoS 1), then call :meth:`ClientSession.published`."""

    send: Send
    payload: bytes
    copies: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PushLater:
    """After ``delay_s``, hand ``deliveries`` back to :meth:`ClientSession.push` (a delayed link)."""

    delay_s: float
    deliveries: Deliveries


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedLater:
    """After ``delay_s`` (0: at once, in order), feed ``event`` to :meth:`ClientSession.handle`."""

    delay_s: float
    event: ClientEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class Work:
    """Run the local optimizer on ``task``; report with :meth:`ClientSession.optimized`, then feed
    ``WorkDone`` no earlier than ``delay_s`` after now."""

    task: Task
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WakeAt:
    """Feed ``Alarm`` at time ``at``."""

    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    """End the connection (``abrupt``: no DISCONNECT, the Last Will fires); come back at ``back_at``;
    ``stop``: the client is done."""

    abrupt: bool
    reason: str
    back_at: float | None = None
    stop: bool = False


Action = Record | Publish | PushLater | FeedLater | Work | WakeAt | Leave


@dataclass(frozen=True, slots=True, kw_only=True)
class Asleep:
    """A sleeping client: its core's :class:`~fedbus.client.core.Carried`, its session's counts and what its
    link holds back (reordered: each goes out after the link's next message, whenever that is). What it drops
    (seen ids, link generators, the last global, keys) comes again, or is made again, when it wakes."""

    core: Carried
    connections: int
    rounds_done: int
    held_up: tuple[Send, ...] = ()
    held_down: tuple[ClientEvent, ...] = ()


def held_at_end(client: str, up: Sequence[Send], down: Sequence[ClientEvent]) -> list[Record]:
    """A ``link-held-at-end`` record for each message a client's link still holds back when the run ends: held
    (reordered) until the link's next message, which never came, it never left. Said, so that no update is
    lost without a word (it was never sent, so no receipt or rejection accounts for it)."""
    out = [Record("link-held-at-end", {"client": client, "direction": "up", "kind": type(s.message).__name__.lower(),
                                       "id": s.message.msg_id, "round": s.message.round}) for s in up]
    out += [Record("link-held-at-end", {"client": client, "direction": "down", "kind": "task",
                                        "id": e.task.msg_id, "round": e.task.round})
            for e in down if isinstance(e, TaskSeen)]
    return out


class ClientSession:
    """One client between the broker and its decisions."""

    def __init__(self, profile: ClientProfile, limits: codec.Limits, security: Security | None = None,
                 carried: Asleep | None = None) -> None:
        self.profile = profile
        self.security = Security.off() if security is None else security
        if self.security.signs and self.security.owner != profile.client:
            raise ValueError(f"client {profile.client} cannot sign as {self.security.owner!r}")
        self.core = ClientCore(profile, None if carried is None else carried.core)
        net = profile.group.network
        wake = 0 if carried is None else carried.core.wakes
        self.up: LinkQueue[Send] = LinkQueue(LinkFaults(net, profile.seed, profile.client, "up", wake),
                                             () if carried is None else carried.held_up)
        self.down: LinkQueue[ClientEvent] = LinkQueue(LinkFaults(net, profile.seed, profile.client, "down", wake),
                                                      () if carried is None else carried.held_down)
        self.limits = limits  # the driver's: what it decodes until the aggregator announces the run's
        self._announced_bytes: int | None = None  # the run's max_message_bytes, once a global or task said it
        self._error_types: dict[str, str] = {}  # task id -> type of the exception its optimizer raised
        self._aggregator_online: bool | None = None
        # updates sent and not yet answered by a receipt (the newest few), with the aggregator presences seen since
        self._unreceipted: dict[str, tuple[Send, int]] = {}
        # the ids of the last updates this session sent (a receipt for any other is not about this client's work)
        self._sent_updates: dict[str, None] = {}
        # updates and failure reports the up-link is delaying (a PushLater out), and those of them the run's end said
        # will never leave: a delivery that comes after that is dropped (it was accounted for)
        self._delayed: dict[str, Send] = {}
        self._delayed_at_end: set[str] = set()
        self._last_heard: float | None = None
        self.seen = SeenIds(10_000)
        self.connected = False
        self.partitioned = False  # cut by a network partition: the process (and its core) kept running
        self._pending_cut: float | None = None  # a partition that began while the connection was down
        self.offline: list[Send] = []
        self.last_global: GlobalState | None = None
        self.connections = 0 if carried is None else carried.connections
        self.rounds_done = 0 if carried is None else carried.rounds_done

    def asleep(self) -> Asleep:
        """What this session is built again from when it wakes: an :attr:`idle` one goes to sleep."""
        return Asleep(core=self.core.carried(), connections=self.connections, rounds_done=self.rounds_done,
                      held_up=self.up.held, held_down=self.down.held)

    @property
    def client(self) -> str:
        return self.profile.client

    @property
    def stopped(self) -> bool:
        return self.core.state == "stopped"

    @property
    def aggregator_online(self) -> bool | None:
        """What the aggregator's latest presence said: True online, False offline, None none seen yet."""
        return self._aggregator_online

    @property
    def idle(self) -> bool:
        """Connected with nothing in hand: no task, no update without its receipt, nothing queued to send, no
        partition pending. A virtual population's client sleeps then, until next selected; what its link holds
        back (reordered) waits for the link's next message, which may come only at a later wake, so it sleeps
        with it (:class:`Asleep`) rather than stay awake for it, every round's broadcasts costing it."""
        return (self.connected and not self.partitioned and not self.stopped and self._pending_cut is None
                and not self._unreceipted and not self.offline and self.core.idle)

    @property
    def last_heard(self) -> float | None:
        """When a message from the aggregator (global, task, receipt, presence) last arrived; None: never."""
        return self._last_heard

    @property
    def send_limits(self) -> codec.Limits:
        """The size limit for what this client sends: the run's as announced, else the driver's."""
        if self._announced_bytes is None:
            return self.limits
        return codec.Limits(max_bytes=self._announced_bytes, max_depth=self.limits.max_depth)

    def subscriptions(self) -> tuple[str, ...]:
        run, me = self.profile.run, self.profile.client
        return (topics.global_topic(run), topics.task_topic(run, me), topics.receipt_topic(run, me),
                topics.aggregator_topic(run))

    def will(self, now: float) -> tuple[str, bytes]:
        """The Last Will to register before connecting: topic and payload of a retained 'offline' presence."""
        topic, payload = self.will_later(now)
        return topic, payload()

    def will_later(self, now: float) -> tuple[str, Callable[[], bytes]]:
        """:meth:`will`, with its payload made (encoded and signed: the same bytes) only when called, for a driver
        that publishes the will itself and only when the connection drops (the simulator's broker)."""
        send = self.core.will(now)
        return send.topic, functools.partial(self._wire_will, send.message)

    def _wire_will(self, message: Message) -> bytes:
        return self.security.wrap(codec.encode(message), to=AGGREGATOR)

    def data(self) -> tuple[str, DataSpec] | None:
        """The engine and data description the federation announced, once a global state arrived."""
        return None if self.last_global is None else (self.last_global.engine, self.last_global.data)

    # ------------------------------------------------------------------ connection
    def connected_now(self, now: float) -> list[Action]:
        """The driver connected and subscribed."""
        self.connected = True
        self.connections += 1
        out: list[Action] = [self._record("connected", n=self.connections)]
        if self.partitioned:  # the process kept running; only the network came back
            self.partitioned = False
            out += self._send(self.core.online(now))
        else:
            out += self._effects(self.core.handle(Connected(now=now)))
        queued, self.offline = self.offline, []
        for send in queued:
            out += self._send(send)
        heals_at, self._pending_cut = self._pending_cut, None
        if heals_at is not None and now < heals_at and not self.stopped:
            out += self.partition(heals_at)
        return out

    def disconnected(self, leave: Leave) -> list[Action]:
        """The driver ended the connection as ``leave`` said."""
        self.connected = False
        return [self._record("disconnected", reason=leave.reason, abrupt=leave.abrupt, back_at=leave.back_at)]

    def partition(self, heals_at: float) -> list[Action]:
        """A network partition starts: the connection is cut, the process keeps running. If the connection is
        down (still connecting, or between connections), the cut waits for the next connect."""
        if self.stopped:
            return []
        if not self.connected:
            self._pending_cut = heals_at
            return []
        self.partitioned = True
        return [Leave(abrupt=True, reason="network partition", back_at=heals_at)]

    def connection_lost(self, now: float) -> list[Action]:
        """The broker or the network dropped the connection (not a modelled crash): the process keeps
        running and its work goes on; reconnect at once (the driver spaces its attempts)."""
        if self.stopped or not self.connected:
            return []
        self.partitioned = True
        return [Leave(abrupt=True, reason="connection lost", back_at=now)]

    # ------------------------------------------------------------------ incoming
    def receive(self, topic: str, payload: bytes, now: float) -> list[Action]:
        """One delivery from the broker."""
        limits = self._decode_limits()
        if self.security.signs:  # protocol v2: only what the pinned aggregator key signed gets any further
            try:
                if len(payload) > limits.max_bytes:
                    raise WireRejected("oversized", f"{len(payload)} bytes > limit {limits.max_bytes}")
                payload = self.security.authenticate(payload, signer=AGGREGATOR)
            except WireRejected as exc:
                return [self._record("dropped", topic=topic, reason=f"forged:{exc.reason}", detail=exc.detail)]
        try:
            message = codec.decode(payload, limits)
        except RemoteProtocolError as exc:
            return [self._record("dropped", topic=topic, reason=str(exc))]
        # every message here comes from one sender (verified as the aggregator under v2): the id alone is the
        # pair (aggregator, id) of docs/SECURITY.md, and a forger's ids never reach this set
        if not self.seen.first_time(message.msg_id):
            return [self._record("duplicate-delivery", id=message.msg_id)]
        run, me = self.profile.run, self.client
        if isinstance(message, GlobalState) and message.run == run:
            self._last_heard = now
            self.last_global = message
            self._adopt(message)
            # the run is over: what still has no receipt goes again first, so the aggregator records its outcome
            # ('run-finished' at worst) instead of it vanishing with the client
            resent = self._resend_unreceipted(all_now=True) if message.status == "finished" else []
            if message.status == "finished" and not self.stopped:  # and what the link holds will never leave
                resent += held_at_end(self.client, self.up.held, self.down.held)
                resent += self._delayed_at_the_end()
            return resent + self.handle(GlobalSeen(now=now, state=message))  # control plane: no link faults
        if isinstance(message, Presence) and message.client == AGGREGATOR and message.run == run:
            self._last_heard = now
            return self._aggregator_presence(message)
        if isinstance(message, Receipt) and message.client == me and message.run == run:
            self._last_heard = now
            if message.update_id not in self._sent_updates:  # under protocol v1 anyone can send an update as us
                return [self._record("dropped", topic=topic, id=message.update_id,
                                     reason="a receipt for an update this client did not send (or sent before "
                                            "it restarted)")]
            self._unreceipted.pop(message.update_id, None)
            return [self._record(f"update-{message.outcome}", id=message.update_id, round=message.round,
                                 reason=message.reason, detail=message.detail)]
        if not (isinstance(message, Task) and message.client == me and message.run == run):
            return [self._record("dropped", topic=topic, reason=f"unexpected {type(message).__name__}")]
        self._last_heard = now
        self._adopt(message)
        out: list[Action] = [self._record("received", kind="task", round=message.round, id=message.msg_id)]
        route = self.down.route(TaskSeen(now=now, task=message))
        if route.lost:
            out.append(self._record("link-lost", direction="down", id=message.msg_id, round=message.round))
        elif route.held:
            out.append(self._record("link-held", direction="down", id=message.msg_id))
        for item, copies in route.deliveries:
            out += [FeedLater(delay_s=route.delay_s, event=item)] * copies
        return out

    def _decode_limits(self) -> codec.Limits:
        announced = self._announced_bytes
        if announced is None or announced <= self.limits.max_bytes:
            return self.limits
        return codec.Limits(max_bytes=announced, max_depth=self.limits.max_depth)

    def _adopt(self, message: GlobalState | Task) -> None:
        """Keep the run's size limit as the aggregator announced it (the prompt budget rides on each task)."""
        self._announced_bytes = message.max_message_bytes

    def _aggregator_presence(self, message: Presence) -> list[Action]:
        online = message.status == "online"
        changed = self._aggregator_online is not online
        self._aggregator_online = online
        out: list[Action] = [self._record(f"aggregator-{message.status}", id=message.msg_id)] if changed else []
        return out + self._resend_unreceipted() if online else out

    def _resend_unreceipted(self, *, all_now: bool = False) -> list[Action]:
        """The aggregator is online (a heartbeat, or it came back), and an update still has no receipt two
        presences later (``all_now``: at once): send it again, same id (the aggregator keeps one copy and records
        the outcome of a late one). After a broker restart that lost it, or an aggregator resumed from its journal
        without it, this is what recovers it."""
        if not self.connected:
            return []
        out: list[Action] = []
        for msg_id, (send, seen) in list(self._unreceipted.items()):
            if not all_now and seen + 1 < RESEND_AFTER_PRESENCES:
                self._unreceipted[msg_id] = (send, seen + 1)
                continue
            self._unreceipted[msg_id] = (send, 0)
            out += [self._record("resent", id=msg_id, round=send.message.round), *self._publish(send, 1)]
        return out

    # ------------------------------------------------------------------ decisions
    def handle(self, event: ClientEvent) -> list[Action]:
        """Feed the core one event (a timer, finished work, a task the link delivered)."""
        if self.stopped:
            return []
        if isinstance(event, WorkDone):
            error_type = self._error_types.pop(event.task.msg_id, "")
            if event.outcome is None and not event.error_type:  # a driver that does not pass it on
                event = replace(event, error_type=error_type)
        return self._effects(self.core.handle(event))

    def optimized(self, task: Task, outcome: LocalOutcome | None, error: str, error_type: str = "") -> list[Action]:
        """The optimizer finished (``outcome``) or failed (``error``): what to log now. The driver feeds
        ``WorkDone`` once the task's latency has passed; a failure then goes to the aggregator."""
        if outcome is None:
            self._error_types[task.msg_id] = error_type
        if outcome is not None:
            self.rounds_done += 1
            if outcome.step_reasons:
                return [self._record("local-steps", round=task.round, reasons=list(outcome.step_reasons),
                                     llm_calls=outcome.llm_calls, tokens=outcome.tokens)]
            return []
        return [self._record("local-error", round=task.round, error_type=error_type, reason=error[:300])]

    # ------------------------------------------------------------------ going out
    def push(self, deliveries: Deliveries) -> list[Action]:
        """Publish what a link released (at once, or after its delay); queued if the connection is down."""
        out: list[Action] = []
        for send, copies in deliveries:
            msg_id = send.message.msg_id
            self._delayed.pop(msg_id, None)
            if msg_id in self._delayed_at_end:  # the run ended while the link delayed it: said then, never sent
                continue
            out += self._publish(send, copies)
        return out

    def _delayed_at_the_end(self) -> list[Action]:
        """A ``link-held-at-end`` record (``delayed``) for each update or failure report the up-link still delays
        as the run ends: released after the end, it would reach an aggregator that has stopped listening, or a
        connection already closed. Said now, and never sent (no receipt or rejection will account for it)."""
        out: list[Action] = []
        for msg_id, send in self._delayed.items():
            self._delayed_at_end.add(msg_id)
            out.append(self._record("link-held-at-end", direction="up", kind=type(send.message).__name__.lower(),
                                    id=msg_id, round=send.message.round, delayed=True))
        self._delayed.clear()
        return out

    def published(self, publish: Publish) -> list[Action]:
        """The driver published ``publish``: log it."""
        m = publish.send.message
        out: list[Action] = []
        if publish.copies > 1:
            out.append(self._record("link-duplicated", direction="up", id=m.msg_id, copies=publish.copies))
        extra = {"prompt_chars": len(m.prompt)} if isinstance(m, Update) else {}
        out.append(self._record("sent", kind=type(m).__name__.lower(), id=m.msg_id, round=m.round, **extra))
        if isinstance(m, Update):
            self._unreceipted[m.msg_id] = (publish.send, 0)
            while len(self._unreceipted) > MAX_UNRECEIPTED:
                del self._unreceipted[next(iter(self._unreceipted))]
            self._sent_updates[m.msg_id] = None
            while len(self._sent_updates) > SENT_UPDATES_KEPT:
                del self._sent_updates[next(iter(self._sent_updates))]
        return out

    def publish_failed(self, publish: Publish, reason: str) -> list[Action]:
        """The connection failed while publishing: keep the message for the next connection."""
        self.offline.append(publish.send)
        return [self._record("send-failed", id=publish.send.message.msg_id, reason=reason)]

    def _effects(self, effects: list[ClientEffect]) -> list[Action]:
        out: list[Action] = []
        leave: Leave | None = None
        for effect in effects:
            if isinstance(effect, Send):
                out += self._send(effect)
            elif isinstance(effect, Optimize):
                out.append(Work(task=effect.task, delay_s=effect.delay_s))
            elif isinstance(effect, SetAlarm):
                out.append(WakeAt(at=effect.at))
            elif isinstance(effect, Disconnect):
                leave = Leave(abrupt=effect.abrupt, reason=effect.reason)
            elif isinstance(effect, Reconnect) and leave is not None:
                leave = Leave(abrupt=leave.abrupt, reason=leave.reason, back_at=effect.at)
            elif isinstance(effect, Stop):
                leave = Leave(abrupt=False, reason=effect.reason, stop=True)
            elif isinstance(effect, Note):
                out.append(self._record(effect.event, detail=effect.detail, round=effect.round))
        if leave is not None:
            out.append(leave)
        return out

    def _send(self, send: Send) -> list[Action]:
        """What the core sends: queued while down; updates through the up-link's fault plan."""
        m = send.message
        if not self.connected:
            self.offline.append(send)
            return [self._record("queued-offline", id=m.msg_id)]
        if not isinstance(m, Update | Failure):  # presence is control plane: the fault plan acts on tasks and answers
            return self._publish(send, 1)
        route = self.up.route(send)
        if route.lost:
            return [self._record("link-lost", direction="up", kind=type(m).__name__.lower(), id=m.msg_id,
                                 round=m.round)]
        if route.held:
            return [self._record("link-held", direction="up", id=m.msg_id)]
        if route.delay_s > 0:
            for delayed, _copies in route.deliveries:
                self._delayed[delayed.message.msg_id] = delayed
            return [PushLater(delay_s=route.delay_s, deliveries=route.deliveries)]
        return self.push(route.deliveries)

    def _publish(self, send: Send, copies: int) -> list[Action]:
        if not self.connected:  # a link's delivery while the connection is down: sent at the next connection
            self.offline.append(send)
            return [self._record("queued-offline", id=send.message.msg_id)]
        m = send.message
        limits = self.send_limits
        try:
            # for the aggregator alone (only it subscribes to a client's topics): a paired frame; updates sealed
            payload = self.security.wrap(codec.encode(m, limits), sealed=isinstance(m, Update | Failure),
                                         to=AGGREGATOR)
            if len(payload) > limits.max_bytes:  # signed and sealed, it grew: the broker carries the frame
                raise codec.MessageTooLarge(KIND_OF[type(m)], len(payload), limits.max_bytes)
        except codec.MessageTooLarge as exc:  # the aggregator would drop it as oversized: say so here
            return [self._record("send-refused", id=m.msg_id, round=m.round, reason=str(exc))]
        return [Publish(send=send, payload=payload, copies=copies)]

    def _record(self, event: str, **fields: Any) -> Record:
        return Record(event, {"client": self.client, **fields})
