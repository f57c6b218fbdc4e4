"""broker-config/make_mosquitto_auth.py's password and ACL files on a real mosquitto: who may publish and read what.

mosquitto 2.0 drops a denied publish and still acknowledges it (MQTT 3.1.1 has no negative PUBACK), and grants
every subscription, checking each message on delivery. So "denied" is shown by a subscriber that could read the
topic and does not get the forged message before a marker: the forger's publish is acknowledged (mosquitto has
routed or dropped it by then), then an allowed marker is published to the same subscriber, which reads until the
marker. Anything forged would have been queued ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedbus.errors import TransportError
from fedbus.protocol import topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import free_port
from fedbus.runtime.bus import PROBE_ROOT, Incoming, LastWill, MqttBus
from tests.conftest import ROOT, _mosquitto_binary, mosquitto_test_conf, wait_port

pytestmark = pytest.mark.mosquitto

GENERATOR = ROOT / "broker-config" / "make_mosquitto_auth.py"
TLS_CONF = ROOT / "broker-config" / "mosquitto-tls.conf"
AGG, OBSERVER = "agg", "observer"
CLIENTS = ("alice", "bob")
WAIT_S = 10.0  # bound on waiting for a marker; generous for a loaded two-core machine


@dataclass(frozen=True, slots=True)
class SecuredBroker:
    """A running mosquitto with the generated password file and ACL, and every user's password."""

    host: str
    port: int
    passwords: dict[str, str]

    def address(self, user: str | None, password: str | None = None) -> BrokerAddress:
        secret = self.passwords.get(user or "") if password is None else password
        return BrokerAddress(host=self.host, port=self.port, username=user, password=secret)


def generate(out: Path, *extra: str) -> dict[str, str]:
    """Run the generator; return the ``USER PASSWORD`` lines it printed."""
    result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(out), "--aggregator", AGG,
                             "--clients", *CLIENTS, *extra], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def _enable(text: str, key: str, value: str) -> str:
    """Turn broker-config's commented ``#key ...`` line on, pointing at ``value``; fail if the line is gone."""
    text, found = re.subn(rf"^#{key} .*$", f"{key} {value}", text, flags=re.M)
    assert found == 1, f"mosquitto.conf no longer documents '#{key} ...'"
    return text


def _stay_as_me() -> str:
    # mosquitto started as root switches to the user 'mosquitto' before it reads the 0600 password file
    return f"user {getpass.getuser()}\n"


@contextlib.contextmanager
def running_mosquitto(conf: Path, ports: tuple[int, ...], log: Path) -> Iterator[None]:
    with log.open("w") as out:
        process = subprocess.Popen([_mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            for port in ports:
                wait_port("127.0.0.1", port)
            yield
        finally:
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """broker-config/mosquitto.conf with its documented auth lines switched on, on the generated files."""
    workdir = tmp_path_factory.mktemp("mosquitto-acl")
    passwords = generate(workdir / "auth")
    port = free_port()
    text = mosquitto_test_conf(port, workdir)
    text, anonymous = re.subn(r"^allow_anonymous true\n", "", text, flags=re.M)
    assert anonymous == 1
    text = _enable(text, "allow_anonymous", "false")
    text = _enable(text, "password_file", str(workdir / "auth" / "fedbus.passwd"))
    text = _enable(text, "acl_file", str(workdir / "auth" / "fedbus.acl"))
    conf = workdir / "mosquitto.conf"
    conf.write_text(text + _stay_as_me(), encoding="utf-8")
    log = workdir / "mosquitto.log"
    with running_mosquitto(conf, (port,), log):
        yield SecuredBroker("127.0.0.1", port, passwords)


@contextlib.asynccontextmanager
async def connected(broker: SecuredBroker, user: str, identifier: str, *filters: str) -> AsyncIterator[MqttBus]:
    """A clean-session connection as ``user``, subscribed to ``filters``."""
    async with MqttBus(broker.address(user), identifier, clean_session=True) as bus:
        if filters:
            await bus.subscribe(*filters)
        yield bus


async def read_until(bus: MqttBus, marker: str) -> list[Incoming]:
    """What ``bus`` receives up to and including the first message on topic ``marker`` (bounded by WAIT_S)."""
    seen: list[Incoming] = []

    async def collect() -> None:
        async for incoming in bus.messages():
            seen.append(incoming)
            if incoming.topic == marker:
                return

    await asyncio.wait_for(collect(), WAIT_S)
    return seen


def topics_of(messages: list[Incoming]) -> list[str]:
    return [m.topic for m in messages]


# ------------------------------------------------------------------ the generator


def test_generator_writes_hashes_and_hands_passwords_out_once(tmp_path: Path) -> None:
    """The password file holds $7$ hashes (0600) and no plain password; passwords are printed, or with
    --secrets-dir written to 0600 files elsewhere and not printed; existing files are not overwritten."""
    passwords = generate(tmp_path / "auth")
    assert set(passwords) == {AGG, OBSERVER, *CLIENTS}
    passwd = tmp_path / "auth" / "fedbus.passwd"
    assert passwd.stat().st_mode & 0o777 == 0o600
    lines = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert set(lines) == set(passwords)
    assert all(re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/=]{16}\$[A-Za-z0-9+/=]{88}", h) for h in lines.values())
    stored = "".join(p.read_text() for p in (tmp_path / "auth").iterdir())
    assert not any(pw in stored for pw in passwords.values())
    again = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path / "auth"), "--count", "2"],
                           capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    keys = tmp_path / "keys"
    result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path / "auth2"), "--count", "2",
                             "--secrets-dir", str(keys)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0 and result.stdout == ""
    assert sorted(p.name for p in keys.iterdir()) == sorted([AGG, OBSERVER, "client-0", "client-1"])
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in keys.iterdir())
    refused = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path / "a3"), "--count", "1",
                              "--secrets-dir", str(tmp_path / "a3")], capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "must not be --out" in refused.stderr


