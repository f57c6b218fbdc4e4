"""The aggregator's journal: what it was fed, written before it acts, so a killed run can resume.

The aggregator session is a pure function of its inputs (deliveries and events with their times;
randomness comes from the scenario's seed). So its checkpoint is not a snapshot of its many fields
but the inputs themselves, one JSON line each, appended *before* the session sees them (write-ahead),
plus the evaluation of every closed round (accuracy and prompt measures, which cost LLM calls with a
real engine). ``fedbus run --resume RUN_DIR`` feeds the journal to a fresh session built from the
same scenario and run id: it reaches the state the killed aggregator was in, decision for decision,
without publishing anything twice (receivers deduplicate the retained global and open tasks it sends
again by id). A line cut short by a kill is ignored.

Line formats (``k`` is the kind):

- ``{"k": "d", "topic": ..., "text" | "b64": payload, "retained": bool, "now": t}``: a delivery;
- ``{"k": "e", "event": "started" | "timer" | "reduced" | "reduce-failed", "now": t, ...}``: an event;
- ``{"k": "u", "what": "forged" | "duplicate" | "stale", "now": t, ...}``: a delivery kept as its verdict (``stale``:
  a presence of a client an earlier session of the run started, :meth:`AggregatorSession._earlier_session`);
- ``{"k": "key", "client": id, "key": "fedbus-pk:..."}``: a remote client's key as the aggregator read it
  (:func:`fedbus.runtime.run_keys.key_line`), before anything it signed;
- ``{"k": "x", "round": r, "extra": {...}}``: the evaluation of closed round ``r``.
"""

from __future__ import annotations

import base64
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedbus.aggregator.effects import ArmTimer, Reduce, RoundClosed, RoundResult, RunFinished
from fedbus.aggregator.events import Event, Reduced, ReduceFailed, Revoked, Started, TimerFired
from fedbus.aggregator.session import Action, AggregatorSession, Send
from fedbus.errors import FedbusError
from fedbus.protocol import topics
from fedbus.results.jsonfile import pretty_json

JOURNAL = "journal.jsonl"
CHECKPOINT = "checkpoint.json"


class ResumeError(FedbusError):
    """A run folder cannot be resumed (no journal, another scenario, already finished)."""


# ---------------------------------------------------------------------- lines


def delivery_line(topic: str, payload: bytes, retained: bool, now: float) -> dict[str, Any]:
    line: dict[str, Any] = {"k": "d", "topic": topic, "retained": retained, "now": now}
    try:
        line["text"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        line["b64"] = base64.b64encode(payload).decode("ascii")
    return line


def unread_line(what: str, fields: dict[str, Any], now: float) -> dict[str, Any]:
    """A delivery that changed nothing but counts (a forgery, a duplicate), kept as its verdict: a few dozen
    bytes, where a flood of 250 KB junk frames wrote 1.2 GB in ten seconds when each was kept whole."""
    return {"k": "u", "what": what, "now": now, **fields}


def event_line(event: Event) -> dict[str, Any]:
    if isinstance(event, Started):
        return {"k": "e", "event": "started", "now": event.now}
    if isinstance(event, TimerFired):
        return {"k": "e", "event": "timer", "now": event.now}
    if isinstance(event, Reduced):
        return {"k": "e", "event": "reduced", "now": event.now, "round": event.round, "prompt": event.prompt}
    if isinstance(event, ReduceFailed):
        return {"k": "e", "event": "reduce-failed", "now": event.now, "round": event.round, "reason": event.reason}
    if isinstance(event, Revoked):  # the driver's: its key file lost the line
        return {"k": "e", "event": "revoked", "now": event.now, "client": event.client, "key": event.key}
    raise ValueError(f"the driver does not feed {type(event).__name__} events")


def line_event(line: dict[str, Any]) -> Event:
    kind, now = line["event"], float(line["now"])
    if kind == "started":
        return Started(now=now)
    if kind == "timer":
        return TimerFired(now=now)
    if kind == "reduced":
        return Reduced(round=int(line["round"]), prompt=str(line["prompt"]), now=now)
    if kind == "reduce-failed":
        return ReduceFailed(round=int(line["round"]), reason=str(line["reason"]), now=now)
    if kind == "revoked":
        return Revoked(client=str(line["client"]), now=now, key=str(line.get("key", "")))
    raise ValueError(f"unknown journal event {kind!r}")


def line_payload(line: dict[str, Any]) -> bytes:
    if "b64" in line:
        return base64.b64decode(line["b64"])
    return str(line["text"]).encode("utf-8")


class Journal:
    """Appends journal lines to RUN_DIR/journal.jsonl; each line reaches the OS before the session acts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a resumed run: cut the line a kill tore, or the next input would be glued to it
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                os.truncate(path, data.rfind(b"\n") + 1)
        self._file: IO[str] | None = path.open("a", encoding="utf-8", buffering=1)
        self.lines = 0

    def write(self, line: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's complete lines; a last line cut short by a kill is dropped."""
    if not path.exists():
        raise ResumeError(f"{path.parent} has no {path.name}: it is not the folder of a fedbus run")
    lines: list[dict[str, Any]] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, 1):
            if not text.endswith("\n"):
                break  # torn by the kill
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ResumeError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
    return lines


