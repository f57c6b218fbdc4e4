"""A fedbus client in one file: paho-mqtt and the standard library, nothing from fedbus.

It takes part in a fedbus federation by following docs/PROTOCOL.md (the wire protocol, version 1)
and nothing else, so it doubles as the reference for writing a client in another language. Its
"local optimization" is a deterministic edit: it appends one sentence naming itself and the round
to the prompt of each task, within the run's prompt budget. It logs the aggregator's receipt for
each update and the aggregator's presence. Section references (§) are to headings of
docs/PROTOCOL.md.

Usage (fedbus need not be installed; paho-mqtt 2.x must be)::

    pip install 'paho-mqtt>=2,<3'
    python clients/paho_client.py --broker mqtt://HOST:1883 --run RUN_ID --id NAME
        [--username USER --password PASS] [--max-rounds N] [--timeout-s SECONDS]
        [--max-prompt-chars 20000]

Exit status: 0 the run finished (or --max-rounds updates were sent); 1 the broker refused the
connection or a subscription; 2 nothing happened for --timeout-s seconds; 64 a bad command line;
128 + N on signal N (SIGINT, SIGTERM). In every case but 1 the client first tries to publish its
'offline' presence and disconnects cleanly. Diagnostics go to stderr, one line each.
--max-prompt-chars is the budget used until the aggregator announces the run's (in `global` and `task`).
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import re
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# ------------------------------------------------------------------ protocol constants

SCHEMA_VERSION = 1  # § The envelope: `v`; § Versioning
KINDS = ("presence", "global", "task", "update", "metrics", "receipt", "failure")  # § Message kinds
AGGREGATOR = "aggregator"  # § Identifiers: reserved, the sender of `global`
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # § Identifiers: must match the *whole* id
QOS = 1  # § Transport: QoS 1 for every publish and subscription
KEEPALIVE_S = 30  # § Transport
MAX_MESSAGE_BYTES = 256 * 1024  # § Transport, Size: the default max_message_bytes (and what this client decodes)
MAX_DEPTH = 8  # § Decoding, check 3
SEEN_IDS = 10_000  # § Deduplication: how many ids the reference client remembers
DEFAULT_MAX_PROMPT_CHARS = 20_000  # § What the aggregator does: prompt-too-long (the run's default)

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE = 0, 1, 2, 64


def topic(run: str, channel: str, client: str | None = None) -> str:
    """§ Topics: everything lives under fedbus/v1/{run}/."""
    return f"fedbus/v1/{run}/{channel}" if client is None else f"fedbus/v1/{run}/{channel}/{client}"


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


# ------------------------------------------------------------------ decoding (§ Decoding)


class Rejected(Exception):
    """A payload that is not a valid fedbus message; ``reason`` is the code of § Decoding."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise Rejected("non-finite", f"{name} is not allowed")


def _too_deep(document: Any) -> bool:
    """True if objects/arrays nest more than MAX_DEPTH levels (the top-level object is level 1)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


# § The envelope, Types: an integer is a JSON number without fraction (`type(x) is int` also
# excludes true/false); a number is an integer or a finite float, not a boolean.
def _is_int(value: object, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _is_number(value: object, minimum: float | None = None) -> bool:
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        return False
    return minimum is None or value >= minimum  # type: ignore[operator]


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise Rejected("bad-field", what)


def _check_envelope(doc: dict[str, Any]) -> None:
    """§ The envelope: the fields every message carries."""
    _require(is_valid_id(doc.get("run")), "run must be a valid id")
    _require(_is_int(doc.get("round")), "round must be an integer >= 0")
    _require(is_valid_id(doc.get("client")), "client must be a valid id")
    msg_id = doc.get("id")
    _require(isinstance(msg_id, str) and 0 < len(msg_id) <= 128, "id must be a string of 1-128 characters")
    _require(_is_number(doc.get("sent")), "sent must be a finite number")


def _check_limits(body: dict[str, Any]) -> None:
    """§ Message kinds, `global` and `task`: the run's limits, optional (the defaults when absent)."""
    for name in ("max_prompt_chars", "max_message_bytes"):
        _require(name not in body or _is_int(body[name], 1), f"{name} must be an integer >= 1")


