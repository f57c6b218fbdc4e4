"""``fedbus run --simulate``: a whole federation in virtual time, reproducible byte for byte.

The aggregator side drives the same :class:`~fedbus.aggregator.session.AggregatorSession` as the MQTT
node: the same decisions and the same records go to events.jsonl (with ``t`` in virtual seconds), and
after the run finishes, messages still in flight for a grace period go through the session, which
rejects late updates with a reason. The aggregator's retained presence says 'online' from the start
and 'offline' once the grace period is over (virtual time has no silence to fill with heartbeats).

Under the scenario's ``security`` (protocol v2 by default) every party signs and seals as over MQTT, with keys
and sealing derived from the seed (:func:`fedbus.plan.simulated_security`), so a replay is still byte for byte.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedbus.aggregator.effects import ArmTimer, Reduce, RoundClosed, RunFinished
from fedbus.aggregator.events import Event, Reduced, ReduceFailed, Started, TimerFired
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.session import FINISH_GRACE_S, Action, AggregatorSession, NodeOutcome, Record, Send
from fedbus.aggregator.strategies import carry_out
from fedbus.aggregator.stream import StreamAggregator
from fedbus.client.session import Asleep, held_at_end
from fedbus.errors import EngineError, failure_text
from fedbus.plan import RunSecurity, client_plan, client_plans, is_virtual, make_core, simulated_security
from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.results.eventlog import EventLog
from fedbus.results.jsonfile import pretty_json
from fedbus.results.progress import Progress
from fedbus.results.prompt_log import best_by_validation, best_record, write_prompt_log
from fedbus.results.summary import build_summary, context_window, prompt_record, round_record
from fedbus.scenario import Scenario
from fedbus.scenario.population import for_simulation, roll
from fedbus.security.policy import Security
from fedbus.sim.broker import MemoryBroker
from fedbus.sim.client import SimClient, SimClientConfig
from fedbus.sim.timeline import Timeline
from fedbus.surrogate.evaluation import SurrogateEvaluator

SIM_BROKER = {"kind": "simulated", "url": "sim://in-memory",
              "note": "in-memory broker in virtual time (fedbus run --simulate); no MQTT traffic"}


def sim_run_id(scenario: Scenario) -> str:
    """Fixed for a scenario and seed, so that two simulations log the same bytes."""
    return f"{scenario.name}-{scenario.seed}-sim"[:64]


class SimAggregator:
    """Drives the aggregator session over the in-memory broker on the timeline."""

    def __init__(self, core: RoundAggregator | StreamAggregator, timeline: Timeline, broker: MemoryBroker, *,
                 events: EventLog, evaluator: SurrogateEvaluator, progress: Progress, max_message_bytes: int,
                 grace_s: float, security: Security | None = None, context_tokens: int | None = None) -> None:
        self.context_tokens = context_tokens
        self.session = AggregatorSession(core, codec.Limits(max_bytes=max_message_bytes), security=security)
        self.core = core
        self.run_id = core.config.run
        self.timeline = timeline
        self.broker = broker
        self.events = events
        self.evaluator = evaluator
        self.progress = progress
        self.grace_s = grace_s
        self.done = False  # finished, and the grace period is over

    @property
    def outcome(self) -> NodeOutcome:
        return self.session.outcome

    def start(self) -> None:
        ident = f"{self.run_id}.{AGGREGATOR}"
        self.broker.connect(ident, self._incoming, will=self.session.will(self.timeline.now), clean=True)
        self.broker.subscribe(ident, *self.session.subscriptions())
        self.timeline.at(0.0, self._begin)

    def _begin(self) -> None:
        self._carry_out([self.session.presence(self.timeline.now, "online")])
        self._carry_out(self.session.handle(Started(now=self.timeline.now)))

    def _incoming(self, topic: str, payload: bytes, retained: bool) -> None:
        if not self.done:
            self._carry_out(self.session.receive(topic, payload, retained, self.timeline.now))

    def _feed(self, event: Event) -> None:
        if not self.done:
            self._carry_out(self.session.handle(event))

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Record):
                self.events.record(action.event, **action.fields)
            elif isinstance(action, Send):
                self.broker.publish(action.topic, action.payload, retain=action.retain)
            elif isinstance(action, ArmTimer):
                self.timeline.at(action.at, lambda: self._feed(TimerFired(now=self.timeline.now)))
            elif isinstance(action, Reduce):
                self.timeline.after(0.0, functools.partial(self._reduce, action))
            elif isinstance(action, RoundClosed):
                result = action.result
                extra: dict[str, object] = {**prompt_record(result, self.context_tokens),
                                            "val_accuracy": self.evaluator.accuracy_now(result.prompt, "val",
                                                                                        result.round)}
                self.progress.round(round_record(result, extra))
                self._carry_out(self.session.round_evaluated(result, extra))
            elif isinstance(action, RunFinished):
                self.timeline.at(self.timeline.now + self.grace_s, self._close)

    def _reduce(self, effect: Reduce) -> None:
        try:
            prompt = carry_out(effect.strategy, effect.current_prompt, effect.prompts, effect.max_chars,
                               effect.weights)
        except Exception as exc:
            self._feed(ReduceFailed(round=effect.round, reason=failure_text(exc), now=self.timeline.now))
            return
        self._feed(Reduced(round=effect.round, prompt=prompt, now=self.timeline.now))

    def _close(self) -> None:
        self._carry_out([self.session.presence(self.timeline.now, "offline")])
        self.done = True


class VirtualClients:
    """A virtual population's clients, each instantiated when a task for it is published (the broker asks: see
    :data:`fedbus.sim.broker.Summon`). Asleep between its rounds, a client is only what it carried to its next
    wake (:class:`~fedbus.client.session.Asleep`), so its ids go on and no id is ever played by two clients."""

    def __init__(self, scenario: Scenario, run_id: str, security: RunSecurity, timeline: Timeline,
                 events: EventLog) -> None:
        self.scenario = scenario
        self.run_id = run_id
        self.census = roll(scenario)
        self.security = security
        self.timeline = timeline
        self.events = events
        self.broker: MemoryBroker | None = None
        self.started: set[str] = set()
        self.asleep: dict[str, Asleep] = {}  # what each client asleep kept, until a task summons it again

    def summon(self, topic: str) -> bool:
        ref = topics.parse(topic)
        if ref is None or ref.channel != "task" or ref.run != self.run_id or ref.client is None:
            return False
        if (ref.client in self.started and ref.client not in self.asleep) or self.broker is None:
            return False  # awake (or never to be)
        plan = client_plan(self.scenario, self.census, ref.client)
        if plan is None:
            return False
        self.started.add(plan.client)
        config = SimClientConfig(run=self.run_id, plan=plan, security=self.security.client(plan.client),
                                 asleep=self.asleep.pop(plan.client, None))
        SimClient(config, self.timeline, self.broker, self.events).join_now(self._fell_asleep)
        return True

    def _fell_asleep(self, client: str, asleep: Asleep) -> None:
        self.asleep[client] = asleep

    def held_at_end(self) -> None:
        """Log what the sleepers' links still hold back as the run ends (awake clients say it themselves when
        the finished global comes): it never left, and nothing else would say so."""
        for client, asleep in self.asleep.items():
            for record in held_at_end(client, asleep.held_up, asleep.held_down):
                self.events.record(record.event, **record.fields)


GC_GEN0 = 50_000  # objects allocated between young collections while simulating (Python's default: 700)


class _Collections:
    simulating = 0  # simulations running in this process (one inside another, say a plugin's)
    before: tuple[int, ...] = ()


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Python's cyclic collector, less often: a simulation allocates millions of short-lived objects (messages,
    events, frames) that reference counting frees, and a young collection every 700 allocations was a twentieth
    of its time. The thresholds are set back as the outermost simulation ends, however it ends (the simulator is
    synchronous and imports no threading; two threads simulating at once would share one setting)."""
    if _Collections.simulating == 0:
        _Collections.before = gc.get_threshold()
        gc.set_threshold(GC_GEN0, *_Collections.before[1:])
    _Collections.simulating += 1
    try:
        yield
    finally:
        _Collections.simulating -= 1
        if _Collections.simulating == 0:
            gc.set_threshold(*_Collections.before)


