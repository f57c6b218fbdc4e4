"""YAML (or an already parsed mapping) to a :class:`Scenario`, naming the path of every mistake.

All problems are collected, not just the first: ``ScenarioError.problems`` is a list of
``(path, message)`` pairs such as ``("clients.count", "must be >= 1")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fedbus.errors import ScenarioError
from fedbus.protocol.ids import is_valid_id
from fedbus.protocol.messages import DataSpec
from fedbus.scenario.model import (
    ENGINES,
    PARTITIONS,
    STRATEGIES,
    TASKS,
    AggregationSpec,
    ClientsSpec,
    ParticipationSpec,
    Scenario,
)

_MISSING = object()


class _Reader:
    """Reads typed fields out of nested mappings and records every problem with its path."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def section(self, doc: Mapping[str, Any], key: str, path: str, allowed: set[str]) -> Mapping[str, Any]:
        value = doc.get(key, {})
        where = f"{path}.{key}" if path else key
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.problem(where, f"must be a mapping, got {type(value).__name__}")
            return {}
        self.unknown_keys(value, where, allowed)
        return value

    def unknown_keys(self, doc: Mapping[str, Any], path: str, allowed: set[str]) -> None:
        for key in doc:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                self.problem(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def get(
        self,
        doc: Mapping[str, Any],
        key: str,
        path: str,
        kind: type | tuple[type, ...],
        *,
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        where = f"{path}.{key}" if path else key
        if key not in doc or doc[key] is None:
            if default is _MISSING:
                self.problem(where, "is required")
            return None if default is _MISSING else default
        value = doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and int not in kinds:
            kinds = (*kinds, int)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds if not (k is int and float in kinds))
            names = names.replace("float", "a number").replace("int", "an integer").replace("str", "a string")
            self.problem(where, f"must be {names}, got {type(value).__name__} {value!r}"[:200])
            return None if default is _MISSING else default
        if float in kinds and isinstance(value, int):
            value = float(value)
        if check is not None:
            message = check(value)
            if message is not None:
                self.problem(where, message)
        return value


def _at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _within(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be within [{lo}, {hi}]"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}; got {v!r}"


def _valid_id(v: Any) -> str | None:
    return None if is_valid_id(v) else "must be 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"


_TOP = {"name", "seed", "engine", "rounds", "initial_prompt", "task", "clients", "participation",
        "aggregation", "max_message_bytes"}
_TASK = {"name", "train_size", "val_size", "test_size", "partition"}
_CLIENTS = {"count", "local_steps", "batch_size", "id_prefix", "step_latency_s"}
_PARTICIPATION = {"fraction", "min_clients", "min_updates", "round_deadline_s", "join_timeout_s"}
_AGGREGATION = {"strategy", "max_prompt_chars"}

DEFAULT_PROMPT = "You will answer a reasoning question. The last line of your answer should be 'Answer: $VALUE'."


def scenario_from_mapping(doc: Any, source: str = "", seed: int | None = None) -> Scenario:
    """Build a scenario from parsed YAML. Raises ``ScenarioError`` listing every problem."""
    r = _Reader()
    if not isinstance(doc, Mapping):
        raise ScenarioError([("", f"a scenario must be a mapping, got {type(doc).__name__}")], source)
    r.unknown_keys(doc, "", _TOP)
    name = r.get(doc, "name", "", str, check=_valid_id)
    file_seed = r.get(doc, "seed", "", int, default=0, check=_at_least(0))
    engine = r.get(doc, "engine", "", str, default="surrogate", check=_one_of(ENGINES))
    rounds = r.get(doc, "rounds", "", int, check=_at_least(1))
    prompt = r.get(doc, "initial_prompt", "", str, default=DEFAULT_PROMPT)
    max_bytes = r.get(doc, "max_message_bytes", "", int, default=256 * 1024,
                      check=_within(4096, 16 * 1024 * 1024))

    t = r.section(doc, "task", "", _TASK)
    if "task" not in doc:
        r.problem("task", "is required")
    task_name = r.get(t, "name", "task", str, default="surrogate-skills", check=_one_of(TASKS))
    train = r.get(t, "train_size", "task", int, default=120, check=_at_least(1))
    val = r.get(t, "val_size", "task", int, default=60, check=_at_least(1))
    test = r.get(t, "test_size", "task", int, default=120, check=_at_least(1))
    partition = r.get(t, "partition", "task", str, default="iid", check=_one_of(PARTITIONS))

    c = r.section(doc, "clients", "", _CLIENTS)
    if "clients" not in doc:
        r.problem("clients", "is required")
    count = r.get(c, "count", "clients", int, check=_at_least(1))
    local_steps = r.get(c, "local_steps", "clients", int, default=3, check=_at_least(1))
    batch_size = r.get(c, "batch_size", "clients", int, default=3, check=_at_least(1))
    prefix = r.get(c, "id_prefix", "clients", str, default="client", check=_valid_id)
    latency = r.get(c, "step_latency_s", "clients", float, default=0.0, check=_at_least(0.0))

    p = r.section(doc, "participation", "", _PARTICIPATION)
    fraction = r.get(p, "fraction", "participation", float, default=1.0, check=_within(0.0, 1.0))
    if fraction is not None and fraction == 0.0:
        r.problem("participation.fraction", "must be > 0")
    min_clients = r.get(p, "min_clients", "participation", int, default=1, check=_at_least(1))
    min_updates = r.get(p, "min_updates", "participation", int, default=1, check=_at_least(1))
    deadline = r.get(p, "round_deadline_s", "participation", float, default=60.0, check=_at_least(0.001))
    join_timeout = r.get(p, "join_timeout_s", "participation", float, default=30.0, check=_at_least(0.0))

    a = r.section(doc, "aggregation", "", _AGGREGATION)
    strategy = r.get(a, "strategy", "aggregation", str, default="concat", check=_one_of(STRATEGIES))
    max_chars = r.get(a, "max_prompt_chars", "aggregation", int, default=20_000, check=_at_least(100))

    if isinstance(count, int) and isinstance(min_clients, int) and min_clients > count:
        r.problem("participation.min_clients", f"must be <= clients.count ({count})")
    if isinstance(min_updates, int) and isinstance(min_clients, int) and min_updates > min_clients:
        r.problem("participation.min_updates", f"must be <= participation.min_clients ({min_clients})")
    if isinstance(max_chars, int) and isinstance(max_bytes, int) and max_chars * 4 + 2048 > max_bytes:
        r.problem("aggregation.max_prompt_chars",
                  f"a prompt of {max_chars} characters may not fit in max_message_bytes ({max_bytes}); "
                  "lower it or raise max_message_bytes")
    if r.problems:
        raise ScenarioError(r.problems, source)

    chosen_seed = file_seed if seed is None else seed
    return Scenario(
        name=name,
        seed=chosen_seed,
        engine=engine,
        rounds=rounds,
        initial_prompt=prompt,
        data=DataSpec(task=task_name, seed=chosen_seed, num_shards=count, train_size=train,
                      val_size=val, test_size=test, partition=partition),
        clients=ClientsSpec(count=count, local_steps=local_steps, batch_size=batch_size, id_prefix=prefix,
                            step_latency_s=latency),
        participation=ParticipationSpec(fraction=fraction, min_clients=min_clients, min_updates=min_updates,
                                        round_deadline_s=deadline, join_timeout_s=join_timeout),
        aggregation=AggregationSpec(strategy=strategy, max_prompt_chars=max_chars),
        max_message_bytes=max_bytes,
    )


def load_scenario(path: str | Path, seed: int | None = None) -> Scenario:
    """Read and check a scenario file. Raises ``ScenarioError`` (with YAML paths)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([("", f"cannot read file: {exc.strerror or exc}")], source) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ScenarioError([("", f"not valid YAML {where}: {getattr(exc, 'problem', exc)}")], source) from exc
    return scenario_from_mapping(doc, source, seed)


def scenario_to_mapping(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain data (for summary.json and round trips)."""
    d = scenario.data
    return {
        "name": scenario.name,
        "seed": scenario.seed,
        "engine": scenario.engine,
        "rounds": scenario.rounds,
        "initial_prompt": scenario.initial_prompt,
        "max_message_bytes": scenario.max_message_bytes,
        "task": {"name": d.task, "train_size": d.train_size, "val_size": d.val_size,
                 "test_size": d.test_size, "partition": d.partition},
        "clients": dataclasses.asdict(scenario.clients),
        "participation": dataclasses.asdict(scenario.participation),
        "aggregation": dataclasses.asdict(scenario.aggregation),
    }
