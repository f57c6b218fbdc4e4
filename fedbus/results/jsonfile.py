"""The JSON files fedbus writes for people and programs to read (summary.json, a checkpoint, a sweep's
manifest): indented by two, UTF-8 as is, keys in their order; the layout of ``json.dumps(indent=2)``.

orjson writes them (a 1,000,000-client simulation's summary in a twentieth of json's time), a NaN or infinity as
null, valid JSON, where json wrote a bare NaN that strict readers refuse. A document orjson refuses (an integer
past 64 bits, a type JSON lacks) json writes, NaN as NaN, or refuses, as it always did."""

from __future__ import annotations

import json
from typing import Any

import orjson

_PRETTY = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS \
    | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def pretty_json(document: Any) -> str:
    """``document`` as an indented JSON text, newline included. ``TypeError`` for what JSON cannot hold."""
    try:
        return orjson.dumps(document, option=_PRETTY).decode()
    except TypeError:  # half a surrogate pair, which no UTF-8 file holds, is written as JSON's escape of it
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")
