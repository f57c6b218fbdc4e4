"""A client in virtual time: drives the same :class:`~fedbus.client.session.ClientSession` as the MQTT
client (:mod:`fedbus.runtime.client_node`) over the in-memory broker, on the timeline.

The session decides (the core, the link's fault plan, the offline queue, partitions); this driver
connects, publishes, schedules what the session asks for and runs the surrogate optimizer at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from fedbus.client.core import Alarm, ClientEvent, ClientProfile, TaskSeen, WorkDone
from fedbus.client.optimizer import LocalOptimizer, LocalOutcome, optimize_task_now, scenario_optimizer
from fedbus.client.session import (
    Action,
    Asleep,
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
from fedbus.errors import EngineError, failure_text
from fedbus.plan import ClientPlan
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Task
from fedbus.results.eventlog import EventLog
from fedbus.security.policy import Security
from fedbus.sim.broker import MemoryBroker
from fedbus.sim.timeline import Timeline


@dataclass(frozen=True, slots=True, kw_only=True)
class SimClientConfig:
    run: str
    plan: ClientPlan
    security: Security | None = None  # None: protocol v1
    asleep: Asleep | None = None  # a virtual population's client woken: what it kept (None: its first start)


class SimClient:
    """One client's connection and optimizer, driven by the timeline."""

    def __init__(self, config: SimClientConfig, timeline: Timeline, broker: MemoryBroker, events: EventLog) -> None:
        plan = config.plan
        self.plan = plan
        self.timeline = timeline
        self.broker = broker
        self.events = events
        profile = ClientProfile(run=config.run, client=plan.client, seed=plan.seed, group=plan.group,
                                step_latency_s=plan.step_delay_s, boot="0")
        self.session = ClientSession(profile, codec.Limits(max_bytes=plan.max_message_bytes), config.security,
                                     config.asleep)
        self.ident = f"{config.run}.{plan.client}"
        self.optimizer: LocalOptimizer | None = None
        # a virtual population's client: told when it falls asleep, between the rounds it is selected for
        self._on_sleep: Callable[[str, Asleep], None] | None = None
        self.retired = False  # asleep: this object is done with, the next wake builds another from what it kept
        self._receipts = topics.receipt_topic(config.run, plan.client)
        self._own = (topics.task_topic(config.run, plan.client), self._receipts)  # what summons it asleep
        self._later = 0  # link deliveries and pushes scheduled and not yet carried out
        self._virtual = False  # a virtual population's: instantiated when selected, forgotten when gone for good

    def start(self) -> None:
        for interval in self.plan.group.network.partitions:
            self.timeline.at(interval.start_s, functools.partial(self._partition, interval.end_s))
        self.timeline.at(0.0, self._connect)

    def join_now(self, on_sleep: Callable[[str, Asleep], None] | None = None) -> None:
        """Connect and subscribe at once: a virtual population's client, instantiated by a task's publish (it
        has no partitions: :func:`fedbus.scenario.population.virtual_obstacles`). With ``on_sleep``, it sleeps
        (:meth:`_sleep`) whenever it has nothing in hand after a receipt, a task it skipped or work that failed,
        unless an availability trace of its own has it come and go."""
        self._virtual = True
        if not self.plan.group.availability.online:
            self._on_sleep = on_sleep
        self._connect()

    def _rejoin(self) -> None:
        """Back after a crash, a leave or its trace's gap: connect, and sleep if nothing is in hand (only what
        its session queued, broadcasts it need not read)."""
        self._connect()
        self._sleep_if_idle()

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        if self.session.stopped or self.session.connected or self.retired:
            return
        self.broker.connect(self.ident, self._incoming, will=self.session.will_later(self.timeline.now))
        self.broker.subscribe(self.ident, *self.session.subscriptions())
        self._carry_out(self.session.connected_now(self.timeline.now))

    def _sleep(self, on_sleep: Callable[[str, Asleep], None]) -> None:
        """Disconnect cleanly and hand what the client keeps (a few hundred bytes) to ``on_sleep``: until its
        next task summons it again, neither the run's broadcasts nor its session and keys cost anything, so a
        round costs its participants however many clients earlier rounds selected, and memory grows by that
        little per client ever selected. It says nothing to the aggregator: asleep is not offline."""
        asleep = self.session.asleep()
        self.broker.forget(self.ident, own=self._own)
        self._carry_out(self.session.disconnected(Leave(abrupt=False, reason="asleep until selected")))
        self.retired = True
        on_sleep(self.plan.client, asleep)

    def _leave(self, leave: Leave) -> None:
        if not self.session.connected:
            return
        self.broker.disconnect(self.ident, abrupt=leave.abrupt)
        self._carry_out(self.session.disconnected(leave))
        if not leave.stop and leave.back_at is not None:
            self.timeline.at(leave.back_at, self._rejoin)
        elif self._virtual:
            # gone for good: a broker would queue every later broadcast for its session, for nobody; a virtual
            # population's client costs nothing once gone (none is selected again: its last word was 'offline')
            self.broker.forget(self.ident, own=())

    def _partition(self, heals_at: float) -> None:
        self._carry_out(self.session.partition(heals_at))

    # ------------------------------------------------------------------ actions
    def _feed(self, event: ClientEvent) -> None:
        if self.retired:
            return
        self._carry_out(self.session.handle(event))  # nothing, once the client stopped
        if isinstance(event, TaskSeen | WorkDone):  # a task it skipped (a dropout), or work that failed
            self._sleep_if_idle()

    def _sleep_if_idle(self) -> None:
        on_sleep = self._on_sleep
        if on_sleep is not None and not self._later and self.session.idle:
            self._sleep(on_sleep)

    def _push(self, deliveries: Deliveries) -> None:
        self._later -= 1
        self._carry_out(self.session.push(deliveries))
        self._sleep_if_idle()  # a failure report its link delayed: nothing answers it

    def _feed_later(self, event: ClientEvent) -> None:
        self._later -= 1
        self._feed(event)

    def _carry_out(self, actions: list[Action]) -> None:
        leave: Leave | None = None
        for action in actions:
            if isinstance(action, Record):
                self.events.record(action.event, **action.fields)
            elif isinstance(action, Publish):
                for _ in range(action.copies):
                    self.broker.publish(action.send.topic, action.payload, retain=action.send.retain)
                self._carry_out(self.session.published(action))
            elif isinstance(action, PushLater):
                self._later += 1
                self.timeline.after(action.delay_s, functools.partial(self._push, action.deliveries))
            elif isinstance(action, FeedLater):
                self._later += 1
                self.timeline.after(action.delay_s, functools.partial(self._feed_later, action.event))
            elif isinstance(action, WakeAt):
                self.timeline.at(action.at, lambda: self._feed(Alarm(now=self.timeline.now)))
            elif isinstance(action, Work):
                self._optimize(action.task, action.delay_s)
            elif isinstance(action, Leave):
                leave = action
        if leave is not None:
            self._leave(leave)

    def _optimize(self, task: Task, delay_s: float) -> None:
        outcome: LocalOutcome | None = None
        error = error_type = ""
        try:
            if self.optimizer is None:
                announced = self.session.data()
                if announced is None:
                    raise EngineError("no global state yet: the data description is unknown")
                make = scenario_optimizer(self.plan.optimizer)
                self.optimizer = make(announced[0], announced[1], self.plan.client, self.plan.shard)
            outcome = optimize_task_now(self.optimizer, task)  # a user's optimizer: stepped to its result at once
        except Exception as exc:  # as over MQTT: the round fails for this client, which tells the aggregator
            error, error_type = failure_text(exc, 300), type(exc).__name__
        self._carry_out(self.session.optimized(task, outcome, error, error_type))
        self.timeline.after(delay_s, lambda: self._feed(WorkDone(now=self.timeline.now, task=task, outcome=outcome,
                                                                 error=error, error_type=error_type)))

    # ------------------------------------------------------------------ incoming
    def _incoming(self, topic: str, payload: bytes, retained: bool) -> None:
        if not self.session.stopped:
            self._carry_out(self.session.receive(topic, payload, self.timeline.now))
            # its receipt (the update it waited for is answered), or its task if the link lost or held it back
            if topic in self._own:
                self._sleep_if_idle()
