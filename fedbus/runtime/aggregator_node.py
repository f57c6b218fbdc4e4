"""The aggregator process: drives the :class:`~fedbus.aggregator.session.AggregatorSession` over MQTT.

One consumer loop takes items from a queue (deliveries from the bus, timers, reduce results), hands
each to the session, and carries out its actions in order. The session is never entered concurrently,
so it needs no locks. The simulator drives the same session in virtual time (fedbus/sim/run.py).

Publishing does not wait for the broker: a ``Send`` joins an ordered outbox, which is handed to the
connection in order with up to ``MAX_IN_FLIGHT`` publishes awaiting their acknowledgement (a round's
25 tasks, one acknowledgement after the other, took 0.8 s of a 2.4 s round on a loaded machine). A closed
round is evaluated (scored, journaled) after the other actions of its step, so the next round's global
and tasks are on their way before the scoring holds up the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fedbus.aggregator.effects import ArmTimer, Reduce, RoundClosed, RoundResult, RunFinished
from fedbus.aggregator.events import Event, Reduced, ReduceFailed, Revoked, Started, TimerFired
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.session import FINISH_GRACE_S, Action, AggregatorSession, NodeOutcome, Record, Send
from fedbus.aggregator.strategies import carry_out
from fedbus.aggregator.stream import StreamAggregator
from fedbus.errors import TransportError, failure_text
from fedbus.logs import structlog
from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.results.eventlog import EventLog
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import Backoff, LastWill, MqttBus, connect_retrying
from fedbus.runtime.check_pool import CheckPool, Prechecker
from fedbus.runtime.journal import Journal, Replayed, Resendable, delivery_line, event_line, replay, unread_line
from fedbus.runtime.stalls import StallWatch
from fedbus.security.checks import Checked, Job
from fedbus.security.keys import PublicKey
from fedbus.security.policy import Security

log = structlog.get_logger("fedbus.aggregator")
DEFAULT_BACKOFF = Backoff()
FINISH_WAIT_S = 5.0  # wall seconds at most, after the end, for clients still live to say they left
HEARTBEAT_S = 5.0  # wall seconds between the aggregator's 'online' heartbeats
MAX_IN_FLIGHT = 100  # publishes awaiting their acknowledgement at once (rumqttd's max_inflight_count is 100)
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


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A publish handed to the connection, not acknowledged yet."""

    number: int
    send: Send
    task: asyncio.Task[None]


