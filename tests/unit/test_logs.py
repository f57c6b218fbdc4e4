"""Logging set-up (fedbus/logs.py): aiomqtt's per-publish warnings and paho's socket failures (fedbus reports a
dropped connection itself) stay out of the user's terminal even when aiomqtt is imported after the set-up (its
import sets its logger's level back to WARNING)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import logging
from fedbus.logs import configure
configure("INFO", json_lines=True)
import aiomqtt  # after configure, as in `fedbus run` and its worker processes
logging.getLogger("mqtt").warning("There are 11 pending publish calls.")
logging.getLogger("mqtt").error("a real mqtt error")
logging.getLogger("mqtt").error("failed to receive on socket: %s", "[Errno 32] Broken pipe")  # paho, on a drop
logging.getLogger("fedbus.test").warning("a fedbus warning")
"""


def test_aiomqtt_warnings_are_dropped_and_errors_and_fedbus_warnings_kept() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert "pending publish" not in done.stderr and "Broken pipe" not in done.stderr
    assert "a real mqtt error" in done.stderr and "a fedbus warning" in done.stderr


LAZY = """
import logging, sys
from fedbus.logs import configure, get_logger
log = get_logger("fedbus.probe")  # before configure, as a module-level logger is
configure("INFO", json_lines=True)
assert "structlog" not in sys.modules, "configure alone loaded structlog"
log.warning("probe-event", answer=42)
assert "structlog" in sys.modules
logging.getLogger("fedbus.stdlib").warning("stdlib-line")
"""


def test_structlog_loads_on_first_use_and_takes_the_configuration() -> None:
    done = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=120, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    events = {line["event"]: line for line in lines}
    assert events["probe-event"]["answer"] == 42 and events["probe-event"]["level"] == "warning"
    assert "timestamp" in events["probe-event"] and "stdlib-line" in events


SIMULATE = """
import sys
from fedbus.cli import main
code = main(["run", sys.argv[1], "--simulate", "--quiet", "--out", sys.argv[2]])
assert code == 0, code
print(sorted(m for m in ("structlog", "asyncio") if m in sys.modules))
"""


def test_a_simulated_run_loads_neither_structlog_nor_asyncio(tmp_path: Path) -> None:
    scenario = Path(__file__).parents[2] / "scenarios" / "quickstart.yaml"
    done = subprocess.run([sys.executable, "-c", SIMULATE, str(scenario), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "summary.json").is_file()


PLUGIN = """
import sys
from fedbus.logs import configure
configure("INFO", json_lines=True)
assert "structlog" not in sys.modules
import structlog  # a plugin's own import, not through fedbus.logs
structlog.get_logger("plugin").warning("plugin-event", answer=7)
import importlib.resources
from fedbus import logs
assert not any(isinstance(f, logs._WhenImported) for f in sys.meta_path), "the hook stayed"
assert not isinstance(structlog.__loader__, logs._ThenConfigure), structlog.__loader__
assert any(p.name == "py.typed" for p in importlib.resources.files("structlog").iterdir())
print("stdout-marker")
"""


def test_structlog_imported_directly_by_a_plugin_still_takes_the_configuration() -> None:
    done = subprocess.run([sys.executable, "-c", PLUGIN], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "stdout-marker"  # nothing logged on stdout (structlog's default)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(line["event"], line["answer"], line["level"]) for line in lines] == [("plugin-event", 7, "warning")]
