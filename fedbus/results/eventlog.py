"""events.jsonl: one JSON object per line for every message sent or received and every decision."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


class EventLog:
    """Appends events to a JSONL file; ``t`` is seconds since the log was opened, or ``clock()`` if given
    (the simulator passes its virtual clock, which makes the log a pure function of scenario and seed)."""

    def __init__(self, path: Path | None, clock: Callable[[], float] | None = None) -> None:
        self.started = time.monotonic()  # t = 0 on time.monotonic(), which other processes share
        self._clock = clock or (lambda: time.monotonic() - self.started)
        self._path = path
        self._file: IO[str] | None = None
        self.count = 0
        self.counts: Counter[str] = Counter()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8", buffering=1)  # line-buffered: tail -f works

    def record(self, event: str, **fields: Any) -> None:
        self.count += 1
        self.counts[event] += 1
        if self._file is None:
            return
        line = {"t": round(self._clock(), 6), "event": event, **fields}
        self._file.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")

    def absorb(self, part: Path) -> int:
        """Append the events of another process's log (a worker's part) and count them; return how many."""
        if not part.exists():
            return 0
        lines = part.read_text(encoding="utf-8").splitlines()
        for line in lines:
            self.count += 1
            self.counts[json.loads(line).get("event", "")] += 1
        if self._file is not None and lines:
            self._file.write("\n".join(lines) + "\n")
        return len(lines)

    def sort_by_time(self) -> None:
        """Order the written log by ``t`` (stable), after parts from other processes were absorbed."""
        if self._path is None:
            return
        self.close()
        lines = self._path.read_text(encoding="utf-8").splitlines()
        lines.sort(key=lambda line: float(json.loads(line)["t"]))
        self._path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
