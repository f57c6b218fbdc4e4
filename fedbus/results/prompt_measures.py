"""How complex a global prompt is, measured the way the FedTextGrad authors measure it where that needs no model.

The authors (``utils/prompt_complexity.py``) report, per prompt, its token length, its compression rate
(zlib-compressed bytes / UTF-8 bytes: lower means more repetition), its character-level information entropy
(bits per character), and, for the Uniform Information Density analysis, the mean and variance of per-token
surprisal under a language model. The first three need no model and are computed here for every global prompt;
token length is an estimate (characters / 4) unless the engine counts tokens itself (``global_prompt_tokens``
beside it). Surprisal needs the log-probabilities of the prompt's own tokens under a model: :func:`surprisal`
turns the ones the run's engine gives (vLLM does) into the authors' figures; where the engine gives none it is
recorded as unavailable rather than approximated. The authors used GPT-2 XL; fedbus uses the run's model, so
figures from different models do not compare.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fedbus.text import estimate_tokens

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


def surprisal(logprobs: Sequence[float], model: str) -> dict[str, Any]:
    """The authors' UID figures from per-token log-probabilities (natural log): surprisal (-log p, in nats) mean,
    max and variance (n - 1 in the denominator, as torch's ``var``); lower variance is more uniform."""
    import statistics  # here: its import (decimal, fractions) costs every run, few of which have log-probabilities

    values = [-v for v in logprobs]
    return {"mean_nats": round(statistics.fmean(values), 4), "max_nats": round(max(values), 4),
            "variance": round(statistics.variance(values), 4) if len(values) > 1 else 0.0,
            "tokens": len(values), "model": model}


def complexity(text: str) -> dict[str, Any]:
    """The prompt-complexity record of one global prompt."""
    return {"words": len(text.split()), "tokens_est": estimate_tokens(text),
            "compression_rate": round(compression_rate(text), 4), "char_entropy_bits": round(char_entropy(text), 4),
            "surprisal": SURPRISAL_UNAVAILABLE}
