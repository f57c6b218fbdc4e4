"""Bounded waits for tests that watch another process: poll a condition, fail naming what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], what: str, wait_s: float = 120.0) -> None:
    """Return once ``condition()`` holds; an AssertionError naming ``what`` after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {wait_s:g} s waiting for {what}")
