"""events.jsonl lines (fedbus/results/eventlog.py): orjson's compact lines, json's where orjson stops, and the
merge's fast read of lines of either shape."""

from __future__ import annotations

import enum
import json
from pathlib import Path

import pytest

from fedbus.results import eventlog
from fedbus.results.eventlog import EventLog, encode_line


class Colour(enum.Enum):
    RED = "red"


def test_lines_hold_what_json_held() -> None:
    line = encode_line({"t": 1e-05, "event": "run-started", "seed": 2**70, "path": Path("/x"), "é": "ü"})
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"t": 1e-05, "event": "run-started", "seed": 2**70, "path": "/x", "é": "ü"}
    assert json.loads(encode_line({"loss": float("nan"), "colour": Colour.RED, 3: [1, 2]})) == \
        {"loss": None, "colour": "red", "3": [1, 2]}
    assert encode_line({"t": 0.5, "event": "sent"}) == '{"t":0.5,"event":"sent"}\n'


def test_no_string_stops_the_log(tmp_path: Path) -> None:
    """Half a surrogate pair (no UTF-8 text can hold one; the codec refuses messages with one) is written as the
    JSON escape of it, which reads back as the same string: recording never fails on a string."""
    log = EventLog(tmp_path / "events.jsonl", clock=lambda: 1.0)
    log.record("rejected", id="x\ud800", detail="caf\u00e9")
    log.record("next")
    log.close()
    text = (tmp_path / "events.jsonl").read_text(encoding="utf-8")
    assert "\\ud800" in text and "caf\u00e9" in text
    assert [json.loads(line) for line in text.splitlines()] == [
        {"t": 1.0, "event": "rejected", "id": "x\ud800", "detail": "caf\u00e9"}, {"t": 1.0, "event": "next"}]


def test_numpy_numbers_stay_numbers() -> None:
    numpy = pytest.importorskip("numpy")
    assert json.loads(encode_line({"acc": numpy.float64(0.25), "n": numpy.int64(3)})) == {"acc": 0.25, "n": 3}


def test_merge_reads_both_shapes_without_parsing_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventLog(tmp_path / "events.jsonl", clock=lambda: 2.5)
    log.record("sent", topic="a/b", n=1)
    log.record("received", topic="a/c")
    log.close()
    old = tmp_path / "old.jsonl"  # json's spaced shape, as a log begun before this version has it
    old.write_text('{"t": 1.25, "event": "connected", "client": "c-0"}\n{"t": 3.0, "event": "ended"}\n',
                   encoding="utf-8")
    parsed: list[str] = []
    real = eventlog._parsed

    def counting(line: str) -> dict[str, object] | None:
        parsed.append(line)
        return real(line)

    monkeypatch.setattr(eventlog, "_parsed", counting)
    compact = eventlog._timed_lines(tmp_path / "events.jsonl")
    spaced = eventlog._timed_lines(old)
    assert [(t, e) for t, e, _line in compact] == [(2.5, "sent"), (2.5, "received")]
    assert [(t, e) for t, e, _line in spaced] == [(1.25, "connected"), (3.0, "ended")]
    assert len(parsed) == 2  # only each file's last line, which a kill may have cut short, is parsed
