"""Aggregation strategies: plain functions from the clients' prompts to one prompt, chosen by name."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from fedbus.plugins import check_name, lookup


class Strategy(Protocol):
    """Merges the clients' prompts into the next global prompt: pure and deterministic, so a run replays."""

    def __call__(self, current: str, prompts: Sequence[tuple[str, str]], max_chars: int, /) -> str:
        """``current``: the global prompt; ``prompts``: (client, prompt) pairs sorted by client; ``max_chars``: the
        run's limit on the global prompt, which the core applies (and records) to whatever is returned."""
        ...


def concat(current: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> str:
    """FedTextGrad's concatenation, as the authors' code does it (TextGrad's ``aggregate``): every client's
    prompt, as sent, in client order, joined by a newline. Nothing is dropped and nothing is cut here: a
    repeated prompt appears as often as it was sent, and a long aggregate stays long (the core cuts at the
    run's ``max_prompt_chars`` and records the cut; paper scenarios set that limit out of reach, so the
    aggregate's growth past the engine's context is observed, as the paper describes).

    ``current`` is kept only when no client sent anything.
    """
    return "\n".join(prompt for _client, prompt in prompts) if prompts else current


def concat_unique(current: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> str:
    """fedbus's own concatenation: the clients' prompts, stripped, one after another with a blank line between,
    identical ones once. Blank prompts leave ``current`` as it was."""
    parts = list(dict.fromkeys(text for _client, prompt in prompts if (text := prompt.strip())))
    return "\n\n".join(parts) if parts else current


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
    prompt) enter once. ``max_chars`` is unused: the core cuts and records the cut.
    """
    merged = sentences(current)
    seen = set(merged)
    for _client, prompt, weight in updates:
        novel = [s for s in dict.fromkeys(sentences(prompt)) if s not in seen]
        keep = math.ceil(max(0.0, min(1.0, weight)) * len(novel)) if novel else 0
        for sentence in novel[:keep]:
            seen.add(sentence)
            merged.append(sentence)
    return " ".join(merged)


STRATEGIES: dict[str, Strategy] = {"concat": concat, "concat_unique": concat_unique}
PAPER_LLM_STRATEGIES = ("summarize", "uid_summarize")  # FedTextGrad's LLM merges, the authors' templates verbatim
LLM_STRATEGIES = (*PAPER_LLM_STRATEGIES, "summarize_tagged", "uid_guided")  # carried out by the run's engine
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
    """What a ``Reduce`` asks for: the staleness-weighted merge when weights are given, else the named strategy.

    The result is not cut here: the core cuts the global prompt at ``max_chars`` and records the cut, so an
    aggregate that lost text says so.

    Raises ``PluginError`` (a ``LookupError``) for a strategy that does not exist.
    """
    if weights:
        updates = [(client, prompt, w) for (client, prompt), w in zip(prompts, weights, strict=True)]
        return merge_weighted(current, updates, max_chars)
    merged = get_strategy(name)(current, prompts, max_chars)
    if not isinstance(merged, str):
        raise TypeError(f"strategy {name!r} returned {type(merged).__name__}, not the merged prompt")
    return merged


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``, or the function a ``package.module:function`` reference names."""
    found: Strategy = lookup(name, STRATEGIES, "strategy")
    return found
