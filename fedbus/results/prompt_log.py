"""global_prompts.jsonl: every global prompt of a run, the initial one first, one JSON object per line.

summary.json keeps sizes and measures per round and the final prompt; this file keeps the text of each round's
global prompt, so a run can be read (or a round's prompt evaluated again with ``fedbus evaluate``) afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedbus.aggregator.effects import RoundResult

GLOBAL_PROMPTS = "global_prompts.jsonl"


def prompt_lines(initial: str, rounds: Iterable[tuple[RoundResult, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Round 0 (the initial prompt), then each closed round: its status, the global version after it, its
    validation accuracy where measured, and the prompt (unchanged from the round before unless aggregated)."""
    lines: list[dict[str, Any]] = [{"round": 0, "status": "initial", "version": 0, "val_accuracy": None,
                                    "prompt": initial}]
    for result, extra in rounds:
        lines.append({"round": result.round, "status": result.status, "version": result.version_after,
                      "val_accuracy": extra.get("val_accuracy"), "prompt": result.prompt})
    return lines


def write_prompt_log(out: Path, initial: str, rounds: Iterable[tuple[RoundResult, Mapping[str, Any]]]) -> Path:
    """Write (replace) ``out/global_prompts.jsonl``; return its path."""
    path = out / GLOBAL_PROMPTS
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in prompt_lines(initial, rounds)),
                   encoding="utf-8")
    tmp.replace(path)
    return path


def best_by_validation(rounds: Iterable[tuple[RoundResult, Mapping[str, Any]]]) -> tuple[int, float, str] | None:
    """The aggregated round whose global prompt scored the highest validation accuracy (the earliest of equals, as
    the authors keep the first best): (round, accuracy, prompt); None when no aggregated round was scored."""
    best: tuple[int, float, str] | None = None
    for result, extra in rounds:
        accuracy = extra.get("val_accuracy")
        if result.status != "aggregated" or not isinstance(accuracy, int | float):
            continue
        if best is None or accuracy > best[1]:
            best = (result.round, float(accuracy), result.prompt)
    return best


def best_record(best: tuple[int, float, str] | None, test_accuracy: float | None) -> dict[str, Any]:
    """summary.json's ``final`` fields for the best-by-validation prompt (the authors report it beside the last)."""
    if best is None:
        return {"best_val_round": None, "best_val_accuracy": None, "best_val_test_accuracy": None}
    return {"best_val_round": best[0], "best_val_accuracy": best[1], "best_val_test_accuracy": test_accuracy}
