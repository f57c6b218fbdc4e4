"""A fedbus client in one file: paho-mqtt (and, for protocol v2, `cryptography`), nothing from fedbus.

It takes part in a fedbus federation by following docs/PROTOCOL.md (the wire protocol, version 1) and
docs/SECURITY.md (protocol v2: signed frames, sealed bodies, keys and join tokens) and nothing else, so it
doubles as the reference for writing a client in another language. Its "local optimization" is a
deterministic edit: it appends one sentence naming itself and the round to the prompt of each task, within
the run's prompt budget. It logs the aggregator's receipt for each update and the aggregator's presence.
Section references (§) are to headings of docs/PROTOCOL.md; "SECURITY.md §" to docs/SECURITY.md's.

Usage (fedbus need not be installed; paho-mqtt 2.x must be)::

    pip install 'paho-mqtt>=2,<3'
    # protocol v1: a run with `security: none`
    python clients/paho_client.py --broker mqtt://HOST:1883 --run RUN_ID --id NAME
        [--username USER --password PASS] [--max-rounds N] [--timeout-s SECONDS]
        [--max-prompt-chars 20000]
    # protocol v2 (fedbus's default, `security: signed+sealed` or `signed`); also needs cryptography
    pip install 'paho-mqtt>=2,<3' 'cryptography>=40'
    python clients/paho_client.py --token TOKEN_FILE_OR_TEXT [--key NAME.key] [--broker URL] [--ca FILE] ...

With --token (a join token, `fedbus1:...`, or a file holding one: a token holds secrets, and a file keeps
them out of `ps`), the broker, run id, client id, broker credentials and the aggregator's public key come
from the token; --broker overrides its broker URL (--run and --id, if given, must agree with it). The
client's private key is the token's `client_key` when `fedbus invite` minted one, else --key, the client's
private key file (SECURITY.md § Key files; mode 0600, its `id` the client id), whose public half the
aggregator must have authorized (`fedbus invite --public NAME.key.pub`, or its authorized-keys file; this
client does not enroll with a token's `enroll` secret, whose request SECURITY.md leaves to the wiring).
In v2 the client verifies every payload it receives against the aggregator's key pinned in the token
(anything else is dropped and logged as `forged:<reason>`), deduplicates on (signer, id), signs everything
it publishes (presence, Last Will, updates) and seals its update bodies to the aggregator. An `mqtts://`
broker is reached over TLS, its certificate checked against --ca (default: the system's CAs).

Exit status: 0 the run finished (or --max-rounds updates were sent); 1 the broker refused the
connection or a subscription; 2 nothing happened for --timeout-s seconds; 64 a bad command line (a bad
token or key file included); 128 + N on signal N (SIGINT, SIGTERM). In every case but 1 the client first
tries to publish its 'offline' presence and disconnects cleanly. Diagnostics go to stderr, one line each.
--max-prompt-chars is the budget used until the aggregator announces the run's (in `global` and `task`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import json
import math
import os
import queue
import re
import secrets
import signal
import stat
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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


def _half_surrogate(document: Any) -> bool:
    """True if a string or key anywhere holds half a surrogate pair (JSON's "\\ud800" escape spells one)."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend((*value.keys(), *value.values()))
        elif isinstance(value, list):
            stack.extend(value)
    return False


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


def decode(payload: bytes, limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Parse and check one payload, in the order of § Decoding; raise ``Rejected`` with its reason.

    This client acts on `global`, `task`, `receipt` and the aggregator's `presence`, so it checks the
    bodies of those kinds; the others pass with a checked envelope and are dropped by the caller.
    """
    if len(payload) > limit:  # 1
        raise Rejected("oversized", f"{len(payload)} bytes > {limit}")
    try:  # 2: UTF-8 (a BOM makes json.loads fail), one JSON document, no NaN/Infinity
        doc = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError as exc:
        raise Rejected("too-deep", "nesting exceeds the parser's limit") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise Rejected("not-json", str(exc)[:200]) from exc
    if _half_surrogate(doc):  # 2: no UTF-8 text holds half a surrogate pair
        raise Rejected("not-json", "a string escapes half a surrogate pair")
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


# ------------------------------------------------------------------ protocol v2 (docs/SECURITY.md)

# Written from docs/SECURITY.md alone. `cryptography` (Ed25519, X25519, HKDF-SHA256, ChaCha20-Poly1305) is
# imported inside the functions that need it, so a v1 client runs on paho-mqtt alone.

SIGNED_MAGIC = b"FB2S"  # SECURITY.md § The signed frame
SIGN_DOMAIN = b"fedbus/v2 signed\n"
PAIRED_MAGIC = b"FB2M"  # SECURITY.md § The paired frame
PAIRED_DOMAIN = b"fedbus/v2 paired\n"
PAIR_KEY_INFO = b"fedbus/v2 pair key\n"
TAG_BYTES = 32
MAX_SIGNER_ID = 64
SIGNATURE_BYTES = 64
SEALED_MAGIC = b"FB2E"  # SECURITY.md § The sealed box
SEAL_DOMAIN = b"fedbus/v2 sealed\n"  # the associated data: this, then the context
HKDF_INFO = b"fedbus/v2 sealed"
KEY_BYTES = 32
SEALED_KINDS = ("update", "failure")  # SECURITY.md § Sealed bodies
PUBLIC_PREFIX = "fedbus-pk:"  # SECURITY.md § Text forms
FINGERPRINT_PREFIX = "SHA256:"
PRIVATE_KEY_TYPE = "fedbus-private-key"  # SECURITY.md § Key files
TOKEN_PREFIX = "fedbus1:"  # SECURITY.md § Join tokens
MAX_TOKEN_CHARS = 8192
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class Forged(Rejected):
    """A payload that fails SECURITY.md § Verifying (or the size check before it): dropped, held against nobody."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"forged:{reason}", detail)


class BadInput(ValueError):
    """A join token or key file that cannot be used; ``reason`` is SECURITY.md's code where it names one."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def b64_exact(text: str, length: int | None = None) -> bytes | None:
    """Standard padded base64 (RFC 4648 §4), only in its one canonical form (SECURITY.md § Text forms)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii") != text or (length is not None and len(raw) != length):
        return None
    return raw


def b64url_exact(text: str) -> bytes | None:
    """base64url without padding (RFC 4648 §5), only in its canonical form (SECURITY.md § Join tokens)."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") == text else None


@dataclass(frozen=True)
class PublicKey:
    """A party's public key: Ed25519 (``sign``, to verify it) and X25519 (``seal``, to seal to it)."""

    sign: bytes
    seal: bytes

    def text(self) -> str:
        return PUBLIC_PREFIX + base64.b64encode(self.sign + self.seal).decode("ascii")

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.sign + self.seal).digest()
        return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    """``fedbus-pk:`` + canonical base64 of ``ed25519 public (32) ‖ x25519 public (32)``; ValueError if not."""
    raw = b64_exact(text[len(PUBLIC_PREFIX):], 2 * KEY_BYTES) if text.startswith(PUBLIC_PREFIX) else None
    if raw is None:
        raise ValueError(f"not a fedbus public key ({PUBLIC_PREFIX} and the base64 of 64 bytes)")
    return PublicKey(raw[:KEY_BYTES], raw[KEY_BYTES:])


@dataclass(frozen=True)
class PrivateKey:
    """A private key file's content (SECURITY.md § Key files): the id it signs as and its two secrets."""

    owner: str
    ed25519_seed: bytes = field(repr=False)
    x25519_secret: bytes = field(repr=False)

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return PublicKey(Ed25519PrivateKey.from_private_bytes(self.ed25519_seed).public_key().public_bytes_raw(),
                         X25519PrivateKey.from_private_bytes(self.x25519_secret).public_key().public_bytes_raw())


def parse_private_key(text: str) -> PrivateKey:
    """The private key file's JSON object; ``BadInput`` saying what is wrong (its ``public``, when present,
    must be the key its secrets give: a damaged file is refused, not silently another identity)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("key", "not a fedbus private key file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("type") != PRIVATE_KEY_TYPE:
        raise BadInput("key", f'not a fedbus private key file (no "type": "{PRIVATE_KEY_TYPE}")')
    if not (_is_int(doc.get("v")) and doc["v"] == 1):
        raise BadInput("key", f"key file version {doc.get('v')!r} is not 1")
    if not is_valid_id(doc.get("id")):
        raise BadInput("key", f"id {doc.get('id')!r} is not a fedbus id")
    secrets_: list[bytes] = []
    for name in ("ed25519", "x25519"):
        value = doc.get(name)
        raw = b64_exact(value, KEY_BYTES) if isinstance(value, str) else None
        if raw is None:
            raise BadInput("key", f"{name} must be the base64 of 32 bytes")
        secrets_.append(raw)
    key = PrivateKey(doc["id"], secrets_[0], secrets_[1])
    if "public" in doc and doc["public"] != key.public.text():
        raise BadInput("key", "the public key written in the file does not belong to its secrets (damaged?)")
    return key


def load_private_key(path: Path) -> PrivateKey:
    """Read a private key file; like OpenSSH, refuse one that group or others may read or write."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput("key", f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if os.name == "posix" and mode & 0o077:
        raise BadInput("key", f"{path}: permissions {mode:04o} are too open for a private key: chmod 600 it")
    try:
        return parse_private_key(text)
    except BadInput as exc:
        raise BadInput("key", f"{path}: {exc}") from None


@dataclass(frozen=True)
class JoinToken:
    """SECURITY.md § Join tokens, decoded. ``private_key``: the client's own, when the token carries it."""

    broker: str
    run: str
    client: str
    aggregator_key: PublicKey
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    enroll: bytes | None = field(default=None, repr=False)
    private_key: PrivateKey | None = field(default=None, repr=False)


def decode_token(text: str) -> JoinToken:
    """``fedbus1:`` + base64url (no padding) of a JSON object; ``BadInput`` with SECURITY.md's reason
    (``prefix``, ``encoding``, ``json``, ``version``, ``field``, ``fingerprint-mismatch``). Unknown fields are
    ignored; surrounding whitespace too."""
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise BadInput("prefix", f"a join token starts with {TOKEN_PREFIX!r}")
    if len(text) > MAX_TOKEN_CHARS:
        raise BadInput("encoding", f"longer than {MAX_TOKEN_CHARS} characters")
    raw = b64url_exact(text[len(TOKEN_PREFIX):])
    if raw is None:
        raise BadInput("encoding", "not canonical base64url after the prefix (cut or mistyped?)")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise BadInput("json", "the decoded token is not UTF-8 JSON") from None
    if not isinstance(doc, dict):
        raise BadInput("json", "the decoded token is not a JSON object")
    if not (_is_int(doc.get("v")) and doc["v"] == 1):
        raise BadInput("version", f"token version {doc.get('v')!r} is not 1")

    def optional(name: str) -> str | None:
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise BadInput("field", f"{name}: not a string")
        return value

    def required(name: str) -> str:
        value = optional(name)
        if value is None:
            raise BadInput("field", f"{name}: missing")
        return value

    try:
        aggregator_key = parse_public_key(required("aggregator_key"))
    except ValueError as exc:
        raise BadInput("field", f"aggregator_key: {exc}") from None
    if aggregator_key.fingerprint() != required("aggregator_fingerprint"):
        raise BadInput("fingerprint-mismatch", f"the key's fingerprint is {aggregator_key.fingerprint()}, the token "
                                               f"says {doc['aggregator_fingerprint']}")
    broker = required("broker")
    try:
        url = urlsplit(broker)
        url_ok = (url.scheme in ("mqtt", "mqtts") and bool(url.hostname) and url.port != 0
                  and url.username is None and url.password is None)
    except ValueError:
        url_ok = False
    if not url_ok:
        raise BadInput("field", f"broker: {broker!r} is not mqtt[s]://host:port")
    run, client = required("run"), required("client")
    if not is_valid_id(run):
        raise BadInput("field", f"run: {run!r} is not a run id")
    if not is_valid_id(client) or client == AGGREGATOR:
        raise BadInput("field", f"client: {client!r} is not a client id")
    username, password = optional("username"), optional("password")
    if username == "" or (password is not None and username is None):
        raise BadInput("field", "username: a non-empty user name, required with a password")
    enroll_text = optional("enroll")
    enroll = None if enroll_text is None else b64url_exact(enroll_text)
    if enroll_text is not None and (enroll is None or len(enroll) != KEY_BYTES):
        raise BadInput("field", "enroll: not base64url of 32 bytes")
    # `client_key` (a token from `fedbus invite`, which minted the client's key pair and authorized it):
    # base64url without padding of the Ed25519 seed (32) then the X25519 secret (32), the client's to sign as.
    key_text = optional("client_key")
    raw_key = None if key_text is None else b64url_exact(key_text)
    if key_text is not None and (raw_key is None or len(raw_key) != 2 * KEY_BYTES):
        raise BadInput("field", "client_key: not base64url of 64 bytes")
    private_key = None if raw_key is None else PrivateKey(client, raw_key[:KEY_BYTES], raw_key[KEY_BYTES:])
    return JoinToken(broker=broker, run=run, client=client, aggregator_key=aggregator_key, username=username,
                     password=password, enroll=enroll, private_key=private_key)


def signed_data(signer_id: str, payload: bytes) -> bytes:
    """SECURITY.md § The signed frame: ``"fedbus/v2 signed" ‖ 0x0A ‖ n ‖ signer id ‖ payload``."""
    raw_id = signer_id.encode("ascii")
    return SIGN_DOMAIN + bytes([len(raw_id)]) + raw_id + payload


def sign_frame(payload: bytes, key: PrivateKey) -> bytes:
    """The ``FB2S`` frame of ``payload``, signed as ``key.owner``: magic, n, id, Ed25519 signature, payload."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw_id = key.owner.encode("ascii")
    signature = Ed25519PrivateKey.from_private_bytes(key.ed25519_seed).sign(signed_data(key.owner, payload))
    return SIGNED_MAGIC + bytes([len(raw_id)]) + raw_id + signature + payload


def pair_key(own: PrivateKey, aggregator: PublicKey) -> bytes:
    """SECURITY.md § The paired frame: the key this client shares with the aggregator,
    ``HKDF-SHA256(X25519(own, aggregator), salt = aggregator's X25519 key ‖ own, info = "fedbus/v2 pair key" ‖ 0x0A
    ‖ client id, 32 bytes)``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = X25519PrivateKey.from_private_bytes(own.x25519_secret)
    shared = secret.exchange(X25519PublicKey.from_public_bytes(aggregator.seal))
    salt = aggregator.seal + secret.public_key().public_bytes_raw()
    return HKDF(algorithm=SHA256(), length=TAG_BYTES, salt=salt, info=PAIR_KEY_INFO + own.owner.encode("ascii")
                ).derive(shared)


def verify_frame(wire: bytes, keys: Mapping[str, PublicKey], signer: str,
                 pair: bytes | None = None) -> tuple[str, bytes]:
    """SECURITY.md § Verifying, checks 1-5 in order: (signer id, payload), or ``Forged`` with the reason. A paired
    frame (``FB2M``) checks its tag with ``pair``, the key shared with the signer."""
    import hmac

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    magic = wire[: len(SIGNED_MAGIC)]
    if magic not in (SIGNED_MAGIC, PAIRED_MAGIC):  # 1
        raise Forged("unsigned", "not a signed frame (no FB2S or FB2M magic)")
    auth_bytes = SIGNATURE_BYTES if magic == SIGNED_MAGIC else TAG_BYTES
    n = wire[4] if len(wire) > 4 else 0
    start = 5 + n
    signer_id = wire[5:start].decode("ascii", errors="replace")
    if not (1 <= n <= MAX_SIGNER_ID and len(wire) >= start + auth_bytes and is_valid_id(signer_id)):  # 2
        raise Forged("malformed", "the frame is cut, or its signer id is not a fedbus id")
    if signer_id != signer:  # 3
        raise Forged("wrong-signer", f"signed by {signer_id!r}, expected {signer!r}")
    key = keys.get(signer_id)
    if key is None or (magic == PAIRED_MAGIC and pair is None):  # 4
        raise Forged("unknown-signer", f"no key for {signer_id!r}")
    auth, payload = wire[start : start + auth_bytes], wire[start + auth_bytes :]
    if magic == PAIRED_MAGIC:  # 5, for a paired frame: the HMAC-SHA256 tag under the pair's key
        raw_id = signer_id.encode("ascii")
        tag = hmac.digest(pair or b"", PAIRED_DOMAIN + bytes([len(raw_id)]) + raw_id + payload, "sha256")
        if not hmac.compare_digest(auth, tag):
            raise Forged("bad-signature", f"the tag does not match the key shared with {signer_id!r}")
        return signer_id, payload
    try:  # 5
        Ed25519PublicKey.from_public_bytes(key.sign).verify(auth, signed_data(signer_id, payload))
    except InvalidSignature:
        raise Forged("bad-signature", f"the signature does not match {signer_id!r}'s key") from None
    return signer_id, payload


def seal_context(run: str, client: str, msg_id: str) -> bytes:
    """SECURITY.md § Sealed bodies: ``utf8(run) ‖ 0x0A ‖ utf8(client) ‖ 0x0A ‖ utf8(id)``."""
    return b"\n".join(part.encode("utf-8") for part in (run, client, msg_id))


def seal(plaintext: bytes, recipient: bytes, context: bytes, *, ephemeral: bytes | None = None) -> bytes:
    """SECURITY.md § The sealed box: ``FB2E ‖ E ‖ ChaCha20-Poly1305(key, nonce, plaintext, ad)`` to the X25519
    key ``recipient``. ``ephemeral`` is for test vectors only: a real box draws a fresh secret every time."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    e = X25519PrivateKey.from_private_bytes(secrets.token_bytes(KEY_BYTES) if ephemeral is None else ephemeral)
    e_public = e.public_key().public_bytes_raw()
    try:
        shared = e.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:  # cryptography refuses an all-zero result itself
        shared = bytes(KEY_BYTES)
    if shared == bytes(KEY_BYTES):
        raise ValueError("the recipient's X25519 key is a low-order point: refusing to seal to it")
    okm = HKDF(algorithm=SHA256(), length=44, salt=e_public + recipient, info=HKDF_INFO).derive(shared)
    return SEALED_MAGIC + e_public + ChaCha20Poly1305(okm[:32]).encrypt(okm[32:44], plaintext, SEAL_DOMAIN + context)


def encode(doc: dict[str, Any]) -> bytes:
    """A message as this client writes it: compact JSON, UTF-8, in field order (§ The envelope)."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def seal_body(doc: dict[str, Any], recipient: bytes, *, ephemeral: bytes | None = None) -> dict[str, Any]:
    """``doc`` with its body replaced by ``{"sealed": base64(box)}``: the box of the body's JSON, under the
    message's own run, client and id (SECURITY.md § Sealed bodies)."""
    box = seal(encode(doc["body"]), recipient, seal_context(doc["run"], doc["client"], doc["id"]), ephemeral=ephemeral)
    return {**doc, "body": {"sealed": base64.b64encode(box).decode("ascii")}}


@dataclass(frozen=True)
class V2:
    """This client's protocol-v2 settings: its own key, and the aggregator's, pinned from the join token."""

    key: PrivateKey
    aggregator_key: PublicKey

    def wrap(self, doc: dict[str, Any]) -> bytes:
        """SECURITY.md § Sending: an update's or failure's body sealed to the aggregator, then all signed."""
        if doc["kind"] in SEALED_KINDS:
            doc = seal_body(doc, self.aggregator_key.seal)
        return sign_frame(encode(doc), self.key)

    def authenticate(self, wire: bytes, limit: int) -> tuple[str, bytes]:
        """SECURITY.md § Receiving: the size of the frame, then its signature by the pinned aggregator key."""
        if len(wire) > limit:
            raise Forged("oversized", f"{len(wire)} bytes > {limit}")
        return verify_frame(wire, {AGGREGATOR: self.aggregator_key}, AGGREGATOR, self.pair)

    @functools.cached_property
    def pair(self) -> bytes:
        """The key shared with the aggregator, for its paired frames (tasks, receipts)."""
        return pair_key(self.key, self.aggregator_key)


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
    tls: bool = False  # mqtts://
    ca: str | None = None  # the CA file to check the broker's certificate with (None: the system's)
    v2: V2 | None = None  # protocol v2 (--token, --key); None: protocol v1


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
        # § Deduplication: insertion-ordered, so the oldest goes first; keyed on (verified signer, id) as
        # SECURITY.md § Deduplication with signatures says (the signer is "" in v1, where nothing is verified)
        self.seen: dict[tuple[str, str], None] = {}
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
        if opts.tls:  # mqtts://: the broker's certificate and host name are checked
            self.mqtt.tls_set(ca_certs=opts.ca)
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
        """§ The envelope, as it goes on the wire. `sent` is seconds since this process started (informational).

        In v2 the body of an update is sealed and the whole signed (SECURITY.md § Sending)."""
        doc = {"v": SCHEMA_VERSION, "kind": kind, "run": self.run_id, "round": round_, "client": self.me,
               "id": self.new_id(), "sent": round(time.monotonic() - self.started, 3), "body": body}
        return encode(doc) if self.opts.v2 is None else self.opts.v2.wrap(doc)

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
        # In v2 it is signed like everything else (SECURITY.md § Sending).
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
        scheme = "mqtts" if self.opts.tls else "mqtt"
        v2 = self.opts.v2
        log(self.me, f"joining run {self.run_id} on {scheme}://{self.opts.host}:{self.opts.port}, " + (
            "protocol v1 (unsigned)" if v2 is None else
            f"protocol v2 as {v2.key.public.fingerprint()}, trusting aggregator {v2.aggregator_key.fingerprint()}"))
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
        # What this client receives is at most as long as the run allows (§ Transport, Size), or the default.
        limit = max(MAX_MESSAGE_BYTES, self.max_message_bytes)
        signer = ""
        try:
            if self.opts.v2 is not None:  # SECURITY.md § Receiving: only what the pinned key signed gets further
                signer, payload = self.opts.v2.authenticate(payload, limit)
            doc = decode(payload, limit)
        except Rejected as exc:  # in v2 a forgery is "forged:<reason>", held against nobody
            log(self.me, f"dropped a payload on {where}: {exc}")
            return None
        # § Deduplication: after a successful decode (and, in v2, verification), drop an id seen before,
        # silently (QoS 1 and rumqttd redeliver; the retained global comes again on every subscribe).
        if (signer, doc["id"]) in self.seen:
            return None
        self.seen[signer, doc["id"]] = None
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
        # § Transport, Size: the aggregator would drop it as oversized (in v2: the frame as published)
        if len(payload) > self.max_message_bytes:
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


def read_token(value: str) -> JoinToken:
    """--token: the token itself (``fedbus1:...``), or a file holding it (which keeps its secrets out of ``ps``)."""
    if not value.strip().startswith(TOKEN_PREFIX):
        try:
            value = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput("token", f"{value!r} is neither a join token ({TOKEN_PREFIX}...) nor a readable file "
                                    f"holding one: {getattr(exc, 'strerror', None) or exc}") from None
    return decode_token(value)


def parse_options(argv: list[str] | None = None) -> Options:
    parser = _Parser(prog="paho_client.py",
                     description="A standalone fedbus client (paho-mqtt; docs/PROTOCOL.md, docs/SECURITY.md).")
    parser.add_argument("--broker", help="mqtt://[user:pass@]host[:port] or mqtts://...; overrides the token's")
    parser.add_argument("--run", help="the run id to join (with --token: its run)")
    parser.add_argument("--id", help="this client's id (with --token: its client)")
    parser.add_argument("--token", metavar="TOKEN|FILE",
                        help="protocol v2: a join token (fedbus1:...), or a file holding one")
    parser.add_argument("--key", metavar="FILE",
                        help="protocol v2: this client's private key file (mode 0600), unless the token carries it")
    parser.add_argument("--ca", metavar="FILE", help="for mqtts://: the CA certificate(s) to check the broker with")
    parser.add_argument("--username", help="broker user name (overrides the URL's and the token's)")
    parser.add_argument("--password", help="broker password (overrides the URL's and the token's)")
    parser.add_argument("--max-rounds", type=int, help="leave after sending this many updates")
    parser.add_argument("--timeout-s", type=float, help="give up (exit 2) after this long without a message of the run")
    parser.add_argument("--max-prompt-chars", type=int, default=DEFAULT_MAX_PROMPT_CHARS,
                        help="the prompt budget until the aggregator announces the run's (default %(default)s)")
    args = parser.parse_args(argv)
    token: JoinToken | None = None
    v2: V2 | None = None
    if args.token is not None:
        try:
            token = read_token(args.token)
        except BadInput as exc:
            parser.error(f"--token: {exc}")
        for given, expected, what in ((args.run, token.run, "--run"), (args.id, token.client, "--id")):
            if given is not None and given != expected:
                parser.error(f"{what} {given!r} disagrees with the token's {expected!r}")
        args.run, args.id = token.run, token.client
        args.broker = args.broker or token.broker
    elif args.key is not None:
        parser.error("--key goes with --token (which pins the aggregator's key)")
    for name in ("broker", "run", "id"):
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (or a --token)")
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
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
    except ValueError as exc:
        parser.error(f"broker URL {args.broker!r}: {exc}")
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        parser.error(f"broker URL {args.broker!r}: use mqtt://[user:pass@]host[:port] or mqtts://...")
    if args.ca is not None and url.scheme != "mqtts":
        parser.error("--ca goes with an mqtts:// broker")
    username = args.username if args.username is not None else (unquote(url.username) if url.username else None)
    password = args.password if args.password is not None else (unquote(url.password) if url.password else None)
    if token is not None:
        if username is None:
            username = token.username
        if password is None and username == token.username:
            password = token.password
        key = token.private_key
        if args.key is not None:
            if key is not None:
                parser.error("the token carries this client's private key (fedbus invite minted it): drop --key")
            try:
                key = load_private_key(Path(args.key))
            except BadInput as exc:
                parser.error(f"--key: {exc}")
        if key is None:
            parser.error("--token needs --key FILE, this client's private key file (the token carries none)")
        if key.owner != args.id:
            parser.error(f"the key file is {key.owner!r}'s, not {args.id!r}'s: a client signs as its own id")
        try:  # a key that cannot be sealed to (a low-order point) is refused now, not at the first update
            seal(b"", token.aggregator_key.seal, b"")
        except ValueError as exc:
            parser.error(f"--token: aggregator_key: {exc}")
        v2 = V2(key=key, aggregator_key=token.aggregator_key)
    return Options(host=url.hostname, port=port, username=username, password=password, run=args.run, me=args.id,
                   max_rounds=args.max_rounds, timeout_s=args.timeout_s, max_prompt_chars=args.max_prompt_chars,
                   tls=url.scheme == "mqtts", ca=args.ca, v2=v2)


def main(argv: list[str] | None = None) -> int:
    return PahoClient(parse_options(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
