"""The wire format: UTF-8 JSON, one object per MQTT payload. See docs/PROTOCOL.md.

``encode`` turns a message into bytes; ``decode`` turns bytes into a message or raises
:class:`MessageRejected` (the one error type of decoding) with a short machine-readable
``reason``. Nothing else in fedbus knows what the bytes look like.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

from fedbus.errors import LocalProtocolError, RemoteProtocolError
from fedbus.protocol.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    KIND_OF,
    KINDS,
    SCHEMA_VERSION,
    DataSpec,
    GlobalState,
    Message,
    Metrics,
    Update,
    UpdateStats,
)
from fedbus.text import holds_half_pair

DEFAULT_MAX_BYTES = DEFAULT_MAX_MESSAGE_BYTES
MAX_DEPTH = 8
_ENVELOPE = ("run", "round", "client", "sent")


class MessageRejected(RemoteProtocolError):
    """A payload that is not a valid fedbus message. ``reason`` is one short code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What ``decode`` accepts, and the size ``encode`` refuses to exceed."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = MAX_DEPTH


def _body(message: Message) -> dict[str, Any]:
    if isinstance(message, Update):
        stats = message.stats
        return {
            "base_version": message.base_version,
            "prompt": message.prompt,
            "stats": {name: getattr(stats, name) for name in UpdateStats.__dataclass_fields__},
        }
    if isinstance(message, GlobalState):
        data = message.data
        return {
            "version": message.version,
            "prompt": message.prompt,
            "status": message.status,
            "engine": message.engine,
            "rounds": message.rounds,
            # an optional field left unset (None: data_seed, sources, split) is left out: older peers' bytes
            "data": {name: value for name in DataSpec.__dataclass_fields__
                     if (value := getattr(data, name)) is not None},
            "max_prompt_chars": message.max_prompt_chars,
            "max_message_bytes": message.max_message_bytes,
        }
    if isinstance(message, Metrics):
        return {"values": dict(message.values)}
    skip = {"run", "round", "client", "msg_id", "sent"}
    return {
        name: getattr(message, name)
        for name in type(message).__dataclass_fields__
        if name not in skip
    }


# JSON's bytes come from orjson (a 2 KB prompt's message in a twentieth of json's time). Where orjson's rules differ
# from the json module's, json writes or refuses: a NaN or infinity (orjson writes null), an integer past 64 bits
# (orjson refuses). json.dumps builds a new encoder whenever an argument differs from the defaults: ours are built
# once, refusing NaN (messages) or writing it (:func:`write_json`'s ``allow_nan``).
_ENCODERS = {nan: json.JSONEncoder(ensure_ascii=False, allow_nan=nan, separators=(",", ":")) for nan in (False, True)}
_FAST = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME  # neither is a message field's type


def write_json(document: Any, *, allow_nan: bool = False) -> bytes:
    """The codec's JSON style: compact, UTF-8 as is, keys in their order, numbers as orjson writes them (the same
    document, the same bytes). Raises ``TypeError`` or ``ValueError`` for what JSON cannot hold (a lone surrogate,
    NaN unless ``allow_nan``), as ``json.dumps`` does; json writes what orjson cannot (an integer past 64 bits, and
    NaN with ``allow_nan``, as json's bare ``NaN``)."""
    try:
        payload = orjson.dumps(document, option=_FAST)
    except TypeError:
        return _ENCODERS[allow_nan].encode(document).encode("utf-8")
    if b"null" in payload and _holds_non_finite(document):  # a NaN or infinity, which orjson wrote as null
        return _ENCODERS[allow_nan].encode(document).encode("utf-8")
    return payload


def _holds_non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


