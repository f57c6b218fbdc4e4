"""clients/paho_client.py, the standalone paho-mqtt client, as a separate OS process on real brokers.

The client imports nothing from fedbus, so fedbus's own codec checks every message it sends here:
what it publishes must decode with `fedbus.protocol.codec` and be accepted by the real aggregator.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedbus.protocol import codec, topics
from fedbus.protocol.messages import DataSpec, GlobalState, Message, Presence, Receipt, Task, Update
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import MqttBus
from fedbus.runtime.run import RunOptions, run_scenario
from fedbus.scenario import scenario_from_mapping
from tests.conftest import ROOT

SCRIPT = ROOT / "clients" / "paho_client.py"
NAME = "paho-1"
WAIT_S = 90.0  # generous: the suite must pass on a loaded two-core machine


def sentence(round_: int) -> str:
    """The edit the paho client appends to the prompt of a task."""
    return f"Client {NAME} reviewed this prompt in round {round_}."


@contextlib.contextmanager
def paho_client(broker: BrokerAddress, run_id: str, log: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """The paho client as its own process (stdout and stderr to ``log``), killed on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--broker", broker.url(redact=False), "--run", run_id, "--id", NAME,
             *extra],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def client_log(log: Path) -> str:
    return log.read_text(encoding="utf-8", errors="replace")


async def exit_code(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = WAIT_S) -> int:
    try:
        return await asyncio.to_thread(proc.wait, timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the paho client did not exit within {timeout_s} s:\n{client_log(log)}")


class Watch:
    """Every message on some topics, decoded by fedbus's codec; waits are bounded and on conditions."""

    def __init__(self, bus: MqttBus) -> None:
        self.bus = bus
        self.messages: list[Message] = []
        self.undecodable: list[tuple[str, bytes, str]] = []
        self._changed = asyncio.Condition()

    async def pump(self) -> None:
        async for incoming in self.bus.messages():
            if incoming.retained is False and incoming.payload == b"":
                continue  # a finished run deleting retained presence (MQTT's zero-length retained publish)
            try:
                self.messages.append(codec.decode(incoming.payload))
            except codec.MessageRejected as exc:
                self.undecodable.append((incoming.topic, incoming.payload, str(exc)))
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, what: str, predicate: Callable[[Message], bool], log: Path) -> Message:
        def found() -> Message | None:
            return next((m for m in self.messages if predicate(m)), None)

        try:
            async with asyncio.timeout(WAIT_S), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            pytest.fail(f"no {what} within {WAIT_S} s; seen {self.messages}; client log:\n{client_log(log)}")
        message = found()
        assert message is not None
        return message

    def updates(self) -> list[Update]:
        return [m for m in self.messages if isinstance(m, Update)]


@contextlib.asynccontextmanager
async def watching(broker: BrokerAddress, run_id: str, identifier: str, *filters: str) -> AsyncIterator[Watch]:
    async with MqttBus(broker, f"{run_id}.{identifier}", clean_session=True) as bus:
        await bus.subscribe(*filters)
        watch = Watch(bus)
        pump = asyncio.create_task(watch.pump(), name=f"test[{run_id}].watch")
        try:
            yield watch
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump


def presence_is(status: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Presence) and m.client == NAME and m.status == status


def federation(rounds: int) -> dict[str, Any]:
    return {
        "name": "paho", "seed": 5, "rounds": rounds, "security": "none",  # the single-file client speaks v1
        "task": {"train_size": 60, "val_size": 20, "test_size": 20},
        "clients": {"count": 2, "local_steps": 1, "batch_size": 3},
        "participation": {"min_clients": 2, "min_updates": 1, "round_deadline_s": 60, "join_timeout_s": 60},
    }


async def test_the_paho_client_takes_part_in_a_federation(broker: BrokerAddress, run_id: str,
                                                          tmp_path: Path) -> None:
    """A paho client process, online before the run starts, has its updates accepted and merged, then exits 0."""
    rounds, log, out = 3, tmp_path / "paho.log", tmp_path / "run"
    with paho_client(broker, run_id, log, "--timeout-s", str(WAIT_S)) as proc:
        async with watching(broker, run_id, "observer", topics.presence_topic(run_id, NAME),
                            topics.update_topic(run_id, NAME)) as watch:
            # Its retained 'online' is on the broker, so the aggregator knows it as soon as it subscribes.
            await watch.wait_for("online presence", presence_is("online"), log)
            summary = await asyncio.wait_for(run_scenario(scenario_from_mapping(federation(rounds)), RunOptions(
                out_dir=out, broker_url=broker.url(), run_id=run_id, progress=False, workers=0)), 4 * WAIT_S)
            assert await exit_code(proc, log) == 0, client_log(log)
            await watch.wait_for("offline presence", presence_is("offline"), log)
    assert summary["status"] == "completed", summary["reason"]
    on_disk = json.loads((out / "summary.json").read_text())
    joined = [r for r in on_disk["rounds"] if NAME in [a["client"] for a in r["accepted"]]]
    assert joined, f"no accepted update from {NAME}; log:\n{client_log(log)}"
    assert all(r["status"] == "aggregated" for r in joined)
    numbers = [r["round"] for r in joined]
    assert numbers == list(range(numbers[0], rounds + 1)), "once live, it takes part in every round"
    assert not [x for r in on_disk["rounds"] for x in r["rejected"] if x["client"] == NAME]
    assert on_disk["clients"][NAME]["accepted"] == len(joined)
    assert sentence(rounds) in on_disk["final"]["prompt"]
    accepted_ids = {a["id"] for r in joined for a in r["accepted"] if a["client"] == NAME}
    assert accepted_ids <= {u.msg_id for u in watch.updates()}
    assert watch.undecodable == []
    assert "left: run finished" in client_log(log)
    for update_id in accepted_ids:  # the aggregator told it, one receipt per update
        assert f"update {update_id} (round " in client_log(log) and ") accepted" in client_log(log)


