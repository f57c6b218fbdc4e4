"""Aggregation strategies: plain functions from the clients' prompts to one prompt, chosen by name."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from fedbus.plugins import check_name, lookup


class Strategy(Protocol):
    """Merges the clients' prompts into the next global prompt: pure and deterministic, so a run replays."""

    def __call__(self, current: str, prompts: Sequence[tuple[str, str]], max_chars: int, /) -> str:
        """``current``: the global prompt; ``prompts``: (client, prompt) pairs sorted by client; the result is
        cut at ``max_chars``."""
        ...


def concat(current: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> str:
    """FedTextGrad's baseline: the clients' prompts one after another (identical ones once).

    ``current`` is unused: concatenation keeps only what the clients sent. The result is cut
    at ``max_chars`` characters, the way a context budget would cut it.
    """
    seen: set[str] = set()
    parts: list[str] = []
    for _client, prompt in prompts:
        text = prompt.strip()
        if text and text not in seen:
            seen.add(text)
            parts.append(text)
    merged = "\n\n".join(parts) if parts else current
    return merged[:max_chars]


def sentences(prompt: str) -> list[str]:
    """The prompt cut into sentences (after . ! ? and a space, or at line breaks)."""
    out: list[str] = []
    for line in prompt.splitlines():
        current = ""
        for token in line.split(" "):
            current = f"{current} {token}" if current else token
            if token.endswith((".", "!", "?")):
                out.append(current.strip())
                current = ""
        if current.strip():
            out.append(current.strip())
    return [s for s in out if s]


def merge_weighted(current: str, updates: Sequence[tuple[str, str, float]], max_chars: int) -> str:
    """How a staleness weight applies to text (buffered and async modes).

    For each update (client, prompt, weight), in the given order: its *new* sentences (those not
    already in the global prompt) are found, and the first ``ceil(weight * n)`` of them are appended.
    Weight 1 keeps every new sentence, a small weight only the first, and the global prompt is
    never rewritten by a stale client. Identical sentences (from several clients, or repeated in one
    prompt) enter once. The
    result is cut at ``max_chars``.
    """
    merged = sentences(current)
    seen = set(merged)
    for _client, prompt, weight in updates:
        novel = [s for s in dict.fromkeys(sentences(prompt)) if s not in seen]
        keep = math.ceil(max(0.0, min(1.0, weight)) * len(novel)) if novel else 0
        for sentence in novel[:keep]:
            seen.add(sentence)
            merged.append(sentence)
    return " ".join(merged)[:max_chars]


STRATEGIES: dict[str, Strategy] = {"concat": concat}
LLM_STRATEGIES = ("summarize", "uid_summarize")  # FedTextGrad's LLM merges, carried out by the run's engine
BUILT_IN_STRATEGIES = ("concat", *LLM_STRATEGIES)  # known to every process, unlike names registered at run time


def register_strategy(name: str, strategy: Strategy) -> None:
    """Make ``strategy`` available to scenarios (and ``--strategy``) as ``name`` in this process.

    A strategy is ``(current prompt, [(client, prompt), ...] sorted by client, max_chars) -> prompt``:
    pure and deterministic, so a run replays. To reach worker processes or another machine, name it
    as ``package.module:function`` in the scenario instead.
    """
    check_name(name, LLM_STRATEGIES)
    STRATEGIES[name] = strategy


def carry_out(name: str, current: str, prompts: Sequence[tuple[str, str]], max_chars: int,
              weights: Sequence[float] = ()) -> str:
    """What a ``Reduce`` asks for: the staleness-weighted merge when weights are given, else the named strategy,
    its result cut at ``max_chars``.

    Raises ``PluginError`` (a ``LookupError``) for a strategy that does not exist.
    """
    if weights:
        updates = [(client, prompt, w) for (client, prompt), w in zip(prompts, weights, strict=True)]
        return merge_weighted(current, updates, max_chars)
    merged = get_strategy(name)(current, prompts, max_chars)
    if not isinstance(merged, str):
        raise TypeError(f"strategy {name!r} returned {type(merged).__name__}, not the merged prompt")
    return merged[:max_chars]


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``, or the function a ``package.module:function`` reference names."""
    found: Strategy = lookup(name, STRATEGIES, "strategy")
    return found