class MessageTooLarge(LocalProtocolError):
    """We were about to send more than the run allows: the receiver would reject it as 'oversized'."""

    def __init__(self, kind: str, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(f"{kind} of {size} bytes exceeds the run's max_message_bytes ({limit})")


def encode(message: Message, limits: Limits | None = None) -> bytes:
    """Serialize ``message``. Raises ``LocalProtocolError`` if it cannot be represented, and
    ``MessageTooLarge`` (one) if it is larger than ``limits.max_bytes``."""
    kind = KIND_OF.get(type(message))
    if kind is None:
        raise LocalProtocolError(f"not a fedbus message: {type(message).__name__}")
    document = {
        "v": SCHEMA_VERSION,
        "kind": kind,
        "run": message.run,
        "round": message.round,
        "client": message.client,
        "id": message.msg_id,
        "sent": message.sent,
        "body": _body(message),
    }
    try:
        payload = write_json(document)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError too: a lone surrogate in a string
        raise LocalProtocolError(f"cannot encode {kind}: {exc}") from exc
    if limits is not None and len(payload) > limits.max_bytes:
        raise MessageTooLarge(kind, len(payload), limits.max_bytes)
    return payload


def _reject_constant(name: str) -> Any:
    raise MessageRejected("non-finite", f"{name} is not allowed")


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys too) holds half of a surrogate pair: JSON can escape one
    (``"\\ud800"``), but it is no Unicode text, and UTF-8 (a log line, a file, a reply) cannot hold it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if holds_half_pair(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _parse(payload: bytes, limits: Limits) -> dict[str, Any]:
    # json, not orjson, reads: orjson refuses some documents json takes (1e400, a lone surrogate's escape) and reads
    # an integer past 64 bits as a float; telling those apart would cost what orjson saves on a message this size
    if len(payload) > limits.max_bytes:
        raise MessageRejected("oversized", f"{len(payload)} bytes > limit {limits.max_bytes}")
    try:
        document = _DECODER.decode(payload.decode("utf-8"))
    except MessageRejected:
        raise
    except RecursionError as exc:
        raise MessageRejected("too-deep", "nesting exceeds the parser's limit") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageRejected("not-json", str(exc)[:200]) from exc
    # only an escape makes one; our writers escape nothing but control characters, so one scan clears most messages
    if b"\\u" in payload and (b"\\ud" in payload or b"\\uD" in payload) and _holds_lone_surrogate(document):
        raise MessageRejected("not-json", "a string escapes a lone surrogate (\\ud800-\\udfff): not Unicode text")
    # Walking the tree costs microseconds; only do it when there are enough brackets to nest deeply.
    brackets = payload.count(b"{") + payload.count(b"[")
    if brackets > limits.max_depth and _depth_exceeds(document, limits.max_depth):
        raise MessageRejected("too-deep", f"nesting deeper than {limits.max_depth}")
    if not isinstance(document, dict):
        raise MessageRejected("bad-envelope", "top level must be a JSON object")
    return document


def _build(kind: str, document: dict[str, Any]) -> Message:
    body = document.get("body")
    if not isinstance(body, dict):
        raise MessageRejected("bad-envelope", "body must be an object")
    fields: dict[str, Any] = {name: document.get(name) for name in _ENVELOPE}
    fields["msg_id"] = document.get("id")
    cls = KINDS[kind]
    if kind in ("update", "global", "metrics"):
        body = dict(body)
    if kind == "update":
        stats = body.get("stats")
        if not isinstance(stats, dict):
            raise MessageRejected("bad-field", "stats must be an object")
        stat_fields: dict[str, Any] = {n: stats.get(n) for n in UpdateStats.__dataclass_fields__}
        body["stats"] = UpdateStats(**stat_fields)
    elif kind == "global":
        data = body.get("data")
        if not isinstance(data, dict):
            raise MessageRejected("bad-field", "data must be an object")
        data_fields: dict[str, Any] = {n: data.get(n) for n in DataSpec.__dataclass_fields__}
        body["data"] = DataSpec(**data_fields)
    elif kind == "metrics":
        values = body.get("values")
        if not isinstance(values, dict):
            raise MessageRejected("bad-field", "values must be an object")
        body["values"] = tuple(values.items())
    for name in _BODY_FIELDS[kind]:
        if name in body:
            fields[name] = body[name]
    return cls(**fields)


_BODY_FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(n for n in cls.__dataclass_fields__ if n not in {*_ENVELOPE, "msg_id"}) for kind, cls in KINDS.items()
}


def decode(payload: bytes, limits: Limits = Limits()) -> Message:
    """Parse and check ``payload``. Raises :class:`MessageRejected` and nothing else.

    The same bytes always give the same message, and messages are frozen: the last few are remembered, so a
    process hosting many clients parses a broadcast (the round's global, the aggregator's presence) once, not
    once per client, and its clients share one copy of it."""
    return _decoded(bytes(payload), limits)


@functools.lru_cache(maxsize=8)
def _decoded(payload: bytes, limits: Limits) -> Message:
    document = _parse(payload, limits)
    version = document.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:  # True == 1 and 1.0 == 1 are not version 1
        raise MessageRejected("bad-version", f"schema version {version!r} is not {SCHEMA_VERSION}")
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:  # a list or object here is unhashable
        raise MessageRejected("unknown-kind", f"kind {kind!r}")
    try:
        return _build(kind, document)
    except MessageRejected:
        raise
    except (TypeError, ValueError, ArithmeticError) as exc:  # OverflowError: a number no float holds
        raise MessageRejected("bad-field", str(exc)[:200]) from exc
