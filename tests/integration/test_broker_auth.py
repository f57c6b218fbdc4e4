"""Broker logins and TLS against the real embedded rumqttd: who gets in, over what, and where a password
never shows up.

The certificate authority and the broker's certificate are made here with ``cryptography``: nothing is
downloaded at test time.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedbus.errors import TransportError
from fedbus.runtime.address import BrokerAddress, parse_broker_url
from fedbus.runtime.broker import BrokerTls, EmbeddedBroker, EmbeddedBrokerConfig, free_port, parse_users
from fedbus.runtime.bus import REFUSED, MqttBus
from tests.conftest import ROOT

FEDBUS = [sys.executable, "-m", "fedbus"]
USER, PASSWORD = "alice", "pw-Tr0ub4dor-7f3c9a"  # distinctive: searched for in every output of a run
ODD_USER, ODD_PASSWORD = "carol.ü", 'q"uo\\te #=[x] pässwörd'  # survives TOML quoting
REFUSED_WITHIN_S = 12.0  # a refused login ends at once, not after the bus's 20 s CONNACK timeout


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the broker's certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a broker certificate it signed for localhost and 127.0.0.1, and an unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca = _ca("fedbus test CA", now)
    _other_key, other = _ca("some other CA", now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = Pki(ca=folder / "ca.pem", cert=folder / "broker.pem", key=folder / "broker.key",
                other_ca=folder / "other-ca.pem")
    paths.ca.write_bytes(ca.public_bytes(pem))
    paths.other_ca.write_bytes(other.public_bytes(pem))
    paths.cert.write_bytes(cert.public_bytes(pem))
    paths.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths.key.chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded rumqttd with two users, plain MQTT on loopback."""
    config = EmbeddedBrokerConfig(users=((USER, PASSWORD), (ODD_USER, ODD_PASSWORD)))
    with EmbeddedBroker(config, workdir=tmp_path_factory.mktemp("auth-broker")) as broker:
        yield broker


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded rumqttd with one user and TLS, as `fedbus run` would start it (with its own clients)."""
    config = EmbeddedBrokerConfig(users=((USER, PASSWORD),),
                                  tls=BrokerTls(cert_file=pki.cert, key_file=pki.key, ca_file=pki.ca))
    with EmbeddedBroker(config, workdir=tmp_path_factory.mktemp("tls-broker")) as broker:
        yield broker


async def round_trip(address: BrokerAddress, topic: str) -> bytes:
    """Subscribe on one connection, publish on another, return what arrived."""
    async with MqttBus(address, f"{topic.replace('/', '-')}.sub", clean_session=True) as sub, \
            MqttBus(address, f"{topic.replace('/', '-')}.pub", clean_session=True) as pub:
        await sub.subscribe(topic)
        await pub.publish(topic, b"hello over a login")

        async def take() -> bytes:
            async for incoming in sub.messages():
                return incoming.payload
            raise AssertionError("the connection ended")

        return await asyncio.wait_for(take(), 30)


async def refusal(address: BrokerAddress) -> str:
    """The TransportError connecting to ``address`` ends with, which must come quickly."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransportError) as caught:
        async with MqttBus(address, "refused-probe", clean_session=True):
            pass
    assert loop.time() - started < REFUSED_WITHIN_S
    return str(caught.value)


# -- addresses and users files: pure ---------------------------------------------------------------------------


def test_mqtts_url_defaults_to_8883_and_carries_its_ca() -> None:
    """mqtts:// means TLS on port 8883; ca= names the CA bundle, and url() gives back the same address."""
    address = parse_broker_url("mqtts://alice@broker.example:8883?ca=/etc/fedbus/ca.pem")
    assert (address.tls, address.port, address.username, address.ca_file) == (True, 8883, "alice",
                                                                                 "/etc/fedbus/ca.pem")
    assert parse_broker_url("mqtts://broker.example").port == 8883
    assert parse_broker_url("mqtt://broker.example").port == 1883
    assert parse_broker_url(address.url()) == address


