"""The dashboard's view model: event records in, a JSON-able picture of the run out.

Pure (stdlib only, no clock: every record carries its own ``t``). It folds the records of events.jsonl (the
aggregator's and its own clients' decisions), plus a few the feeding edge adds:

- ``run-header``: scenario, engine, broker, security mode, rounds, expected clients, mode;
- ``round-summary``: summary.json's round record and the round's global prompt text (``prompt``);
- ``client-count``: how many clients the aggregator counts live and known (``live``, ``known``);
- ``run-summary``: summary.json at the end (``summary``);
- ``presence`` (``client``, ``status``) and ``global-prompt`` (``round``, ``prompt``): what a read-only
  subscriber sees on the bus (``fedbus watch``);
- ``bus-message`` (``direction``, ``bytes``): a message observed on the bus;
- ``llm-usage`` (``role``, ``llm_calls``, ``tokens``): what an update observed on the bus says it cost.

Unknown records are ignored, so a newer log never breaks an older page.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_ROUNDS_SHOWN = 200  # the page's rounds table keeps the latest ones
MAX_PROMPTS_KEPT = 50  # prompt texts (and diffs) kept, the latest rounds'
MAX_CLIENTS_SHOWN = 300  # timeline rows; the counters count everyone
MAX_DIFF_TOKENS = 12000  # above this many words and spaces a diff is not computed (said so on the page)
LATE_REASONS = ("late", "stale-round", "too-stale", "not-assigned")
# a client's state now; a round's cell in its timeline is one of CELLS
STATES = ("online", "selected", "working", "straggling", "offline", "rejected")
CELLS = ("selected", "working", "sent", "accepted", "rejected", "failed", "straggling", "dropped", "offline")


@dataclass(slots=True)
class RoundView:
    """One round as the page shows it."""

    round: int
    opened_t: float | None = None
    closed_t: float | None = None
    status: str = "open"
    close_reason: str = ""
    selected: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason (updates only)
    failed: Counter[str] = field(default_factory=Counter)  # failure reports by reason
    dropped: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    prompt_chars: int | None = None
    val_accuracy: float | None = None
    duration_s: float | None = None
    summarized: bool = False  # a round-summary (the authoritative record) arrived

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "status": self.status, "close_reason": self.close_reason,
                "selected": len(self.selected), "accepted": len(self.accepted),
                "rejected": dict(sorted(self.rejected.items())), "rejected_total": sum(self.rejected.values()),
                "failed": dict(sorted(self.failed.items())), "dropped": len(self.dropped), "late": len(self.late),
                "prompt_chars": self.prompt_chars, "val_accuracy": self.val_accuracy,
                "duration_s": self.duration_s, "opened_t": self.opened_t, "closed_t": self.closed_t}


@dataclass(slots=True)
class ClientView:
    """One client: its state now and what it did in each round."""

    client: str
    state: str = "online"
    own: bool = False  # one of the run's own clients (its own events are in the log)
    cells: dict[int, str] = field(default_factory=dict)
    since_t: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"client": self.client, "state": self.state, "own": self.own, "since_t": self.since_t,
                "cells": {str(r): c for r, c in sorted(self.cells.items())}}


class DashboardState:
    """Folds records (dicts with ``event`` and ``t``) into the dashboard's view; :meth:`view` snapshots it."""

    def __init__(self, *, source: str = "run") -> None:
        self.source = source  # "run": fed by the run itself; "watch": by a read-only subscriber
        self.header: dict[str, Any] = {}
        self.status = "starting"
        self.reason = ""
        self.t = 0.0
        self.rounds: dict[int, RoundView] = {}
        self.clients: dict[str, ClientView] = {}
        self.prompts: dict[int, str] = {}
        self.diffs: dict[int, list[list[str]] | str] = {}
        self.final: dict[str, Any] = {}
        self.live: int | None = None
        self.known: int | None = None
        self.updates_accepted = 0
        self.updates_rejected: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.llm_calls: Counter[str] = Counter()  # by role: client, aggregator
        self.tokens: Counter[str] = Counter()
        self.bus_messages: Counter[str] = Counter()  # by direction
        self.bus_bytes: Counter[str] = Counter()
        self.update_latencies: list[float] = []
        self._task_sent: dict[tuple[str, int], float] = {}
        self.records = 0
        self.version = 0  # bumped by every record that changed something

    # ------------------------------------------------------------------ folding
    def apply(self, record: dict[str, Any]) -> bool:
        """Fold one record; whether it changed the view."""
        self.records += 1
        event = record.get("event")
        handler = _HANDLERS.get(event) if isinstance(event, str) else None
        if handler is None:
            return False
        t = record.get("t")
        if isinstance(t, int | float):
            self.t = max(self.t, float(t))
        handler(self, record)
        self.version += 1
        return True

    def _run_header(self, r: dict[str, Any]) -> None:
        self.header.update({k: v for k, v in r.items() if k not in ("event", "t")})

    def _run_started(self, r: dict[str, Any]) -> None:
        for key in ("run", "scenario", "seed", "engine", "broker"):
            if key in r:
                self.header.setdefault(key, r[key])
        self.status = "running"

    def _run_finished(self, r: dict[str, Any]) -> None:
        self.status = str(r.get("status", "finished"))
        self.reason = str(r.get("reason", ""))
        for client in self.clients.values():
            if client.state in ("selected", "working"):
                client.state = "online"

    def _run_summary(self, r: dict[str, Any]) -> None:
        summary = r.get("summary")
        if not isinstance(summary, dict):
            return
        self.status = str(summary.get("status", self.status))
        self.reason = str(summary.get("reason", self.reason))
        final = summary.get("final")
        if isinstance(final, dict):
            self.final = {k: final.get(k) for k in ("test_accuracy", "initial_test_accuracy", "version",
                                                     "prompt_chars", "best_val_round", "best_val_accuracy")}

    def _client(self, name: Any, t: float) -> ClientView | None:
        if not isinstance(name, str) or not name or name == "aggregator":
            return None
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = ClientView(client=name, since_t=t)
        return client

    def _set(self, client: ClientView | None, state: str, t: float) -> None:
        if client is not None and client.state != state:
            client.state, client.since_t = state, t

    def _task_round(self, number: Any) -> RoundView | None:
        """The round a task's, an update's or a selection's number names: in a sync run the round, in a buffered
        or async one a task's own number, which names no aggregation (those come with round-closed and the round
        records): no view for it (one per task stayed 'open' for ever, 28 of them beside 8 aggregations)."""
        return self._round(number) if self.header.get("mode") in (None, "sync") else None

    def _round(self, number: Any) -> RoundView | None:
        if not isinstance(number, int) or number <= 0:
            return None
        view = self.rounds.get(number)
        if view is None:
            view = self.rounds[number] = RoundView(round=number)
        return view

    def _connected(self, r: dict[str, Any]) -> None:
        client = self._client(r.get("client"), self.t)
        if client is not None:
            client.own = True
            self._set(client, "online", self.t)

    def _disconnected(self, r: dict[str, Any]) -> None:
        client = self._client(r.get("client"), self.t)
        self._set(client, "offline", self.t)

    def _presence(self, r: dict[str, Any]) -> None:
        client = self._client(r.get("client"), self.t)
        self._set(client, "offline" if r.get("status") == "offline" else "online", self.t)

    def _round_opened(self, r: dict[str, Any]) -> None:
        view = self._task_round(r.get("round"))
        if view is None:
            if isinstance(r.get("live"), int):
                self.live = r["live"]
            for name in r.get("selected", []):
                self._set(self._client(name, self.t), "selected", self.t)
            return
        view.opened_t = self.t if view.opened_t is None else view.opened_t
        selected = [c for c in r.get("selected", []) if isinstance(c, str)]
        view.selected = sorted(set(view.selected) | set(selected))
        for name in selected:
            client = self._client(name, self.t)
            if client is not None:
                client.cells.setdefault(view.round, "selected")
                self._set(client, "selected", self.t)
        if isinstance(r.get("live"), int):
            self.live = r["live"]

    def _sent(self, r: dict[str, Any]) -> None:
        if self.source == "run":  # a watcher counts what it saw as bus-message records instead
            self.bus_messages["sent"] += 1
        kind, number = r.get("kind"), r.get("round")
        if "topic" in r:  # the aggregator's send
            if kind == "task" and isinstance(number, int):
                self._task_sent[(str(r.get("client")), number)] = self.t
            return
        client = self._client(r.get("client"), self.t)
        if client is not None and kind == "update" and isinstance(number, int):
            if client.cells.get(number) in (None, "selected", "working"):
                client.cells[number] = "sent"
            self._set(client, "online", self.t)

    def _received(self, r: dict[str, Any]) -> None:
        if self.source == "run":
            self.bus_messages["received"] += 1
        kind, number = r.get("kind"), r.get("round")
        if "topic" not in r:  # a client's receipt of its task
            client = self._client(r.get("client"), self.t)
            if client is not None and kind == "task" and isinstance(number, int):
                view = self.rounds.get(number)
                closed = view is not None and (view.closed_t is not None or view.summarized)
                if client.cells.get(number) in (None, "selected"):
                    client.cells[number] = "straggling" if closed else "working"  # busy with an older task till now
                self._set(client, "working", self.t)
            return
        client = self._client(r.get("client"), self.t)
        if kind == "presence" and client is not None and client.state == "offline" and not client.own:
            self._set(client, "online", self.t)  # a remote client announced itself (again)
        if kind in ("update", "failure") and isinstance(number, int):
            sent = self._task_sent.pop((str(r.get("client")), number), None)
            if sent is not None:
                self.update_latencies.append(max(0.0, self.t - sent))

    def _accepted(self, r: dict[str, Any]) -> None:
        self.updates_accepted += 1
        view, client = self._task_round(r.get("round")), self._client(r.get("client"), self.t)
        if view is not None and client is not None:
            if client.client not in view.accepted and not view.summarized:
                view.accepted.append(client.client)
            client.cells[view.round] = "accepted"
        if client is not None and client.state != "offline":
            self._set(client, "online", self.t)

    def _rejected(self, r: dict[str, Any]) -> None:
        reason = str(r.get("reason") or "unknown")
        failure = r.get("kind") == "failure"
        (self.failures if failure else self.updates_rejected)[reason] += 1
        view, client = self._task_round(r.get("round")), self._client(r.get("client"), self.t)
        if view is not None and not view.summarized:  # else its record (summary.json's) has it where it counted
            (view.failed if failure else view.rejected)[reason] += 1
            late = not failure and reason in LATE_REASONS and isinstance(r.get("client"), str)
            if late and r["client"] not in view.late:
                view.late.append(r["client"])
        if client is not None:
            if view is not None:
                client.cells[view.round] = "failed" if failure else (
                    "straggling" if reason in LATE_REASONS else "rejected")
            if client.state != "offline":
                self._set(client, "rejected", self.t)

    def _round_closed(self, r: dict[str, Any]) -> None:
        view = self._round(r.get("round"))
        if view is None:
            return
        view.closed_t = self.t
        view.status = str(r.get("status", "closed"))
        view.close_reason = str(r.get("close_reason", ""))
        accuracy = r.get("val_accuracy")
        if isinstance(accuracy, int | float) and view.val_accuracy is None:
            view.val_accuracy = float(accuracy)
        if not view.summarized and view.opened_t is not None:
            view.duration_s = round(self.t - view.opened_t, 4)
        self._stragglers(view)

    def _stragglers(self, view: RoundView) -> None:
        """The round closed: who was selected and still had not answered straggled."""
        for name in view.selected:
            client = self.clients.get(name)
            if client is not None and client.cells.get(view.round) in ("selected", "working"):
                client.cells[view.round] = "straggling"
                if client.state in ("selected", "working"):
                    self._set(client, "straggling", self.t)

    def _round_summary(self, r: dict[str, Any]) -> None:
        view = self._round(r.get("round"))
        if view is None:
            return
        view.summarized = True
        view.status = str(r.get("status", view.status))
        view.close_reason = str(r.get("close_reason", view.close_reason))
        view.selected = [c for c in r.get("selected", []) if isinstance(c, str)]
        accepted = [a for a in r.get("accepted", []) if isinstance(a, dict)]
        view.accepted = [str(a.get("client")) for a in accepted]
        view.rejected = Counter(str(x.get("reason")) for x in r.get("rejected", []) if isinstance(x, dict))
        view.failed = Counter(str(x.get("reason")) for x in r.get("failed", []) if isinstance(x, dict))
        view.dropped = [c for c in r.get("dropped", []) if isinstance(c, str)]
        view.late = [c for c in r.get("late", []) if isinstance(c, str)]
        if isinstance(r.get("global_prompt_chars"), int):
            view.prompt_chars = r["global_prompt_chars"]
        if isinstance(r.get("val_accuracy"), int | float):
            view.val_accuracy = float(r["val_accuracy"])
        duration = r.get("duration_s")
        if isinstance(duration, int | float):
            view.duration_s = float(duration)
        self.llm_calls["client"] += sum(int(a.get("llm_calls") or 0) for a in accepted)
        self.tokens["client"] += sum(int(a.get("tokens") or 0) for a in accepted)
        for name in view.dropped:
            client = self._client(name, self.t)
            if client is not None:
                client.cells[view.round] = "dropped"
        for name in view.late:
            client = self._client(name, self.t)
            if client is not None and client.cells.get(view.round) != "accepted":
                client.cells[view.round] = "straggling"
        self._stragglers(view)
        prompt = r.get("prompt")
        if isinstance(prompt, str):
            self._prompt(view.round, prompt)

    def _global_prompt(self, r: dict[str, Any]) -> None:
        number, prompt = r.get("round"), r.get("prompt")
        if isinstance(number, int) and isinstance(prompt, str) and number >= 0:
            if number > 0:
                view = self._round(number)
                if view is not None:
                    view.prompt_chars = len(prompt)
            self._prompt(number, prompt)

    def _prompt(self, number: int, prompt: str) -> None:
        if self.prompts.get(number) == prompt:
            return
        self.prompts[number] = prompt
        before = max((n for n in self.prompts if n < number), default=None)
        if before is not None:
            self.diffs[number] = prompt_diff(self.prompts[before], prompt)
        elif number > 0 and "initial_prompt" in self.header:
            self.diffs[number] = prompt_diff(str(self.header["initial_prompt"]), prompt)
        for old in sorted(self.prompts)[:-MAX_PROMPTS_KEPT]:
            self.prompts.pop(old, None)
            self.diffs.pop(old, None)

    def _llm_aggregate(self, r: dict[str, Any]) -> None:
        self.llm_calls["aggregator"] += int(r.get("llm_calls") or 0)
        self.tokens["aggregator"] += int(r.get("tokens") or 0)

    def _llm_usage(self, r: dict[str, Any]) -> None:
        role = str(r.get("role", "client"))
        self.llm_calls[role] += int(r.get("llm_calls") or 0)
        self.tokens[role] += int(r.get("tokens") or 0)

    def _client_count(self, r: dict[str, Any]) -> None:
        if isinstance(r.get("live"), int):
            self.live = r["live"]
        if isinstance(r.get("known"), int):
            self.known = r["known"]

    def _bus_message(self, r: dict[str, Any]) -> None:
        direction = str(r.get("direction", "observed"))
        self.bus_messages[direction] += 1
        if isinstance(r.get("bytes"), int):
            self.bus_bytes[direction] += r["bytes"]

    def _gone(self, r: dict[str, Any]) -> None:
        self._set(self._client(r.get("client"), self.t), "offline", self.t)

    # ------------------------------------------------------------------ reading
    @property
    def rounds_closed(self) -> int:
        return sum(1 for v in self.rounds.values() if v.closed_t is not None or v.summarized)

    def round_durations(self) -> list[float]:
        return [v.duration_s for v in self.rounds.values()
                if v.duration_s is not None and (v.closed_t is not None or v.summarized)]

    def clients_by_state(self) -> dict[str, int]:
        counts = Counter(c.state for c in self.clients.values())
        return {state: counts.get(state, 0) for state in STATES}

    def view(self) -> dict[str, Any]:
        """A JSON-able snapshot for the page and ``/api/summary``."""
        rounds = [self.rounds[n].as_dict() for n in sorted(self.rounds)[-MAX_ROUNDS_SHOWN:]]
        clients = [self.clients[c].as_dict() for c in sorted(self.clients)[:MAX_CLIENTS_SHOWN]]
        prompts = [{"round": n, "prompt": self.prompts[n], "chars": len(self.prompts[n]),
                    "diff": self.diffs.get(n)} for n in sorted(self.prompts)]
        live = self.live if self.live is not None else sum(1 for c in self.clients.values() if c.state != "offline")
        return {
            "source": self.source, "header": self.header, "status": self.status, "reason": self.reason,
            "t": round(self.t, 3), "version": self.version, "rounds": rounds, "clients": clients,
            "clients_total": len(self.clients), "clients_by_state": self.clients_by_state(),
            "prompts": prompts, "final": self.final,
            "counters": {
                "rounds_closed": self.rounds_closed, "updates_accepted": self.updates_accepted,
                "updates_rejected": sum(self.updates_rejected.values()),
                "rejected_by_reason": dict(sorted(self.updates_rejected.items())),
                "failures_by_reason": dict(sorted(self.failures.items())),
                "clients_live": live, "clients_known": self.known if self.known is not None else len(self.clients),
                "llm_calls": dict(self.llm_calls), "tokens": dict(self.tokens),
                "bus_messages": dict(self.bus_messages), "bus_bytes": dict(self.bus_bytes)},
        }