async def test_malformed_duplicate_and_foreign_messages_are_dropped(broker: BrokerAddress, run_id: str,
                                                                     tmp_path: Path) -> None:
    """Against a scripted aggregator: one update per task round, drops logged with reasons, leaves on finished."""
    log = tmp_path / "paho.log"
    data = DataSpec(task="surrogate-skills", seed=1, num_shards=2, train_size=10, val_size=10, test_size=10)
    n = iter(range(1, 1000))

    def state(status: str, version: int) -> bytes:
        return codec.encode(GlobalState(run=run_id, round=1, client="aggregator", msg_id=f"agg-{next(n)}", sent=0.0,
                                        version=version, prompt="Be brief.", status=status,  # type: ignore[arg-type]
                                        engine="surrogate", data=data, rounds=2))

    def task(round_: int, version: int, run: str = run_id, msg_id: str = "") -> bytes:
        return codec.encode(Task(run=run, round=round_, client=NAME, msg_id=msg_id or f"agg-{next(n)}", sent=0.0,
                                 version=version, prompt="Be brief.", local_steps=1, batch_size=1, deadline_s=30.0))

    def edited(payload: bytes, **body: Any) -> bytes:
        doc = json.loads(payload)
        doc.update(body.pop("envelope", {}))
        doc["body"].update(body)
        return json.dumps(doc).encode()

    task_topic = topics.task_topic(run_id, NAME)
    with paho_client(broker, run_id, log, "--timeout-s", str(WAIT_S)) as proc:
        async with watching(broker, run_id, "aggregator", topics.presence_topic(run_id, NAME),
                            topics.update_topic(run_id, NAME)) as watch:
            bus = watch.bus
            await watch.wait_for("online presence", presence_is("online"), log)
            await bus.publish(topics.global_topic(run_id), state("running", 0), retain=True)
            first = task(1, 0, msg_id="agg-task-1")
            await bus.publish(task_topic, first)
            await watch.wait_for("update for round 1", lambda m: isinstance(m, Update) and m.round == 1, log)
            # All on the task topic, so they arrive in this order, before the task for round 2.
            for payload in (b"\x00not json", edited(first, envelope={"v": 2}), edited(task(3, 0), local_steps=0),
                            task(4, 0, run="other-run"), first, task(1, 0)):
                await bus.publish(task_topic, payload)
            await bus.publish(task_topic, task(2, 1))
            await watch.wait_for("update for round 2", lambda m: isinstance(m, Update) and m.round == 2, log)
            await bus.publish(topics.global_topic(run_id), state("finished", 1), retain=True)
            await watch.wait_for("offline presence", presence_is("offline"), log)
            assert await exit_code(proc, log) == 0, client_log(log)
    updates = watch.updates()
    assert [(u.round, u.base_version, u.client) for u in updates] == [(1, 0, NAME), (2, 1, NAME)]
    assert [u.prompt for u in updates] == [f"Be brief. {sentence(1)}", f"Be brief. {sentence(2)}"]
    ids = [m.msg_id for m in watch.messages]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(rf"{NAME}-[0-9a-f]{{8}}-\d+", i) for i in ids)
    assert watch.undecodable == []
    text = client_log(log)
    for reason in ("not-json", "bad-version", "bad-field: local_steps", "of run 'other-run'"):
        assert len([line for line in text.splitlines() if reason in line]) == 1, (reason, text)
    # The replayed id is dropped silently; the new id for round 1 is dropped as a handled round.
    assert text.count("ignored a second task for round 1") == 1, text