def test_password_is_redacted_everywhere_but_the_unredacted_url() -> None:
    """A password shows in neither repr nor url(); url(redact=False) carries it whole (for worker processes)."""
    address = BrokerAddress(host="h", port=1, username="a b", password="p@ss:w/rd")
    assert "p@ss" not in repr(address) and "p@ss" not in address.url()
    assert parse_broker_url(address.url(redact=False)) == address
    with pytest.raises(TransportError) as caught:
        parse_broker_url("ftp://alice:hunter2@h:1")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("url", "why"), [
    ("mqtt://h:1?ca=/x.pem", "needs TLS"),
    ("mqtts://h:1?cafile=/x.pem", "only query parameter"),
    ("mqtts://h:1?ca=", "only query parameter"),
    ("mqtt://:secret@h:1", "needs a user name"),
])
def test_broker_url_mistakes_are_named(url: str, why: str) -> None:
    """A CA on plain MQTT, an unknown parameter, or a password without a user is refused, saying which."""
    with pytest.raises(TransportError, match=why):
        parse_broker_url(url)


def test_a_ca_file_is_added_resolved_and_only_to_tls(tmp_path: Path) -> None:
    """--ca joins an mqtts:// address as an absolute path (worker processes and --resume find it); mqtt:// refuses."""
    address = parse_broker_url("mqtts://alice@h").with_login(password="pw", ca_file=tmp_path / "ca.pem")
    assert address.ca_file == str((tmp_path / "ca.pem").resolve()) and address.password == "pw"
    with pytest.raises(TransportError, match="needs TLS"):
        parse_broker_url("mqtt://alice@h").with_login(ca_file=tmp_path / "ca.pem")


def test_users_file_lines_and_mistakes() -> None:
    """username:password lines, comments skipped, ':' allowed in passwords; a mistake names its line, not the
    password."""
    assert parse_users("# who may log in\nalice:pw:with:colons\n\nbob:x\n") == (
        ("alice", "pw:with:colons"), ("bob", "x"))
    for text, why in [("alice\n", "line 1: expected username:password"), ("a:1\na:2\n", "line 2: user 'a'"),
                      ("a b:secret-1\n", "line 1: user name"), ("alice:\n", "empty password"),
                      ("# nobody\n", "no username:password")]:
        with pytest.raises(ValueError, match=why) as caught:
            parse_users(text)
        assert "secret-1" not in str(caught.value)


# -- the embedded rumqttd with users ---------------------------------------------------------------------------


async def test_anonymous_client_is_refused_at_once(auth_broker: EmbeddedBroker) -> None:
    """A broker with users gives an anonymous client no session, and the bus says why within seconds."""
    assert REFUSED in await refusal(auth_broker.public_address)


async def test_wrong_password_is_refused_at_once(auth_broker: EmbeddedBroker) -> None:
    """The right user with a wrong password gets no session; the message does not repeat the password."""
    wrong = BrokerAddress(host="127.0.0.1", port=auth_broker.port, username=USER, password="not-it-42")
    message = await refusal(wrong)
    assert REFUSED in message and "not-it-42" not in message


async def test_right_password_carries_messages(auth_broker: EmbeddedBroker) -> None:
    """The configured user and password connect, subscribe and receive what another connection published."""
    alice = BrokerAddress(host="127.0.0.1", port=auth_broker.port, username=USER, password=PASSWORD)
    assert await round_trip(alice, "auth/plain") == b"hello over a login"


async def test_names_and_passwords_with_quotes_and_non_ascii_log_in(auth_broker: EmbeddedBroker) -> None:
    """A password with quotes, a backslash, '#', '=' and non-ASCII letters reaches rumqttd intact."""
    carol = BrokerAddress(host="127.0.0.1", port=auth_broker.port, username=ODD_USER, password=ODD_PASSWORD)
    assert await round_trip(carol, "auth/odd") == b"hello over a login"