def write_atomically(path: Path, content: dict[str, Any]) -> None:
    """Replace ``path`` with ``content`` as JSON so that a reader sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(pretty_json(content))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------- what to send again


@dataclass(slots=True)
class Resendable:
    """The messages a reconnecting (or resumed) aggregator sends again: the last retained global and
    the open tasks. In sync mode the tasks of a closed round are no longer open."""

    sync: bool
    global_send: Send | None = None
    tasks: dict[str, Send] = field(default_factory=dict)

    def note(self, action: Action) -> None:
        if isinstance(action, Send):
            ref = topics.parse(action.topic)
            if ref is None:
                return
            if ref.channel == "global" and action.retain:
                self.global_send = action
            elif ref.channel == "task":
                self.tasks[action.topic] = action
        elif isinstance(action, RoundClosed) and self.sync:
            self.tasks.clear()

    def task_for(self, presence_topic: str) -> Send | None:
        """The open task of the client whose presence topic this is (sent again when it comes back online:
        a broker that restarted empty lost what it held for that client)."""
        ref = topics.parse(presence_topic)
        if ref is None or ref.channel != "presence" or ref.client is None:
            return None
        return self.tasks.get(topics.task_topic(ref.run, ref.client))

    def sends(self) -> list[Send]:
        return ([self.global_send] if self.global_send is not None else []) + list(self.tasks.values())


# ---------------------------------------------------------------------- replay


@dataclass(slots=True)
class Replayed:
    """Where a replayed session stands, and what its driver must do to carry on."""

    last_now: float = 0.0
    lines: int = 0
    timers: list[float] = field(default_factory=list)  # ArmTimer times not known to have fired
    pending_reduces: dict[int, Reduce] = field(default_factory=dict)  # issued, no answer journaled
    unevaluated: list[RoundResult] = field(default_factory=list)  # closed, evaluation not journaled
    finished: RunFinished | None = None


def replay(session: AggregatorSession, lines: Iterable[dict[str, Any]], resend: Resendable,
           on_revoked: Callable[[str], None] | None = None,
           on_key: Callable[[str, str], None] | None = None) -> Replayed:
    """Feed ``lines`` to a fresh ``session``; carry out nothing, remember what the driver must redo.
    ``on_revoked(client)``: told as the replay reaches a client's revocation, from when what it sent no longer
    checks (until then it did: the driver keeps its key for the replay). ``on_key(client, key)``: told as it
    reaches a remote client's journaled key, which checks what the client sent from there on."""
    state = Replayed()
    items = list(lines)
    extras: deque[tuple[int, dict[str, Any]]] = deque(
        (int(line["round"]), dict(line["extra"])) for line in items if line.get("k") == "x")
    for line in _inputs(items):
        state.lines += 1
        kind = line["k"]
        if kind == "key":
            if on_key is not None:
                on_key(str(line["client"]), str(line["key"]))
            continue
        if kind == "d":
            now = float(line["now"])
            actions = session.receive(str(line["topic"]), line_payload(line), bool(line["retained"]), now, live=False)
        elif kind == "u":
            now = float(line["now"])
            actions = session.replay_unread(str(line["what"]), line, now)
        else:
            event = line_event(line)
            now = event.now
            if isinstance(event, TimerFired):
                state.timers = [at for at in state.timers if at > now]
            elif isinstance(event, Reduced | ReduceFailed):
                state.pending_reduces.pop(event.round, None)
            elif isinstance(event, Revoked) and on_revoked is not None:
                on_revoked(event.client)
            actions = session.handle(event)
        state.last_now = max(state.last_now, now)
        _absorb(session, actions, state, extras, resend)
    return state


def _inputs(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (line for line in items if line.get("k") in ("d", "u", "e", "key"))


def _absorb(session: AggregatorSession, actions: list[Action], state: Replayed,
            extras: deque[tuple[int, dict[str, Any]]], resend: Resendable) -> None:
    for action in actions:
        resend.note(action)
        if isinstance(action, ArmTimer):
            state.timers.append(action.at)
        elif isinstance(action, Reduce):
            state.pending_reduces[action.round] = action
        elif isinstance(action, RoundClosed):
            if extras and extras[0][0] == action.result.round:
                session.round_evaluated(action.result, extras.popleft()[1])
            else:
                state.unevaluated.append(action.result)
        elif isinstance(action, RunFinished):
            state.finished = action
