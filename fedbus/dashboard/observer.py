"""``fedbus watch``: what a read-only subscriber sees of a run on the bus, as the dashboard's records. Pure.

It reads every topic of the run (``fedbus/v1/{run}/#``) and never publishes. Signed frames are read without
verifying their signatures (the watcher need not hold the run's keys): the page shows what was published, not
what is proven. What the bus carries:

- the retained global state: the prompt after each round, its version, the run's engine and round count, and
  whether it finished; a new global state closes the round it names;
- tasks: who was selected for which round (and when: the update latency is measured from them);
- receipts: each update accepted, or rejected with its reason;
- presences: clients (and the aggregator) coming online and going offline;
- updates and failure reports: who answered (their bodies are sealed to the aggregator under signed+sealed).

What it does not carry is listed in :data:`UNOBSERVABLE`.
"""

from __future__ import annotations

import json
from typing import Any

from fedbus.protocol import codec, topics
from fedbus.protocol.messages import Failure, GlobalState, Metrics, Presence, Receipt, Task, Update
from fedbus.security.signing import is_signed, unverified_payload

UNOBSERVABLE = (
    "validation and test accuracy (the aggregator scores prompts itself; nothing on the bus carries a score)",
    "why a round closed, and dropped clients apart from stragglers (both simply send nothing)",
    "rejections that get no receipt (garbage, forgeries, failure reports' checks)",
    "LLM calls and tokens under signed+sealed (they travel in the sealed update body); elsewhere they are counted "
    "for every update seen, accepted or not",
    "round durations in scenario time: the page shows wall-clock seconds as observed",
    "signatures are not verified: the page shows what was published",
)


