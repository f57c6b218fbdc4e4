"""Shared fixtures: real brokers (the embedded rumqttd and a mosquitto) on free loopback ports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from fedbus.llm.extras import installed, not_installed
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "broker-config" / "mosquitto.conf"

# Hypothesis profiles. A normal run loads none: every test keeps its own settings (the state machines run
# 200 examples each). bench/mutation.py sets FEDBUS_HYPOTHESIS_PROFILE=mutation, because it runs the fast
# tests once per mutant: fewer examples, a fixed seed (a repeatable score), and no shrinking (a failing
# example is all a kill needs).
settings.register_profile("mutation", max_examples=40, derandomize=True, database=None, deadline=None,
                          phases=(Phase.explicit, Phase.generate))
HYPOTHESIS_PROFILE = os.environ.get("FEDBUS_HYPOTHESIS_PROFILE", "")
if HYPOTHESIS_PROFILE:
    settings.load_profile(HYPOTHESIS_PROFILE)
    # The state machines pin their example count in SETTINGS_KW; under a chosen profile, the profile decides.
    from tests.stateful import SETTINGS_KW

    SETTINGS_KW["max_examples"] = settings.default.max_examples


def needs_library(library: str) -> pytest.MarkDecorator:
    """Skip where an optional library (textgrad, xllamacpp) is not installed, saying which extra installs it."""
    return pytest.mark.skipif(not installed(library), reason=not_installed(library))


# `slow` means more than about 3 s on an idle two-core machine (pytest --durations=0). Files of this change carry
# the mark themselves; these, in files other changes own, get it here: (module, test function or test id).
# tests/unit/test_markers.py checks that every entry still names a test.
SLOW_TESTS = {
    ("tests.e2e.test_scenarios", "test_scenario_on_the_embedded_broker"),  # a whole `fedbus run`: 1-4 s each
    ("tests.e2e.test_scenarios", "test_scenario_on_mosquitto"),
    ("tests.e2e.test_scenarios", "test_scenario_simulated[large-federation]"),  # 200 clients
    ("tests.e2e.test_cli_options", "test_strategy_and_no_cache_reach_an_llm_run"),  # an LLM run: imports textgrad
    ("tests.stateful.test_rounds_machine", "test_round_aggregator_state_machine"),  # 200 examples: 4-5 s
    ("tests.stateful.test_stream_machine", "test_buffered_aggregator_state_machine"),
    ("tests.stateful.test_stream_machine", "test_async_aggregator_state_machine"),
}


def _uses_mosquitto(item: pytest.Item) -> bool:
    """Whether ``item`` starts or talks to mosquitto: it asks for mosquitto_broker, or gets it through ``broker``."""
    if "mosquitto_broker" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("broker") == "mosquitto"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark what needs mosquitto from the fixtures each test uses (so the mark cannot drift from them), and
    the SLOW_TESTS slow."""
    for item in items:
        if _uses_mosquitto(item):
            item.add_marker(pytest.mark.mosquitto)
        module = getattr(item, "module", None)
        if module is not None and ({(module.__name__, item.name), (module.__name__, getattr(item, "originalname", ""))}
                                   & SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


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


def wait_port(host: str, port: int, timeout: float = 60.0) -> None:
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
