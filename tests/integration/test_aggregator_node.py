"""The aggregator node over a real broker (fedbus/runtime/aggregator_node.py): forged presence is dropped
while the run goes on, updates that arrive too late for the last round end up in summary.json's
``rejected_after_last_round`` with a reason, and evaluating a closed round does not hold back the next
round's tasks. Its publishing (many in flight, in order, taken back in order when a connection fails) is
driven through a stand-in connection: a real broker cannot be made to hold or fail one acknowledgement."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from fedbus.aggregator.effects import Reduce, RoundResult
from fedbus.aggregator.session import NodeOutcome, Send
from fedbus.errors import TransportError
from fedbus.plan import make_core
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Presence, Task, Update, UpdateStats
from fedbus.results.eventlog import EventLog
from fedbus.results.summary import build_summary
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.aggregator_node import MAX_IN_FLIGHT, AggregatorNode, reduce_with_strategy
from fedbus.runtime.bus import MqttBus
from fedbus.runtime.client_node import ClientConfig, run_client
from fedbus.runtime.run import RunOptions, run_scenario
from fedbus.scenario import Scenario, scenario_from_mapping

STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0, llm_calls=3, tokens=10,
                    duration_s=0.0)
WAIT_S = 30.0  # generous: the machine running the suite may be loaded


def scenario(**overrides: Any) -> Scenario:
    doc: dict[str, Any] = {
        "name": "nodetest", "seed": 3, "rounds": 1,
        "task": {"train_size": 40, "val_size": 10, "test_size": 10},
        "clients": {"count": 2, "local_steps": 1, "batch_size": 2},
        "participation": {"min_clients": 2, "min_updates": 1, "round_deadline_s": 30, "join_timeout_s": 30},
    }
    for key, value in overrides.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    return scenario_from_mapping(doc)


def logged(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def wait_logged(path: Path, matches: Callable[[dict[str, Any]], bool], what: str) -> None:
    """Wait until events.jsonl has a line that ``matches``."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if any(matches(e) for e in logged(path)):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {what} in {path} after {WAIT_S} s")


def late_update(run_id: str, client: str, msg_id: str, round_: int, version: int) -> Update:
    return Update(run=run_id, round=round_, client=client, msg_id=msg_id, sent=0.0, base_version=version,
                  prompt="Count every item. Then answer.", stats=STATS)


def make_node(spec: Scenario, *, broker: BrokerAddress, run_id: str, events: EventLog,
              on_round: Callable[[RoundResult], Awaitable[dict[str, object]]],
              reducer: Callable[[Reduce], Awaitable[str]] = reduce_with_strategy) -> AggregatorNode:
    return AggregatorNode(make_core(spec, run_id), broker=broker, events=events, on_round=on_round,
                          max_message_bytes=spec.max_message_bytes, reducer=reducer)


async def run_node(node: AggregatorNode, spec: Scenario, broker: BrokerAddress, events: EventLog) -> dict[str, Any]:
    """The aggregator node and the scenario's clients (real workers) over ``broker``; summary.json's content."""
    outcome: NodeOutcome
    async with asyncio.timeout(WAIT_S * 2), asyncio.TaskGroup() as group:
        node_task = group.create_task(node.run())
        for i, (cid, grp) in enumerate(spec.members()):
            group.create_task(run_client(ClientConfig(run=node.run_id, client=cid, broker=broker, shard=i,
                                                      seed=spec.seed, group=grp, boot="0"), events))
    outcome = node_task.result()
    events.close()
    core = node.core
    return build_summary(run_id=node.run_id, scenario=spec, scenario_file="", broker={"kind": "external"},
                         outcome=outcome, events=events,
                         final={"version": core.version, "prompt": core.prompt, "prompt_chars": len(core.prompt),
                                "test_accuracy": 0.0, "initial_test_accuracy": 0.0}, wall_s=0.0)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {WAIT_S} s")
        await asyncio.sleep(0.01)


