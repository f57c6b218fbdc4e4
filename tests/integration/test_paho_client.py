"""clients/paho_client.py, the standalone paho-mqtt client, as a separate OS process on real brokers.

The client imports nothing from fedbus, so fedbus's own codec checks every message it sends here:
what it publishes must decode with `fedbus.protocol.codec` and be accepted by the real aggregator. In protocol
v2 (a join token and a key), fedbus's own security layer checks its signatures and opens its sealed updates.
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
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import DataSpec, GlobalState, Message, Presence, Receipt, Task, Update
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import EmbeddedBroker
from fedbus.runtime.bus import MqttBus
from fedbus.runtime.run import RunOptions, run_scenario
from fedbus.runtime.run_keys import AGGREGATOR_PUB, AUTHORIZED, KEYS, SECRET, invite
from fedbus.scenario import scenario_from_mapping
from fedbus.security.crypto import PrivateKey, derive
from fedbus.security.errors import WireRejected
from fedbus.security.keyfiles import keygen, load_authorized, load_public
from fedbus.security.keys import AuthorizedKeys, PublicKey, fingerprint
from fedbus.security.policy import Security
from fedbus.security.token import JoinToken, encode_token
from tests.conftest import ROOT
from tests.integration import test_broker_auth
from tests.integration.test_broker_auth import PASSWORD, USER, Pki

SCRIPT = ROOT / "clients" / "paho_client.py"
pki = test_broker_auth.pki  # the TLS fixtures: a test CA and an embedded broker with TLS and a login
tls_broker = test_broker_auth.tls_broker
NAME = "paho-1"
WAIT_S = 90.0  # generous: the suite must pass on a loaded two-core machine


def sentence(round_: int) -> str:
    """The edit the paho client appends to the prompt of a task."""
    return f"Client {NAME} reviewed this prompt in round {round_}."


@contextlib.contextmanager
def paho_client(broker: BrokerAddress, run_id: str, log: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """The paho client as its own process (stdout and stderr to ``log``), killed on the way out. With --token in
    ``extra`` (protocol v2), the token alone says where, which run and who."""
    where = [] if "--token" in extra else ["--broker", broker.url(redact=False), "--run", run_id, "--id", NAME]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *where, *extra],
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
    """Every message on some topics, decoded by fedbus's codec; waits are bounded and on conditions.

    With ``security`` (an aggregator's), every payload must be signed by the client of its topic with an
    authorized key, and update bodies sealed to that aggregator, as the real aggregator checks them."""

    def __init__(self, bus: MqttBus, security: Security | None = None) -> None:
        self.bus = bus
        self.security = security
        self.messages: list[Message] = []
        self.undecodable: list[tuple[str, bytes, str]] = []
        self._changed = asyncio.Condition()

    def decode(self, topic: str, payload: bytes) -> Message:
        if self.security is not None:
            payload = self.security.authenticate(payload, signer=topic.rsplit("/", 1)[-1])
            if "/update/" in topic:
                payload = self.security.open_sealed(payload)
        return codec.decode(payload)

    async def pump(self) -> None:
        async for incoming in self.bus.messages():
            if incoming.retained is False and incoming.payload == b"":
                continue  # a finished run deleting retained presence (MQTT's zero-length retained publish)
            try:
                self.messages.append(self.decode(incoming.topic, incoming.payload))
            except (codec.MessageRejected, WireRejected) as exc:
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
async def watching(broker: BrokerAddress, run_id: str, identifier: str, *filters: str,
                   security: Security | None = None) -> AsyncIterator[Watch]:
    async with MqttBus(broker, f"{run_id}.{identifier}", clean_session=True) as bus:
        await bus.subscribe(*filters)
        watch = Watch(bus, security)
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


def check_taking_part(summary: dict[str, Any], out: Path, watch: Watch, log: Path, rounds: int) -> None:
    """The run completed with the paho client's updates accepted and merged in every round once it was live,
    none rejected; it logged a receipt for each and left when the run finished."""
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
    check_taking_part(summary, out, watch, log, rounds)
    assert "protocol v1" in client_log(log)


# ---------------------------------------------------------------------------------------------- protocol v2
def signed_federation(rounds: int) -> dict[str, Any]:
    """fedbus's default security (signed+sealed); the run waits for one remote client besides its own two."""
    doc = federation(rounds)
    del doc["security"]
    doc["clients"]["remote"] = 1
    return doc


async def aggregator_key_of(out: Path, run: asyncio.Task[dict[str, Any]]) -> PublicKey:
    """The running aggregator's public key, from RUN_DIR/keys/aggregator.pub (written when the run starts)."""
    path = out / KEYS / AGGREGATOR_PUB
    async with asyncio.timeout(WAIT_S):
        while not path.exists():
            if run.done():
                run.result()  # the run failed before it started: say why
                pytest.fail("the run ended before it wrote its aggregator key")
            await asyncio.sleep(0.05)
    return load_public(path).key


def aggregator_private(out: Path) -> PrivateKey:
    """The run's aggregator key, derived from RUN_DIR/keys/run.secret as `fedbus run` derives it: for the
    observer, which opens the client's sealed updates as the aggregator does."""
    return derive(bytes.fromhex((out / KEYS / SECRET).read_text(encoding="ascii")), AGGREGATOR)


async def take_part_in_v2(broker: BrokerAddress, run_id: str, tmp_path: Path, *, authorized: Path | None,
                          join: Callable[[Path, PublicKey], tuple[list[str], PublicKey]]) -> None:
    """A signed+sealed `fedbus run` starts and waits for one remote client; once its aggregator's key is known,
    ``join(run_dir, aggregator_key)`` gives the paho client's arguments and public key; the client joins and
    takes part in every round, everything it sends signed (and its updates sealed), and fedbus forges nothing."""
    rounds, log, out = 3, tmp_path / "paho.log", tmp_path / "run"
    run = asyncio.create_task(run_scenario(scenario_from_mapping(signed_federation(rounds)), RunOptions(
        out_dir=out, broker_url=broker.url(), run_id=run_id, progress=False, workers=0, authorized_keys=authorized)))
    try:
        key = await aggregator_key_of(out, run)
        args, client_key = join(out, key)
        # an observer that checks the client's messages as the aggregator does: signed by NAME, updates sealed
        checker = Security.for_aggregator(aggregator_private(out), AuthorizedKeys(((NAME, client_key),)))
        async with watching(broker, run_id, "observer", topics.presence_topic(run_id, NAME),
                            topics.update_topic(run_id, NAME), security=checker) as watch:
            with paho_client(broker, run_id, log, "--timeout-s", str(WAIT_S), *args) as proc:
                await watch.wait_for("online presence", presence_is("online"), log)
                summary = await asyncio.wait_for(asyncio.shield(run), 4 * WAIT_S)
                assert await exit_code(proc, log) == 0, client_log(log)
                await watch.wait_for("offline presence", presence_is("offline"), log)
    finally:
        if not run.done():
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
    assert summary["security"]["mode"] == "signed+sealed" and summary["totals"]["forgeries"] == 0, summary
    check_taking_part(summary, out, watch, log, rounds)
    assert len(watch.updates()) >= rounds - 1  # every update it sent verified and opened (undecodable: none)
    text = client_log(log)
    assert f"protocol v2 as {fingerprint(client_key)}, trusting aggregator {fingerprint(key)}" in text, text
    assert "dropped" not in text, text


async def test_the_paho_client_joins_a_signed_and_sealed_run_with_its_own_key(
        broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """protocol v2 with a key the client generated (`fedbus keygen`), authorized by `fedbus run
    --authorized-keys`, and a join token without a key: `--token FILE --key FILE`."""
    identity = keygen(tmp_path / f"{NAME}.key", NAME)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("# the paho client\n" + (tmp_path / f"{NAME}.key.pub").read_text(encoding="utf-8"))

    def join(out: Path, aggregator_key: PublicKey) -> tuple[list[str], PublicKey]:
        token = tmp_path / "token"
        token.write_text(encode_token(JoinToken(broker=broker.url(), run=run_id, client=NAME,
                                                aggregator_key=aggregator_key)), encoding="ascii")
        return ["--token", str(token), "--key", str(tmp_path / f"{NAME}.key")], identity.public

    await take_part_in_v2(broker, run_id, tmp_path, authorized=authorized, join=join)


async def test_the_paho_client_joins_with_a_token_from_fedbus_invite(
        embedded_broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """protocol v2 with what `fedbus invite` prints: one token holding everything, the client's key included."""
    def join(out: Path, aggregator_key: PublicKey) -> tuple[list[str], PublicKey]:
        (token,) = invite(out, [NAME], broker=embedded_broker.url())
        client_key = load_authorized(out / KEYS / AUTHORIZED).get(NAME)
        assert client_key is not None
        return ["--token", token], client_key

    await take_part_in_v2(embedded_broker, run_id, tmp_path, authorized=None, join=join)


async def test_in_v2_forgeries_are_dropped_and_censor_nobody_and_the_last_will_is_signed(
        embedded_broker: BrokerAddress, run_id: str, tmp_path: Path) -> None:
    """Against a scripted aggregator with its own key: a forged 'finished' global, a v1 task and a forged task that
    pre-publishes the real task's id are dropped as forgeries; the real task is answered (the forger burnt no
    id) with a signed, sealed update; killed, the client's retained Last Will is signed too."""
    log = tmp_path / "paho.log"
    aggregator_key = PrivateKey(bytes(range(32)), bytes(range(32, 64)))
    impostor = Security.for_aggregator(PrivateKey(bytes([7]) * 32, bytes([8]) * 32), {})
    identity = keygen(tmp_path / f"{NAME}.key", NAME)
    token = tmp_path / "token"
    token.write_text(encode_token(JoinToken(broker=embedded_broker.url(), run=run_id, client=NAME,
                                            aggregator_key=aggregator_key.public)), encoding="ascii")
    aggregator = Security.for_aggregator(aggregator_key, AuthorizedKeys(((NAME, identity.public),)))
    data = DataSpec(task="surrogate-skills", seed=1, num_shards=2, train_size=10, val_size=10, test_size=10)

    def state(status: str, msg_id: str) -> bytes:
        return codec.encode(GlobalState(run=run_id, round=1, client="aggregator", msg_id=msg_id, sent=0.0, version=0,
                                        prompt="Be brief.", status=status, engine="surrogate", data=data,  # type: ignore[arg-type]
                                        rounds=1))

    task = codec.encode(Task(run=run_id, round=1, client=NAME, msg_id="agg-t1", sent=0.0, version=0,
                             prompt="Be brief.", local_steps=1, batch_size=1, deadline_s=30.0))
    with paho_client(embedded_broker, run_id, log, "--timeout-s", str(WAIT_S), "--token", str(token),
                     "--key", str(tmp_path / f"{NAME}.key")) as proc:
        async with watching(embedded_broker, run_id, "aggregator", topics.presence_topic(run_id, NAME),
                            topics.update_topic(run_id, NAME), security=aggregator) as watch:
            bus = watch.bus
            online = await watch.wait_for("online presence", presence_is("online"), log)
            await bus.publish(topics.global_topic(run_id), impostor.wrap(state("finished", "agg-g0")), retain=True)
            for payload in (task, impostor.wrap(task)):
                await bus.publish(topics.task_topic(run_id, NAME), payload)
            await bus.publish(topics.global_topic(run_id), aggregator.wrap(state("running", "agg-g1")), retain=True)
            await bus.publish(topics.task_topic(run_id, NAME), aggregator.wrap(task))
            update = await watch.wait_for("update", lambda m: isinstance(m, Update), log)
            assert proc.poll() is None, client_log(log)  # the forged 'finished' did not end it
            proc.send_signal(signal.SIGKILL)
            will = await watch.wait_for("Last Will", presence_is("offline"), log)
    assert isinstance(update, Update) and update.round == 1 and update.prompt == f"Be brief. {sentence(1)}"
    assert will.msg_id != online.msg_id and watch.undecodable == []
    text = client_log(log)
    for reason in ("forged:bad-signature", "forged:unsigned"):
        assert reason in text, text
    assert text.count("dropped a payload") == 3, text


async def test_in_v2_it_reaches_an_mqtts_broker_with_the_login_and_ca_of_its_token(
        tls_broker: EmbeddedBroker, pki: Pki, run_id: str, tmp_path: Path) -> None:
    """A token for mqtts:// with a broker login: the client connects over TLS, checking the broker's certificate
    against --ca, logs in with the token's user and password, and its signed presence comes through."""
    log = tmp_path / "paho.log"
    aggregator_key = PrivateKey(bytes(range(32)), bytes(range(32, 64)))
    identity = keygen(tmp_path / f"{NAME}.key", NAME)
    token = tmp_path / "token"
    token.write_text(encode_token(JoinToken(broker=f"mqtts://127.0.0.1:{tls_broker.port}", run=run_id, client=NAME,
                                            aggregator_key=aggregator_key.public, username=USER,
                                            password=PASSWORD)), encoding="ascii")
    address = BrokerAddress(host="127.0.0.1", port=tls_broker.port, username=USER, password=PASSWORD, tls=True,
                            ca_file=str(pki.ca))
    checker = Security.for_aggregator(aggregator_key, AuthorizedKeys(((NAME, identity.public),)))
    async with watching(address, run_id, "observer", topics.presence_topic(run_id, NAME), security=checker) as watch:
        with paho_client(address, run_id, log, "--token", str(token), "--key", str(tmp_path / f"{NAME}.key"),
                         "--ca", str(pki.ca), "--timeout-s", "8") as proc:
            await watch.wait_for("online presence", presence_is("online"), log)
            assert await exit_code(proc, log) == 2, client_log(log)
        await watch.wait_for("offline presence", presence_is("offline"), log)
    assert f"on mqtts://127.0.0.1:{tls_broker.port}, protocol v2" in client_log(log)
    assert PASSWORD not in client_log(log)


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
        with paho_client(embedded_broker, run_id, log, "--timeout-s", "4") as proc:
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


def imported_modules(source: str, *, top_level_only: bool = False) -> set[str]:
    """Top-level names of every module a source file imports (relative imports as '.'); with
    ``top_level_only``, only the imports the module runs when it is loaded (not those inside functions)."""
    names: set[str] = set()
    tree = ast.parse(source)
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


def foreign_imports(source: str, *, top_level_only: bool = False, allowed: frozenset[str] = frozenset()) -> set[str]:
    return (imported_modules(source, top_level_only=top_level_only) - set(sys.stdlib_module_names)
            - {"__future__", "paho"} - allowed)


def test_the_client_imports_only_paho_and_the_standard_library() -> None:
    """paho_client.py runs where fedbus is not installed: paho is its only non-stdlib import when loaded, and
    `cryptography` (protocol v2) the only other one, imported inside the functions that need it."""
    source = SCRIPT.read_text(encoding="utf-8")
    assert "paho" in imported_modules(source, top_level_only=True)
    assert foreign_imports(source, top_level_only=True) == set()
    assert "cryptography" in imported_modules(source)
    assert foreign_imports(source, allowed=frozenset({"cryptography"})) == set()
    assert foreign_imports("import fedbus.protocol\nfrom clients import core\nfrom . import x\n") == {
        "fedbus", "clients", "."}
    assert foreign_imports("def f():\n    import cryptography\n", top_level_only=True) == set()