@pytest.mark.parametrize("names", [["aggregator"], ["agg"], ["observer"], ["bad/name"], ["alice", "alice"]])
def test_generator_refuses_names_that_would_mix_roles(tmp_path: Path, names: list[str]) -> None:
    """A client named 'aggregator', like the aggregator's or observer's user, twice, or not a fedbus id: refused."""
    result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path), "--aggregator", AGG,
                             "--clients", *names], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2 and not (tmp_path / "fedbus.passwd").exists()


# ------------------------------------------------------------------ logging in


async def test_anonymous_and_wrong_passwords_are_refused(secured: SecuredBroker, run_id: str) -> None:
    """No user, an unknown user, or a wrong password: the broker refuses the connection."""
    for address in (secured.address(None), secured.address("mallory", "x"), secured.address("alice", "wrong")):
        with pytest.raises(TransportError, match="cannot connect"):
            async with MqttBus(address, f"{run_id}.alice", clean_session=True):
                pass
    async with MqttBus(secured.address("alice"), f"{run_id}.alice", clean_session=True):
        pass  # the generated password logs in


# ------------------------------------------------------------------ what a client may publish


async def test_client_publishes_its_own_update_presence_and_metrics(secured: SecuredBroker, run_id: str) -> None:
    """alice's update, presence and metrics reach the aggregator."""
    own = [topics.update_topic(run_id, "alice"), topics.presence_topic(run_id, "alice"),
           topics.metrics_topic(run_id, "alice")]
    filters = [topics.channel_filter(run_id, c) for c in ("update", "presence", "metrics")]
    async with connected(secured, AGG, f"{run_id}.{AGGREGATOR}", *filters) as agg, \
            connected(secured, "alice", f"{run_id}.alice") as alice:
        for topic in own:
            await alice.publish(topic, b"{}")
        assert topics_of(await read_until(agg, own[-1])) == own


def _forgeries(run: str) -> list[tuple[str, str, str, str]]:
    """(forged topic, who watches it, the marker topic, who publishes the marker) for alice's forgeries; the
    marker is on another topic than the forgery, which the watcher may read and its publisher may write."""
    update_alice = topics.update_topic(run, "alice")
    task_bob = topics.task_topic(run, "bob")
    return [
        (topics.update_topic(run, "bob"), AGG, update_alice, "alice"),
        (topics.presence_topic(run, "bob"), AGG, update_alice, "alice"),
        (topics.metrics_topic(run, "bob"), AGG, update_alice, "alice"),
        (topics.global_topic(run), AGG, update_alice, "alice"),
        (topics.aggregator_topic(run), AGG, update_alice, "alice"),
        (task_bob, "bob", topics.receipt_topic(run, "bob"), AGG),
        (topics.receipt_topic(run, "bob"), "bob", task_bob, AGG),
        (topics.task_topic(run, "alice"), "alice", topics.receipt_topic(run, "alice"), AGG),
    ]


@pytest.mark.parametrize("case", range(8), ids=["update-bob", "presence-bob", "metrics-bob", "global", "aggregator",
                                                "task-bob", "receipt-bob", "task-alice"])