class BusObserver:
    """Turns (topic, payload) of one run into dashboard records; keeps what it needs to tell rounds apart."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.security = ""  # what the frames showed: none, signed, signed+sealed
        self._started = False
        self._opened: dict[int, int] = {}  # round -> the version it started from
        self._versions: dict[int, int] = {}  # round -> the latest version seen while it was open
        self._closed: set[int] = set()
        self._prompt: str | None = None  # the latest global prompt

    def header(self, broker: str) -> dict[str, Any]:
        return {"event": "run-header", "run": self.run, "broker": broker, "unobservable": list(UNOBSERVABLE)}

    def observe(self, topic: str, wire: bytes, *, retained: bool, now: float) -> list[dict[str, Any]]:
        """The records one message gives (none for one that is not this run's, or not readable)."""
        ref = topics.parse(topic)
        if ref is None or ref.run != self.run:
            return []
        out: list[dict[str, Any]] = [{"event": "bus-message", "t": now, "direction": "observed",
                                      "bytes": len(wire)}]
        signed = is_signed(wire)
        payload = unverified_payload(wire) if signed else wire
        if payload is None:
            return out
        sealed = b'"sealed"' in payload[:400] or b'"sealed":' in payload
        self._security(signed, sealed and ref.channel == "update")
        try:
            message = codec.decode(payload)
        except codec.MessageRejected:
            return out + self._opaque(ref.channel, ref.client, payload, topic, now)
        base = {"t": now}
        if isinstance(message, Presence):
            if ref.channel == "aggregator":
                out.append({**base, "event": "run-header", "aggregator": message.status})
            else:
                out.append({**base, "event": "presence", "client": message.client, "status": message.status})
        elif isinstance(message, GlobalState):
            out += self._global(message, base)
        elif isinstance(message, Task):
            out.append({**base, "event": "round-opened", "round": message.round, "selected": [message.client]})
            out.append({**base, "event": "sent", "kind": "task", "topic": topic, "client": message.client,
                        "round": message.round})
        elif isinstance(message, Update):
            out += self._answered(message.client, message.round, topic, base)
            out.append({**base, "event": "llm-usage", "role": "client", "llm_calls": message.stats.llm_calls,
                        "tokens": message.stats.tokens})
        elif isinstance(message, Failure):
            out += self._answered(message.client, message.round, topic, base)
            out.append({**base, "event": "rejected", "client": message.client, "round": message.round,
                        "reason": "client-failed", "kind": "failure"})
        elif isinstance(message, Receipt):
            if message.outcome == "accepted":
                out.append({**base, "event": "accepted", "client": message.client, "round": message.round})
            else:
                out.append({**base, "event": "rejected", "client": message.client, "round": message.round,
                            "reason": message.reason or "rejected", "kind": "update"})
        elif isinstance(message, Metrics):
            pass  # free-form values: counted as bus traffic only
        return out

    def _security(self, signed: bool, sealed_update: bool) -> None:
        if sealed_update:
            self.security = "signed+sealed"
        elif signed and self.security in ("", "none"):
            self.security = "signed"
        elif not signed and not self.security:
            self.security = "none"

    def _global(self, message: GlobalState, base: dict[str, Any]) -> list[dict[str, Any]]:
        """The aggregator publishes its global state when a round opens (that round's number, the version it
        starts from), when a round aggregated (a new version), and when the run finishes."""
        r, version = message.round, message.version
        out: list[dict[str, Any]] = [{**base, "event": "run-header", "engine": message.engine,
                                      "rounds": message.rounds, "security": self.security or "unknown"}]
        if r == 0 and version == 0:
            out.append({**base, "event": "run-header", "initial_prompt": message.prompt})
            out.append({**base, "event": "global-prompt", "round": 0, "prompt": message.prompt})
        if message.status in ("running", "finished") and not self._started:
            self._started = True
            out.append({**base, "event": "run-started", "run": self.run})
        earlier = sorted(q for q in self._opened if q < r and q not in self._closed)
        for q in earlier:  # closed as the next one opened: aggregated if that one starts from a new version (the
            # aggregator publishes no global of its own for a round whose successor opens at once)
            if q == earlier[-1] and version != self._versions.get(q):
                self._versions[q] = version
                out += self._close(q, base)
                out.append({**base, "event": "global-prompt", "round": q, "prompt": message.prompt})
            else:
                out += self._close(q, base)
        if r > 0 and r not in self._opened:
            self._opened[r] = self._versions[r] = version
            out.append({**base, "event": "round-opened", "round": r, "selected": []})
        elif r > 0 and r not in self._closed and version != self._versions.get(r):
            self._versions[r] = version
            out += self._close(r, base)
            out.append({**base, "event": "global-prompt", "round": r, "prompt": message.prompt})
        if message.status == "finished":
            if r > 0 and r not in self._closed:
                out += self._close(r, base)
            out.append({**base, "event": "run-finished", "status": "finished",
                        "reason": f"the aggregator published its final state (version {version})"})
        self._prompt = message.prompt
        return out

    def _close(self, r: int, base: dict[str, Any]) -> list[dict[str, Any]]:
        self._closed.add(r)
        aggregated = self._versions.get(r) != self._opened.get(r)
        out = [{**base, "event": "round-closed", "round": r, "status": "aggregated" if aggregated else "closed"}]
        if not aggregated and self._prompt is not None:
            out.append({**base, "event": "global-prompt", "round": r, "prompt": self._prompt})
        return out

    def _answered(self, client: str, round_: int, topic: str, base: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**base, "event": "sent", "kind": "update", "client": client, "round": round_},
                {**base, "event": "received", "kind": "update", "topic": topic, "client": client, "round": round_}]

    def _opaque(self, channel: str, client: str | None, payload: bytes, topic: str,
                now: float) -> list[dict[str, Any]]:
        """An update whose body is sealed: its envelope (client, round) is still readable."""
        if channel != "update" or client is None:
            return []
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError):
            return []
        round_ = document.get("round") if isinstance(document, dict) else None
        if not isinstance(round_, int):
            return []
        return self._answered(client, round_, topic, {"t": now})
