"""The client over a real broker (fedbus/runtime/client_node.py), as worker processes run it: receiver-side
deduplication of redelivered messages (the test plays the aggregator on the bus), and the merge of the workers'
event-log parts into events.jsonl."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fedbus.protocol import codec, topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import DataSpec, GlobalState, Presence, Task, Update
from fedbus.results.eventlog import EventLog
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import MqttBus
from fedbus.runtime.client_node import ClientConfig, run_client

WAIT_S = 30.0
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=1, train_size=20, val_size=4, test_size=4)


def global_state(run_id: str, msg_id: str, status: str) -> GlobalState:
    return GlobalState(run=run_id, round=1, client=AGGREGATOR, msg_id=msg_id, sent=0.0, version=0, prompt="Answer.",
                       status=status, engine="surrogate", data=DATA, rounds=1)  # type: ignore[arg-type]


def logged(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


async def next_message(bus: MqttBus, kind: type, client: str) -> Any:
    """The next message of ``kind`` from ``client`` on the aggregator's subscriptions."""
    async with asyncio.timeout(WAIT_S):
        async for incoming in bus.messages():
            message = codec.decode(incoming.payload)
            if isinstance(message, kind) and message.client == client:
                return message
    raise AssertionError("the connection ended")


async def wait_logged(path: Path, event: str, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if sum(e["event"] == event for e in logged(path)) >= count:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"fewer than {count} {event} events after {WAIT_S} s")


async def test_a_redelivered_task_is_dropped_and_answered_once(embedded_broker: BrokerAddress, run_id: str,
                                                              tmp_path: Path) -> None:
    """The same task delivered twice (same message id) is logged as duplicate-delivery and answered once;
    a task with a new id is not mistaken for a duplicate."""
    path = tmp_path / "events.jsonl"
    events = EventLog(path)
    async with MqttBus(embedded_broker, f"{run_id}.{AGGREGATOR}", clean_session=True) as bus:
        await bus.subscribe(topics.channel_filter(run_id, "presence"), topics.channel_filter(run_id, "update"))
        await bus.publish(topics.global_topic(run_id), codec.encode(global_state(run_id, "g-1", "running")),
                          retain=True)
        client = asyncio.create_task(run_client(
            ClientConfig(run=run_id, client="c0", broker=embedded_broker, shard=0, boot="0"), events))
        online = await next_message(bus, Presence, "c0")
        assert online.status == "online"
        task = Task(run=run_id, round=1, client="c0", msg_id="task-1", sent=0.0, version=0, prompt="Answer.",
                    local_steps=1, batch_size=2, deadline_s=30.0)
        payload = codec.encode(task)
        await bus.publish(topics.task_topic(run_id, "c0"), payload)
        await bus.publish(topics.task_topic(run_id, "c0"), payload)  # a broker redelivery
        first = await next_message(bus, Update, "c0")
        assert first.round == 1
        await wait_logged(path, "duplicate-delivery", 1)
        fresh = Task(run=run_id, round=2, client="c0", msg_id="task-2", sent=0.0, version=0, prompt="Answer.",
                     local_steps=1, batch_size=2, deadline_s=30.0)
        await bus.publish(topics.task_topic(run_id, "c0"), codec.encode(fresh))
        second = await next_message(bus, Update, "c0")
        assert second.round == 2
        await bus.publish(topics.global_topic(run_id), codec.encode(global_state(run_id, "g-2", "finished")),
                          retain=True)
        report = await asyncio.wait_for(client, WAIT_S)
    events.close()
    assert report.rounds_done == 2
    lines = logged(path)
    assert [e["id"] for e in lines if e["event"] == "duplicate-delivery"] == ["task-1"]
    assert [e["id"] for e in lines if e["event"] == "received" and e.get("kind") == "task"] == ["task-1", "task-2"]
    sent_updates = [e for e in lines if e["event"] == "sent" and e.get("kind") == "update"]
    resent = [e["id"] for e in lines if e["event"] == "resent"]  # this stand-in aggregator sends no receipts
    assert [e["round"] for e in sent_updates[:2]] == [1, 2]
    assert sorted(e["id"] for e in sent_updates[2:]) == sorted(resent), "only updates without a receipt go again"


def test_worker_parts_merge_in_time_order_without_torn_lines(tmp_path: Path) -> None:
    """events.jsonl after the merge: every process's events ordered by ``t`` on the one clock, an event recorded at
    an earlier ``now()`` (a message sent before its acknowledgement came back) in its place, and the torn last
    line of a worker killed mid-write dropped rather than failing the run."""
    clock = [0.0]  # the clock the run and its workers share (time.monotonic() less the run's zero)
    run_log = EventLog(tmp_path / "events.jsonl", clock=lambda: clock[0])
    part_path = tmp_path / "events-0.jsonl"
    part = EventLog(part_path, clock=lambda: clock[0])
    part.record("received", kind="task", id="task-1")
    clock[0] = 1.0
    handed_over = part.now()  # the worker publishes its update ...
    clock[0] = 2.0
    run_log.record("received", kind="update", id="u-1")  # ... the aggregator receives it ...
    clock[0] = 3.0
    part.record_at(handed_over, "sent", kind="update", id="u-1")  # ... before the worker reads the broker's ack
    part.close()
    with part_path.open("a", encoding="utf-8") as torn:
        torn.write('{"t": 3.5, "event": "sen')
    assert run_log.absorb(part_path) == 2
    run_log.sort_by_time()
    lines = logged(tmp_path / "events.jsonl")
    assert [(e["t"], e["event"]) for e in lines] == [(0.0, "received"), (1.0, "sent"), (2.0, "received")]
    assert run_log.counts == {"received": 2, "sent": 1}
