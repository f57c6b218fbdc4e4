"""The client worker: drives a :class:`clients.core.ClientCore` over a real MQTT connection.

The same coroutine runs inside ``fedbus run`` (one asyncio task per client, each with its own
MQTT connection) and alone in ``fedbus client`` on another machine.

The core decides; this driver carries it out: it connects with a persistent session and a
retained Last Will 'offline', feeds received messages, timers and finished local work to the
core, runs the local optimizer, and sends what the core says through the client's *link*, where
the scenario's network faults are injected (loss, duplication, delay and jitter, reordering,
partitions). The broker and the protocol stay real. Times in the core are simulated seconds;
``time_scale`` of them pass per wall-clock second.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

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
from clients.optimizer import LocalOptimizer, failure_reason, make_optimizer
from fedbus.errors import EngineError, RemoteProtocolError, TransportError
from fedbus.faults.link import LinkFaults, LinkQueue
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.messages import DataSpec, GlobalState, Task, Update
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import Incoming, LastWill, MqttBus
from fedbus.runtime.eventlog import EventLog
from fedbus.scenario.conditions import ClientGroup

log = structlog.get_logger("fedbus.client")
OptimizerFactory = Callable[[str, DataSpec, str, "int | None"], LocalOptimizer]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """One client: who it is, where the broker is, its shard, and the conditions it runs under."""

    run: str
    client: str
    broker: BrokerAddress
    shard: int | None = None
    engine: str | None = None  # None: the engine the federation announces
    max_message_bytes: int = codec.DEFAULT_MAX_BYTES
    seed: int = 0
    group: ClientGroup = field(default_factory=lambda: ClientGroup(name="client", count=1))
    step_delay_s: float = 0.0  # simulated time per local step (scenario clients.step_latency_s)
    time_scale: float = 1.0
    started_at: float | None = None  # the run's start on the event loop's clock; None: now
    boot: str | None = None  # message-id token; None: random (a restarted process never reuses ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientReport:
    """How a client's session ended."""

    client: str
    rounds_done: int
    reason: str
    connections: int


class _Leave(Exception):
    """Internal: the connection must end (``abrupt``), and maybe come back at ``back_at``."""

    def __init__(self, abrupt: bool, reason: str, back_at: float | None, stop: bool = False) -> None:
        super().__init__(reason)
        self.abrupt, self.reason, self.back_at, self.stop = abrupt, reason, back_at, stop


