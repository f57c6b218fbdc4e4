"""Money cost of LLM runs from a price table. Pure.

The table (``fedbus report --prices FILE``, YAML or JSON) maps a model name, as summary.json's ``llm.model``
spells it, to its price per million input (prompt) and output (completion) tokens::

    qwen2.5:7b-instruct: {input: 0.10, output: 0.30}
    gpt-4o-mini: {input: 0.15, output: 0.60}

A run's cost is ``(llm.prompt_tokens * input + llm.completion_tokens * output) / 1e6``: the tokens the
server spent (answers from the response cache cost none). A surrogate run has no such counts (its token figures
are estimates of what an LLM would use), so it has no cost: it says "no token counts".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedbus.errors import ScenarioError
from fedbus.experiments.stats import DEFAULT_CONFIDENCE, Estimate, mean_ci

NO_TOKEN_COUNTS = "no token counts"
PER_TOKENS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """Per million tokens, in the table's currency."""

    input: float
    output: float

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0):
                raise ValueError(f"Invalid price: {name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    """A run's cost, or why it has none (``value`` None and ``note`` saying why)."""

    value: float | None
    note: str = ""


def parse_prices(doc: Any, source: str = "") -> dict[str, Price]:
    """The price table from parsed YAML/JSON; a ScenarioError naming the path of every mistake."""
    if not isinstance(doc, Mapping) or not doc:
        raise ScenarioError([("", "a price table is a mapping of model name -> {input: PRICE, output: PRICE} "
                                  "(per 1M tokens)")], source)
    prices: dict[str, Price] = {}
    problems: list[tuple[str, str]] = []
    for model, entry in doc.items():
        if not isinstance(entry, Mapping) or set(entry) != {"input", "output"}:
            problems.append((str(model), "must be {input: PRICE, output: PRICE}, prices per 1M tokens"))
            continue
        try:
            prices[str(model)] = Price(input=entry["input"], output=entry["output"])
        except ValueError as exc:
            problems.append((str(model), str(exc).removeprefix("Invalid price: ")))
    if problems:
        raise ScenarioError(problems, source)
    return prices


def token_counts(summary: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(model, prompt tokens, completion tokens) from summary.json's ``llm`` record; None without one."""
    llm = summary.get("llm")
    if not isinstance(llm, Mapping):
        return None
    model, prompt, completion = llm.get("model"), llm.get("prompt_tokens"), llm.get("completion_tokens")
    if not (isinstance(model, str) and type(prompt) is int and type(completion) is int):
        return None
    return model, prompt, completion


def run_cost(summary: Mapping[str, Any], prices: Mapping[str, Price]) -> Cost:
    counts = token_counts(summary)
    if counts is None:
        return Cost(value=None, note=NO_TOKEN_COUNTS)
    model, prompt, completion = counts
    price = prices.get(model)
    if price is None:
        return Cost(value=None, note=f"no price for {model}")
    return Cost(value=(prompt * price.input + completion * price.output) / PER_TOKENS)


def cost_estimate(summaries: Sequence[Mapping[str, Any]], prices: Mapping[str, Price],
                  confidence: float = DEFAULT_CONFIDENCE) -> Estimate | str:
    """The mean cost over ``summaries`` with its interval, or why there is none (the first run's note)."""
    costs = [run_cost(s, prices) for s in summaries]
    values = [c.value for c in costs if c.value is not None]
    estimate = mean_ci(values, confidence)
    if estimate is None:
        return costs[0].note if costs else NO_TOKEN_COUNTS
    return estimate
