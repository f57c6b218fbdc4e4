"""A client in virtual time: the same ClientCore and link fault plan as clients.worker, without asyncio.

It mirrors the worker's driver decision for decision: a persistent session with a retained Last
Will, faults applied to updates going up and tasks coming down (presence and global state are
control plane), partitions that cut the connection abruptly and heal it without the core noticing,
and an offline queue for what the core sends while the connection is down.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from clients.core import (
    Alarm,
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
from clients.optimizer import SurrogateOptimizer, failure_reason, make_optimizer
from fedbus.errors import EngineError, RemoteProtocolError
from fedbus.faults.link import LinkFaults, LinkQueue
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.messages import GlobalState, Task, Update
from fedbus.runtime.eventlog import EventLog
from fedbus.scenario.conditions import ClientGroup
from fedbus.sim.broker import MemoryBroker
from fedbus.sim.timeline import Timeline


@dataclass(frozen=True, slots=True, kw_only=True)
class SimClientConfig:
    run: str
    client: str
    shard: int
    seed: int
    group: ClientGroup
    step_delay_s: float
    max_message_bytes: int


class SimClient:
    """One client's connection, link and optimizer, driven by the timeline."""

    def __init__(self, config: SimClientConfig, timeline: Timeline, broker: MemoryBroker, events: EventLog) -> None:
        self.config = config
        self.timeline = timeline
        self.broker = broker
        self.events = events
        self.core = ClientCore(ClientProfile(run=config.run, client=config.client, seed=config.seed,
                                             group=config.group, step_latency_s=config.step_delay_s, boot="0"))
        net = config.group.network
        self.up: LinkQueue[Send] = LinkQueue(LinkFaults(net, config.seed, config.client, "up"))
        self.down: LinkQueue[ClientEvent] = LinkQueue(LinkFaults(net, config.seed, config.client, "down"))
        self.limits = codec.Limits(max_bytes=config.max_message_bytes)
        self.seen = SeenIds(10_000)
        self.ident = f"{config.run}.{config.client}"
        self.connected = False
        self.partitioned = False
        self.stopped = False
        self.offline_queue: list[Send] = []
        self.optimizer: SurrogateOptimizer | None = None
        self.last_global: GlobalState | None = None
        self.connections = 0

    def record(self, event: str, **fields: object) -> None:
        self.events.record(event, client=self.config.client, **fields)

    def start(self) -> None:
        for interval in self.config.group.network.partitions:
            self.timeline.at(interval.start_s, functools.partial(self._partition, interval.end_s))
        self.timeline.at(0.0, self._connect)

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        if self.stopped or self.connected:
            return
        now = self.timeline.now
        will = self.core.will(now)
        self.broker.connect(self.ident, self._incoming, will=(will.topic, codec.encode(will.message)))
        self.connected = True
        self.connections += 1
        self.broker.subscribe(self.ident, topics.global_topic(self.config.run),
                              topics.task_topic(self.config.run, self.config.client))
        self.record("connected", n=self.connections)
        if self.partitioned:  # the process kept running; only the network came back
            self.partitioned = False
            self._send(self.core.online(now))
        else:
            self._apply(self.core.handle(Connected(now=now)))
        queued, self.offline_queue = self.offline_queue, []
        for send in queued:
            self._send(send)

    def _leave(self, *, abrupt: bool, reason: str, back_at: float | None, stop: bool = False) -> None:
        if not self.connected:
            return
        self.connected = False
        self.broker.disconnect(self.ident, abrupt=abrupt)
        self.record("disconnected", reason=reason, abrupt=abrupt, back_at=back_at)
        if stop:
            self.stopped = True
        elif back_at is not None:
            self.timeline.at(back_at, self._connect)

    def _partition(self, heals_at: float) -> None:
        if self.connected and not self.stopped:
            self.partitioned = True
            self._leave(abrupt=True, reason="network partition", back_at=heals_at)

    # ------------------------------------------------------------------ effects
    def _feed(self, event: ClientEvent) -> None:
        if not self.stopped:
            self._apply(self.core.handle(event))

    def _apply(self, effects: list[ClientEffect]) -> None:
        leave: dict[str, object] | None = None
        for effect in effects:
            if isinstance(effect, Send):
                self._send(effect)
            elif isinstance(effect, Optimize):
                self._optimize(effect.task, effect.delay_s)
            elif isinstance(effect, SetAlarm):
                self.timeline.at(effect.at, lambda: self._feed(Alarm(now=self.timeline.now)))
            elif isinstance(effect, Disconnect):
                leave = {"abrupt": effect.abrupt, "reason": effect.reason, "back_at": None}
            elif isinstance(effect, Reconnect) and leave is not None:
                leave["back_at"] = effect.at
            elif isinstance(effect, Stop):
                leave = {"abrupt": False, "reason": effect.reason, "back_at": None, "stop": True}
            elif isinstance(effect, Note):
                self.record(effect.event, detail=effect.detail, round=effect.round)
        if leave is not None:
            self._leave(**leave)  # type: ignore[arg-type]

    def _send(self, send: Send) -> None:
        if not self.connected:
            self.offline_queue.append(send)
            self.record("queued-offline", id=send.message.msg_id)
            return
        m = send.message
        if not isinstance(m, Update):
            self._publish(send, 1)
            return
        route = self.up.route(send)
        if route.lost:
            self.record("link-lost", direction="up", kind="update", id=m.msg_id, round=m.round)
        elif route.held:
            self.record("link-held", direction="up", id=m.msg_id)
        else:
            self.timeline.after(route.delay_s, functools.partial(self._publish_all, route.deliveries))

    def _publish_all(self, deliveries: tuple[tuple[Send, int], ...]) -> None:
        for item, copies in deliveries:
            self._publish(item, copies)  # queued offline if the connection went away meanwhile

    def _publish(self, send: Send, copies: int) -> None:
        if not self.connected:
            self.offline_queue.append(send)
            return
        payload = codec.encode(send.message)
        for _ in range(copies):
            self.broker.publish(send.topic, payload, retain=send.retain)
        m = send.message
        if copies > 1:
            self.record("link-duplicated", direction="up", id=m.msg_id, copies=copies)
        self.record("sent", kind=type(m).__name__.lower(), id=m.msg_id, round=m.round,
                    **({"prompt_chars": len(m.prompt)} if hasattr(m, "prompt") else {}))

    def _optimize(self, task: Task, delay_s: float) -> None:
        outcome, error = None, ""
        try:
            if self.optimizer is None:
                if self.last_global is None:
                    raise EngineError("no global state yet: the data description is unknown")
                optimizer = make_optimizer(self.last_global.engine, self.last_global.data, self.config.client,
                                           self.config.shard)
                if not isinstance(optimizer, SurrogateOptimizer):
                    raise EngineError("the simulator runs the surrogate engine only")
                self.optimizer = optimizer
            outcome = self.optimizer.optimize_now(task.prompt, round=task.round, steps=task.local_steps,
                                                  batch_size=task.batch_size)
        except Exception as exc:  # as in the asyncio worker: the round fails for this client, the run goes on
            error = failure_reason(exc)
        self.timeline.after(delay_s, lambda: self._feed(WorkDone(now=self.timeline.now, task=task,
                                                                 outcome=outcome, error=error)))

    # ------------------------------------------------------------------ incoming
    def _incoming(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            message = codec.decode(payload, self.limits)
        except RemoteProtocolError as exc:
            self.record("dropped", topic=topic, reason=str(exc))
            return
        if not self.seen.first_time(message.msg_id):
            self.record("duplicate-delivery", id=message.msg_id)
            return
        now = self.timeline.now
        if isinstance(message, GlobalState) and message.run == self.config.run:
            self.last_global = message
            self._feed(GlobalSeen(now=now, state=message))
            return
        if not (isinstance(message, Task) and message.client == self.config.client
                and message.run == self.config.run):
            self.record("dropped", topic=topic, reason=f"unexpected {type(message).__name__}")
            return
        self.record("received", kind="task", round=message.round, id=message.msg_id)
        event = TaskSeen(now=now, task=message)
        route = self.down.route(event)
        if route.lost:
            self.record("link-lost", direction="down", id=message.msg_id, round=message.round)
        elif route.held:
            self.record("link-held", direction="down", id=message.msg_id)
        for item, copies in route.deliveries:
            for _ in range(copies):
                self.timeline.after(route.delay_s, functools.partial(self._feed, item))
