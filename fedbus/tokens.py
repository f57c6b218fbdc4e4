"""The token estimate fedbus uses where no tokenizer or server says: pure, and light to import (the results and
the simulator need it without loading the LLM engines)."""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """A rough token count: one token per 4 characters, rounded up (0 for the empty string).

    OpenAI's rule of thumb for English with a BPE tokenizer. Used only where a server does not
    report usage (and the statistics count how often that happened); it is an estimate for budgets
    and reports, never for fitting a prompt into a context window.
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)