class AggregatorNode:
    """Connects the core to the bus, the clock, the event log and the progress display.

    The connection is kept up: when it drops (a broker restart), the node reconnects with backoff,
    subscribes again, and sends again the retained global and the open tasks (receivers deduplicate
    them by id); what the session publishes meanwhile waits in order in the outbox, and what the lost
    connection had not acknowledged goes back to its front, in order. With a journal, every input is
    written before the session sees it, so ``--resume`` can rebuild the session.
    """

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
        journal: Journal | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock_offset: float = 0.0,
        boot: str = "0",
        heartbeat_s: float = HEARTBEAT_S,
        security: Security | None = None,
        identifier: str | None = None,
    ) -> None:
        self.core = core
        self.run_id = core.config.run
        self.broker = broker
        self.events = events
        self.on_round = on_round
        self.reducer = reducer
        self.journal = journal
        # told a client's id once its revocation is journaled (the run's key ledger journals its key again, after
        # the revocation, if its line is back by then)
        self.on_revoked: Callable[[str], None] | None = None
        self.backoff = backoff
        self.session = AggregatorSession(core, codec.Limits(max_bytes=max_message_bytes), boot=boot,
                                         security=security)
        self.heartbeat_s = heartbeat_s
        self.identifier = identifier or f"{self.run_id}.{AGGREGATOR}"  # MQTT client id; run.py makes it unguessable
        self.resend = Resendable(sync=isinstance(core, RoundAggregator))
        self._queue: asyncio.Queue[Event | _Delivery] = asyncio.Queue()
        own = self.session.security
        self.check_pool = (CheckPool(own.key, sealing_required=own.seals)
                           if own.signs and own.key is not None else None)
        self._checks = Prechecker(self._queue, self.check_pool, self._job_of)
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time() if started_at is None else started_at
        self._scale = time_scale
        self._offset = clock_offset
        self._timers: list[asyncio.TimerHandle] = []
        self._stalls = StallWatch(self._loop, self._stalled)
        self._stalled0 = 0.0  # what the stall watch had counted at _t0
        self._bus: MqttBus | None = None
        # Everything published and not acknowledged, in the order it goes out: first what the connection has
        # (_in_flight, oldest first), then what waits for room or a connection (_outbox). Each send carries
        # the number it was published under (_wait_acknowledged tells by it what was published before).
        self._publisher: MqttBus | None = None  # the connection that takes publishes now
        self._in_flight: dict[int, _InFlight] = {}
        self._outbox: deque[tuple[int, Send]] = deque()
        self._published = 0
        # set once the first subscription is in place: clients that announce themselves before it (retained
        # presences) reach it only through the broker's retained set on subscribe, of which rumqttd hands back
        # at most 100; `fedbus run` starts its own clients after it
        self.listening = asyncio.Event()
        self._acknowledged = asyncio.Event()  # set when a publish is acknowledged or the publisher goes
        self._group: asyncio.TaskGroup | None = None
        self._closed: deque[RoundResult] = deque()  # closed rounds to evaluate, in the order they closed
        self._resumed: Replayed | None = None
        self.reconnections = 0
        self._own_topic = topics.aggregator_topic(self.run_id)
        self._echo_due: float | None = None  # when the last heartbeat's echo is overdue
        self.replayed_lines = 0

    @property
    def outcome(self) -> NodeOutcome:
        return self.session.outcome

    def now(self) -> float:
        """Simulated seconds since the run started (a resumed run goes on from where its journal ends)."""
        return self._offset + (self._loop.time() - self._t0 - self._stalls.stalled() + self._stalled0) * self._scale

    def resume(self, lines: list[dict[str, Any]], on_revoked: Callable[[str], None] | None = None,
               on_key: Callable[[str, str], None] | None = None) -> Replayed:
        """Rebuild the session from a journal before :meth:`run`; the clock goes on from its last entry."""
        state = replay(self.session, lines, self.resend, on_revoked, on_key)
        self._offset = state.last_now
        self._t0 = self._loop.time()
        self._stalled0 = self._stalls.stalled()
        self._resumed = state
        self.replayed_lines = state.lines
        return state

    async def run(self) -> NodeOutcome:
        """Run the federation to its end; return what happened."""
        run = self.run_id
        with structlog.contextvars.bound_contextvars(run=run):
            if self._resumed is None:  # a new run: drop whatever session an earlier holder of this id left
                await (await self._make_bus(fresh=True).__aenter__()).close()  # the first connect fails at once
            # persistent from the first connection on: what clients publish while the broker restarts and the
            # aggregator reconnects is kept for it (mosquitto with persistence)
            self._bus = await self._make_bus().__aenter__()
            self._publisher = self._bus
            self._stalls.start()
            try:
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    link = group.create_task(self._link(group), name=f"aggregator[{run}].link")
                    beat = group.create_task(self._heartbeat(), name=f"aggregator[{run}].heartbeat")
                    await self._subscribed()
                    if self._resumed is None:
                        self._queue.put_nowait(Started(now=self.now()))
                    else:
                        await self._carry_on(self._resumed, group)
                    await self._consume(group)
                    beat.cancel()
                    self._publish(self.session.presence(self.now(), "offline"))
                    await self._wait_acknowledged()
                    link.cancel()
                    self._take_back()  # what a lost connection left unacknowledged: the run is over
            finally:
                self._stalls.stop()
                if self.check_pool is not None:
                    pool = self.check_pool
                    pool.close()
                    if pool.batches or pool.broken:
                        self.events.record("check-pool", client=AGGREGATOR, workers=pool.workers,
                                           batches=pool.batches, checked=pool.checked, broken=pool.broken)
                for timer in self._timers:
                    timer.cancel()
                if self._bus is not None:
                    await self._bus.close()
                if self.journal is not None:
                    self.journal.close()
        return self.outcome

    # ------------------------------------------------------------------ the connection
    def _make_bus(self, *, fresh: bool = False) -> MqttBus:
        # a persistent session: what clients publish while the aggregator reconnects is queued for it;
        # the Last Will tells clients at once when the aggregator dies
        topic, payload = self.session.will(self.now())
        return MqttBus(self.broker, identifier=self.identifier, clean_session=fresh,
                       will=LastWill(topic=topic, payload=payload), max_in_flight=MAX_IN_FLIGHT)

    async def _subscribed(self) -> None:
        bus = self._bus
        assert bus is not None
        try:
            await bus.subscribe(*self.session.subscriptions(), self._own_topic, verify=self.reconnections > 0)
        except TransportError as exc:
            log.warning("subscribe failed; reconnecting", error=str(exc))
            await bus.abort()
            return
        self.listening.set()
        # online (retained): clients that lost touch send again the updates that got no receipt
        self._publish(self.session.presence(self.now(), "online"))

    async def _heartbeat(self) -> None:
        """A fresh 'online' presence every ``heartbeat_s`` wall seconds: remote clients see the aggregator alive
        through long rounds, and leave with a clear message when it stays silent."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            bus = self._bus
            if bus is None or self._publisher is None:
                continue
            if self._outbox:  # busy, not stalled: a stalled connection with traffic fails its publishes instead
                self._echo_due = None
                self._publish(self.session.heartbeat(self.now()))
                continue
            if self._echo_due is not None and self._loop.time() > self._echo_due:
                # the last heartbeat never came back: a connection that looks up but moves nothing
                self._echo_due = None
                self.events.record("connection-stalled", client=AGGREGATOR)
                log.warning("the connection moves no messages; reconnecting")
                await bus.abort()
                continue
            self._publish(self.session.heartbeat(self.now()))
            if self._echo_due is None:
                self._echo_due = self._loop.time() + 2 * self.heartbeat_s

    async def _link(self, group: asyncio.TaskGroup) -> None:
        """Receive until the connection drops; then reconnect, subscribe, and send again what may be lost."""
        while True:
            bus = self._bus
            assert bus is not None
            try:
                async for incoming in bus.messages():
                    if incoming.topic == self._own_topic:
                        self._echo_due = None  # our heartbeat came back: the connection works both ways
                        continue
                    self._deliver(incoming.topic, incoming.payload, incoming.retained)
            except TransportError as exc:
                reason = str(exc)
            else:
                reason = "message stream ended"
            self._bus = None
            self._take_back()
            await bus.close()
            self.events.record("connection-lost", client=AGGREGATOR, reason=reason)
            log.warning("connection to the broker lost; reconnecting", reason=reason)
            self._bus = await connect_retrying(self._make_bus, self.backoff, on_retry=self._retrying)
            self.reconnections += 1
            await self._subscribed()
            again = self.resend.sends()
            self.events.record("reconnected", client=AGGREGATOR, resent=len(again), queued=len(self._outbox))
            log.warning("reconnected to the broker", resent=len(again), queued=len(self._outbox))
            # the global and open tasks first, then what waited, in order
            self._outbox.extendleft(reversed([(self._number(), send) for send in again]))
            self._publisher = self._bus
            self._hand_over()

    def _retrying(self, attempt: int, delay_s: float, reason: str) -> None:
        self.events.record("reconnect-wait", client=AGGREGATOR, attempt=attempt, delay_s=round(delay_s, 3),
                           reason=reason)

    def _number(self) -> int:
        self._published += 1
        return self._published

    def _publish(self, send: Send) -> None:
        """Publish in order, without waiting: to the connection if it has room, else into the outbox."""
        self._outbox.append((self._number(), send))
        self._hand_over()

    def _hand_over(self) -> None:
        """Start publishing the outbox, oldest first, while fewer than ``MAX_IN_FLIGHT`` await acknowledgement.

        Tasks start in the order they are created, so paho gets (and sends) the messages in outbox order.
        """
        bus, group = self._publisher, self._group
        if bus is None or group is None:
            return
        while self._outbox and len(self._in_flight) < MAX_IN_FLIGHT:
            number, send = self._outbox.popleft()
            task = group.create_task(self._publish_on(bus, number, send),
                                     name=f"aggregator[{self.run_id}].publish-{number}")
            self._in_flight[number] = _InFlight(number, send, task)

    async def _publish_on(self, bus: MqttBus, number: int, send: Send) -> None:
        try:
            await bus.publish(send.topic, send.payload, retain=send.retain)
        except TransportError as exc:
            # Not acknowledged: it stays in flight until _link takes it back with the connection. Hand over
            # nothing more; a connection that still looks up (the acknowledgement timed out) is dropped, so
            # that _link reconnects and sends it again.
            if self._publisher is bus:
                self._publisher = None
                self._acknowledged.set()
                log.warning("publish failed; reconnecting", topic=send.topic, error=str(exc))
                await bus.abort()
            return
        self._in_flight.pop(number, None)
        self._acknowledged.set()
        self._hand_over()

    def _take_back(self) -> None:
        """The connection is gone: what it did not acknowledge goes back to the front of the outbox, in order.

        Some of it may have reached the broker (its acknowledgement was lost): receivers deduplicate by id.
        """
        self._publisher = None
        lost = list(self._in_flight.values())
        self._in_flight.clear()
        for entry in lost:
            entry.task.cancel()
        self._outbox.extendleft((entry.number, entry.send) for entry in reversed(lost))
        self._acknowledged.set()

    async def _wait_acknowledged(self) -> None:
        """Wait until everything published so far is acknowledged, or until no connection takes publishes
        (then it waits in the outbox for the next one)."""
        upto = self._published
        while True:
            self._acknowledged.clear()
            if self._publisher is None or not (any(n <= upto for n in self._in_flight)
                                               or any(n <= upto for n, _ in self._outbox)):
                return
            await self._acknowledged.wait()

    def _deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        self._queue.put_nowait(_Delivery(topic, payload, retained, self.now()))

    def revoke(self, clients: tuple[tuple[str, PublicKey], ...], *, while_down: bool = False) -> None:
        """Clients whose key was taken out of the authorized-keys files: gone for the core (not selected again; a
        round waiting on one closes without it), as if they had left. What they send from now on fails its check
        as an unknown signer, their 'offline' presence and Last Will included, so nothing else would say so.
        ``while_down``: removed while the run was down, found as it resumed."""
        for client, key in clients:
            self.events.record("client-revoked", client=client, key=key.text(), while_down=while_down)
            log.warning("client revoked: its key is no longer authorized", client=client,
                        **({"found": "on resume: removed while the run was down"} if while_down else {}))
            self._queue.put_nowait(Revoked(client=client, now=self.now(), key=key.text()))

    # ------------------------------------------------------------------ resume
    async def _carry_on(self, state: Replayed, group: asyncio.TaskGroup) -> None:
        """After a replay: send the global and open tasks again, re-arm timers, redo unfinished work."""
        for send in self.resend.sends():
            self._publish(send)
        for at in sorted(set(state.timers)):
            self._carry_out(ArmTimer(at=at), group)
        for effect in state.pending_reduces.values():
            self._carry_out(effect, group)
        # not through _carry_out: the replay noted these closes already (noting one again would forget the
        # open tasks of the round after it)
        self._closed.extend(state.unevaluated)
        await asyncio.sleep(0)  # as in _step: the resends go to paho first
        await self._evaluate_closed(group)

    # ------------------------------------------------------------------ the session
    async def _consume(self, group: asyncio.TaskGroup) -> None:
        while not self.session.finished:
            await self._step(*await self._checks.get(), group)
        # After the run finished: what is still queued or in flight goes through the session, which
        # rejects late updates as 'run-finished', so none is dropped without a record. Clients leave on the
        # 'finished' global after publishing their 'offline' presence, which MQTT delivers after anything
        # they sent before it: so wait until no client is live (at least the grace, at most FINISH_WAIT_S).
        loop = self._loop
        earliest, latest = loop.time() + FINISH_GRACE_S, loop.time() + FINISH_WAIT_S
        while (now := loop.time()) < latest:
            if now >= earliest and self._checks.empty() and self.core.statistics().live_clients == 0:
                break
            try:
                item, checked = await asyncio.wait_for(self._checks.get(), min(0.05, latest - now))
            except TimeoutError:
                continue
            await self._step(item, checked, group)
        while not self._checks.empty():
            await self._step(*await self._checks.get(), group)

    def _job_of(self, item: Event | _Delivery) -> Job | None:
        return self.session.job(item.topic, item.payload) if isinstance(item, _Delivery) else None

    async def _step(self, item: Event | _Delivery, checked: Checked | None, group: asyncio.TaskGroup) -> None:
        if isinstance(item, _Delivery):
            actions = self.session.receive(item.topic, item.payload, item.retained, item.now, checked)
            if self.journal is not None:  # before any of its actions is carried out
                unread = self.session.unread
                self.journal.write(delivery_line(item.topic, item.payload, item.retained, item.now) if unread is None
                                   else unread_line(*unread, item.now))
            if (self.reconnections or self._resumed) and (task := self.resend.task_for(item.topic)) is not None:
                actions.append(task)  # after a broker restart: the client may never have got it
        else:
            if self.journal is not None:
                self.journal.write(event_line(item))
                if isinstance(item, Revoked) and self.on_revoked is not None:
                    self.on_revoked(item.client)
            actions = self.session.handle(item)
        published = self._published
        for action in actions:
            self._carry_out(action, group)
        if self._published != published:
            # one pass of the event loop: the publish tasks just started run first (the ready queue is FIFO) and
            # hand their messages to paho, which writes them at the next poll, before a queued item or the
            # evaluation below (which may hold up the loop) is taken on
            await asyncio.sleep(0)
        await self._evaluate_closed(group)

    def _carry_out(self, action: Action, group: asyncio.TaskGroup) -> None:
        """Carry out one action without waiting; a closed round waits in ``_closed`` for its evaluation."""
        self.resend.note(action)
        if isinstance(action, Record):
            self.events.record(action.event, **action.fields)
            if action.log is not None:
                getattr(log, action.log)(action.message, **action.fields)
        elif isinstance(action, Send):
            self._publish(action)
        elif isinstance(action, ArmTimer):
            self._arm_at(action.at)
        elif isinstance(action, Reduce):
            group.create_task(self._reduce(action), name=f"aggregator[{self.run_id}].reduce-{action.round}")
        elif isinstance(action, RoundClosed):
            self._closed.append(action.result)
        elif isinstance(action, RunFinished):
            pass  # the session is finished: _consume turns to the grace period

    async def _evaluate_closed(self, group: asyncio.TaskGroup) -> None:
        """Evaluate the closed rounds in the order they closed, each journaled ('x') and recorded.

        Called after a step's other actions, so that scoring does not hold back the next round's global and
        tasks, published in the same step, while that round's deadline runs: paho has them (see _step) and
        writes them at the loop's next poll, at once when the scoring awaits an LLM, right after it when it
        does not (the surrogate's). Not waiting for their acknowledgements keeps the broker's round trip out
        of the session's loop.
        """
        while self._closed:
            result = self._closed.popleft()
            extra = await self.on_round(result)
            if self.journal is not None:
                self.journal.write({"k": "x", "round": result.round, "extra": extra})
            for record in self.session.round_evaluated(result, extra):
                self._carry_out(record, group)

    def _arm_at(self, at: float) -> None:
        """A timer for ``at`` on the run's clock, which does not run while the loop stalls (see :meth:`now`)."""
        due = self._t0 + self._stalls.stalled() - self._stalled0 + (at - self._offset) / self._scale
        handle = self._loop.call_at(due, self._fire_timer, at)
        now = self._loop.time()
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > now] + [handle]

    def _fire_timer(self, at: float) -> None:
        if self.now() < at:  # the loop stalled while the timer ran: the run's clock is not there yet
            self._arm_at(at)
            return
        self._queue.put_nowait(TimerFired(now=self.now()))

    def _stalled(self, seconds: float) -> None:
        self.outcome.stalls += 1
        self.outcome.stalled_s += seconds
        self.events.record("loop-stalled", client=AGGREGATOR, stalled_s=round(seconds, 3))
        log.debug("the event loop stood still; the run's clock left it out", stalled_s=round(seconds, 3))

    async def _reduce(self, effect: Reduce) -> None:
        try:
            prompt = await self.reducer(effect)
        except Exception as exc:
            log.warning("reduce failed", round=effect.round, error=f"{type(exc).__name__}: {exc}")
            self._queue.put_nowait(ReduceFailed(round=effect.round, reason=failure_text(exc), now=self.now()))
            return
        self._queue.put_nowait(Reduced(round=effect.round, prompt=prompt, now=self.now()))