def _check_global(doc: dict[str, Any], body: dict[str, Any]) -> None:
    """§ Message kinds, `global`."""
    _require(doc["client"] == AGGREGATOR, f"a global must come from {AGGREGATOR!r}")
    _require(_is_int(body.get("version")), "version must be an integer >= 0")
    _require(isinstance(body.get("prompt"), str), "prompt must be a string")
    _require(body.get("status") in ("waiting", "running", "finished"), "status must be waiting, running or finished")
    _require(isinstance(body.get("engine"), str), "engine must be a string")
    _require(_is_int(body.get("rounds")), "rounds must be an integer >= 0")
    data = body.get("data")
    if not isinstance(data, dict):
        raise Rejected("bad-field", "data must be an object")
    _require(isinstance(data.get("task"), str) and isinstance(data.get("partition"), str),
             "data.task and data.partition must be strings")
    _require(_is_int(data.get("seed")), "data.seed must be an integer >= 0")
    for name in ("num_shards", "train_size", "val_size", "test_size"):
        _require(_is_int(data.get(name), 1), f"data.{name} must be an integer >= 1")
    _check_limits(body)


def _check_task(body: dict[str, Any]) -> None:
    """§ Message kinds, `task`."""
    _require(_is_int(body.get("version")), "version must be an integer >= 0")
    _require(isinstance(body.get("prompt"), str), "prompt must be a string")
    _require(_is_int(body.get("local_steps"), 1), "local_steps must be an integer >= 1")
    _require(_is_int(body.get("batch_size"), 1), "batch_size must be an integer >= 1")
    _require(_is_number(body.get("deadline_s"), 0.0), "deadline_s must be a number >= 0")
    _check_limits(body)


def _check_receipt(body: dict[str, Any]) -> None:
    """§ Message kinds, `receipt`."""
    update_id, outcome, reason = body.get("update_id"), body.get("outcome"), body.get("reason")
    _require(isinstance(update_id, str) and 0 < len(update_id) <= 128, "update_id must be 1-128 characters")
    _require(outcome in ("accepted", "rejected"), "outcome must be accepted or rejected")
    _require(isinstance(reason, str) and len(reason) <= 64, "reason must be a string of at most 64 characters")
    _require((outcome == "accepted") == (reason == ""), "reason is empty exactly when the update was accepted")
    detail = body.get("detail")
    _require(isinstance(detail, str) and len(detail) <= 300, "detail must be a string of at most 300 characters")


