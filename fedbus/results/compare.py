"""``fedbus compare``: several runs side by side, as a table or as CSV for plotting.

Besides the fixed columns, ``settings_columns`` names the scenario settings that differ between the compared runs
(and, for runs of a ``fedbus sweep``, its grid's keys and the seed), and ``with_settings`` puts them beside each
row, after ``run``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedbus.errors import FedbusError

# settings the fixed columns already show (scenario, strategy, mode, engine): never repeated as settings columns
_SHOWN_SETTINGS = frozenset({"name", "aggregation.strategy", "aggregation.mode", "engine", "engine.name"})
COLUMNS = ("run", "scenario", "engine", "strategy", "mode", "status", "rounds", "test_acc", "initial_acc",
           "prompt_chars", "accepted", "rejected", "tokens", "wall_s")


_NUMBER = (int, float)
_NUMBER_OR_NULL = (int, float, type(None))  # an interrupted run's test accuracy was not measured
# what row() and rounds_table() read, with the JSON type each needs
_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("run_id", str), ("mode", str), ("status", str), ("scenario.name", str), ("scenario.aggregation.strategy", str),
    ("engine.name", str), ("final.test_accuracy", _NUMBER_OR_NULL),
    ("final.initial_test_accuracy", _NUMBER_OR_NULL),
    ("final.prompt_chars", int), ("totals.rounds_closed", int), ("totals.updates_accepted", int),
    ("totals.updates_rejected", int), ("totals.tokens", int), ("totals.wall_s", _NUMBER), ("rounds", list))
_ROUND_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("round", int), ("status", str), ("global_prompt_chars", int), ("accepted", list), ("rejected", list),
    ("duration_s", _NUMBER))
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field_problem(doc: dict[str, Any], path: str, kind: type | tuple[type, ...], prefix: str = "") -> str | None:
    value: Any = doc
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return f"no {prefix}{path}"
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = ("an integer" if kind is int else _JSON_TYPES[kind] if isinstance(kind, type)
                    else "a number or null" if type(None) in kind else "a number")
        return f"{prefix}{path} is {_json_type(value)}, not {expected}"
    return None


def summary_problem(summary: Any) -> str | None:
    """Why ``summary`` (parsed JSON) is not a run summary that compare can read; None when it is one."""
    if not isinstance(summary, dict):
        return f"the file holds {_json_type(summary)}, not an object"
    for path, kind in _FIELDS:
        problem = _field_problem(summary, path, kind)
        if problem is not None:
            return problem
    for i, record in enumerate(summary["rounds"]):
        if not isinstance(record, dict):
            return f"rounds[{i}] is {_json_type(record)}, not an object"
        for path, kind in _ROUND_FIELDS:
            problem = _field_problem(record, path, kind, prefix=f"rounds[{i}].")
            if problem is not None:
                return problem
    return None


def load_summaries(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """summary.json files (or run directories holding one), each checked to hold what compare reads; a file
    that cannot be read or is not a run summary is a ``FedbusError`` naming it."""
    out = []
    for path in paths:
        file = path / "summary.json" if path.is_dir() else path
        try:
            summary = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise FedbusError(f"{file}: not a readable summary.json ({exc.strerror or exc})") from exc
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested past Python's stack
            raise FedbusError(f"{file}: not a readable summary.json ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc
        problem = summary_problem(summary)
        if problem is not None:
            raise FedbusError(f"{file}: not a run summary ({problem})")
        out.append(summary)
    return out


def row(summary: dict[str, Any]) -> dict[str, Any]:
    totals, final = summary["totals"], summary["final"]
    return {
        "run": summary["run_id"], "scenario": summary["scenario"]["name"], "engine": summary["engine"]["name"],
        "strategy": summary["scenario"]["aggregation"]["strategy"], "mode": summary["mode"],
        "status": summary["status"], "rounds": totals["rounds_closed"],
        "test_acc": _rounded(final["test_accuracy"]), "initial_acc": _rounded(final["initial_test_accuracy"]),
        "prompt_chars": final["prompt_chars"], "accepted": totals["updates_accepted"],
        "rejected": totals["updates_rejected"], "tokens": totals.get("tokens_all_uses", totals["tokens"]),
        "wall_s": totals["wall_s"],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def rounds_table(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (run, round): validation accuracy, prompt size, sentence overlap, acceptance."""
    out = []
    for s in summaries:
        for r in s["rounds"]:
            out.append({"run": s["run_id"], "round": r["round"], "status": r["status"],
                        "val_acc": r.get("val_accuracy"), "prompt_chars": r["global_prompt_chars"],
                        "sentence_overlap": r.get("sentence_overlap", r.get("retention")),  # older runs: retention
                        "accepted": len(r["accepted"]), "rejected": len(r["rejected"]), "duration_s": r["duration_s"]})
    return out


def render(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table."""
    if not rows:
        return "(no runs)"
    keys = list(rows[0])
    cells = [["-" if r.get(k) is None else str(r.get(k, "")) for k in keys] for r in rows]
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


def settings_columns(paths: Sequence[Path], summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, its values of the scenario settings that differ between ``summaries`` (dotted keys such as
    ``clients.local_steps``, and ``seed``), and of the varied grid keys (two or more values) and seed of any
    sweep a path lies in (sweep.json in it or a folder above it); settings already in the fixed columns are left
    out. Keys in grid order, then in the order the scenario records list them; a run without a value has None."""
    from fedbus.experiments.grouping import scenario_settings, varied_keys
    from fedbus.experiments.manifest import find_sweep, read_manifest

    settings = [scenario_settings(s["scenario"]) | {"seed": s.get("seed", s["scenario"].get("seed"))}
                for s in summaries]
    grid: dict[str, None] = {}
    for path in paths:
        sweep = find_sweep(path)
        if sweep is None:
            continue
        try:
            manifest = read_manifest(sweep)
        except FedbusError:
            continue
        grid |= {str(axis["key"]): None for axis in manifest.get("grid", ()) if isinstance(axis, dict)
                 and "key" in axis and len(axis.get("values") or ()) > 1}  # one value: set for all, not varied
        grid["seed"] = None
    keys = [k for k in dict.fromkeys([*grid, *varied_keys(settings, ignore=())]) if k not in _SHOWN_SETTINGS]
    return [{k: s.get(k) for k in keys} for s in settings]


def with_settings(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with the ``settings`` columns inserted after ``run``; a setting named as a fixed column (the
    scenario's ``rounds`` beside the rounds a run closed) is ``setting.NAME``, so that neither hides the other."""
    out = []
    for r in rows:
        items = list(r.items())
        named = [(f"setting.{key}" if key in r else key, value) for key, value in settings.items()]
        out.append(dict([*items[:1], *named, *items[1:]]))
    return out
