"""events.jsonl: one JSON object per line for every message sent or received and every decision."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

FLUSH_S = 0.05  # inside an event loop, a line reaches the file at most this long after it was recorded
# orjson writes a line in a fifth of json's time (a 1,000-client round, or a simulated one, records thousands).
# A value JSON has no type for is written as str() of it, dataclasses and datetimes too, as json.dumps(default=str)
# did; numpy's numbers as numbers; NaN and infinities as null (valid JSON, where json wrote a bare NaN). A line
# orjson refuses (an integer past 64 bits: a seed may be one) json writes.
_LINE = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME \
    | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
_FALLBACK = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


def encode_line(event: dict[str, Any]) -> str:
    """One events.jsonl line (newline included): compact JSON, UTF-8 as is."""
    return line_bytes(event).decode()


def line_bytes(event: dict[str, Any]) -> bytes:
    """:func:`encode_line`'s line as the UTF-8 bytes the log writes."""
    try:
        return orjson.dumps(event, default=str, option=_LINE)
    except TypeError:  # a lone surrogate (not Unicode text) is written as JSON's escape of it: the log takes any str
        return (_FALLBACK.encode(event) + "\n").encode("utf-8", "backslashreplace")


class EventLog:
    """Appends events to a JSONL file; ``t`` is seconds since the log was opened, or ``clock()`` if given
    (the simulator passes its virtual clock, which makes the log a pure function of scenario and seed).

    Outside an event loop every line reaches the file as it is recorded. Inside one (a run, its worker
    processes) lines are written in batches, at most ``FLUSH_S`` after they were recorded: a 1,000-client round
    records thousands, and a write per line cost more than the rest of the log's work. Readers that tail the
    file (the dashboard, ``fedbus watch``) see every line within that delay; :meth:`close` writes the rest."""

    def __init__(self, path: Path | None, clock: Callable[[], float] | None = None, *, append: bool = False,
                 batched: bool = False) -> None:
        # append: a resumed run goes on with the log it had, its ``t`` carrying on from the last line's
        # batched: outside an event loop too, lines reach the file in batches, at most FLUSH_S (wall) apart (the
        # simulator: it records as fast as it can, a line at a time would be a write per line)
        self._batched = batched
        self._flushed_at = time.monotonic()
        offset = _last_t(path) if append and path is not None else 0.0
        self.started = time.monotonic() - offset  # t = 0 on time.monotonic(), which other processes share
        self._clock = clock or (lambda: time.monotonic() - self.started)
        self._path = path
        self._file: IO[bytes] | None = None  # bytes: orjson writes them, and a text layer would only re-encode
        self.count = 0
        self.counts: Counter[str] = Counter()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                self._count_existing(path)
            self._file = path.open("ab" if append else "wb", buffering=1 << 16)
            if append and self._file.tell() > 0 and not path.read_bytes().endswith(b"\n"):
                self._file.write(b"\n")  # end the line a kill cut short; readers skip it
                self._file.flush()
        self._flush_due = False

    def now(self) -> float:
        """The ``t`` an event recorded at this moment gets."""
        return self._clock()

    def record(self, event: str, /, **fields: Any) -> None:
        self._write(None, event, fields)

    def record_at(self, t: float, event: str, /, **fields: Any) -> None:
        """Record an event that happened at ``t`` (an earlier :meth:`now`): a message is ``sent`` when it was
        handed to the connection, not when the broker's acknowledgement came back, which a busy process may
        read only after the receiver has logged it. One clock for every process then orders each send before
        its receipt."""
        self._write(t, event, fields)

    def _write(self, t: float | None, event: str, fields: dict[str, Any]) -> None:
        self.count += 1
        self.counts[event] += 1
        if self._file is None:
            return
        line = {"t": round(self._clock() if t is None else t, 6), "event": event, **fields}
        self._file.write(line_bytes(line))
        if not self._flush_due:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush now outside an event loop; inside one, once, ``FLUSH_S`` from now (with every line since)."""
        asyncio = sys.modules.get("asyncio")  # not imported: no event loop runs (the simulator never imports it)
        try:
            loop = asyncio.get_running_loop() if asyncio is not None else None
        except RuntimeError:
            loop = None
        if loop is None:
            if not self._batched or time.monotonic() - self._flushed_at >= FLUSH_S:
                self.flush()
            return
        self._flush_due = True
        loop.call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write what was recorded so far to the file."""
        self._flush_due = False
        self._flushed_at = time.monotonic()
        if self._file is not None:
            self._file.flush()

    def _count_existing(self, path: Path) -> None:
        if not path.exists():
            return
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    event = json.loads(line).get("event", "")
                except json.JSONDecodeError:
                    continue  # a line torn by a kill
                self.count += 1
                self.counts[event] += 1

    def absorb(self, part: Path) -> int:
        """Append the events of another process's log (a worker's part) and count them; return how many.
        A line a killed worker left torn is skipped."""
        if not part.exists():
            return 0
        lines = []
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines():
            event = _parsed(line)
            if event is None:
                continue
            lines.append(line)
            self.count += 1
            self.counts[event.get("event", "")] += 1
        if self._file is not None and lines:
            self._file.write(("\n".join(lines) + "\n").encode())
            self.flush()
        return len(lines)

    def merge(self, parts: list[Path]) -> int:
        """Absorb other processes' logs (worker parts) and order the whole log by ``t``, written whole to a new file
        that replaces this one (a reader tailing the log sees a new file, never a half-sorted one). Returns how
        many events came from the parts."""
        self.close()
        timed: list[tuple[float, str]] = []
        added = 0
        for part in parts:
            if part.exists():
                for t, event, line in _timed_lines(part):
                    added += 1
                    self.count += 1
                    self.counts[event] += 1
                    if t is not None:
                        timed.append((t, line))
        if self._path is not None:
            if self._path.exists():
                timed.extend((t, line) for t, _event, line in _timed_lines(self._path) if t is not None)
            timed.sort(key=lambda pair: pair[0])
            fresh = self._path.with_name(self._path.name + ".merging")
            fresh.write_text("".join(f"{line}\n" for _t, line in timed), encoding="utf-8")
            os.replace(fresh, self._path)
        return added

    def sort_by_time(self) -> None:
        """Order the written log by ``t`` (stable), after parts from other processes were absorbed; torn lines go."""
        if self._path is None:
            return
        self.close()
        timed = []
        for line in self._path.read_text(encoding="utf-8", errors="replace").splitlines():
            event = _parsed(line)
            if event is not None and isinstance(event.get("t"), int | float):
                timed.append((float(event["t"]), line))
        timed.sort(key=lambda pair: pair[0])
        self._path.write_text("".join(f"{line}\n" for _t, line in timed), encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every whole event of a log (none when it does not exist); a line a kill cut short is skipped."""
    if not path.exists():
        return []
    return [event for event in map(_parsed, path.read_text(encoding="utf-8").splitlines()) if event is not None]


# how a line this class wrote starts: orjson's compact shape, and json's spaced one (a log begun before, resumed)
_SHAPES = (('{"t":', ',"event":"'), ('{"t": ', ', "event": "'))


def _timed_lines(path: Path) -> list[tuple[float | None, str, str]]:
    """``(t, event, line)`` for every whole line of a log (``t`` None where it has none). Lines this class wrote
    are read from their fixed start, ``{"t": T, "event": "E"``, without parsing the rest; the last line, which a
    kill may have cut short, and any line of another shape are parsed as JSON, and skipped if they are not."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out: list[tuple[float | None, str, str]] = []
    last = len(lines) - 1
    for number, line in enumerate(lines):
        if number < last and line.endswith("}"):
            fast = _fixed_start(line)
            if fast is not None:
                out.append((fast[0], fast[1], line))
                continue
        event = _parsed(line)
        if event is not None:
            t = event.get("t")
            out.append((float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None,
                        str(event.get("event", "")), line))
    return out


def _fixed_start(line: str) -> tuple[float, str] | None:
    """``(t, event)`` read off the start of a line this class wrote, or None if it does not start so."""
    for head, event in _SHAPES:
        if line.startswith(head):
            comma = line.find(event, len(head))
            end = line.find('"', comma + len(event)) if comma > 0 else -1
            if end > 0:
                try:
                    return float(line[len(head):comma]), line[comma + len(event):end]
                except ValueError:
                    return None
    return None


def _parsed(line: str) -> dict[str, Any] | None:
    """One line of a log as an event, or None for a line a kill cut short."""
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _last_t(path: Path) -> float:
    """The largest ``t`` in an existing log (0 if none)."""
    if not path.exists():
        return 0.0
    last = 0.0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                last = max(last, float(json.loads(line)["t"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return last
