"""The progress display: one line per round on stdout, readable on a terminal and in a log file.

Quiet (``enabled=False``) it prints only the footer (how the run ended, where the results are), on stderr, so that
stdout stays empty for scripts; silent (``footer=False`` too: fedbus called as a library) it prints nothing.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Prints a header, a line per closed round, a line when the clients the aggregator counts change (remote
    ones joining, anyone leaving), and a footer."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, quiet_stream: TextIO | None = None, *,
                 footer: bool = True) -> None:
        self.enabled = enabled
        self.show_footer = footer or enabled
        self.stream = stream or sys.stdout
        self.quiet_stream = quiet_stream
        self._clients: tuple[int, int] | None = None

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

    def clients(self, live: int, known: int, own: int) -> None:
        """A line when the aggregator's count changed: ``live`` online of ``known`` that ever announced; those
        beyond the run's ``own`` clients are remote. The start (own clients announcing) is not news, nor is every
        own client online with no remote one."""
        if self._clients is None and known < own:
            return
        before = self._clients if self._clients is not None else (own, own)
        self._clients = (live, known)
        if (live, known) == before:
            return
        remote, delta = known - own, live - before[0]
        self._print(f"clients: {live} live of {known} known" + (f", {remote} remote" if remote > 0 else "")
                    + (f" ({delta:+d} live)" if delta else ""))

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
        line = (f"{summary['status']}: {summary['reason']}{measured}{_warnings(summary)}; "
                f"results in {out_dir}/summary.json and {out_dir}/events.jsonl")
        if self.enabled:
            self._print(line)
        elif self.show_footer:
            print(line, file=self.quiet_stream or sys.stderr, flush=True)


def _warnings(summary: dict[str, Any]) -> str:
    """What makes a finished run's figures suspect, said on its last line: no round aggregated (the prompt never
    changed), or every LLM call failed."""
    out = []
    rounds = summary.get("rounds") or []
    if rounds and not any(r.get("status") == "aggregated" for r in rounds):
        out.append(f"WARNING: none of the {len(rounds)} rounds aggregated")
    llm = summary.get("llm") or {}
    if llm.get("calls") and llm.get("failures", 0) >= llm["calls"]:
        out.append(f"WARNING: all {llm['calls']} LLM calls failed")
    return "".join(f"; {w}" for w in out)


def _number(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