async def test_own_clients_have_a_login_of_their_own(auth_broker: EmbeddedBroker) -> None:
    """`fedbus run`'s own aggregator and clients log in with a random login the users file does not hold."""
    own = auth_broker.address
    assert own.username not in (None, USER) and own.password not in (None, PASSWORD)
    assert await round_trip(own, "auth/own") == b"hello over a login"


def test_rendered_toml_holds_the_passwords_so_it_is_private(auth_broker: EmbeddedBroker) -> None:
    """rumqttd reads the passwords from its TOML: fedbus writes that file readable by its owner only."""
    assert stat.S_IMODE(auth_broker.config_path.stat().st_mode) == 0o600
    assert f'"{USER}" = "{PASSWORD}"' in auth_broker.config_path.read_text(encoding="utf-8")


# -- TLS --------------------------------------------------------------------------------------------------------


async def test_tls_with_the_ca_carries_messages(tls_broker: EmbeddedBroker, pki: Pki) -> None:
    """mqtts:// with the CA that signed the broker's certificate connects, logs in and carries messages."""
    address = BrokerAddress(host="127.0.0.1", port=tls_broker.port, username=USER, password=PASSWORD, tls=True,
                            ca_file=str(pki.ca))
    assert address.url().startswith("mqtts://alice:***@127.0.0.1:")
    assert await round_trip(address, "auth/tls") == b"hello over a login"


@pytest.mark.parametrize("ca", ["system", "other"])
async def test_tls_without_the_ca_is_refused(tls_broker: EmbeddedBroker, pki: Pki, ca: str) -> None:
    """A client that trusts only the system's CAs, or another CA, does not accept the broker's certificate."""
    address = BrokerAddress(host="127.0.0.1", port=tls_broker.port, username=USER, password=PASSWORD, tls=True,
                            ca_file=str(pki.other_ca) if ca == "other" else None)
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        async with MqttBus(address, "tls-untrusted", clean_session=True):
            pass


async def test_plain_mqtt_to_a_tls_listener_fails(tls_broker: EmbeddedBroker) -> None:
    """Plain MQTT to the TLS port gets no session."""
    address = BrokerAddress(host="127.0.0.1", port=tls_broker.port, username=USER, password=PASSWORD)
    await refusal(address)


async def test_own_clients_of_a_tls_broker_use_a_private_loopback_listener(tls_broker: EmbeddedBroker) -> None:
    """fedbus's own connections go to a plain loopback listener, so they never depend on the certificate's names;
    that listener too wants a login."""
    own = tls_broker.address
    assert own.port != tls_broker.port and own.host == "127.0.0.1" and not own.tls
    assert await round_trip(own, "auth/tls-own") == b"hello over a login"
    await refusal(BrokerAddress(host="127.0.0.1", port=own.port, username=USER, password=PASSWORD))


def test_a_certificate_that_does_not_match_its_key_is_refused_at_the_door(pki: Pki) -> None:
    """BrokerTls.check() loads the pair as a TLS server would, before rumqttd could fail at start-up."""
    with pytest.raises(ValueError, match="certificate"):
        BrokerTls(cert_file=pki.ca, key_file=pki.key).check()


# -- the fedbus command -----------------------------------------------------------------------------------------


def _environ(changes: dict[str, str | None] | None) -> dict[str, str]:
    """This process's environment with ``changes`` (None: unset); the password variable unset unless given."""
    merged: dict[str, str | None] = {**os.environ, "FEDBUS_BROKER_PASSWORD": None, **(changes or {})}
    return {key: value for key, value in merged.items() if value is not None}


def _fedbus(*args: str, env: dict[str, str | None] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDBUS, *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=_environ(env))


