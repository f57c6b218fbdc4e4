"""Aggregation strategies: plain functions from the clients' prompts to one prompt, chosen by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Strategy = Callable[[str, Sequence[tuple[str, str]], int], str]


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


STRATEGIES: dict[str, Strategy] = {"concat": concat}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; ``KeyError`` names the ones that exist."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