async def test_client_cannot_publish_as_another_or_as_the_aggregator(secured: SecuredBroker, run_id: str,
                                                                    case: int) -> None:
    """alice's publish on bob's update/presence/metrics, on a task or receipt, on the global or the aggregator's
    presence (retained, as a forged 'finished' would be) never reaches a reader of that topic."""
    forged, watcher, marker, marker_from = _forgeries(run_id)[case]
    assert forged != marker
    async with connected(secured, watcher, f"{run_id}.{watcher}.watch", forged, marker) as watch, \
            connected(secured, "alice", f"{run_id}.alice") as alice, \
            connected(secured, marker_from, f"{run_id}.{marker_from}.marker") as marking:
        await alice.publish(forged, b'{"forged":true}', retain=True)  # acknowledged, dropped
        await marking.publish(marker, b"{}")
        assert topics_of(await read_until(watch, marker)) == [marker]
    # nor was it kept as the topic's retained message
    async with connected(secured, watcher, f"{run_id}.{watcher}.late", forged, marker) as late, \
            connected(secured, marker_from, f"{run_id}.{marker_from}.marker") as marking:
        await marking.publish(marker, b"{}")
        assert topics_of(await read_until(late, marker)) == [marker]


async def test_last_will_on_another_clients_presence_is_dropped(secured: SecuredBroker, run_id: str) -> None:
    """A Last Will alice registers on bob's presence is accepted at connect and dropped when it fires; her
    own, on her presence, arrives."""
    forged, own = topics.presence_topic(run_id, "bob"), topics.presence_topic(run_id, "alice")
    async with connected(secured, AGG, f"{run_id}.{AGGREGATOR}", topics.channel_filter(run_id, "presence")) as agg:
        forger = await MqttBus(secured.address("alice"), f"{run_id}.alice.1", clean_session=True,
                               will=LastWill(topic=forged, payload=b"forged")).__aenter__()
        honest = await MqttBus(secured.address("alice"), f"{run_id}.alice.2", clean_session=True,
                               will=LastWill(topic=own, payload=b"offline")).__aenter__()
        try:
            await forger.abort()  # first: its will would be queued ahead of the honest one
            await honest.abort()
            assert topics_of(await read_until(agg, own)) == [own]
        finally:
            await forger.close()
            await honest.close()


# ------------------------------------------------------------------ what a client may read


async def test_client_cannot_read_another_clients_tasks_or_receipts(secured: SecuredBroker, run_id: str) -> None:
    """alice subscribed to bob's task and receipt, to the whole run and to everything of fedbus: bob's task and
    receipt reach bob, not her; her own task (the marker) reaches her."""
    bob_only = [topics.task_topic(run_id, "bob"), topics.receipt_topic(run_id, "bob")]
    mine = topics.task_topic(run_id, "alice")
    everything = (*bob_only, f"fedbus/v1/{run_id}/#", "fedbus/#")
    async with connected(secured, "alice", f"{run_id}.alice", *everything) as alice, \
            connected(secured, "bob", f"{run_id}.bob", *bob_only) as bob, \
            connected(secured, AGG, f"{run_id}.{AGGREGATOR}") as agg:
        for topic in bob_only:
            await agg.publish(topic, b"{}")
        await agg.publish(mine, b"{}")
        assert topics_of(await read_until(bob, bob_only[-1])) == bob_only  # they were published
        received = topics_of(await read_until(alice, mine))  # 'fedbus/#' also brings her own retained presences
        assert received[-1] == mine and all(topic.endswith("/alice") for topic in received), received


async def test_taking_over_another_clients_identifier_leaks_nothing(secured: SecuredBroker, run_id: str) -> None:
    """The MQTT identifier is not bound to the user: alice may connect as '{run}.bob' and take over bob's
    persistent session, but neither the task queued in it nor a new one is delivered to her."""
    task_bob, mine = topics.task_topic(run_id, "bob"), topics.task_topic(run_id, "alice")
    async with MqttBus(secured.address("bob"), f"{run_id}.bob") as bob:  # persistent session
        await bob.subscribe(task_bob)
    async with connected(secured, AGG, f"{run_id}.{AGGREGATOR}") as agg:
        await agg.publish(task_bob, b'{"queued":true}')
        async with MqttBus(secured.address("alice"), f"{run_id}.bob") as thief:  # bob's identifier, her user
            await thief.subscribe(mine)
            await agg.publish(task_bob, b'{"live":true}')
            await agg.publish(mine, b"{}")
            assert topics_of(await read_until(thief, mine)) == [mine]
    async with MqttBus(secured.address("bob"), f"{run_id}.bob", clean_session=True):
        pass  # ends the persistent session