def decode(payload: bytes) -> dict[str, Any]:
    """Parse and check one payload, in the order of § Decoding; raise ``Rejected`` with its reason.

    This client acts on `global`, `task`, `receipt` and the aggregator's `presence`, so it checks the
    bodies of those kinds; the others pass with a checked envelope and are dropped by the caller.
    """
    if len(payload) > MAX_MESSAGE_BYTES:  # 1
        raise Rejected("oversized", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:  # 2: UTF-8 (a BOM makes json.loads fail), one JSON document, no NaN/Infinity
        doc = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError as exc:
        raise Rejected("too-deep", "nesting exceeds the parser's limit") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise Rejected("not-json", str(exc)[:200]) from exc
    if _too_deep(doc):  # 3
        raise Rejected("too-deep", f"nesting deeper than {MAX_DEPTH}")
    if not isinstance(doc, dict):  # 4
        raise Rejected("bad-envelope", "top level must be a JSON object")
    version = doc.get("v")
    if not (_is_int(version) and version == SCHEMA_VERSION):  # 5: true and 1.0 are not version 1
        raise Rejected("bad-version", f"schema version {version!r} is not {SCHEMA_VERSION}")
    kind = doc.get("kind")
    if not (isinstance(kind, str) and kind in KINDS):  # 6
        raise Rejected("unknown-kind", f"kind {kind!r}")
    body = doc.get("body")
    if not isinstance(body, dict):  # 7
        raise Rejected("bad-envelope", "body must be an object")
    _check_envelope(doc)  # 8
    if kind == "global":
        _check_global(doc, body)
    elif kind == "task":
        _check_task(body)
    elif kind == "receipt":
        _check_receipt(body)
    elif kind == "presence":
        _require(body.get("status") in ("online", "offline"), "status must be online or offline")
    return doc


# ------------------------------------------------------------------ what the MQTT thread reports

# paho runs its callbacks on its own network thread. They only translate what happened into these
# events and put them in a queue; the main thread makes every protocol decision, one event at a time.


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Subscribed:
    refused: bool


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass(frozen=True)
class Signalled:
    signum: int


Event = Received | Subscribed | Refused | Signalled


# ------------------------------------------------------------------ the client


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    username: str | None
    password: str | None
    run: str
    me: str
    max_rounds: int | None
    timeout_s: float | None
    max_prompt_chars: int


def log(me: str, line: str) -> None:
    print(f"paho_client[{me}]: {line}", file=sys.stderr, flush=True)


class PahoClient:
    """One client session: connect, go online, answer tasks, leave when the run finishes."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.run_id, self.me = opts.run, opts.me
        self.started = time.monotonic()
        # § Identifiers: message ids are {client}-{boot}-{counter}, unique across restarts of this process.
        self.boot = secrets.token_hex(4)
        self.counter = 0
        self.counter_lock = threading.Lock()  # ids are drawn on both threads (the Will is built on paho's)
        self.inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()  # put() is safe in a signal handler
        self.seen: dict[str, None] = {}  # § Deduplication: insertion-ordered, so the oldest goes first
        self.state: dict[str, Any] | None = None  # the latest `global` (§ Client behaviour: needed first)
        self.pending_task: dict[str, Any] | None = None  # a task that came before any global
        self.done_rounds: set[int] = set()
        self.updates_sent = 0
        # § Message kinds, `global` and `task`: the run's limits as the aggregator announces them
        self.max_prompt_chars = opts.max_prompt_chars
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self.aggregator_online: bool | None = None  # § Topics: the aggregator's retained presence
        self.last_heard = self.started  # when a message of this run last arrived (for --timeout-s)
        self.leaving = False

        # § Transport: MQTT 3.1.1, client id {run}.{client}, persistent session (clean_session false),
        # so tasks published while the client is briefly away are queued by the broker.
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.run_id}.{self.me}",
                                clean_session=False, protocol=mqtt.MQTTv311)
        if opts.username is not None:
            self.mqtt.username_pw_set(opts.username, opts.password)
        self.mqtt.reconnect_delay_set(min_delay=1, max_delay=30)
        self.mqtt.on_pre_connect = self._on_pre_connect
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_connect_fail = self._on_connect_fail
        self.mqtt.on_subscribe = self._on_subscribe
        self.mqtt.on_message = self._on_message
        self.mqtt.on_disconnect = self._on_disconnect

    # -------------------------------------------------------------- messages this client sends

    def new_id(self) -> str:
        with self.counter_lock:
            self.counter += 1
            return f"{self.me}-{self.boot}-{self.counter}"

    def envelope(self, kind: str, round_: int, body: dict[str, Any]) -> bytes:
        """§ The envelope. `sent` is seconds since this process started (informational)."""
        doc = {"v": SCHEMA_VERSION, "kind": kind, "run": self.run_id, "round": round_, "client": self.me,
               "id": self.new_id(), "sent": round(time.monotonic() - self.started, 3), "body": body}
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")

    def presence(self, status: str) -> bytes:
        """§ Message kinds, `presence`: round 0, engine "" as the reference sends."""
        return self.envelope("presence", 0, {"status": status, "engine": ""})

    def publish_presence(self, status: str) -> mqtt.MQTTMessageInfo:
        """Presence is retained (§ Topics), so the aggregator sees the latest status whenever it subscribes."""
        return self.mqtt.publish(topic(self.run_id, "presence", self.me), self.presence(status), qos=QOS, retain=True)

    # -------------------------------------------------------------- paho callbacks (network thread)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        # § Transport, Last Will: a retained 'offline' presence, built at connect time, with a fresh id
        # for each connection. paho calls this before every (re)connect, so each CONNECT carries a new one.
        client.will_set(topic(self.run_id, "presence", self.me), self.presence("offline"), qos=QOS, retain=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self.inbox.put(Refused(f"broker refused the connection: {reason_code}"))
            return
        # § Topics: a client subscribes to the global state, its own task and receipt topics and the
        # aggregator's presence, QoS 1. After a reconnect it subscribes again (§ Client behaviour); the
        # persistent session kept them anyway.
        client.subscribe([(topic(self.run_id, "global"), QOS), (topic(self.run_id, "task", self.me), QOS),
                          (topic(self.run_id, "receipt", self.me), QOS), (topic(self.run_id, "aggregator"), QOS)])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log(self.me, f"cannot reach the broker at {self.opts.host}:{self.opts.port}; retrying")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        self.inbox.put(Subscribed(refused=any(code.is_failure for code in reason_codes)))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.inbox.put(Received(message.topic, bytes(message.payload)))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        if not self.leaving:  # paho reconnects by itself with the same identifier (§ Client behaviour)
            log(self.me, f"connection lost ({reason_code}); reconnecting")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.inbox.put(Signalled(signum))

    # -------------------------------------------------------------- the main thread

    def run(self) -> int:
        """Take part in the run until it finishes; return the exit status."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        log(self.me, f"joining run {self.run_id} on mqtt://{self.opts.host}:{self.opts.port}")
        # connect_async + loop_start: paho's thread connects, retrying while the broker is unreachable.
        self.mqtt.connect_async(self.opts.host, self.opts.port, keepalive=KEEPALIVE_S)
        self.mqtt.loop_start()
        try:
            return self._serve()
        finally:
            self.mqtt.loop_stop()

    def _serve(self) -> int:
        timeout = self.opts.timeout_s
        while True:
            try:
                wait = None if timeout is None else max(0.0, self.last_heard + timeout - time.monotonic())
                event = self.inbox.get(timeout=wait)
            except queue.Empty:
                return self._leave(f"no message of the run for {timeout:g} s; giving up", EXIT_TIMEOUT)
            if isinstance(event, Refused):
                log(self.me, event.reason)
                return EXIT_FAILED
            if isinstance(event, Signalled):
                return self._leave(f"stopped by signal {event.signum}", 128 + event.signum)
            if isinstance(event, Subscribed):
                if event.refused:
                    log(self.me, "the broker refused a subscription")
                    return EXIT_FAILED
                # § Message kinds, `presence`: 'online' right after connecting and subscribing,
                # retained; a new id on every connection. This makes the client live and known.
                self.publish_presence("online")
                log(self.me, "online")
                continue
            done = self._receive(event.topic, event.payload)
            if done is not None:
                return self._leave(done, EXIT_OK)

    def _receive(self, where: str, payload: bytes) -> str | None:
        """Handle one received message (§ A minimal client); return why to leave, or None to go on."""
        try:
            doc = decode(payload)
        except Rejected as exc:
            log(self.me, f"dropped a payload on {where}: {exc}")
            return None
        # § Deduplication: after a successful decode, drop an id seen before, silently (QoS 1 and
        # rumqttd redeliver; the retained global comes again on every subscribe).
        if doc["id"] in self.seen:
            return None
        self.seen[doc["id"]] = None
        if len(self.seen) > SEEN_IDS:
            del self.seen[next(iter(self.seen))]
        if doc["run"] != self.run_id:  # § Client behaviour: act only on messages of this run
            log(self.me, f"ignored a {doc['kind']} of run {doc['run']!r} on {where}")
            return None
        self.last_heard = time.monotonic()
        if where == topic(self.run_id, "global") and doc["kind"] == "global":
            return self._on_global(doc)
        if where == topic(self.run_id, "task", self.me) and doc["kind"] == "task":
            if doc["client"] != self.me:  # § Topics: on a per-client topic `client` is that client
                log(self.me, f"dropped a task for {doc['client']!r} on my task topic")
                return None
            return self._on_task(doc)
        if where == topic(self.run_id, "receipt", self.me) and doc["kind"] == "receipt" and doc["client"] == self.me:
            self._on_receipt(doc)
            return None
        if where == topic(self.run_id, "aggregator") and doc["kind"] == "presence" and doc["client"] == AGGREGATOR:
            online = doc["body"]["status"] == "online"
            if online is not self.aggregator_online:  # § Client behaviour: the aggregator's presence
                log(self.me, f"the aggregator is {doc['body']['status']}")
            self.aggregator_online = online
            return None
        log(self.me, f"dropped an unexpected {doc['kind']} on {where}")
        return None

    def _on_receipt(self, doc: dict[str, Any]) -> None:
        """§ Message kinds, `receipt`: what became of one of this client's updates."""
        body = doc["body"]
        if body["outcome"] == "accepted":
            log(self.me, f"update {body['update_id']} (round {doc['round']}) accepted")
        else:
            log(self.me, f"update {body['update_id']} (round {doc['round']}) rejected: {body['reason']}"
                         + (f" ({body['detail']})" if body["detail"] else ""))

    def _adopt_limits(self, body: dict[str, Any]) -> None:
        """§ Message kinds, `global` and `task`: keep the run's limits (absent from an older aggregator)."""
        self.max_prompt_chars = body.get("max_prompt_chars", self.max_prompt_chars)
        self.max_message_bytes = body.get("max_message_bytes", self.max_message_bytes)

    def _on_global(self, doc: dict[str, Any]) -> str | None:
        self.state = doc
        body = doc["body"]
        self._adopt_limits(body)
        if body["status"] == "finished":  # § Client behaviour: on `finished`, offline then DISCONNECT
            return f"run finished at version {body['version']}"
        if self.pending_task is not None:  # a task arrived before the first global
            task, self.pending_task = self.pending_task, None
            return self._on_task(task)
        return None

    def _on_task(self, task: dict[str, Any]) -> str | None:
        if task["round"] in self.done_rounds:  # § Client behaviour: ignore a round already handled
            log(self.me, f"ignored a second task for round {task['round']}")
            return None
        if self.state is None:  # § Client behaviour: needs a global first; a newer task replaces it
            self.pending_task = task
            return None
        self.done_rounds.add(task["round"])
        self._adopt_limits(task["body"])
        self._answer(task)
        if self.opts.max_rounds is not None and self.updates_sent >= self.opts.max_rounds:
            return f"sent {self.updates_sent} updates (--max-rounds)"
        return None

    def edit(self, prompt: str, round_: int) -> str:
        """The 'local optimization': append one sentence naming this client and the round.

        The result stays within the run's max_prompt_chars as the task announced it (§ What the
        aggregator does: prompt-too-long); if it would not, the task's prompt is cut at its end to make room.
        """
        budget = self.max_prompt_chars
        sentence = f"Client {self.me} reviewed this prompt in round {round_}."
        room = budget - len(sentence) - 1
        if room <= 0:
            return sentence[:budget]
        base = prompt.strip()[:room].rstrip()
        return f"{base} {sentence}" if base else sentence

    def _answer(self, task: dict[str, Any]) -> None:
        """§ Message kinds, `update`: round = task round, base_version = task version, never retained."""
        began = time.monotonic()
        body = task["body"]
        prompt = self.edit(body["prompt"], task["round"])
        stats = {"steps": 1, "accepted_steps": 1, "batch_acc_before": 0.0, "batch_acc_after": 0.0,
                 "llm_calls": 0, "tokens": 0, "duration_s": round(time.monotonic() - began, 6)}
        payload = self.envelope("update", task["round"],
                                {"base_version": body["version"], "prompt": prompt, "stats": stats})
        if len(payload) > self.max_message_bytes:  # § Transport, Size: the aggregator would drop it as oversized
            log(self.me, f"not sending the update for round {task['round']}: {len(payload)} bytes exceed the run's "
                         f"max_message_bytes ({self.max_message_bytes})")
            return
        # Not connected right now? paho keeps the QoS 1 message and sends it after reconnecting.
        self.mqtt.publish(topic(self.run_id, "update", self.me), payload, qos=QOS, retain=False)
        self.updates_sent += 1
        log(self.me, f"sent an update for round {task['round']} (base version {body['version']}, "
                     f"{len(prompt)} chars)")

    def _leave(self, why: str, status: int) -> int:
        """§ Client behaviour: publish 'offline' (retained), then a clean DISCONNECT (no Last Will)."""
        self.leaving = True
        info = self.publish_presence("offline")
        try:
            info.wait_for_publish(timeout=10.0)
        except (RuntimeError, ValueError) as exc:  # not connected: the Last Will says offline instead
            log(self.me, f"could not publish offline presence: {exc}")
        self.mqtt.disconnect()
        log(self.me, f"left: {why}; {self.updates_sent} updates sent")
        return status


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_options(argv: list[str] | None = None) -> Options:
    parser = _Parser(prog="paho_client.py", description="A standalone fedbus client (paho-mqtt, docs/PROTOCOL.md).")
    parser.add_argument("--broker", required=True, help="mqtt://[user:pass@]host[:port]")
    parser.add_argument("--run", required=True, help="the run id to join")
    parser.add_argument("--id", required=True, help="this client's id")
    parser.add_argument("--username", help="broker user name (overrides the URL's)")
    parser.add_argument("--password", help="broker password (overrides the URL's)")
    parser.add_argument("--max-rounds", type=int, help="leave after sending this many updates")
    parser.add_argument("--timeout-s", type=float, help="give up (exit 2) after this long without a message of the run")
    parser.add_argument("--max-prompt-chars", type=int, default=DEFAULT_MAX_PROMPT_CHARS,
                        help="the prompt budget until the aggregator announces the run's (default %(default)s)")
    args = parser.parse_args(argv)
    for value, what in ((args.run, "run id"), (args.id, "client id")):
        if not is_valid_id(value):  # § Identifiers
            parser.error(f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
    if args.id == AGGREGATOR:
        parser.error(f"the client id {AGGREGATOR!r} is reserved for the aggregator")
    if args.max_rounds is not None and args.max_rounds < 1:
        parser.error("--max-rounds must be >= 1")
    if args.timeout_s is not None and not args.timeout_s > 0:
        parser.error("--timeout-s must be > 0")
    if args.max_prompt_chars < 1:
        parser.error("--max-prompt-chars must be >= 1")
    url = urlsplit(args.broker if "://" in args.broker else f"mqtt://{args.broker}")
    try:
        port = url.port or 1883
    except ValueError as exc:
        parser.error(f"broker URL {args.broker!r}: {exc}")
    if url.scheme != "mqtt" or not url.hostname:
        parser.error(f"broker URL {args.broker!r}: use mqtt://[user:pass@]host[:port]")
    username = args.username if args.username is not None else (unquote(url.username) if url.username else None)
    password = args.password if args.password is not None else (unquote(url.password) if url.password else None)
    return Options(host=url.hostname, port=port, username=username, password=password, run=args.run, me=args.id,
                   max_rounds=args.max_rounds, timeout_s=args.timeout_s, max_prompt_chars=args.max_prompt_chars)


def main(argv: list[str] | None = None) -> int:
    return PahoClient(parse_options(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
