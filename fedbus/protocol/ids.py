"""Identifier rules shared by topics and messages."""

from __future__ import annotations

import functools
import re

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
AGGREGATOR = "aggregator"
MAX_ID_CHARS = 64  # what _ID allows


def is_valid_id(value: object) -> bool:
    """True for a run or client id that is safe inside an MQTT topic level."""
    # a longer string (a hostile message's, up to the message's size) is never matched, nor remembered, so the memo
    # below holds at most its size in short strings
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS and _valid_str_id(value)


@functools.lru_cache(maxsize=65_536)
def _valid_str_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None  # not match(...$): '$' also matches before a final newline


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a valid id, else raise ``ValueError`` naming ``what``."""
    if not is_valid_id(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return value  # type: ignore[return-value]
