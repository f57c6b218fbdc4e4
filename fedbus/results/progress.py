"""The progress display: one line per round on stdout, readable on a terminal and in a log file."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Prints a header, a line per closed round, and a footer."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._print(text)

    def header(self, run_id: str, engine: str, broker: str, clients: int, rounds: int, *,
               security: str = "signed+sealed", virtual: bool = False) -> None:
        label = f"{engine} (NOT an LLM: a seeded model)" if engine == "surrogate" else engine
        population = f"{clients:,} clients (virtual: each exists once selected)" if virtual else f"{clients} clients"
        secured = ("security NONE: protocol v1, anyone on the broker can post as anyone" if security == "none"
                   else f"security {security}")
        self._print(f"fedbus run {run_id}: {population}, {rounds} rounds, engine {label}, broker {broker}, "
                    f"{secured}")
        self._print(f"{'round':>5}  {'selected':>8}  {'accepted':>8}  {'rejected':>8}  {'dropped':>7}  "
                    f"{'prompt':>7}  {'val acc':>7}  {'sim time':>9}  status")

    def round(self, record: dict[str, Any]) -> None:
        acc = record.get("val_accuracy")
        acc_text = f"{acc:7.3f}" if isinstance(acc, float) else f"{'-':>7}"
        self._print(
            f"{record['round']:>5}  {len(record['selected']):>8}  {len(record['accepted']):>8}  "
            f"{len(record['rejected']):>8}  {len(record['dropped']):>7}  {record['global_prompt_chars']:>7}  "
            f"{acc_text}  {record['duration_s']:>8.2f}s  {record['status']}"
        )

    def footer(self, summary: dict[str, Any], out_dir: str) -> None:
        final = summary["final"]
        acc, initial = final.get("test_accuracy"), final.get("initial_test_accuracy")
        measured = (f"; test accuracy {_number(acc)} (initial prompt {_number(initial)})"
                    if acc is not None else "")
        self._print(f"{summary['status']}: {summary['reason']}{measured}; "
                    f"results in {out_dir}/summary.json and {out_dir}/events.jsonl")


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
