"""How complex a global prompt is, measured the way the FedTextGrad authors measure it where that needs no model.

The authors (``utils/prompt_complexity.py``) report, per prompt, its token length, its compression rate
(zlib-compressed bytes / UTF-8 bytes: lower means more repetition), its character-level information entropy
(bits per character), and, for the Uniform Information Density analysis, the mean and variance of per-token
surprisal under a language model. The first three need no model and are computed here for every global prompt;
token length is an estimate (characters / 4) unless the engine counts tokens itself (``global_prompt_tokens``
beside it). Surprisal needs the log-probabilities of the prompt's own tokens under a model, which fedbus's
engines do not report: it is recorded as unavailable rather than approximated.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Any

from fedbus.llm.engine import estimate_tokens

SURPRISAL_UNAVAILABLE = "unavailable: the engine reports no log-probabilities of the prompt's tokens"


def compression_rate(text: str) -> float:
    """zlib-compressed size over UTF-8 size, as the authors compute it (0.0 for an empty text)."""
    raw = text.encode("utf-8")
    return len(zlib.compress(raw)) / len(raw) if raw else 0.0


def char_entropy(text: str) -> float:
    """Shannon entropy of the text's characters, in bits per character (0.0 for an empty text)."""
    if not text:
        return 0.0
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in Counter(text).values())


def complexity(text: str) -> dict[str, Any]:
    """The prompt-complexity record of one global prompt."""
    return {"words": len(text.split()), "tokens_est": estimate_tokens(text),
            "compression_rate": round(compression_rate(text), 4), "char_entropy_bits": round(char_entropy(text), 4),
            "surprisal": SURPRISAL_UNAVAILABLE}
