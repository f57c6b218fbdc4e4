"""A client over a real MQTT connection: drives a :class:`~fedbus.client.session.ClientSession`.

The same coroutine runs inside ``fedbus run`` (one asyncio task per client, each with its own MQTT
connection), in the worker processes of ``fedbus run --workers N``, and alone in ``fedbus client`` on
another machine. The session decides; this driver connects with a persistent session and the
session's Last Will, publishes what it is told, schedules what the link delays, runs the local
optimizer, and reconnects when the session says so. Times in the session are simulated seconds;
``time_scale`` of them pass per wall-clock second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedbus.client.core import Alarm, ClientEvent, ClientProfile, WorkDone
from fedbus.client.optimizer import LocalOptimizer, LocalOutcome, OptimizerFactory, make_optimizer, optimize_task
from fedbus.client.session import (
    Action,
    ClientSession,
    Deliveries,
    FeedLater,
    Leave,
    Publish,
    PushLater,
    Record,
    WakeAt,
    Work,
)
from fedbus.errors import EngineError, TransportError, failure_text
from fedbus.logs import structlog
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Task
from fedbus.results.eventlog import EventLog
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import Backoff, Incoming, LastWill, MqttBus, connect_retrying
from fedbus.scenario.conditions import ClientGroup
from fedbus.security.policy import Security
from fedbus.security.signing import is_signed

if TYPE_CHECKING:  # a client process plans nothing: fedbus.plan would load the aggregator's modules
    from fedbus.plan import ClientPlan

log = structlog.get_logger("fedbus.client")
STALL_S = 20.0  # wall seconds without a message from an online aggregator (heartbeats every 5 s): reconnect


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
    backoff: Backoff = field(default_factory=lambda: Backoff(give_up_s=None))  # reconnection attempts
    retry_first_connect: bool = True  # False: the first connection fails at once (a remote `fedbus client`)
    # leave (not ok) when nothing came from the aggregator for this many wall seconds; None: wait for ever
    silence_timeout_s: float | None = None
    security: Security | None = None  # protocol v2 (signing, sealing); None: v1

    @classmethod
    def for_plan(cls, plan: ClientPlan, *, run: str, broker: BrokerAddress, time_scale: float,
                 started_at: float, boot: str = "0", security: Security | None = None) -> ClientConfig:
        """One of the scenario's own clients, inside ``fedbus run`` (message ids with boot '0', as simulated;
        a resumed run's clients use 'r1', 'r2', ... so no id of an earlier incarnation comes back)."""
        return cls(run=run, client=plan.client, broker=broker, shard=plan.shard,
                   max_message_bytes=plan.max_message_bytes, seed=plan.seed, group=plan.group,
                   step_delay_s=plan.step_delay_s, time_scale=time_scale, started_at=started_at, boot=boot,
                   security=security)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientReport:
    """How a client's session ended."""

    client: str
    rounds_done: int
    reason: str
    connections: int
    ok: bool = True  # False: the client gave up (the aggregator fell silent), the run did not end


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A message from the broker, stamped with the time it arrived."""

    topic: str
    payload: bytes
    now: float


@dataclass(frozen=True, slots=True)
class _Lost:
    """Connection number ``n`` dropped at ``now`` (the broker restarted, the network failed)."""

    now: float
    n: int


@dataclass(frozen=True, slots=True)
class _Cut:
    """A network partition begins; the network comes back at ``heals_at``."""

    heals_at: float


class _Driver:
    def __init__(self, config: ClientConfig, events: EventLog, make: OptimizerFactory) -> None:
        self.config = config
        self.events = events
        self.make = make
        self.loop = asyncio.get_running_loop()
        self.t0 = config.started_at if config.started_at is not None else self.loop.time()
        profile = ClientProfile(run=config.run, client=config.client, seed=config.seed, group=config.group,
                                step_latency_s=config.step_delay_s, boot=config.boot or secrets.token_hex(4))
        self.session = ClientSession(profile, codec.Limits(max_bytes=config.max_message_bytes), config.security)
        # the one consumer of the session: deliveries, timers, finished work and link releases, in order
        self.queue: asyncio.Queue[ClientEvent | Leave | Deliveries | _Delivery | _Cut | _Lost] = asyncio.Queue()
        self.bus: MqttBus | None = None
        self.optimizer: LocalOptimizer | None = None
        self.background: set[asyncio.Task[None]] = set()
        # the MQTT identifier: the same for every reconnection of this process (its persistent session), but
        # not guessable by other participants, who could otherwise take the session over by connecting with it
        self.identifier = f"{config.run}.{config.client}.{secrets.token_hex(6)}"
        self.silent: str | None = None  # why the client gave up waiting for the aggregator
        self.refused: str | None = None  # why the client cannot take part at all (a signed run, no keys)
        self.global_topic = topics.global_topic(config.run)
        self.signs = config.security is not None and config.security.signs
        self.connected_at = 0.0
        self.main: asyncio.Task[Any] | None = None

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

    # ------------------------------------------------------------------ life
    async def run(self) -> ClientReport:
        for interval in self.config.group.network.partitions:
            self.at(interval.start_s, functools.partial(self._partition, interval.end_s))
        reason = "connection closed"
        self.main = asyncio.current_task()
        if self.config.silence_timeout_s is not None:
            self.spawn(self._watch_silence(self.config.silence_timeout_s), "watch-silence")
        self.spawn(self._watch_stall(), "watch-stall")
        try:
            while True:
                leave = await self._connection()
                if leave.stop:
                    reason = leave.reason
                    break
                if leave.back_at is None:
                    reason = f"gone: {leave.reason}"
                    break
                await asyncio.sleep(max(0.0, self.t0 + leave.back_at / self.config.time_scale - self.loop.time()))
        except asyncio.CancelledError:
            if self.silent is None:
                raise
            reason = self.silent  # gave up while (re)connecting
        finally:
            for task in list(self.background):
                task.cancel()
        s = self.session
        if self.silent is not None:
            reason = self.silent
        if self.refused is not None:
            reason = self.refused
        return ClientReport(client=s.client, rounds_done=s.rounds_done, reason=reason, connections=s.connections,
                            ok=self.silent is None and self.refused is None)

    async def _watch_stall(self) -> None:
        """Reconnect when a connection that looks up has carried nothing from the aggregator (which sends a
        heartbeat every few seconds) for ``STALL_S``: half-open connections after a broker restart."""
        while True:
            await asyncio.sleep(STALL_S / 3)
            bus, heard = self.bus, self.session.last_heard
            if bus is None or heard is None or not self.session.aggregator_online:
                continue
            since = max(self.t0 + heard / self.config.time_scale, self.connected_at)
            if self.loop.time() - since > STALL_S:
                self.events.record("connection-stalled", client=self.config.client)
                await bus.abort()  # the receive loop sees the connection end and the driver reconnects

    async def _watch_silence(self, timeout_s: float) -> None:
        """Give up when the aggregator has not been heard from (global, task, receipt, heartbeat) for too long."""
        started = self.loop.time()
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            heard = self.session.last_heard
            last_wall = started if heard is None else self.t0 + heard / self.config.time_scale
            silent_for = self.loop.time() - max(last_wall, started)
            if silent_for < timeout_s:
                continue
            state = {None: "never heard from", True: "online but silent", False: "offline"}[
                self.session.aggregator_online]
            self.silent = (f"gave up: the aggregator of run {self.config.run} was silent for {silent_for:.0f} s "
                           f"(it is {state}); is the run still going?")
            self.events.record("aggregator-silent", client=self.config.client, seconds=round(silent_for, 1))
            if self.bus is not None:  # leave abruptly: the Last Will tells the aggregator, should it come back
                self.queue.put_nowait(Leave(abrupt=True, reason=self.silent, stop=True))
            elif self.main is not None:
                self.main.cancel()
            return

    def _partition(self, heals_at: float) -> None:
        self.queue.put_nowait(_Cut(heals_at))  # the session decides in order, in the consumer

    async def _connect(self) -> MqttBus:
        """A connection with the session's Last Will; after the first, retried with backoff until it works."""
        cfg = self.config

        def make() -> MqttBus:
            topic, payload = self.session.will(self.now())  # a fresh Will id for every attempt
            will = LastWill(topic=topic, payload=payload)
            return MqttBus(cfg.broker, identifier=self.identifier, will=will)

        def retrying(attempt: int, delay_s: float, reason: str) -> None:
            self.events.record("reconnect-wait", client=cfg.client, attempt=attempt, delay_s=round(delay_s, 3),
                               reason=reason)
            if attempt == 1 or attempt % 10 == 0:
                log.warning("broker unreachable, retrying", client=cfg.client, attempt=attempt, reason=reason)

        if self.session.connections == 0 and not cfg.retry_first_connect:
            return await make().__aenter__()
        return await connect_retrying(make, cfg.backoff, on_retry=retrying)

    async def _connection(self) -> Leave:
        bus = await self._connect()
        try:
            return await self._connected(bus)
        finally:
            await bus.close()

    async def _connected(self, bus: MqttBus) -> Leave:
        try:
            await bus.subscribe(*self.session.subscriptions(), verify=self.session.connections > 0)
        except TransportError as exc:  # lost before the session knew it was connected: just try again
            self.events.record("connection-lost", client=self.config.client, reason=str(exc))
            return Leave(abrupt=True, reason="connection lost", back_at=self.now())
        self.bus = bus
        self.connected_at = self.loop.time()
        bus.on_receive(self._incoming, functools.partial(self._lost, bus))
        try:
            leave = await self._carry_out(self.session.connected_now(self.now()))
            while leave is None:
                item = await self.queue.get()
                if isinstance(item, Leave):
                    leave = item
                elif isinstance(item, _Cut):
                    leave = await self._carry_out(self.session.partition(item.heals_at))
                elif isinstance(item, _Lost):
                    if item.n == self.session.connections:  # not news from an earlier connection
                        leave = await self._carry_out(self.session.connection_lost(item.now))
                elif isinstance(item, _Delivery) and self._refuses(item):
                    await self._say_offline(bus)
                    leave = Leave(abrupt=False, reason=self.refused or "", stop=True)
                elif isinstance(item, _Delivery):
                    leave = await self._carry_out(self.session.receive(item.topic, item.payload, item.now))
                elif isinstance(item, tuple):
                    leave = await self._carry_out(self.session.push(item))
                else:
                    leave = await self._carry_out(self.session.handle(item))
        finally:
            self.bus = None
            bus.on_receive(None)  # what still arrives stays with this connection, which closes
        await self._carry_out(self.session.disconnected(leave))
        if leave.abrupt:
            await bus.abort()
        return leave

    def _refuses(self, delivery: _Delivery) -> bool:
        """A client without keys (protocol v1) in a signed run cannot take part: its messages would be dropped as
        forgeries and the run's as unsigned garbage. Say so (``refused``) instead of waiting in silence."""
        if self.signs or delivery.topic != self.global_topic or not is_signed(delivery.payload):
            return False
        self.refused = "this run is signed: join with a token from `fedbus invite` (fedbus client --join TOKEN)"
        self.events.record("run-signed", client=self.config.client)
        return True

    async def _say_offline(self, bus: MqttBus) -> None:
        """Replace this client's retained 'online' presence before leaving a run it cannot take part in: left
        behind, it would make the id look live to the next process that tries it (`refuse_live_client`), a token
        join under the same id included, for the rest of the run."""
        topic, payload = self.session.will(self.now())
        with contextlib.suppress(TransportError):
            await bus.publish(topic, payload, retain=True)

    # ------------------------------------------------------------------ actions
    async def _carry_out(self, actions: list[Action]) -> Leave | None:
        """Carry out the session's actions in order; a ``Leave`` ends the connection after the rest."""
        leave: Leave | None = None
        for action in actions:
            if isinstance(action, Record):
                self.events.record(action.event, **action.fields)
            elif isinstance(action, Publish):
                await self._carry_out(await self._publish(action))
            elif isinstance(action, PushLater):
                self.loop.call_later(self.wall(action.delay_s), self.queue.put_nowait, action.deliveries)
            elif isinstance(action, FeedLater):
                if action.delay_s > 0:
                    self.loop.call_later(self.wall(action.delay_s), self.queue.put_nowait, action.event)
                else:  # at once, before anything queued since the delivery
                    leave = await self._carry_out(self.session.handle(action.event)) or leave
            elif isinstance(action, WakeAt):
                self.at(action.at, lambda: self.queue.put_nowait(Alarm(now=self.now())))
            elif isinstance(action, Work):
                self.spawn(self._optimize(action.task, action.delay_s), f"optimize-{action.task.round}")
            elif isinstance(action, Leave):
                leave = action
        return leave

    async def _publish(self, action: Publish) -> list[Action]:
        bus = self.bus
        if bus is None:
            return self.session.push(((action.send, action.copies),))  # queued offline
        handed_over = self.events.now()  # `sent` is when it left, not when the broker's ack was read
        try:
            for _ in range(action.copies):
                await bus.publish(action.send.topic, action.payload, retain=action.send.retain)
        except TransportError as exc:
            return self.session.publish_failed(action, str(exc))
        rest: list[Action] = []
        for done in self.session.published(action):
            if isinstance(done, Record):
                self.events.record_at(handed_over, done.event, **done.fields)
            else:
                rest.append(done)
        return rest

    async def _optimize(self, task: Task, delay_s: float) -> None:
        started = self.loop.time()
        outcome: LocalOutcome | None = None
        error = error_type = ""
        try:
            if self.optimizer is None:
                announced = self.session.data()
                if announced is None:
                    raise EngineError("no global state yet: the data description is unknown")
                engine = self.config.engine or announced[0]
                self.optimizer = self.make(engine, announced[1], self.config.client, self.config.shard)
            outcome = await optimize_task(self.optimizer, task)  # with the run's prompt budget
        except Exception as exc:  # any failure fails this round only: the client takes the next task
            error, error_type = failure_text(exc, 300), type(exc).__name__
            log.warning("local optimization failed", client=self.config.client, round=task.round,
                        error_type=error_type, reason=error, exc_info=not isinstance(exc, EngineError))
        await self._carry_out(self.session.optimized(task, outcome, error, error_type))
        await asyncio.sleep(max(0.0, self.wall(delay_s) - (self.loop.time() - started)))
        self.queue.put_nowait(WorkDone(now=self.now(), task=task, outcome=outcome, error=error,
                                       error_type=error_type))

    # ------------------------------------------------------------------ incoming
    def _incoming(self, incoming: Incoming) -> None:
        self.queue.put_nowait(_Delivery(incoming.topic, incoming.payload, self.now()))

    def _lost(self, bus: MqttBus, reason: str) -> None:
        if self.bus is bus:
            self.events.record("connection-lost", client=self.config.client, reason=f"connection lost: {reason}")
            # the session decides, in order, in the consumer
            self.queue.put_nowait(_Lost(self.now(), self.session.connections))


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
