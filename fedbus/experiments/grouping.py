"""Runs grouped by the settings that vary between them, and what a report shows of each group: per-round series,
final values, accuracy against a numeric setting, one run's participation timeline, rejection reasons and money
cost. Pure: values in, values out (summaries are the parsed summary.json dicts).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedbus.experiments.grid import short_names
from fedbus.experiments.stats import DEFAULT_CONFIDENCE, Estimate, mean_ci

IGNORED = ("seed",)  # the seed is what a group is replicated over, never a varied setting
_ABSENT = "(absent)"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One run as a report sees it: where it is, its scenario settings (dotted keys), its seed and status, and
    its summary.json content when it has a readable one."""

    folder: str
    settings: Mapping[str, Any] = field(hash=False)
    seed: int | None
    status: str
    summary: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """The runs that share one value of each varied setting (they differ only by seed)."""

    values: tuple[tuple[str, Any], ...]
    runs: tuple[RunRecord, ...]

    def label(self, names: Mapping[str, str] | None = None) -> str:
        """``local_steps=1, strategy=concat`` (short names when given), or ``all runs`` when nothing varies."""
        if not self.values:
            return "all runs"
        return ", ".join(f"{(names or {}).get(k, k)}={shown(v)}" for k, v in self.values)

    def summaries(self) -> list[Mapping[str, Any]]:
        return [r.summary for r in self.runs if r.summary is not None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """A line to plot: a label and its points, each an x and the estimate over seeds there."""

    label: str
    points: tuple[tuple[float, Estimate], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    """Who did what in each round of one run: ``states[i][j]`` is client ``clients[j]`` in ``rounds[i]``."""

    run: str
    clients: tuple[str, ...]
    rounds: tuple[int, ...]
    states: tuple[tuple[str, ...], ...]


# what a client was in a round, most telling first (a client both accepted and rejected, a replayer, shows accepted)
STATES = ("accepted", "rejected", "failed", "dropped", "missing", "selected", "not selected")


MAX_SHOWN_CHARS = 40  # a long value (a list of client groups as JSON) is cut in labels and tables


def shown(value: Any) -> str:
    """A setting's value as a person reads it: ``concat``, ``2``, ``0.5``, ``true``; cut to a few dozen
    characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = str(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS - 1] + "…"


def scenario_settings(scenario: Mapping[str, Any]) -> dict[str, Any]:
    """A run's scenario record as dotted settings. ``data_seed`` counts only where it is not the seed: unset, it
    follows the seed, and is then replicated over like the seed rather than a setting that varies."""
    flat = flatten(scenario)
    if "data_seed" in flat and flat["data_seed"] == flat.get("seed"):
        del flat["data_seed"]
    return flat


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"clients": {"count": 4}}`` -> ``{"clients.count": 4}``); a list becomes
    its compact JSON text, so that every value compares and hashes."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, path + ".")
        elif isinstance(value, list | tuple):
            out[path] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        else:
            out[path] = value
    return out


def varied_keys(settings: Sequence[Mapping[str, Any]], first: Sequence[str] = (),
                ignore: Sequence[str] = IGNORED) -> tuple[str, ...]:
    """The keys whose values differ between ``settings`` (a key missing from some counts as a value), in the
    order of ``first`` (e.g. a sweep's grid), then of first appearance."""
    order: dict[str, None] = dict.fromkeys(first)
    for s in settings:
        order |= dict.fromkeys(s)
    return tuple(k for k in order if k not in ignore
                 and len({_key(s.get(k, _ABSENT)) for s in settings}) > 1)


def _key(value: Any) -> tuple[str, Any]:
    """A value made comparable with others of any type: 20 and 20.0 are one number (a grid's ``20`` and the
    scenario record's ``20.0``), ``true`` and ``1`` stay apart."""
    if is_number(value):
        return ("number", float(value))
    return (type(value).__name__, value)


def group_runs(runs: Iterable[RunRecord], keys: Sequence[str]) -> tuple[Group, ...]:
    """The runs grouped by their values of ``keys``, groups and runs in order of first appearance."""
    groups: dict[tuple[tuple[str, Any], ...], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(tuple((k, _key(run.settings.get(k))) for k in keys), []).append(run)
    # each group shows its values as its first run has them (a grid's 2, not the comparison's 2.0)
    return tuple(Group(values=tuple((k, members[0].settings.get(k)) for k in keys), runs=tuple(members))
                 for members in groups.values())


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_keys(runs: Sequence[RunRecord], keys: Sequence[str]) -> tuple[str, ...]:
    """The varied keys whose every value is a number (local steps, clients, batch size, fraction)."""
    return tuple(k for k in keys if runs and all(is_number(r.settings.get(k)) for r in runs))


# ------------------------------------------------------------------------------------------------ metrics


def number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a boolean), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def val_accuracy(record: Mapping[str, Any]) -> float | None:
    return number(record.get("val_accuracy"))


def prompt_chars(record: Mapping[str, Any]) -> float | None:
    return number(record.get("global_prompt_chars"))


def final_test_accuracy(summary: Mapping[str, Any]) -> float | None:
    return number((summary.get("final") or {}).get("test_accuracy"))


def initial_test_accuracy(summary: Mapping[str, Any]) -> float | None:
    return number((summary.get("final") or {}).get("initial_test_accuracy"))


def final_prompt_chars(summary: Mapping[str, Any]) -> float | None:
    return number((summary.get("final") or {}).get("prompt_chars"))


def final_val_accuracy(summary: Mapping[str, Any]) -> float | None:
    rounds = [r for r in summary.get("rounds", ()) if val_accuracy(r) is not None]
    return val_accuracy(rounds[-1]) if rounds else None


def round_series(group: Group, metric: Callable[[Mapping[str, Any]], float | None],
                 confidence: float = DEFAULT_CONFIDENCE) -> tuple[tuple[float, Estimate], ...]:
    """Per round number, the estimate over the group's runs of ``metric`` of that round's record (runs without
    that round, or without a value there, are left out of it)."""
    by_round: dict[int, list[float]] = {}
    for summary in group.summaries():
        for record in summary.get("rounds", ()):
            value = metric(record)
            if value is not None and isinstance(record.get("round"), int):
                by_round.setdefault(record["round"], []).append(value)
    points = []
    for number in sorted(by_round):
        estimate = mean_ci(by_round[number], confidence)
        if estimate is not None:
            points.append((float(number), estimate))
    return tuple(points)


def final_estimate(group: Group, metric: Callable[[Mapping[str, Any]], float | None],
                   confidence: float = DEFAULT_CONFIDENCE) -> Estimate | None:
    """The estimate over the group's runs of a per-run ``metric`` (None where no run has a value)."""
    values = [v for v in (metric(s) for s in group.summaries()) if v is not None]
    return mean_ci(values, confidence)


def against(runs: Sequence[RunRecord], key: str, keys: Sequence[str],
            metric: Callable[[Mapping[str, Any]], float | None],
            confidence: float = DEFAULT_CONFIDENCE) -> tuple[Series, ...]:
    """``metric`` against the numeric setting ``key``: one series per combination of the other varied ``keys``,
    a point per value of ``key`` (sorted), each the estimate over the runs there."""
    others = [k for k in keys if k != key]
    names = short_names(list(keys))
    out = []
    for line in group_runs(runs, others):
        points = []
        for cell in group_runs(line.runs, [key]):
            estimate = final_estimate(cell, metric, confidence)
            if estimate is not None:
                points.append((float(cell.values[0][1]), estimate))
        out.append(Series(label=line.label(names), points=tuple(sorted(points, key=lambda p: p[0]))))
    return tuple(out)


# ------------------------------------------------------------------------------------- one run's timeline


def timeline(summary: Mapping[str, Any]) -> Timeline:
    """Rounds by clients from summary.json's round records: accepted, rejected, failed, dropped, missing,
    selected (and nothing came of it), not selected."""
    rounds = [r for r in summary.get("rounds", ()) if isinstance(r, Mapping)]
    known: dict[str, None] = dict.fromkeys(summary.get("clients", {}) or {})
    for r in rounds:
        known |= dict.fromkeys(_clients_of(r))
    clients = tuple(sorted(known))
    states = []
    for r in rounds:
        status = dict.fromkeys(clients, "not selected")
        marks = (("selected", r.get("selected", ())), ("missing", r.get("missing", ())),
                 ("dropped", r.get("dropped", ())), ("failed", [x.get("client") for x in r.get("failed", ())]),
                 ("rejected", [x.get("client") for x in r.get("rejected", ())]),
                 ("accepted", [x.get("client") for x in r.get("accepted", ())]))
        for state, who in marks:  # least telling first: later marks overwrite
            for client in who:
                if client in status:
                    status[client] = state
        states.append(tuple(status[c] for c in clients))
    return Timeline(run=str(summary.get("run_id", "")), clients=clients,
                    rounds=tuple(int(r.get("round", i + 1)) for i, r in enumerate(rounds)), states=tuple(states))


def _clients_of(record: Mapping[str, Any]) -> list[str]:
    found = [*record.get("selected", ()), *record.get("dropped", ()), *record.get("missing", ())]
    found += [x.get("client") for key in ("accepted", "rejected", "failed") for x in record.get(key, ())]
    return [c for c in found if isinstance(c, str)]


def rejection_counts(summaries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many updates were rejected for each reason, over every round of every run (and after the last
    round), most frequent first."""
    counts: Counter[str] = Counter()
    for s in summaries:
        for record in [x for r in s.get("rounds", ()) for x in r.get("rejected", ())] + \
                      list(s.get("rejected_after_last_round", ())):
            counts[str(record.get("reason", "?"))] += 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
