"""`await fedbus.run(...)` inside an app, over the embedded broker: it prints nothing unless asked (it printed a dozen
structlog lines to stdout, every level, and the CLI's last line to stderr), and its log records go to the standard
logging tree, where the app's own handlers show them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
APP = """
import asyncio, logging, sys
import fedbus
if sys.argv[3] == "app-logging":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="APP %(name)s %(levelname)s %(message)s")
if sys.argv[3] == "app-structlog":  # an app that uses structlog as it comes, unconfigured
    import structlog
    import fedbus.runtime.run  # fedbus's modules loaded before the run
    structlog.get_logger("app").info("app before")
summary = asyncio.run(fedbus.run(sys.argv[1], sys.argv[2], progress=sys.argv[3] == "progress"))
if sys.argv[3] == "app-structlog":
    structlog.get_logger("app").info("app after")
print("status", summary["status"], file=sys.stderr)
"""


def _app(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    out = tmp_path / mode
    done = subprocess.run([sys.executable, "-c", APP, str(QUICKSTART), str(out), mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    return done


def test_a_run_through_the_library_prints_nothing_unless_asked(tmp_path: Path) -> None:
    quiet = _app(tmp_path, "quiet")
    assert quiet.stdout == "" and quiet.stderr == "status completed\n", (quiet.stdout[-2000:], quiet.stderr[-2000:])
    shown = _app(tmp_path, "progress")
    assert shown.stdout.startswith("fedbus run quickstart-") and "completed: 3 rounds" in shown.stdout, shown.stdout


def test_a_run_through_the_library_logs_to_the_apps_logging_handlers(tmp_path: Path) -> None:
    logged = _app(tmp_path, "app-logging")
    assert logged.stdout == "", logged.stdout[-2000:]
    lines = logged.stderr.splitlines()
    assert any(line.startswith("APP fedbus.run INFO run started") for line in lines), logged.stderr[-2000:]
    assert any(line.startswith("APP fedbus.aggregator INFO round opened") for line in lines), logged.stderr[-2000:]


def test_a_run_through_the_library_leaves_an_apps_own_structlog_as_it_was(tmp_path: Path) -> None:
    """An app using structlog unconfigured: fedbus.run configured structlog for the whole process, and the app's own
    records after the run went nowhere. The app's set-up is left alone (fedbus's records go where the app's go)."""
    logged = _app(tmp_path, "app-structlog")
    assert "app before" in logged.stdout and "app after" in logged.stdout, (logged.stdout[-2000:], logged.stderr)
