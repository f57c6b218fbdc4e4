"""The simulator's aggregator (fedbus/sim/run.py) after the last round: what is still in flight for the
grace period goes through the core, and every update that misses the aggregates ends up in
summary.json's ``rejected_after_last_round`` with a reason.

The clients here are scripted on the in-memory broker (real codec, real topics), so the test decides
exactly which update arrives when.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedbus.aggregator.session import FINISH_GRACE_S
from fedbus.errors import EngineError
from fedbus.plan import make_core
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Failure, GlobalState, Message, Presence, Receipt, Task, Update, UpdateStats
from fedbus.results.eventlog import EventLog
from fedbus.results.progress import Progress
from fedbus.results.summary import build_summary
from fedbus.scenario import scenario_from_mapping
from fedbus.sim.broker import MemoryBroker
from fedbus.sim.run import SIM_BROKER, SimAggregator
from fedbus.sim.timeline import Timeline
from fedbus.surrogate.evaluation import SurrogateEvaluator

RUN = "drain-sim"
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0, llm_calls=3, tokens=10,
                    duration_s=1.0)


class ScriptedClient:
    """Announces itself, answers each task ``reply_s`` later, and, if told, sends one more update for the
    last round ``late_s`` after it sees the run finish."""

    def __init__(self, name: str, timeline: Timeline, broker: MemoryBroker, *, reply_s: float = 1.0,
                 late_s: float | None = None, fail: float = 0.0) -> None:
        self.name, self.timeline, self.broker = name, timeline, broker
        self.reply_s, self.late_s, self.fail = reply_s, late_s, bool(fail)
        self.aggregator: list[str] = []  # the aggregator's presences, in order
        self.receipts: list[Receipt] = []
        self.sent = 0
        self.last_task: Task | None = None
        self.late_ids: list[str] = []
        self.sent_ids: list[str] = []

    def start(self) -> None:
        ident = f"{RUN}.{self.name}"
        will = Presence(run=RUN, round=0, client=self.name, msg_id=f"{self.name}-will", sent=0.0, status="offline")
        self.broker.connect(ident, self.deliver, will=(topics.presence_topic(RUN, self.name), codec.encode(will)))
        self.broker.subscribe(ident, topics.global_topic(RUN), topics.task_topic(RUN, self.name),
                              topics.receipt_topic(RUN, self.name), topics.aggregator_topic(RUN))
        online = Presence(run=RUN, round=0, client=self.name, msg_id=f"{self.name}-online", sent=0.0,
                          status="online")
        self.broker.publish(topics.presence_topic(RUN, self.name), codec.encode(online), retain=True)

    def failure_for(self, task: Task) -> Failure:
        self.sent += 1
        return Failure(run=RUN, round=task.round, client=self.name, msg_id=f"{self.name}-f{self.sent}",
                       sent=self.timeline.now, base_version=task.version, reason="engine down", error_type="E")

    def update_for(self, task: Task) -> Update:
        self.sent += 1
        return Update(run=RUN, round=task.round, client=self.name, msg_id=f"{self.name}-u{self.sent}",
                      sent=self.timeline.now, base_version=task.version,
                      prompt=f"{task.prompt} Count every item ({self.name}, {self.sent}).", stats=STATS)

    def send(self, update: Update | Failure) -> None:
        self.sent_ids.append(update.msg_id)
        self.broker.publish(topics.update_topic(RUN, self.name), codec.encode(update))

    def deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        message = codec.decode(payload)
        if isinstance(message, Presence):
            self.aggregator.append(message.status)
        elif isinstance(message, Receipt):
            self.receipts.append(message)
        elif isinstance(message, Task):
            self.last_task = message
            update = self.update_for(message)
            self.timeline.after(self.reply_s, lambda: self.send(update))
        elif isinstance(message, GlobalState) and message.status == "finished" and self.late_s is not None:
            assert self.last_task is not None
            late = self.failure_for(self.last_task) if self.fail else self.update_for(self.last_task)
            self.late_ids.append(late.msg_id)
            self.timeline.after(self.late_s, lambda: self.send(late))


def simulate_with(doc: dict[str, Any], clients: dict[str, dict[str, float]], out: Path,
                  ) -> tuple[dict[str, Any], dict[str, ScriptedClient]]:
    """Run the scenario's aggregator with scripted clients; return summary.json's content and the clients."""
    scenario = scenario_from_mapping(doc)
    timeline = Timeline()
    broker = MemoryBroker(timeline)
    events = EventLog(out / "events.jsonl", clock=lambda: timeline.now)
    aggregator = SimAggregator(make_core(scenario, RUN), timeline, broker, events=events,
                               evaluator=SurrogateEvaluator(scenario.data), progress=Progress(False),
                               max_message_bytes=scenario.max_message_bytes,
                               grace_s=FINISH_GRACE_S * scenario.time_scale)
    aggregator.start()
    scripted = {name: ScriptedClient(name, timeline, broker, **kwargs) for name, kwargs in clients.items()}
    for client in scripted.values():
        client.start()
    timeline.run(stop=lambda: aggregator.done, horizon=10_000.0)
    events.close()
    assert aggregator.done, "the simulated run did not finish"
    core = aggregator.core
    summary = build_summary(run_id=RUN, scenario=scenario, scenario_file="", broker=SIM_BROKER,
                            outcome=aggregator.outcome, events=events,
                            final={"version": core.version, "prompt": core.prompt, "prompt_chars": len(core.prompt),
                                   "test_accuracy": 0.0, "initial_test_accuracy": 0.0}, wall_s=0.0)
    return summary, scripted


def scenario(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "drain", "seed": 1, "rounds": 1, "time_scale": 100,
        "task": {"train_size": 20, "val_size": 10, "test_size": 10},
        "clients": {"count": 2, "local_steps": 1, "batch_size": 2, "id_prefix": "c"},
        "participation": {"min_clients": 2, "min_updates": 1, "round_deadline_s": 50, "join_timeout_s": 50},
    }
    for key, value in overrides.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return doc


def test_an_update_arriving_after_the_last_round_is_listed_with_a_reason(tmp_path: Path) -> None:
    """An update in flight when the run finishes is rejected as run-finished and listed in
    rejected_after_last_round, not dropped."""
    summary, clients = simulate_with(scenario(), {"c-0": {}, "c-1": {"late_s": 1.0}}, tmp_path)
    assert summary["status"] == "completed"
    [only_round] = summary["rounds"]
    assert sorted(a["client"] for a in only_round["accepted"]) == ["c-0", "c-1"]
    [late] = summary["rejected_after_last_round"]
    assert late["client"] == "c-1" and late["id"] == clients["c-1"].late_ids[0]
    assert late["round"] == 1 and late["reason"] == "run-finished" and late["detail"]
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    [rejected] = [e for e in lines if e["event"] == "rejected"]
    assert rejected["id"] == late["id"] and rejected["reason"] == "run-finished"
    finished_at = next(e["t"] for e in lines if e["event"] == "run-finished")
    assert rejected["t"] > finished_at


def test_updates_buffered_when_a_buffered_run_ends_are_listed_with_a_reason(tmp_path: Path) -> None:
    """Buffered mode: an accepted update still in the buffer at the end, and the answers to tasks handed out
    after the last merge, are all in rejected_after_last_round (run-finished), none lost."""
    doc = scenario(clients={"count": 3}, aggregation={"mode": "buffered", "buffer_size": 2},
                   participation={"min_clients": 3, "min_updates": 1})
    summary, clients = simulate_with(doc, {"c-0": {}, "c-1": {}, "c-2": {}}, tmp_path)
    assert summary["status"] == "completed"
    [merge] = summary["rounds"]
    merged = [a["id"] for a in merge["accepted"]]
    assert len(merged) == 2
    after = summary["rejected_after_last_round"]
    assert {r["reason"] for r in after} == {"run-finished"}
    [buffered] = [r for r in after if r["detail"] == "buffered when the run ended"]
    assert buffered["id"] not in merged
    sent = sorted(i for c in clients.values() for i in c.sent_ids)
    assert sorted(merged + [r["id"] for r in after]) == sent, "an update is lost or counted twice"


def test_a_failure_report_after_the_last_round_is_listed_apart_from_updates(tmp_path: Path) -> None:
    """A failure report in flight when the run finishes is recorded (run-finished) in failed_after_last_round,
    not among the rejected updates, so updates and answers are each accounted for once."""
    summary, clients = simulate_with(scenario(), {"c-0": {}, "c-1": {"late_s": 1.0, "fail": 1.0}}, tmp_path)
    assert summary["rejected_after_last_round"] == []
    [late] = summary["failed_after_last_round"]
    assert (late["client"], late["id"], late["reason"]) == ("c-1", clients["c-1"].late_ids[0], "run-finished")
    # counted like the rejections after the last round: in the totals and the client's record alike
    assert summary["totals"]["failures_reported"] == 1 == summary["clients"]["c-1"]["failed"]
    assert summary["totals"]["updates_rejected"] == 0


def test_the_simulated_aggregator_says_online_then_offline_and_sends_receipts(tmp_path: Path) -> None:
    """Clients see the aggregator's retained presence 'online' from the start and 'offline' once it is done, and
    get a receipt for each update."""
    _, clients = simulate_with(scenario(), {"c-0": {}, "c-1": {}}, tmp_path)
    for client in clients.values():
        assert client.aggregator == ["online"]
        assert [(r.update_id, r.outcome) for r in client.receipts] == [(client.sent_ids[0], "accepted")]
    late = clients["c-0"]  # the simulation stops with the aggregator done: what is retained now says offline
    seen: list[Message] = []
    late.broker.connect("observer", lambda _t, payload, _r: seen.append(codec.decode(payload)), clean=True)
    late.broker.subscribe("observer", topics.aggregator_topic(RUN))
    late.timeline.run(stop=lambda: bool(seen), horizon=late.timeline.now + 1.0)
    assert [(m.client, m.status) for m in seen if isinstance(m, Presence)] == [("aggregator", "offline")]


def test_collector_thresholds_are_lowered_while_simulating_and_restored_however_it_ends(tmp_path: Path) -> None:
    import gc

    from fedbus.sim import run as sim_run

    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    with sim_run._fewer_collections():
        seen.append(gc.get_threshold())
        with sim_run._fewer_collections():  # a second simulation inside the first
            seen.append(gc.get_threshold())
        seen.append(gc.get_threshold())  # the first still runs: still lowered
    assert [t[0] for t in seen] == [sim_run.GC_GEN0] * 3 and gc.get_threshold() == before
    llm = scenario_from_mapping(scenario(engine={"name": "openai", "model": "m"},
                                         task={"name": "object_counting"}))
    with pytest.raises(EngineError, match="surrogate"):  # refused inside the simulation: thresholds back
        sim_run.simulate(llm, tmp_path / "x", progress=False)
    assert gc.get_threshold() == before