async def test_client_reads_its_probe_and_not_anothers(secured: SecuredBroker, run_id: str) -> None:
    """The self-probe of a reconnection (fedbus/probe/{user}/{random}) comes back to its own connection; alice
    cannot publish under bob's."""
    async with connected(secured, "bob", f"{run_id}.bob") as bob, \
            connected(secured, "alice", f"{run_id}.alice") as alice:
        await bob.subscribe(topics.task_topic(run_id, "bob"), verify=True)  # raises if its probe is lost
        await bob.subscribe(f"{PROBE_ROOT}/bob/x")
        await alice.publish(f"{PROBE_ROOT}/bob/x", b"forged")
        await bob.publish(f"{PROBE_ROOT}/bob/x", b"own")
        message = await asyncio.wait_for(bob._inbox.get(), WAIT_S)  # bus.messages() hides probe topics
        assert message is not None and message.payload == b"own"


# ------------------------------------------------------------------ the aggregator and the observer


async def test_aggregator_publishes_tasks_receipts_global_and_presence(secured: SecuredBroker, run_id: str) -> None:
    """The aggregator's task, receipt, global (retained) and presence reach alice; a later observer reads the
    retained global but cannot publish as a client or as the aggregator."""
    sent = [topics.task_topic(run_id, "alice"), topics.receipt_topic(run_id, "alice"), topics.global_topic(run_id),
            topics.aggregator_topic(run_id)]
    async with connected(secured, "alice", f"{run_id}.alice", *sent) as alice, \
            connected(secured, AGG, f"{run_id}.{AGGREGATOR}", topics.channel_filter(run_id, "update")) as agg:
        for topic in sent:
            await agg.publish(topic, b'{"by":"aggregator"}', retain=topic == topics.global_topic(run_id))
        assert topics_of(await read_until(alice, sent[-1])) == sent
        async with connected(secured, OBSERVER, f"fedbus-observer-{run_id}") as observer:
            await observer.subscribe(topics.global_topic(run_id))
            assert (await read_until(observer, topics.global_topic(run_id)))[0].retained
            await observer.publish(topics.update_topic(run_id, OBSERVER), b"{}")  # denied in the ACL
            await observer.publish(topics.global_topic(run_id), b'{"by":"observer"}', retain=True)
        await alice.publish(topics.update_topic(run_id, "alice"), b"{}")
        assert topics_of(await read_until(agg, topics.update_topic(run_id, "alice"))) == [
            topics.update_topic(run_id, "alice")]
    async with connected(secured, OBSERVER, f"fedbus-observer-{run_id}-2", topics.global_topic(run_id)) as late:
        assert (await read_until(late, topics.global_topic(run_id)))[0].payload == b'{"by":"aggregator"}'


# ------------------------------------------------------------------ a whole federation


SCENARIO = """\
name: acl-federation
seed: 3
security: none  # remote clients without invitations speak protocol v1
engine: surrogate
rounds: 2
initial_prompt: "Answer the question. Give the answer on the last line."
task: {name: surrogate-skills, train_size: 40, val_size: 20, test_size: 20}
clients: {count: 2, local_steps: 1, batch_size: 2}
participation: {fraction: 1.0, min_clients: 2, min_updates: 2, round_deadline_s: 30, join_timeout_s: 60}
"""


async def wait_online(broker: SecuredBroker, run_id: str, clients: tuple[str, ...]) -> None:
    """Until each client's retained presence says online (read as the aggregator's user)."""
    online: set[str] = set()
    async with connected(broker, AGG, f"fedbus-observer-{run_id}", topics.channel_filter(run_id, "presence")) as bus:
        async def collect() -> None:
            async for incoming in bus.messages():
                ref = topics.parse(incoming.topic)
                if ref is not None and ref.client and json.loads(incoming.payload)["body"]["status"] == "online":
                    online.add(ref.client)
                    if online >= set(clients):
                        return
        await asyncio.wait_for(collect(), 60)


