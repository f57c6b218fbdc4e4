"""The embedded broker's configuration and life cycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from fedbus.runtime.broker import BrokerTls, EmbeddedBrokerConfig, free_port, render_toml
from tests.conftest import ROOT, wait_port

FEDBUS = [sys.executable, "-m", "fedbus"]


def test_toml_sets_every_limit_explicitly() -> None:
    """fedbus writes the rumqttd settings whose defaults cost messages (FACTS.md), not rumqttd's defaults."""
    text = render_toml(EmbeddedBrokerConfig(max_connections=12_345, max_payload_bytes=300_000), 4242)
    assert 'listen = "127.0.0.1:4242"' in text
    assert "max_connections = 12345" in text
    assert "max_payload_size = 300000" in text
    assert "next_connection_delay_ms = 0" in text
    assert "max_segment_count = 4" in text
    assert "connection_timeout_ms = 60000" in text


def test_connection_timeout_is_capped_for_rumqttd() -> None:
    """rumqttd rejects connection_timeout_ms above 65535, so the TOML caps it."""
    assert "connection_timeout_ms = 65535" in render_toml(EmbeddedBrokerConfig(connection_timeout_ms=90_000), 1)


def test_toml_carries_users_and_tls() -> None:
    """Users become rumqttd's auth table (quoted, so any name and password survive); TLS its tls table."""
    tls = BrokerTls(cert_file=Path("/certs/broker.pem"), key_file=Path("/certs/broker.key"),
                    ca_file=Path("/certs/ca.pem"))
    config = EmbeddedBrokerConfig(users=(("alice", 'quo"te\\back'), ("bob", "pässwörd")), tls=tls)
    listener = tomllib.loads(render_toml(config, 8883))["v4"]["1"]
    assert listener["connections"]["auth"] == {"alice": 'quo"te\\back', "bob": "pässwörd"}
    assert listener["tls"] == {"certpath": "/certs/broker.pem", "keypath": "/certs/broker.key",
                               "capath": "/certs/ca.pem"}
    text = render_toml(config, 8883)
    assert "[v4.2]" not in text  # no listener of fedbus's own unless asked


def test_toml_gives_own_clients_a_login_and_a_plain_loopback_listener() -> None:
    """fedbus's own clients log in as a login of their own; with TLS they get a plain listener on loopback,
    which only that login may use."""
    tls = BrokerTls(cert_file=Path("/c.pem"), key_file=Path("/k.pem"))
    config = EmbeddedBrokerConfig(host="0.0.0.0", users=(("alice", "pw"),), tls=tls)
    text = render_toml(config, 8883, own_login=("fedbus-own-1", "secret"), own_port=4000)
    public, own = text.split("[v4.2]")
    assert '"alice" = "pw"' in public and '"fedbus-own-1" = "secret"' in public and "[v4.1.tls]" in public
    assert 'listen = "127.0.0.1:4000"' in own and '"fedbus-own-1" = "secret"' in own
    assert '"alice"' not in own and "tls" not in own


def test_anonymous_broker_beyond_loopback_is_exposed() -> None:
    """Listening beyond loopback with no users is what `fedbus broker` refuses without --insecure."""
    assert EmbeddedBrokerConfig(host="0.0.0.0").exposure() is not None
    assert EmbeddedBrokerConfig(host="127.0.0.1").exposure() is None
    assert EmbeddedBrokerConfig(host="0.0.0.0", users=(("alice", "pw"),)).exposure() is None


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_until(condition: Callable[[], bool], wait_s: float = 120.0) -> bool:
    """Poll ``condition`` until it holds; ``wait_s`` only bounds a hang."""
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_broker_goes_away_when_fedbus_run_is_killed(tmp_path: Path) -> None:
    """SIGKILL `fedbus run`: its rumqttd child exits by itself instead of holding the port."""
    scenario = tmp_path / "slow.yaml"
    scenario.write_text(
        "name: slow\nrounds: 50\ntask: {train_size: 20, val_size: 5, test_size: 5}\n"
        "clients: {count: 2, local_steps: 1, step_latency_s: 1.0}\n", encoding="utf-8")
    proc = subprocess.Popen([*FEDBUS, "run", str(scenario), "--out", str(tmp_path / "out"), "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        events = tmp_path / "out" / "events.jsonl"  # opened before the broker starts; run-started comes after
        assert _wait_until(lambda: events.exists() and '"event":"run-started"' in events.read_text()), \
            "fedbus run never started"
        children = _children(proc.pid)
        assert children, "fedbus run has no broker child process"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
        assert _wait_until(lambda: not any(_alive(c) for c in children)), "the broker outlived fedbus run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fedbus_broker_serves_in_the_foreground_and_stops_on_ctrl_c() -> None:
    """`fedbus broker --port P` accepts MQTT connections, and SIGINT stops it with exit code 0."""
    port = free_port()
    proc = subprocess.Popen([*FEDBUS, "broker", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline()
        wait_port("127.0.0.1", port, timeout=60)
        from tests.rawmqtt import RawClient

        RawClient("127.0.0.1", port, "probe", clean_session=True).vanish()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(TimeoutError, match="nothing listens"):
        wait_port("127.0.0.1", port, timeout=1)