def test_fedbus_broker_on_all_interfaces_without_users_is_refused() -> None:
    """`fedbus broker --host 0.0.0.0` with nobody to log in is refused: one line, exit code 2."""
    done = _fedbus("broker", "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "refusing to start" in done.stderr and "--insecure" in done.stderr


def test_fedbus_broker_user_without_a_password_is_refused() -> None:
    """--user NAME with no --password-file and no $FEDBUS_BROKER_PASSWORD is refused before anything starts."""
    done = _fedbus("broker", "--user", USER, "--port", "0")
    assert done.returncode == 2 and "FEDBUS_BROKER_PASSWORD" in done.stderr


class _Serving:
    """A `fedbus broker` process, stopped with Ctrl+C."""

    def __init__(self, *args: str, env: dict[str, str | None] | None = None) -> None:
        self.process = subprocess.Popen([*FEDBUS, "broker", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=_environ(env))
        assert self.process.stdout is not None
        self.first_line = self.process.stdout.readline()
        assert "listening" in self.first_line, self.process.communicate(timeout=30)

    def stop(self) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=60)
        return self.process.returncode, self.first_line + out, err


def test_fedbus_broker_insecure_starts_with_a_warning() -> None:
    """With --insecure, the open broker on 0.0.0.0 starts, and stderr says out loud that it is open."""
    broker = _Serving("--host", "0.0.0.0", "--port", str(free_port()), "--insecure")
    code, out, err = broker.stop()
    assert code == 0 and "anonymous" in out
    assert "warning: --insecure" in err and "anyone who can reach it" in err


def _run_outputs(out: Path) -> dict[str, str]:
    return {name: (out / name).read_text(encoding="utf-8")
            for name in ("events.jsonl", "summary.json", "checkpoint.json")}


@pytest.mark.slow  # a broker and a whole `fedbus run`: 2-4 s
def test_a_run_logs_in_to_an_authenticated_broker_and_never_shows_the_password(tmp_path: Path) -> None:
    """`fedbus run --broker mqtt://alice@...` with the password in $FEDBUS_BROKER_PASSWORD completes against a
    `fedbus broker --user alice`, and the password is in no output or file of the run."""
    port = free_port()
    env: dict[str, str | None] = {"FEDBUS_BROKER_PASSWORD": PASSWORD}
    broker = _Serving("--user", USER, "--port", str(port), env=env)
    try:
        out = tmp_path / "run"
        done = _fedbus("run", "scenarios/quickstart.yaml", "--broker", f"mqtt://{USER}@127.0.0.1:{port}",
                       "--out", str(out), env=env, timeout=300)
    finally:
        code, broker_out, broker_err = broker.stop()
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed" and summary["broker"]["url"] == f"mqtt://{USER}:***@127.0.0.1:{port}"
    seen = {"stdout": done.stdout, "stderr": done.stderr, "broker stdout": broker_out, "broker stderr": broker_err,
            **_run_outputs(out)}
    assert [name for name, text in seen.items() if PASSWORD in text] == []
    assert code == 0


@pytest.mark.slow  # a broker and a whole `fedbus run` with a worker process: 2.5-5 s
def test_a_run_over_tls_reaches_its_worker_processes(tmp_path: Path, pki: Pki) -> None:
    """`fedbus run --broker mqtts://alice@... --ca CA --password-file F --workers 1` completes against a TLS
    `fedbus broker --users FILE`: the TLS settings and the login reach the worker process's clients too."""
    port = free_port()
    users, password_file = tmp_path / "users", tmp_path / "password"
    users.write_text(f"# test users\n{USER}:{PASSWORD}\nbob:another-{PASSWORD}\n", encoding="utf-8")
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    for path in (users, password_file):
        path.chmod(0o600)
    broker = _Serving("--users", str(users), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                      "--tls-ca", str(pki.ca), "--port", str(port))
    assert f"mqtts://USER@HOST:{port} --ca {pki.ca}" in broker.first_line
    try:
        out = tmp_path / "run"
        done = _fedbus("run", "scenarios/quickstart.yaml", "--broker", f"mqtts://{USER}@127.0.0.1:{port}",
                       "--ca", str(pki.ca), "--password-file", str(password_file), "--workers", "1",
                       "--out", str(out), timeout=300)
    finally:
        code, broker_out, broker_err = broker.stop()
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed" and summary["client_processes"] == 1
    assert summary["broker"]["url"].startswith(f"mqtts://{USER}:***@127.0.0.1:{port}?ca=")
    seen = {"stdout": done.stdout, "stderr": done.stderr, "broker stdout": broker_out, "broker stderr": broker_err,
            **_run_outputs(out)}
    assert [name for name, text in seen.items() if PASSWORD in text] == []
    assert code == 0


def test_fedbus_client_with_a_wrong_password_stops_at_once(auth_broker: EmbeddedBroker) -> None:
    """`fedbus client` with a wrong password says the broker refused the login (exit 1), without the password."""
    done = _fedbus("client", "--broker", f"mqtt://{USER}@127.0.0.1:{auth_broker.port}", "--run", "r1",
                   env={"FEDBUS_BROKER_PASSWORD": "wrong-pw-913"}, timeout=60)
    assert done.returncode == 1 and "closed the connection before accepting it" in done.stderr
    assert "wrong-pw-913" not in done.stdout + done.stderr


def test_a_password_in_the_url_works_but_is_warned_about(auth_broker: EmbeddedBroker) -> None:
    """A password inside --broker still logs in, with a warning that `ps` shows it to every user."""
    done = _fedbus("client", "--broker", f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{auth_broker.port}", "--run",
                   "r1", "--aggregator-timeout", "0.5", "--quiet", timeout=60)
    assert "visible to every user" in done.stderr and "closed the connection" not in done.stderr
    assert PASSWORD not in done.stdout + done.stderr


# -- `fedbus run`'s embedded broker -----------------------------------------------------------------------------


def test_fedbus_run_embedded_broker_on_all_interfaces_without_users_is_refused(tmp_path: Path) -> None:
    """`fedbus run --broker-host 0.0.0.0` with nobody to log in is refused before anything starts."""
    done = _fedbus("run", "scenarios/quickstart.yaml", "--broker-host", "0.0.0.0", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "refusing to start" in done.stderr and not (tmp_path / "run").exists()


def test_fedbus_run_embedded_options_do_not_go_with_an_external_broker(tmp_path: Path) -> None:
    """--users configures the embedded broker: with --broker it is a mistake, said in one line."""
    users = tmp_path / "users"
    users.write_text(f"{USER}:{PASSWORD}\n", encoding="utf-8")
    done = _fedbus("run", "scenarios/quickstart.yaml", "--broker", "mqtt://127.0.0.1:1", "--users", str(users))
    assert done.returncode == 2 and "configure the embedded broker" in done.stderr


@pytest.mark.slow  # a whole `fedbus run` with a worker process: 2.5-5 s
def test_fedbus_run_serves_its_embedded_broker_with_users_and_tls(tmp_path: Path, pki: Pki) -> None:
    """`fedbus run --broker-host 0.0.0.0 --users F --tls-cert ... --workers 1` completes: its own aggregator,
    clients and worker process log in with a login of their own; the recorded URL is the public mqtts:// one,
    and the users' password is in no output or file of the run but the private rumqttd.toml."""
    users = tmp_path / "users"
    users.write_text(f"{USER}:{PASSWORD}\n", encoding="utf-8")
    users.chmod(0o600)
    out = tmp_path / "run"
    done = _fedbus("run", "scenarios/quickstart.yaml", "--broker-host", "0.0.0.0", "--users", str(users),
                   "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca), "--workers", "1",
                   "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed" and summary["client_processes"] == 1
    assert summary["broker"]["url"].startswith("mqtts://127.0.0.1:") and f"?ca={pki.ca}" in summary["broker"]["url"]
    toml = Path(summary["broker"]["config"])
    assert stat.S_IMODE(toml.stat().st_mode) == 0o600 and PASSWORD in toml.read_text(encoding="utf-8")
    seen = {"stdout": done.stdout, "stderr": done.stderr, **_run_outputs(out)}
    assert [name for name, text in seen.items() if PASSWORD in text] == []