async def test_it_keeps_the_announced_budget_and_logs_receipts_and_the_aggregators_presence(
        embedded_broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """Against a scripted aggregator: the task's max_prompt_chars bounds the update (whatever --max-prompt-chars
    said), a receipt for each update is logged with its outcome, and the aggregator's presence changes are logged."""
    log = tmp_path / "paho.log"
    data = DataSpec(task="surrogate-skills", seed=1, num_shards=2, train_size=10, val_size=10, test_size=10)
    budget = len(sentence(1)) + 6

    def aggregator(msg_id: str, status: str) -> bytes:
        return codec.encode(Presence(run=run_id, round=0, client="aggregator", msg_id=msg_id, sent=0.0,
                                     status=status))  # type: ignore[arg-type]

    with paho_client(embedded_broker, run_id, log, "--timeout-s", str(WAIT_S), "--max-prompt-chars", "5000") as proc:
        async with watching(embedded_broker, run_id, "aggregator", topics.presence_topic(run_id, NAME),
                            topics.update_topic(run_id, NAME)) as watch:
            bus = watch.bus
            await watch.wait_for("online presence", presence_is("online"), log)
            await bus.publish(topics.aggregator_topic(run_id), aggregator("agg-p1", "online"), retain=True)
            await bus.publish(topics.global_topic(run_id), codec.encode(GlobalState(
                run=run_id, round=1, client="aggregator", msg_id="agg-g1", sent=0.0, version=0, prompt="Be brief.",
                status="running", engine="surrogate", data=data, rounds=1, max_prompt_chars=budget)), retain=True)
            await bus.publish(topics.task_topic(run_id, NAME), codec.encode(Task(
                run=run_id, round=1, client=NAME, msg_id="agg-t1", sent=0.0, version=0, prompt="Be brief. " * 50,
                local_steps=1, batch_size=1, deadline_s=30.0, max_prompt_chars=budget)))
            update = await watch.wait_for("update", lambda m: isinstance(m, Update), log)
            assert isinstance(update, Update) and len(update.prompt) <= budget and sentence(1) in update.prompt
            for outcome, reason in (("accepted", ""), ("rejected", "late")):
                await bus.publish(topics.receipt_topic(run_id, NAME), codec.encode(Receipt(
                    run=run_id, round=1, client=NAME, msg_id=f"agg-r-{outcome}", sent=0.0, update_id=update.msg_id,
                    outcome=outcome, reason=reason, detail="round 1 stopped collecting" if reason else "")))  # type: ignore[arg-type]
            await bus.publish(topics.aggregator_topic(run_id), aggregator("agg-p2", "offline"), retain=True)
            await bus.publish(topics.global_topic(run_id), codec.encode(GlobalState(
                run=run_id, round=1, client="aggregator", msg_id="agg-g2", sent=0.0, version=1, prompt="Be brief.",
                status="finished", engine="surrogate", data=data, rounds=1)), retain=True)
            assert await exit_code(proc, log) == 0, client_log(log)
    text = client_log(log)
    assert f"update {update.msg_id} (round 1) accepted" in text, text
    assert f"update {update.msg_id} (round 1) rejected: late (round 1 stopped collecting)" in text, text
    assert "the aggregator is online" in text and "the aggregator is offline" in text, text
    assert "dropped" not in text, text


async def test_it_gives_up_after_timeout_and_says_offline(embedded_broker: BrokerAddress, run_id: str,
                                                          tmp_path: Path) -> None:
    """With no message of its run for --timeout-s, it publishes 'offline' and exits 2."""
    log = tmp_path / "paho.log"
    async with watching(embedded_broker, run_id, "observer", topics.presence_topic(run_id, NAME)) as watch:
        with paho_client(embedded_broker, run_id, log, "--timeout-s", "1") as proc:
            assert await exit_code(proc, log) == 2, client_log(log)
        await watch.wait_for("offline presence", presence_is("offline"), log)
    assert "giving up" in client_log(log)


async def test_its_last_will_says_offline_when_it_dies(embedded_broker: BrokerAddress, run_id: str,
                                                       tmp_path: Path) -> None:
    """Killed without a DISCONNECT, the client's retained Last Will marks it offline with a fresh id."""
    log = tmp_path / "paho.log"
    async with watching(embedded_broker, run_id, "observer", topics.presence_topic(run_id, NAME)) as watch:
        with paho_client(embedded_broker, run_id, log) as proc:
            online = await watch.wait_for("online presence", presence_is("online"), log)
            proc.send_signal(signal.SIGKILL)
            will = await watch.wait_for("Last Will", presence_is("offline"), log)
    assert will.msg_id != online.msg_id


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a source file imports (relative imports as '.')."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


def foreign_imports(source: str) -> set[str]:
    return imported_modules(source) - set(sys.stdlib_module_names) - {"__future__", "paho"}


def test_the_client_imports_only_paho_and_the_standard_library() -> None:
    """paho_client.py runs where fedbus is not installed: its only non-stdlib import is paho."""
    source = SCRIPT.read_text(encoding="utf-8")
    assert "paho" in imported_modules(source)
    assert foreign_imports(source) == set()
    assert foreign_imports("import fedbus.protocol\nfrom clients import core\nfrom . import x\n") == {
        "fedbus", "clients", "."}
