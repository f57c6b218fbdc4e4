"""Logging set-up (fedbus/logs.py): aiomqtt's per-publish warnings stay out of the user's terminal even when
aiomqtt is imported after the set-up (its import sets its logger's level back to WARNING)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import logging
from fedbus.logs import configure
configure("INFO", json_lines=True)
import aiomqtt  # after configure, as in `fedbus run` and its worker processes
logging.getLogger("mqtt").warning("There are 11 pending publish calls.")
logging.getLogger("mqtt").error("a real mqtt error")
logging.getLogger("fedbus.test").warning("a fedbus warning")
"""


def test_aiomqtt_warnings_are_dropped_and_errors_and_fedbus_warnings_kept() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert "pending publish" not in done.stderr
    assert "a real mqtt error" in done.stderr and "a fedbus warning" in done.stderr