def prompt_diff(before: str, after: str) -> list[list[str]] | str:
    """A word-level diff: ``[op, text]`` pairs, op ``=`` kept, ``+`` added, ``-`` removed; a note when too long."""
    a, b = re.findall(r"\s+|\S+", before), re.findall(r"\s+|\S+", after)
    if len(a) + len(b) > MAX_DIFF_TOKENS:
        return f"no diff: the prompts have {len(a) + len(b)} words and spaces together (above {MAX_DIFF_TOKENS})"
    ops: list[list[str]] = []

    def add(op: str, words: list[str]) -> None:
        if not words:
            return
        if ops and ops[-1][0] == op:
            ops[-1][1] += "".join(words)
        else:
            ops.append([op, "".join(words)])

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            add("=", a[i1:i2])
        else:
            add("-", a[i1:i2])
            add("+", b[j1:j2])
    return ops


_HANDLERS = {
    "run-header": DashboardState._run_header,
    "run-started": DashboardState._run_started,
    "run-resumed": DashboardState._run_started,
    "run-finished": DashboardState._run_finished,
    "run-summary": DashboardState._run_summary,
    "connected": DashboardState._connected,
    "disconnected": DashboardState._disconnected,
    "gone": DashboardState._gone,
    "presence": DashboardState._presence,
    "round-opened": DashboardState._round_opened,
    "sent": DashboardState._sent,
    "received": DashboardState._received,
    "accepted": DashboardState._accepted,
    "rejected": DashboardState._rejected,
    "round-closed": DashboardState._round_closed,
    "round-summary": DashboardState._round_summary,
    "global-prompt": DashboardState._global_prompt,
    "aggregated-by-llm": DashboardState._llm_aggregate,
    "llm-usage": DashboardState._llm_usage,
    "client-count": DashboardState._client_count,
    "bus-message": DashboardState._bus_message,
}