class _Driver:
    def __init__(self, config: ClientConfig, events: EventLog, make: OptimizerFactory) -> None:
        self.config = config
        self.events = events
        self.make = make
        self.loop = asyncio.get_running_loop()
        self.t0 = config.started_at if config.started_at is not None else self.loop.time()
        self.core = ClientCore(ClientProfile(run=config.run, client=config.client, seed=config.seed,
                                             group=config.group, step_latency_s=config.step_delay_s,
                                             boot=config.boot or secrets.token_hex(4)))
        net = config.group.network
        self.up: LinkQueue[Send] = LinkQueue(LinkFaults(net, config.seed, config.client, "up"))
        self.down: LinkQueue[ClientEvent] = LinkQueue(LinkFaults(net, config.seed, config.client, "down"))
        self.queue: asyncio.Queue[ClientEvent | _Leave] = asyncio.Queue()
        self.limits = codec.Limits(max_bytes=config.max_message_bytes)
        self.seen = SeenIds(10_000)
        self.bus: MqttBus | None = None
        self.offline_queue: list[Send] = []
        self.optimizer: LocalOptimizer | None = None
        self.last_global: GlobalState | None = None
        self.rounds_done = 0
        self.connections = 0
        self.partitioned = False
        self.background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ time
    def now(self) -> float:
        return (self.loop.time() - self.t0) * self.config.time_scale

    def wall(self, simulated_s: float) -> float:
        return max(0.0, simulated_s) / self.config.time_scale

    def at(self, simulated: float, callback: Callable[[], None]) -> None:
        self.loop.call_at(self.t0 + simulated / self.config.time_scale, callback)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self.loop.create_task(coro, name=f"client[{self.config.client}].{name}")
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def record(self, event: str, **fields: object) -> None:
        self.events.record(event, client=self.config.client, **fields)

    def _partition(self, heals_at: float) -> Callable[[], None]:
        def cut() -> None:
            self.queue.put_nowait(_Leave(abrupt=True, reason="network partition", back_at=heals_at))
        return cut

    # ------------------------------------------------------------------ life
    async def run(self) -> ClientReport:
        cid = self.config.client
        for interval in self.config.group.network.partitions:
            self.at(interval.start_s, self._partition(interval.end_s))
        reason = "connection closed"
        try:
            while True:
                leave = await self._connection()
                if leave.stop:
                    reason = leave.reason
                    break
                if leave.back_at is None:
                    reason = f"gone: {leave.reason}"
                    break
                self.partitioned = leave.reason == "network partition"
                await asyncio.sleep(max(0.0, self.t0 + leave.back_at / self.config.time_scale - self.loop.time()))
        finally:
            for task in list(self.background):
                task.cancel()
        return ClientReport(client=cid, rounds_done=self.rounds_done, reason=reason, connections=self.connections)

    async def _connection(self) -> _Leave:
        cfg = self.config
        will = self.core.will(self.now())
        lw = LastWill(topic=will.topic, payload=codec.encode(will.message))
        async with MqttBus(cfg.broker, identifier=f"{cfg.run}.{cfg.client}", will=lw) as bus:
            self.connections += 1
            await bus.subscribe(topics.global_topic(cfg.run), topics.task_topic(cfg.run, cfg.client))
            self.bus = bus
            self.record("connected", n=self.connections)
            receiver = self.loop.create_task(self._receive(bus), name=f"client[{cfg.client}].receive")
            try:
                if self.partitioned:  # the process kept running; only the network came back
                    self.partitioned = False
                    await self._send(self.core.online(self.now()))
                else:
                    await self._apply(self.core.handle(Connected(now=self.now())))
                queued, self.offline_queue = self.offline_queue, []
                for send in queued:
                    await self._send(send)
                while True:
                    item = await self.queue.get()
                    if isinstance(item, _Leave):
                        leave = item
                        break
                    await self._apply(self.core.handle(item))
            except _Leave as raised:
                leave = raised
            finally:
                self.bus = None
                receiver.cancel()
            self.record("disconnected", reason=leave.reason, abrupt=leave.abrupt, back_at=leave.back_at)
            if leave.abrupt:
                await bus.abort()
        return leave

    # ------------------------------------------------------------------ effects
    async def _apply(self, effects: list[ClientEffect]) -> None:
        leave: _Leave | None = None
        for effect in effects:
            if isinstance(effect, Send):
                await self._send(effect)
            elif isinstance(effect, Optimize):
                self.spawn(self._optimize(effect.task, effect.delay_s), f"optimize-{effect.task.round}")
            elif isinstance(effect, SetAlarm):
                self.at(effect.at, lambda: self.queue.put_nowait(Alarm(now=self.now())))
            elif isinstance(effect, Disconnect):
                leave = _Leave(abrupt=effect.abrupt, reason=effect.reason, back_at=None)
            elif isinstance(effect, Reconnect) and leave is not None:
                leave.back_at = effect.at
            elif isinstance(effect, Stop):
                leave = _Leave(abrupt=False, reason=effect.reason, back_at=None, stop=True)
            elif isinstance(effect, Note):
                self.record(effect.event, detail=effect.detail, round=effect.round)
        if leave is not None:
            raise leave

    async def _send(self, send: Send) -> None:
        if self.bus is None:
            self.offline_queue.append(send)
            self.record("queued-offline", id=send.message.msg_id)
            return
        m = send.message
        if not isinstance(m, Update):  # presence is control plane: the fault plan acts on tasks and updates
            await self._publish(send, 1)
            return
        route = self.up.route(send)
        if route.lost:
            self.record("link-lost", direction="up", kind=type(m).__name__.lower(), id=m.msg_id, round=m.round)
        elif route.held:
            self.record("link-held", direction="up", id=m.msg_id)
        elif route.delay_s > 0:
            self.spawn(self._publish_later(route.deliveries, route.delay_s), "delayed-send")
        else:
            for item, copies in route.deliveries:
                await self._publish(item, copies)

    async def _publish_later(self, deliveries: tuple[tuple[Send, int], ...], delay_s: float) -> None:
        await asyncio.sleep(self.wall(delay_s))
        for item, copies in deliveries:
            await self._publish(item, copies)  # queued offline if the connection went away meanwhile

    async def _publish(self, send: Send, copies: int) -> None:
        bus = self.bus
        if bus is None:
            self.offline_queue.append(send)
            return
        payload = codec.encode(send.message)
        m = send.message
        for _ in range(copies):
            try:
                await bus.publish(send.topic, payload, retain=send.retain)
            except TransportError as exc:
                self.offline_queue.append(send)
                self.record("send-failed", id=m.msg_id, reason=str(exc))
                return
        if copies > 1:
            self.record("link-duplicated", direction="up", id=m.msg_id, copies=copies)
        self.record("sent", kind=type(m).__name__.lower(), id=m.msg_id, round=m.round,
                    **({"prompt_chars": len(m.prompt)} if hasattr(m, "prompt") else {}))

    async def _optimize(self, task: Task, delay_s: float) -> None:
        started = self.loop.time()
        outcome, error, error_type = None, "", ""
        try:
            if self.optimizer is None:
                spec = self.last_global.data if self.last_global else None
                if spec is None:
                    raise EngineError("no global state yet: the data description is unknown")
                engine = self.config.engine or self.last_global.engine  # type: ignore[union-attr]
                self.optimizer = self.make(engine, spec, self.config.client, self.config.shard)
            outcome = await self.optimizer.optimize(task.prompt, round=task.round, steps=task.local_steps,
                                                    batch_size=task.batch_size)
        except Exception as exc:  # any failure fails this round only: the client takes the next task
            error, error_type = failure_reason(exc), type(exc).__name__
            log.warning("local optimization failed", client=self.config.client, round=task.round,
                        error_type=error_type, reason=error, exc_info=not isinstance(exc, EngineError))
        if outcome is not None and outcome.step_reasons:
            self.record("local-steps", round=task.round, reasons=list(outcome.step_reasons),
                        llm_calls=outcome.llm_calls, tokens=outcome.tokens)
        elif outcome is None:
            self.record("local-error", round=task.round, error_type=error_type, reason=error[:300])
        await asyncio.sleep(max(0.0, self.wall(delay_s) - (self.loop.time() - started)))
        if outcome is not None:
            self.rounds_done += 1
        self.queue.put_nowait(WorkDone(now=self.now(), task=task, outcome=outcome, error=error))

    # ------------------------------------------------------------------ incoming
    async def _receive(self, bus: MqttBus) -> None:
        try:
            async for incoming in bus.messages():
                self._incoming(incoming)
        except TransportError as exc:
            if self.bus is bus:
                self.record("connection-lost", reason=str(exc))
                self.queue.put_nowait(_Leave(abrupt=True, reason="connection lost", back_at=self.now() + 1.0))

    def _incoming(self, incoming: Incoming) -> None:
        try:
            message = codec.decode(incoming.payload, self.limits)
        except RemoteProtocolError as exc:
            self.record("dropped", topic=incoming.topic, reason=str(exc))
            return
        if not self.seen.first_time(message.msg_id):
            self.record("duplicate-delivery", id=message.msg_id)
            return
        event: ClientEvent
        if isinstance(message, GlobalState) and message.run == self.config.run:
            self.last_global = message
            self.queue.put_nowait(GlobalSeen(now=self.now(), state=message))  # control plane: no faults
            return
        if isinstance(message, Task) and message.client == self.config.client and message.run == self.config.run:
            self.record("received", kind="task", round=message.round, id=message.msg_id)
            event = TaskSeen(now=self.now(), task=message)
        else:
            self.record("dropped", topic=incoming.topic, reason=f"unexpected {type(message).__name__}")
            return
        route = self.down.route(event)
        if route.lost:
            self.record("link-lost", direction="down", id=message.msg_id, round=message.round)
        elif route.held:
            self.record("link-held", direction="down", id=message.msg_id)
        for item, copies in route.deliveries:
            for _ in range(copies):
                if route.delay_s > 0:
                    self.loop.call_later(self.wall(route.delay_s), self.queue.put_nowait, item)
                else:
                    self.queue.put_nowait(item)


async def run_client(
    config: ClientConfig,
    events: EventLog | None = None,
    make: OptimizerFactory = make_optimizer,
) -> ClientReport:
    """Take part in run ``config.run`` until it finishes (or the client is gone); return how it ended."""
    with structlog.contextvars.bound_contextvars(client=config.client, run=config.run):
        started = time.monotonic()
        report = await _Driver(config, events or EventLog(None), make).run()
        log.debug("client finished", reason=report.reason, seconds=round(time.monotonic() - started, 3))
        return report