@pytest.mark.slow  # three Python processes: about 2-3 s
async def test_federation_of_clients_with_their_own_users(secured: SecuredBroker, run_id: str,
                                                          tmp_path: Path) -> None:
    """`fedbus client`s logged in as alice and bob do every round of a `fedbus run` logged in as the aggregator;
    the run's own clients (logged in as the aggregator, too) are refused their presence and stay unseen."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    clients = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", "client", "--broker", secured.address(name).url(redact=False),
        "--run", run_id, "--id", name, "--aggregator-timeout", "60",
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in CLIENTS]
    try:
        await wait_online(secured, run_id, CLIENTS)  # then the aggregator finds both at once: a round of two
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedbus", "run", str(scenario), "--broker", secured.address(AGG).url(redact=False),
            "--run-id", run_id, "--out", str(tmp_path / "run"), "--quiet",
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(run.communicate(), 180)
        assert run.returncode == 0, out.decode()
        for client in clients:
            printed, _ = await asyncio.wait_for(client.communicate(), 60)
            assert client.returncode == 0 and b"2 rounds done" in printed, printed.decode()
    finally:
        for client in clients:
            if client.returncode is None:
                client.kill()
                await client.wait()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    for r in summary["rounds"]:
        assert (sorted(r["selected"]), sorted(a["client"] for a in r["accepted"]), r["close_reason"]) == (
            sorted(CLIENTS), sorted(CLIENTS), "all-answered")
    assert summary["clients"]["client-0"]["selected"] == summary["clients"]["client-1"]["selected"] == 0


# ------------------------------------------------------------------ TLS


def _certificates(folder: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fedbus test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.cnf", "-out", "server.crt")


def _tls_conf(text: str, replacements: dict[str, str]) -> str:
    for pattern, value in replacements.items():
        text, found = re.subn(pattern, value, text, flags=re.M)
        assert found == 1, f"mosquitto-tls.conf no longer has a line matching {pattern!r}"
    return text


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls_listener_of_mosquitto_tls_conf(tmp_path: Path) -> None:
    """broker-config/mosquitto-tls.conf as shipped (paths and ports moved): over TLS, checked against the CA,
    alice logs in and her update reaches the aggregator on the loopback listener; anonymous is refused."""
    paho = pytest.importorskip("paho.mqtt.client")
    _certificates(tmp_path)
    passwords = generate(tmp_path / "auth")
    tls_port, plain_port = free_port(), free_port()
    text = _tls_conf(TLS_CONF.read_text(encoding="utf-8"), {
        r"^listener 8883 .*$": f"listener {tls_port} 127.0.0.1",
        r"^listener 1883 127\.0\.0\.1$": f"listener {plain_port} 127.0.0.1",
        r"^cafile .*$": f"cafile {tmp_path / 'ca.crt'}",
        r"^certfile .*$": f"certfile {tmp_path / 'server.crt'}",
        r"^keyfile .*$": f"keyfile {tmp_path / 'server.key'}",
        r"^password_file .*$": f"password_file {tmp_path / 'auth' / 'fedbus.passwd'}",
        r"^acl_file .*$": f"acl_file {tmp_path / 'auth' / 'fedbus.acl'}",
        r"^persistence_location .*$": f"persistence_location {tmp_path}/",
        r"^require_certificate false$": "require_certificate false",
        r"^allow_anonymous false$": "allow_anonymous false",
    })
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text + _stay_as_me(), encoding="utf-8")

    def tls_connect(user: str | None) -> tuple[object, str]:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"tls-{user}", protocol=paho.MQTTv311)
        client.tls_set_context(ssl.create_default_context(cafile=str(tmp_path / "ca.crt")))
        if user is not None:
            client.username_pw_set(user, passwords[user])
        result: list[str] = []
        client.on_connect = lambda _c, _u, _f, rc, _p: result.append(str(rc))
        client.connect("127.0.0.1", tls_port)
        deadline = time.monotonic() + WAIT_S
        while not result and time.monotonic() < deadline:
            client.loop(0.1)
        return client, result[0] if result else "no CONNACK"

    with running_mosquitto(conf, (tls_port, plain_port), tmp_path / "mosquitto.log"):
        anonymous, code = tls_connect(None)
        assert code == "Not authorized"
        anonymous.disconnect()  # type: ignore[attr-defined]

        async def federation() -> list[str]:
            update = topics.update_topic("tls-run", "alice")
            broker = SecuredBroker("127.0.0.1", plain_port, passwords)
            async with connected(broker, AGG, f"tls-run.{AGGREGATOR}", update) as agg:
                alice, code = tls_connect("alice")
                assert code == "Success"
                info = alice.publish(update, b"{}", qos=1)  # type: ignore[attr-defined]
                deadline = time.monotonic() + WAIT_S
                while not info.is_published() and time.monotonic() < deadline:
                    alice.loop(0.1)  # type: ignore[attr-defined]
                alice.disconnect()  # type: ignore[attr-defined]
                return topics_of(await read_until(agg, update))

        assert asyncio.run(federation()) == [topics.update_topic("tls-run", "alice")]
