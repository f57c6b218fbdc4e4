"""Pure text helpers shared by the protocol, the scenario loader, the LLM engines and the results: the token
estimate where no tokenizer or server says, and what to do with half a surrogate pair, which JSON and YAML can
escape (``"\\ud800"``) but no UTF-8 text (a message, a log line, a file) can hold. Light to import."""

from __future__ import annotations

import math
import re

CHARS_PER_TOKEN = 4
_HALF_PAIR = re.compile("[\ud800-\udfff]")


def estimate_tokens(text: str) -> int:
    """A rough token count: one token per 4 characters, rounded up (0 for the empty string).

    OpenAI's rule of thumb for English with a BPE tokenizer. Used only where a server does not
    report usage (and the statistics count how often that happened); it is an estimate for budgets
    and reports, never for fitting a prompt into a context window.
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def holds_half_pair(text: str) -> bool:
    """Whether ``text`` holds half of a surrogate pair, which UTF-8 cannot encode (an ASCII text never does)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def whole_text(text: str) -> str:
    """``text`` with each half of a surrogate pair replaced by U+FFFD, as a UTF-8 decoder replaces a broken byte."""
    return _HALF_PAIR.sub("\ufffd", text) if holds_half_pair(text) else text
