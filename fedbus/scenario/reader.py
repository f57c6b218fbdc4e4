"""Reading typed fields out of parsed YAML while recording every problem with its path."""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from collections.abc import Callable, Mapping
from typing import Any

from fedbus.protocol.ids import is_valid_id

MISSING = object()
MAX_MESSAGE_CHARS = 300  # a problem's text, whatever value it quotes
MAX_INT = 2**53  # no count, size or seed of a scenario is larger; past it a float loses it, a deque refuses it

_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlevel = 60, 60, 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4


def _cut(text: str) -> str:
    """``text`` on one line of at most ``MAX_MESSAGE_CHARS``."""
    text = text.replace("\r", " ").replace("\n", " ")
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."


def shown(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, in time and memory bounded whatever the value's size
    (a YAML alias can make a small file hold a huge nested list: it is never rendered whole)."""
    return _SHOWN.repr(value)


def setting(default: Any, *, check: Callable[[Any], str | None] | None = None) -> Any:
    """A field a scenario file sets: its default and its check, declared once on the frozen spec."""
    return dataclasses.field(default=default, metadata={"setting": True, "check": check})


def settings_of(spec: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``spec`` declared with :func:`setting`."""
    return [f for f in dataclasses.fields(spec) if f.metadata.get("setting")]


class Reader:
    """Reads typed fields out of nested mappings and records every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        """Record a problem, its path and message each cut to one line of at most ``MAX_MESSAGE_CHARS`` (a huge
        or multi-line key or value may be quoted), so that every problem prints as one short line."""
        self.problems.append((_cut(path), _cut(message)))

    def section(self, doc: Mapping[str, Any], key: str, path: str, allowed: set[str]) -> Mapping[str, Any]:
        value = doc.get(key, {})
        where = f"{path}.{key}" if path else key
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.problem(where, f"must be a mapping, got {type(value).__name__}")
            return {}
        self.unknown_keys(value, where, allowed)
        return value

    def read_settings(self, doc: Mapping[str, Any], path: str, spec: type) -> dict[str, Any]:
        """Every field ``spec`` declares with :func:`setting`, read from ``doc`` with its type, default and
        check; problems are recorded under ``path``."""
        hints = typing.get_type_hints(spec)
        out: dict[str, Any] = {}
        for f in settings_of(spec):
            kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)] or [hints[f.name]]
            out[f.name] = self.get(doc, f.name, path, kinds[0], default=f.default, check=f.metadata["check"])
        return out

    def unknown_keys(self, doc: Mapping[str, Any], path: str, allowed: set[str]) -> None:
        for key in doc:
            if key not in allowed:
                label = key if isinstance(key, str) and key.strip() else shown(key)  # '' or 3: quoted, not blank
                where = f"{path}.{label}" if path else label
                self.problem(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def get(
        self,
        doc: Mapping[str, Any],
        key: str,
        path: str,
        kind: type | tuple[type, ...],
        *,
        default: Any = MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in doc or doc[key] is None:
            if default is MISSING:
                self.problem(where, "is required")
            return None if default is MISSING else default
        value = doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and int not in kinds:
            kinds = (*kinds, int)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds if not (k is int and float in kinds))
            names = names.replace("float", "a number").replace("int", "an integer").replace("str", "a string")
            self.problem(where, f"must be {names}, got {type(value).__name__} {shown(value)}")
            return None if default is MISSING else default
        if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
            self.problem(where, f"must be within +-2**53, got an integer of {value.bit_length()} bits")
            return None if default is MISSING else default
        if float in kinds and isinstance(value, int):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):  # YAML's .inf and .nan
            self.problem(where, f"must be a finite number, got {value}")
            return None if default is MISSING else default
        if check is not None:
            message = check(value)
            if message is not None:
                self.problem(where, message)
        return value


def at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be within [{lo}, {hi}]"


def one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}; got {shown(v)}"


def valid_id(v: Any) -> str | None:
    return None if is_valid_id(v) else "must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