async def test_an_update_arriving_after_the_last_round_is_listed_with_a_reason(
        broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """An update that reaches the aggregator while it closes the last round goes through the post-finish
    drain: rejected as run-finished and listed in rejected_after_last_round."""
    spec = scenario()
    path = tmp_path / "events.jsonl"
    events = EventLog(path)
    late_id = "client-0-late-1"
    async with MqttBus(broker, f"{run_id}.latecomer", clean_session=True) as bus:

        async def on_round(result: RoundResult) -> dict[str, object]:
            # The node awaits this hook for the last round before it finishes: an update that arrives now
            # waits in its queue (observed through the private queue: nothing public shows an arrival
            # that has not been processed yet) and is handled only after RunFinished.
            queued = node._queue.qsize()
            late = late_update(run_id, "client-0", late_id, result.round, result.version_before)
            await bus.publish(topics.update_topic(run_id, "client-0"), codec.encode(late))
            await wait_until(lambda: node._queue.qsize() > queued, "late update in the node's queue")
            return {"val_accuracy": None}

        node = make_node(spec, broker=broker, run_id=run_id, events=events, on_round=on_round)
        summary = await run_node(node, spec, broker, events)
    assert summary["status"] == "completed"
    assert len(summary["rounds"][0]["accepted"]) == 2
    [late] = summary["rejected_after_last_round"]
    assert (late["client"], late["id"], late["round"], late["reason"]) == ("client-0", late_id, 1, "run-finished")
    assert late["detail"]
    lines = logged(path)
    rejected = [e for e in lines if e["event"] == "rejected"]
    assert [(e["id"], e["reason"]) for e in rejected] == [(late_id, "run-finished")]
    assert lines.index(rejected[0]) > next(i for i, e in enumerate(lines) if e["event"] == "run-finished")


async def test_an_update_arriving_while_the_last_round_is_reduced_is_listed_as_late(
        embedded_broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """An update that arrives while the last aggregate is being computed is rejected as late; with no next
    round to carry it, it is listed in rejected_after_last_round."""
    spec = scenario()
    path = tmp_path / "events.jsonl"
    events = EventLog(path)
    late_id = "client-1-late-1"
    async with MqttBus(embedded_broker, f"{run_id}.latecomer", clean_session=True) as bus:

        async def slow_reducer(effect: Reduce) -> str:
            late = late_update(run_id, "client-1", late_id, effect.round, 0)
            await bus.publish(topics.update_topic(run_id, "client-1"), codec.encode(late))
            await wait_logged(path, lambda e: e["event"] == "rejected" and e.get("id") == late_id, "rejection")
            return await reduce_with_strategy(effect)

        async def on_round(result: RoundResult) -> dict[str, object]:
            return {"val_accuracy": None}

        node = make_node(spec, broker=embedded_broker, run_id=run_id, events=events, on_round=on_round,
                         reducer=slow_reducer)
        summary = await run_node(node, spec, embedded_broker, events)
    assert summary["status"] == "completed"
    [only_round] = summary["rounds"]
    assert only_round["status"] == "aggregated" and only_round["rejected"] == []
    [late] = summary["rejected_after_last_round"]
    assert (late["client"], late["id"], late["reason"]) == ("client-1", late_id, "late")


async def test_forged_presence_is_dropped_and_the_run_goes_on(broker: BrokerAddress, run_id: str,
                                                              tmp_path: Path) -> None:
    """Presence published on another client's topic (a forged 'client-1 is offline', a forged newcomer) is
    logged as received-forged, changes no membership, and the run completes with every client in every round."""
    spec = scenario(rounds=3, clients={"count": 2, "local_steps": 1, "step_latency_s": 0.5})
    task = asyncio.create_task(run_scenario(spec, RunOptions(out_dir=tmp_path, broker_url=broker.url(),
                                                             run_id=run_id, progress=False)))
    await wait_logged(tmp_path / "events.jsonl", lambda e: e["event"] == "round-opened", "round-opened")
    forged_offline = Presence(run=run_id, round=0, client="client-1", msg_id="forged-1", sent=0.0, status="offline")
    ghost = Presence(run=run_id, round=0, client="ghost", msg_id="forged-2", sent=0.0, status="online")
    async with MqttBus(broker, f"{run_id}.forger", clean_session=True) as bus:
        await bus.publish(topics.presence_topic(run_id, "client-0"), codec.encode(forged_offline))
        await bus.publish(topics.presence_topic(run_id, "client-0"), codec.encode(ghost))
    summary = await asyncio.wait_for(task, WAIT_S * 2)
    assert summary["status"] == "completed"
    assert summary["conditions"]["received-forged"] == 2
    for r in summary["rounds"]:
        assert r["selected"] == ["client-0", "client-1"]
        assert sorted(a["client"] for a in r["accepted"]) == ["client-0", "client-1"]
        assert r["dropped"] == []
    assert "ghost" not in summary["clients"]
    forged = [e for e in logged(tmp_path / "events.jsonl") if e["event"] == "received-forged"]
    assert {e["topic"] for e in forged} == {topics.presence_topic(run_id, "client-0")}


async def test_the_next_rounds_tasks_go_out_while_a_closed_round_is_evaluated(
        broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """The step that closes round 1 also opens round 2: round 2's tasks reach the clients while round 1 is
    evaluated (the hook waits for them; a node that evaluated first would publish them only after it)."""
    spec = scenario(rounds=2)
    events = EventLog(tmp_path / "events.jsonl")
    task_rounds: dict[str, set[int]] = {"client-0": set(), "client-1": set()}
    evaluated: list[int] = []
    async with MqttBus(broker, f"{run_id}.spy", clean_session=True) as spy:
        await spy.subscribe(*(topics.task_topic(run_id, client) for client in task_rounds))

        async def watch() -> None:
            async for incoming in spy.messages():
                task = codec.decode(incoming.payload, codec.Limits())
                assert isinstance(task, Task)
                task_rounds[task.client].add(task.round)

        async def on_round(result: RoundResult) -> dict[str, object]:
            if result.round == 1:
                await wait_until(lambda: all(2 in rounds for rounds in task_rounds.values()),
                                 "round 2's tasks at the clients while round 1 is evaluated")
            evaluated.append(result.round)
            return {"val_accuracy": None}

        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch())
            node = make_node(spec, broker=broker, run_id=run_id, events=events, on_round=on_round)
            summary = await run_node(node, spec, broker, events)
            watcher.cancel()
    assert summary["status"] == "completed"
    assert evaluated == [1, 2]
    assert [r["round"] for r in summary["rounds"]] == [1, 2]


class HeldConnection:
    """Stands in for the node's connection: takes publishes in the order paho would get them, and
    acknowledges or fails each only when the test says so."""

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.answers: list[asyncio.Future[None]] = []
        self.aborted = False

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.topics.append(topic)
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        await answer

    async def abort(self) -> None:
        self.aborted = True

    def acknowledge(self) -> None:
        for answer in self.answers:
            if not answer.done():
                answer.set_result(None)


def idle_node(run_id: str, tmp_path: Path) -> AggregatorNode:
    """A node that is never run: the tests below drive its publishing by hand."""
    async def on_round(result: RoundResult) -> dict[str, object]:
        return {}

    return make_node(scenario(), broker=BrokerAddress(host="127.0.0.1", port=9), run_id=run_id,
                     events=EventLog(tmp_path / "events.jsonl"), on_round=on_round)


def sends(first: int, last: int) -> list[Send]:
    return [Send(topic=f"t/{i}", payload=b"x") for i in range(first, last + 1)]


async def test_publishes_go_out_in_order_without_waiting_for_acknowledgements_up_to_a_bound(
        run_id: str, tmp_path: Path) -> None:
    """MAX_IN_FLIGHT publishes are handed to the connection at once, in order; the rest follow as
    acknowledgements come back, still in order."""
    node = idle_node(run_id, tmp_path)
    connection = HeldConnection()
    published = sends(1, MAX_IN_FLIGHT + 20)
    async with asyncio.TaskGroup() as group:
        # the connection and task group that run() and _link would set up (private: see the module's docstring)
        node._group, node._publisher = group, cast(MqttBus, connection)
        for send in published:
            node._publish(send)
        await wait_until(lambda: len(connection.topics) == MAX_IN_FLIGHT, "the first publishes handed over")
        await asyncio.sleep(0.05)
        assert connection.topics == [send.topic for send in published[:MAX_IN_FLIGHT]]
        while len(connection.topics) < len(published):
            connection.acknowledge()
            await asyncio.sleep(0)
        connection.acknowledge()
        await node._wait_acknowledged()
    assert connection.topics == [send.topic for send in published]
    assert not node._in_flight and not node._outbox


async def test_what_a_failed_connection_left_unacknowledged_goes_out_first_after_reconnecting(
        run_id: str, tmp_path: Path) -> None:
    """A publish fails: nothing more goes to that connection, which is dropped; what it did not acknowledge
    goes out on the next connection, in order, before what was published in between."""
    node = idle_node(run_id, tmp_path)
    lost, next_one = HeldConnection(), HeldConnection()
    async with asyncio.TaskGroup() as group:
        node._group, node._publisher = group, cast(MqttBus, lost)
        for send in sends(1, 5):
            node._publish(send)
        await wait_until(lambda: len(lost.topics) == 5, "five publishes handed over")
        lost.answers[0].set_result(None)
        lost.answers[1].set_exception(TransportError("connection lost"))
        await wait_until(lambda: lost.aborted, "the failed connection dropped")
        for send in sends(6, 7):
            node._publish(send)
        await asyncio.sleep(0.05)
        assert lost.topics == [f"t/{i}" for i in range(1, 6)]
        await node._wait_acknowledged()  # returns at once: no connection takes publishes
        node._take_back()  # as _link does when the dropped connection's stream ends
        node._publisher = cast(MqttBus, next_one)  # as _link does once reconnected
        node._hand_over()
        await wait_until(lambda: len(next_one.topics) == 6, "the publishes on the next connection")
        next_one.acknowledge()
        await node._wait_acknowledged()
    assert next_one.topics == [f"t/{i}" for i in range(2, 8)]
    assert not node._in_flight and not node._outbox


STALL_S = 3.0  # longer than round 2's whole deadline


async def test_a_stalled_event_loop_does_not_eat_into_the_next_rounds_deadline(
        broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """Round 1's evaluation blocks the event loop for 3 s (a CPU-bound scorer; a paused VM or a starved process
    looks the same) just after round 2 opened with a 2 s deadline. The aggregator's clock leaves the stall out, so
    both clients' updates (0.3 s of work once they get their tasks, after the stall) still make round 2, and the
    stall is reported: a 'loop-stalled' event, and the totals in summary.json."""
    spec = scenario(rounds=2, clients={"count": 2, "local_steps": 1, "step_latency_s": 0.3},
                    participation={"min_updates": 2, "round_deadline_s": 2})
    path = tmp_path / "events.jsonl"
    events = EventLog(path)

    async def on_round(result: RoundResult) -> dict[str, object]:
        if result.round == 1:
            time.sleep(STALL_S)  # noqa: ASYNC251 - the stall under test: nothing else runs on the loop meanwhile
        return {"val_accuracy": None}

    node = make_node(spec, broker=broker, run_id=run_id, events=events, on_round=on_round)
    summary = await run_node(node, spec, broker, events)
    assert summary["status"] == "completed"
    assert [r["status"] for r in summary["rounds"]] == ["aggregated", "aggregated"], summary["rounds"]
    assert sorted(a["client"] for a in summary["rounds"][1]["accepted"]) == ["client-0", "client-1"]
    assert summary["totals"]["loop_stalls"] >= 1
    assert summary["totals"]["loop_stalled_s"] >= STALL_S - 0.1
    stalls = [e["stalled_s"] for e in logged(path) if e["event"] == "loop-stalled"]
    assert max(stalls) >= STALL_S - 0.1, stalls
