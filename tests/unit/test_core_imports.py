"""The pure core imports no I/O library: checked in a fresh interpreter, so nothing else has imported them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE = ["fedbus.protocol.codec", "fedbus.protocol.topics", "fedbus.protocol.dedup", "fedbus.aggregator.rounds",
        "fedbus.aggregator.stream", "fedbus.aggregator.strategies", "fedbus.scenario.loader", "fedbus.faults.link",
        "fedbus.faults.behaviour", "fedbus.surrogate.model", "fedbus.client.core", "fedbus.tasks",
        "fedbus.tasks.federation", "fedbus.llm.engine", "fedbus.scenario.engine", "fedbus.aggregator.llm_merge",
        "fedbus.aggregator.session", "fedbus.client.session", "fedbus.client.optimizer", "fedbus.plan",
        "fedbus.plugins"]
# The simulator is the sibling of the MQTT runtime: it stands on the sessions, never on fedbus.runtime
SIMULATOR = ["fedbus.sim.run", "fedbus.sim.client", "fedbus.sim.broker"]
FORBIDDEN = ["asyncio", "aiomqtt", "paho", "iotcore", "aiohttp", "structlog", "textgrad", "litellm", "socket",
             "threading"]


@pytest.mark.parametrize("module", CORE)
def test_the_core_stays_pure(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{module} pulls in I/O libraries"


def test_the_check_can_fail() -> None:
    """The same probe sees an I/O module when one is imported."""
    code = ("import sys, json, fedbus.runtime.bus; "
            f"print(json.dumps(sorted(m for m in {FORBIDDEN!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "aiomqtt" in json.loads(out.stdout)


@pytest.mark.parametrize("module", SIMULATOR)
def test_the_simulator_needs_no_network_library_nor_the_runtime(module: str) -> None:
    """Importing the simulator loads no MQTT, HTTP or asyncio library and nothing from fedbus.runtime."""
    code = (f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m in {FORBIDDEN!r} "
            "or m.startswith('fedbus.runtime'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{module} pulls in the runtime or an I/O library"


def test_a_simulation_loads_only_what_it_runs() -> None:
    """`fedbus run --simulate` starts in a fraction of a second, a tenth of it importing: its modules load no key
    file or join token code, no LLM engine, no task generator it does not use, no statistics (decimal, fractions),
    and not cryptography's key serialization. Each of the packages still gives every name it lists."""
    unwanted = ["fedbus.security.keyfiles", "fedbus.security.token", "fedbus.llm", "fedbus.tasks.generate",
                "fedbus.tasks.answers", "statistics", "cryptography.hazmat.primitives.serialization"]
    code = ("import sys, json, fedbus.cli, fedbus.scenario.loader, fedbus.sim.run, fedbus.results.summary; "
            f"print(json.dumps(sorted(m for m in {unwanted!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    code = ("import json, fedbus, fedbus.security, fedbus.tasks, fedbus.scenario; "
            "sub = [fedbus.security.token.__name__, fedbus.tasks.word_problems.__name__]; "  # before names load them
            "packages = (fedbus, fedbus.security, fedbus.tasks, fedbus.scenario); "
            "missing = [f'{p.__name__}.{n}' for p in packages for n in p.__all__ if getattr(p, n, None) is None]; "
            "unlisted = [f'{p.__name__}.{n}' for p in packages for n in p.__all__ if n not in dir(p)]; "
            "print(json.dumps([missing, unlisted, sub]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], [], ["fedbus.security.token", "fedbus.tasks.word_problems"]]


def test_the_runtime_does_not_import_the_simulator() -> None:
    """The MQTT runtime and the simulator are siblings: neither imports the other."""
    code = ("import sys, json, fedbus.runtime.run, fedbus.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fedbus.sim'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_environment_variables_are_read_in_the_cli_only() -> None:
    """Configuration flows one way: only fedbus/cli.py touches os.environ, besides textgrad_engine.py, which sets
    what textgrad reads at import (to contain it), and a worker process's entry point (its process's cli.py: the
    key of the run's LLM engine, by the name the scenario gives)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "fedbus"

    def touches_environ(path: Path) -> bool:
        return any(isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                   and isinstance(node.value, ast.Name) and node.value.id == "os"
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))

    readers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if touches_environ(p))
    assert readers == ["cli.py", "llm/textgrad_engine.py", "runtime/worker_process.py"], readers


def test_a_client_process_loads_neither_rich_nor_the_aggregator() -> None:
    """What `fedbus client` imports before it connects: no rich (structlog.dev would pull it in, ~80 modules, when
    installed; the test extras install it) and none of the aggregator's modules (a client plans nothing). rich
    stays importable for whoever wants it afterwards."""
    import importlib.util

    if importlib.util.find_spec("rich") is None:
        pytest.skip("rich is not installed here: nothing to keep out")
    code = ("import sys, json, fedbus.cli, fedbus.runtime.client_node, fedbus.security.token; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'rich' or m.startswith('fedbus.aggregator')"
            " or m == 'fedbus.plan'); import rich; print(json.dumps(loaded))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
