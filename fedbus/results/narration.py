"""What a remote ``fedbus client`` prints: one line per thing that matters to the person running it.

The client's events (the same ones ``fedbus run`` writes to events.jsonl) become lines such as
``12:03:04 round 3: update accepted``; events without a line are only counted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from fedbus.results.eventlog import EventLog

Line = Callable[[dict[str, Any]], str | None]


def _round(fields: dict[str, Any]) -> str:
    return f"round {fields.get('round', '?')}"


def _connected(f: dict[str, Any]) -> str:
    return "connected to the broker" if f.get("n", 1) == 1 else f"reconnected to the broker (connection {f['n']})"


def _disconnected(f: dict[str, Any]) -> str | None:
    if not f.get("abrupt"):
        return None
    if f.get("back_at") is None:  # leaving for good (given up on a silent aggregator, a crash with no rejoin)
        return f"connection closed ({f.get('reason', '')})"
    return f"connection lost ({f.get('reason', '')}); reconnecting"


LINES: dict[str, Line] = {
    "connected": _connected,
    "disconnected": _disconnected,
    "reconnect-wait": lambda f: f"broker unreachable, retrying: {f.get('reason', '')}" if f.get("attempt") == 1
    else None,
    "received": lambda f: f"{_round(f)}: task received" if f.get("kind") == "task" else None,
    "sent": lambda f: f"{_round(f)}: update sent ({f.get('prompt_chars', '?')} characters)"
    if f.get("kind") == "update" else None,
    "update-accepted": lambda f: f"{_round(f)}: update accepted",
    "update-rejected": lambda f: f"{_round(f)}: update rejected: {f.get('reason', '')}"
                                 + (f" ({f['detail']})" if f.get("detail") else ""),
    "local-failed": lambda f: f"{_round(f)}: local step failed: {f.get('detail', '')}",
    "send-refused": lambda f: f"{_round(f)}: update not sent: {f.get('reason', '')}",
    "prompt-cut": lambda f: f"{_round(f)}: prompt cut to the run's limit ({f.get('detail', '')})",
    "aggregator-offline": lambda f: "the aggregator went offline; waiting for it to come back",
    "aggregator-online": lambda f: "the aggregator is online",
}


class Narrator(EventLog):
    """An event log (file optional) that also prints a line for each event a person wants to see."""

    def __init__(self, path: Path | None = None, *, prefix: str = "", stream: TextIO | None = None) -> None:
        super().__init__(path)
        self.prefix = prefix
        self.stream = stream or sys.stdout

    def record(self, event: str, /, **fields: Any) -> None:
        super().record(event, **fields)
        self._say(event, fields)

    def record_at(self, t: float, event: str, /, **fields: Any) -> None:
        super().record_at(t, event, **fields)
        self._say(event, fields)

    def _say(self, event: str, fields: dict[str, Any]) -> None:
        line = LINES.get(event)
        text = line(fields) if line is not None else None
        if text:
            print(f"{time.strftime('%H:%M:%S')} {self.prefix}{text}", file=self.stream, flush=True)
