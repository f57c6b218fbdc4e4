"""A sweep's grid: ``--grid key=v1,v2`` axes, ``--seeds 1..5``, their cartesian product as cells, and a cell's
overrides applied to the base scenario's mapping. Pure: stdlib and PyYAML's scalar parser.

Every mistake is a :class:`ScenarioError` whose problems name the scenario path (``clients.local_steps``), so the
CLI prints them like ``fedbus validate`` does.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from fedbus.errors import ScenarioError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_SEEDS = re.compile(r"(\d+)(?:\.\.(\d+))?")
MAX_RUNS = 10_000  # cells times seeds: a typo such as 1..100000 is refused instead of planned
BASE_CELL = "base"  # the one cell of a sweep without --grid


@dataclass(frozen=True, slots=True, kw_only=True)
class Axis:
    """One ``--grid`` option: a dotted scenario path and its values (YAML scalars), with the text of each."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.texts) or not self.values:
            raise ValueError(f"Invalid axis {self.key!r}: values and texts must be non-empty and match")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """One combination of the grid's values: its folder name and its overrides in grid order."""

    name: str
    overrides: tuple[tuple[str, Any], ...]

    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)


def parse_value(text: str) -> Any:
    """``text`` read as a YAML scalar: ``2`` is an int, ``0.5`` a float, ``true`` a bool, ``concat`` a string.
    ``ValueError`` for anything else (a list, a mapping, broken YAML)."""
    if not text.strip():
        raise ValueError("empty value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not a YAML scalar: {text!r} ({type(exc).__name__})") from None
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError(f"not a YAML scalar: {text!r} reads as {type(value).__name__}")
    return value


def parse_grid(options: Sequence[str]) -> tuple[Axis, ...]:
    """The axes of ``--grid key=v1,v2`` options, in order. Every problem at once, as a ScenarioError."""
    problems: list[tuple[str, str]] = []
    axes: list[Axis] = []
    for option in options:
        key, sep, rest = option.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            problems.append((key if _KEY.fullmatch(key) else "",
                             "expected KEY=V1,V2 with KEY a dotted scenario path such as clients.local_steps, "
                             f"got {option!r}"))
            continue
        if key == "seed":
            problems.append((key, "the seed is swept with --seeds, not --grid"))
            continue
        if any(a.key == key for a in axes):
            problems.append((key, "given in two --grid options: put all its values in one"))
            continue
        texts = [t.strip() for t in rest.split(",")]
        values, kept = [], []
        for text in texts:
            try:
                value = parse_value(text)
            except ValueError as exc:
                problems.append((key, str(exc)))
                continue
            if text in kept:
                problems.append((key, f"value {text!r} given twice"))
                continue
            values.append(value)
            kept.append(text)
        if values and len(values) == len(texts):
            axes.append(Axis(key=key, values=tuple(values), texts=tuple(kept)))
    for a, b in itertools.combinations(axes, 2):
        if b.key.startswith(a.key + ".") or a.key.startswith(b.key + "."):
            problems.append((b.key, f"overlaps --grid {a.key}: one would overwrite the other"))
    if problems:
        raise ScenarioError(problems, "--grid")
    return tuple(axes)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``1..5`` (inclusive), ``1,3,7``, or both mixed (``1..3,9``); each seed once, in order given."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = _SEEDS.fullmatch(part)
        if match is None:
            raise ScenarioError([("seed", f"expected seeds such as 1..5 or 1,3,7 (integers >= 0), got {text!r}")],
                                "--seeds")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ScenarioError([("seed", f"{part!r}: the range runs backwards")], "--seeds")
        if last - first >= MAX_RUNS:
            raise ScenarioError([("seed", f"{part!r}: more than {MAX_RUNS} seeds")], "--seeds")
        seeds.extend(s for s in range(first, last + 1) if s not in seeds)
    return tuple(seeds)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's shortest tail that no other key shares: ``local_steps`` for ``clients.local_steps``
    beside ``aggregation.strategy``; ``clients.count`` beside ``task.count``."""
    out = {}
    for key in keys:
        parts = key.split(".")
        out[key] = key
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                out[key] = tail
                break
    return out


def expand(axes: Sequence[Axis]) -> tuple[Cell, ...]:
    """Every combination of the axes' values (the first axis varies slowest), named for the folder it runs in
    after the axes with more than one value: ``local_steps-1__strategy-concat``. An axis of one value (``rounds=2``)
    overrides every cell and names none; nothing varied: one cell, ``base``."""
    named = [a for a in axes if len(a.values) > 1]
    labels = short_names([a.key for a in named])
    cells: list[Cell] = []
    names: set[str] = set()
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        chosen = dict(zip((a.key for a in axes), combo, strict=True))
        name = "__".join(_UNSAFE.sub("_", f"{labels[a.key]}-{a.texts[chosen[a.key]]}") for a in named) or BASE_CELL
        if name in names:  # two values that differ only in characters a folder name cannot hold
            name = f"{name}_{len(cells)}"
        names.add(name)
        cells.append(Cell(name=name, overrides=tuple((a.key, a.values[chosen[a.key]]) for a in axes)))
    return tuple(cells)


def count_runs(cells: Sequence[Cell], seeds: Sequence[int]) -> int:
    runs = len(cells) * len(seeds)
    if runs > MAX_RUNS:
        raise ScenarioError([("", f"{runs} runs ({len(cells)} cells × {len(seeds)} seeds): more than {MAX_RUNS}")],
                            "--grid")
    return runs


def apply_overrides(doc: Mapping[str, Any], overrides: Iterable[tuple[str, Any]],
                    seed: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A deep copy of the scenario mapping ``doc`` with each ``(dotted key, value)`` set and ``seed:`` set, and
    the problems met: a path through something other than a mapping (``engine: surrogate`` for ``engine.model``)
    is named and left unset. Missing mappings on the way are created."""
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    problems: list[tuple[str, str]] = []
    for key, value in overrides:
        parts = key.split(".")
        here: dict[str, Any] = out
        for depth, part in enumerate(parts[:-1]):
            node = here.get(part)
            if node is None:
                node = here[part] = {}
            if not isinstance(node, dict):
                where = ".".join(parts[:depth + 1])
                problems.append((key, f"cannot set it: {where} is {type(node).__name__} {node!r} in the base "
                                      "scenario, not a mapping (write it as a mapping there)"))
                break
            here = node
        else:
            here[parts[-1]] = value
    out["seed"] = seed
    return out, problems


def run_id(scenario_name: str, cell: Cell, seed: int) -> str:
    """A run id naming the cell and seed (``quickstart-local_steps-1-s3``), within the 64 characters an id may
    have: a long one keeps the scenario name and a hash of the cell."""
    middle = "" if cell.name == BASE_CELL else f"-{cell.name.replace('__', '-')}"
    text = _UNSAFE.sub("_", f"{scenario_name}{middle}-s{seed}")
    if len(text) <= 64 and text[0].isalnum():
        return text
    digest = hashlib.sha256(cell.name.encode()).hexdigest()[:10]
    head = _UNSAFE.sub("_", scenario_name)[:40].lstrip("_.-") or "sweep"
    return f"{head}-{digest}-s{seed}"
