"""The aggregator process: drives the :class:`~fedbus.aggregator.session.AggregatorSession` over MQTT.

One consumer loop takes items from a queue (deliveries from the bus, timers, reduce results), hands
each to the session, and carries out its actions in order. The session is never entered concurrently,
so it needs no locks. The simulator drives the same session in virtual time (fedbus/sim/run.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from fedbus.aggregator.effects import ArmTimer, Reduce, RoundClosed, RoundResult, RunFinished
from fedbus.aggregator.events import Event, Reduced, ReduceFailed, Started, TimerFired
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.session import FINISH_GRACE_S, Action, AggregatorSession, NodeOutcome, Record, Send
from fedbus.aggregator.strategies import carry_out
from fedbus.aggregator.stream import StreamAggregator
from fedbus.errors import failure_text
from fedbus.protocol import codec
from fedbus.protocol.ids import AGGREGATOR
from fedbus.results.eventlog import EventLog
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import MqttBus

log = structlog.get_logger("fedbus.aggregator")
RoundHook = Callable[[RoundResult], Awaitable[dict[str, object]]]


async def reduce_with_strategy(effect: Reduce) -> str:
    """Carry out a ``Reduce``: the named strategy, or the staleness-weighted merge when weights are given."""
    return carry_out(effect.strategy, effect.current_prompt, effect.prompts, effect.max_chars, effect.weights)


@dataclass(frozen=True, slots=True)
class _Delivery:
    """A message from the broker, stamped with the time it arrived."""

    topic: str
    payload: bytes
    retained: bool
    now: float


class AggregatorNode:
    """Connects the core to the bus, the clock, the event log and the progress display."""

    def __init__(
        self,
        core: RoundAggregator | StreamAggregator,
        *,
        broker: BrokerAddress,
        events: EventLog,
        on_round: RoundHook,
        max_message_bytes: int,
        reducer: Callable[[Reduce], Awaitable[str]] = reduce_with_strategy,
        time_scale: float = 1.0,
        started_at: float | None = None,
    ) -> None:
        self.core = core
        self.run_id = core.config.run
        self.broker = broker
        self.events = events
        self.on_round = on_round
        self.reducer = reducer
        self.session = AggregatorSession(core, codec.Limits(max_bytes=max_message_bytes))
        self._queue: asyncio.Queue[Event | _Delivery] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time() if started_at is None else started_at
        self._scale = time_scale
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def outcome(self) -> NodeOutcome:
        return self.session.outcome

    def now(self) -> float:
        """Simulated seconds since the run started."""
        return (self._loop.time() - self._t0) * self._scale

    async def run(self) -> NodeOutcome:
        """Run the federation to its end; return what happened."""
        run = self.run_id
        with structlog.contextvars.bound_contextvars(run=run):
            async with MqttBus(self.broker, identifier=f"{run}.{AGGREGATOR}", clean_session=True) as bus:
                await bus.subscribe(*self.session.subscriptions())
                async with asyncio.TaskGroup() as group:
                    receiver = group.create_task(self._receive(bus), name=f"aggregator[{run}].receive")
                    self._queue.put_nowait(Started(now=self.now()))
                    await self._consume(bus, group)
                    receiver.cancel()
                for timer in self._timers:
                    timer.cancel()
        return self.outcome

    async def _receive(self, bus: MqttBus) -> None:
        async for incoming in bus.messages():
            self._queue.put_nowait(_Delivery(incoming.topic, incoming.payload, incoming.retained, self.now()))

    async def _consume(self, bus: MqttBus, group: asyncio.TaskGroup) -> None:
        while not self.session.finished:
            await self._step(await self._queue.get(), bus, group)
        # After the run finished: what is still queued or in flight goes through the session, which
        # rejects late updates as 'run-finished', so none is dropped without a record.
        await asyncio.sleep(FINISH_GRACE_S)
        while not self._queue.empty():
            await self._step(self._queue.get_nowait(), bus, group)

    async def _step(self, item: Event | _Delivery, bus: MqttBus, group: asyncio.TaskGroup) -> None:
        if isinstance(item, _Delivery):
            actions = self.session.receive(item.topic, item.payload, item.retained, item.now)
        else:
            actions = self.session.handle(item)
        for action in actions:
            await self._carry_out(action, bus, group)

    async def _carry_out(self, action: Action, bus: MqttBus, group: asyncio.TaskGroup) -> None:
        if isinstance(action, Record):
            self.events.record(action.event, **action.fields)
            if action.log is not None:
                getattr(log, action.log)(action.message, **action.fields)
        elif isinstance(action, Send):
            await bus.publish(action.topic, action.payload, retain=action.retain)
        elif isinstance(action, ArmTimer):
            handle = self._loop.call_at(self._t0 + action.at / self._scale, self._fire_timer)
            self._timers = [t for t in self._timers if not t.cancelled()] + [handle]
        elif isinstance(action, Reduce):
            group.create_task(self._reduce(action), name=f"aggregator[{self.run_id}].reduce-{action.round}")
        elif isinstance(action, RoundClosed):
            for record in self.session.round_evaluated(action.result, await self.on_round(action.result)):
                await self._carry_out(record, bus, group)
        elif isinstance(action, RunFinished):
            pass  # the session is finished: _consume turns to the grace period

    def _fire_timer(self) -> None:
        self._queue.put_nowait(TimerFired(now=self.now()))

    async def _reduce(self, effect: Reduce) -> None:
        try:
            prompt = await self.reducer(effect)
        except Exception as exc:
            log.warning("reduce failed", round=effect.round, error=f"{type(exc).__name__}: {exc}")
            self._queue.put_nowait(ReduceFailed(round=effect.round, reason=failure_text(exc), now=self.now()))
            return
        self._queue.put_nowait(Reduced(round=effect.round, prompt=prompt, now=self.now()))
