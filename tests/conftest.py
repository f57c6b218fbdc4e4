"""Shared fixtures: real brokers (the embedded rumqttd and a mosquitto) on free loopback ports."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "broker-config" / "mosquitto.conf"


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (Path("/usr/sbin/mosquitto").exists() and "/usr/sbin/mosquitto")
    if not found:
        subprocess.run(["bash", str(ROOT / "scripts" / "install-mosquitto.sh")], check=False)
        found = shutil.which("mosquitto") or (Path("/usr/sbin/mosquitto").exists() and "/usr/sbin/mosquitto")
    if not found:
        pytest.fail("mosquitto is not installed and scripts/install-mosquitto.sh could not install it")
    return str(found)


def mosquitto_test_conf(port: int, workdir: Path) -> str:
    """broker-config/mosquitto.conf, moved to a loopback port and a private persistence directory."""
    text = MOSQUITTO_CONF.read_text(encoding="utf-8")
    text = re.sub(r"^listener .*$", f"listener {port} 127.0.0.1", text, flags=re.M)
    return re.sub(r"^persistence_location .*$", f"persistence_location {workdir}/", text, flags=re.M)


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[BrokerAddress]:
    """The embedded rumqttd, as `fedbus run` configures it."""
    with EmbeddedBroker() as broker:
        yield broker.address


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerAddress]:
    """A real mosquitto started from broker-config/mosquitto.conf on a free loopback port."""
    binary = _mosquitto_binary()
    workdir = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_test_conf(port, workdir), encoding="utf-8")
    log = (workdir / "mosquitto.log").open("w")
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port)
        yield BrokerAddress(host="127.0.0.1", port=port)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> BrokerAddress:
    """Each bus test runs once against the embedded rumqttd and once against mosquitto."""
    name = "embedded_broker" if request.param == "embedded" else "mosquitto_broker"
    address: BrokerAddress = request.getfixturevalue(name)
    return address


@pytest.fixture
def run_id() -> str:
    """A unique run id, so tests never see each other's retained or queued messages."""
    return f"t-{uuid.uuid4().hex[:12]}"