def simulate(scenario: Scenario, out_dir: Path, *, run_id: str | None = None, progress: bool = True,
             scenario_file: str = "", footer: bool = True) -> dict[str, Any]:
    """Run ``scenario`` in virtual time; write events.jsonl and summary.json into ``out_dir``; return the summary.

    A virtual population (``clients.population``; 'auto' from 10,000 clients on) instantiates a client only when
    the aggregator first selects it: a round costs its participants, whatever the population's size."""
    with _fewer_collections():
        return _simulate(scenario, out_dir, run_id=run_id, progress=progress, scenario_file=scenario_file,
                         footer=footer)


def _simulate(scenario: Scenario, out_dir: Path, *, run_id: str | None, progress: bool,
              scenario_file: str, footer: bool) -> dict[str, Any]:
    if scenario.engine != "surrogate":
        raise EngineError(f"the simulator runs the surrogate engine only, not {scenario.engine!r}")
    scenario = for_simulation(scenario)
    started = time.monotonic()
    run_id = run_id or sim_run_id(scenario)
    out_dir.mkdir(parents=True, exist_ok=True)
    timeline = Timeline()
    events = EventLog(out_dir / "events.jsonl", clock=lambda: timeline.now, batched=True)
    show = Progress(progress, footer=footer)  # footer=False: the library's silence (fedbus.simulate)
    security = simulated_security(scenario, run_id)
    virtual = VirtualClients(scenario, run_id, security, timeline, events) if is_virtual(scenario) else None
    if virtual is None:
        broker = MemoryBroker(timeline)
    else:
        broker = virtual.broker = MemoryBroker(timeline, summon=virtual.summon)
    evaluator = SurrogateEvaluator(scenario.data)
    aggregator: SimAggregator | None = None
    interrupted = False
    try:
        events.record("run-started", run=run_id, scenario=scenario.name, seed=scenario.seed, engine=scenario.engine,
                      broker=SIM_BROKER["url"], simulated=True,
                      population=scenario.clients.population)
        show.header(run_id, scenario.engine, SIM_BROKER["url"], scenario.clients.count, scenario.rounds,
                    security=scenario.security, virtual=virtual is not None)
        core = make_core(scenario, run_id)
        aggregator = SimAggregator(core, timeline, broker, events=events, evaluator=evaluator, progress=show,
                                   max_message_bytes=scenario.max_message_bytes,
                                   grace_s=FINISH_GRACE_S * scenario.time_scale, security=security.aggregator,
                                   context_tokens=context_window(scenario))
        aggregator.start()
        for plan in () if virtual is not None else client_plans(scenario):
            config = SimClientConfig(run=run_id, plan=plan, security=security.client(plan.client))
            SimClient(config, timeline, broker, events).start()
        timeline.run(stop=lambda: aggregator.done, horizon=horizon(scenario))
        if not aggregator.done:
            events.record("simulation-stopped", reason="virtual time horizon reached", now=timeline.now)
        if virtual is not None:
            virtual.held_at_end()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into one): the rounds so far, said so
        if aggregator is None:
            raise
        interrupted = True
    finally:
        events.close()
    best = best_by_validation(aggregator.outcome.rounds)
    final = {"version": core.version, "prompt": core.prompt, "prompt_chars": len(core.prompt),
             "test_accuracy": evaluator.accuracy_now(core.prompt, "test", scenario.rounds + 1),
             "initial_test_accuracy": evaluator.accuracy_now(scenario.initial_prompt, "test", 0),
             **best_record(best, None if best is None else evaluator.accuracy_now(best[2], "test",
                                                                                scenario.rounds + 1))}
    write_prompt_log(out_dir, scenario.initial_prompt, aggregator.outcome.rounds)
    summary = build_summary(run_id=run_id, scenario=scenario, scenario_file=scenario_file, broker=SIM_BROKER,
                            outcome=aggregator.outcome, events=events, final=final,
                            wall_s=time.monotonic() - started)
    summary["simulated"] = {"virtual_s": round(timeline.now, 6), "steps": timeline.steps,
                            "messages_published": broker.published, "messages_delivered": broker.delivered,
                            "messages_undeliverable": broker.undeliverable,
                            "population": scenario.clients.population,
                            "clients_instantiated": scenario.clients.count if virtual is None else len(virtual.started)}
    if interrupted:
        summary["status"] = "interrupted"
        summary["reason"] = (f"interrupted after {summary['totals']['rounds_closed']} closed rounds, at "
                             f"{timeline.now:.1f} s of virtual time; a simulation is not resumed: run it again "
                             "(the same scenario and seed give the same run)")
    (out_dir / "summary.json").write_text(pretty_json(summary), encoding="utf-8")
    show.footer(summary, str(out_dir))
    if interrupted:
        raise SimulationInterrupted(out_dir / "summary.json")
    return summary


class SimulationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a simulation, after its summary of the rounds so far was written to ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def horizon(scenario: Scenario) -> float:
    """A bound on virtual time no finite run reaches: every round waiting out both its timeouts, ten times over."""
    p = scenario.participation
    return 10.0 * (scenario.rounds + 1) * (p.round_deadline_s + p.join_timeout_s) + 1e6
