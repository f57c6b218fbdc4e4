"""``fedbus compare``: several runs side by side, as a table or as CSV for plotting."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedbus.errors import FedbusError

COLUMNS = ("run", "scenario", "engine", "strategy", "mode", "status", "rounds", "test_acc", "initial_acc",
           "prompt_chars", "accepted", "rejected", "tokens", "wall_s")


def load_summaries(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """summary.json files (or run directories holding one)."""
    out = []
    for path in paths:
        file = path / "summary.json" if path.is_dir() else path
        try:
            out.append(json.loads(file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise FedbusError(f"{file}: not a readable summary.json ({exc})") from exc
    return out


def row(summary: dict[str, Any]) -> dict[str, Any]:
    totals, final = summary["totals"], summary["final"]
    return {
        "run": summary["run_id"], "scenario": summary["scenario"]["name"], "engine": summary["engine"]["name"],
        "strategy": summary["scenario"]["aggregation"]["strategy"], "mode": summary["mode"],
        "status": summary["status"], "rounds": totals["rounds_closed"],
        "test_acc": round(final["test_accuracy"], 4), "initial_acc": round(final["initial_test_accuracy"], 4),
        "prompt_chars": final["prompt_chars"], "accepted": totals["updates_accepted"],
        "rejected": totals["updates_rejected"], "tokens": totals.get("tokens_all_uses", totals["tokens"]),
        "wall_s": totals["wall_s"],
    }


def rounds_table(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, round): validation accuracy, prompt size, retention, acceptance."""
    out = []
    for s in summaries:
        for r in s["rounds"]:
            out.append({"run": s["run_id"], "round": r["round"], "status": r["status"],
                        "val_acc": r.get("val_accuracy"), "prompt_chars": r["global_prompt_chars"],
                        "retention": r.get("retention"), "accepted": len(r["accepted"]),
                        "rejected": len(r["rejected"]), "duration_s": r["duration_s"]})
    return out


def render(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table."""
    if not rows:
        return "(no runs)"
    keys = list(rows[0])
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
