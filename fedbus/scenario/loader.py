"""YAML (or an already parsed mapping) to a :class:`Scenario`, naming the path of every mistake.

All problems are collected, not just the first: ``ScenarioError.problems`` is a list of
``(path, message)`` pairs such as ``("clients.count", "must be >= 1")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedbus.aggregator.staleness import WEIGHTINGS, StalenessWeighting
from fedbus.aggregator.strategies import LLM_STRATEGIES
from fedbus.errors import ScenarioError
from fedbus.protocol.messages import DataSpec
from fedbus.scenario.conditions import ClientGroup
from fedbus.scenario.engine import GRADERS, engine_to_mapping, read_engine
from fedbus.scenario.groups import LATENCY_NEEDS, read_groups
from fedbus.scenario.model import (
    LLM_TASKS,
    PARTITIONS,
    SURROGATE_TASKS,
    TASKS,
    AggregationSpec,
    ClientsSpec,
    ParticipationSpec,
    Scenario,
)
from fedbus.scenario.population import virtual_obstacles
from fedbus.scenario.reader import MAX_INT, Reader, at_least, one_of, settings_of, shown, valid_id, within
from fedbus.security.policy import secured_size
from fedbus.tasks.sources import DEFAULT_SPLIT, SPLIT_RULES, decode_sources, encode_sources, scenario_sources
from fedbus.text import holds_half_pair

_TOP = {"name", "seed", "data_seed", "engine", "rounds", "initial_prompt", "task", "clients", "participation",
        "aggregation", "max_message_bytes", "time_scale"} | {f.name for f in settings_of(Scenario)}
_TASK = {"name", "train_size", "val_size", "test_size", "partition", "alpha", "source", "split", "grader"}
_CLIENTS = {f.name for f in settings_of(ClientsSpec)} | {"count", "groups"}
_PARTICIPATION = {f.name for f in settings_of(ParticipationSpec)} | {"adaptive_deadline"}
_ADAPTIVE = {"k", "window"}
_AGGREGATION = {f.name for f in settings_of(AggregationSpec)} | {"buffer_size", "weighting"}
_WEIGHTING = {"kind", "a", "b"}

MAX_CLIENTS = 10_000_000  # 10x the million-client virtual population the benchmark runs
MAX_TRAIN = 100_000_000  # lazily for a virtual population; eagerly ~20 us an example (1,000,000 in ~20 s)
MAX_EVAL = 1_000_000  # the validation set is scored every round (each update too, when a round scores them)
DEFAULT_PROMPT = "You will answer a reasoning question. The last line of your answer should be 'Answer: $VALUE'."


def scenario_from_mapping(doc: Any, source: str = "", seed: int | None = None,
                          data_seed: int | None = None) -> Scenario:
    """Build a scenario from parsed YAML. Raises ``ScenarioError`` listing every problem.

    ``seed`` and ``data_seed`` replace the file's; ``task.source`` paths are taken from ``source``'s folder."""
    r = Reader()
    if not isinstance(doc, Mapping):
        raise ScenarioError([("", f"a scenario must be a mapping, got {type(doc).__name__}")], source)
    r.unknown_keys(doc, "", _TOP)
    name = r.get(doc, "name", "", str, check=valid_id)
    file_seed = r.get(doc, "seed", "", int, default=0, check=at_least(0))
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_INT):
        r.problem("seed", f"the seed given instead of the file's must be an integer within [0, 2**53], "
                  f"got {shown(seed)}")
    file_data_seed = r.get(doc, "data_seed", "", int, default=None, check=at_least(0))
    if data_seed is not None and (type(data_seed) is not int or not 0 <= data_seed <= MAX_INT):
        r.problem("data_seed", f"the data seed given instead of the file's must be an integer within [0, 2**53], "
                  f"got {shown(data_seed)}")
    engine_spec = read_engine(r, doc.get("engine"))
    engine = engine_spec.name
    if engine_spec.base_url and not engine_spec.base_url.startswith(("http://", "https://")):
        r.problem("engine.base_url", f"must be an http:// or https:// URL, got {shown(engine_spec.base_url)}")
    if engine_spec.api_key_env is not None and not engine_spec.api_key_env:
        r.problem("engine.api_key_env", "must name an environment variable (leave it out for a server without a key)")
    rounds = r.get(doc, "rounds", "", int, check=at_least(1))
    prompt = r.get(doc, "initial_prompt", "", str, default=DEFAULT_PROMPT)
    max_bytes = r.get(doc, "max_message_bytes", "", int, default=256 * 1024,
                      check=within(4096, 16 * 1024 * 1024))
    time_scale = r.get(doc, "time_scale", "", float, default=1.0, check=within(0.001, 1_000_000.0))
    top_settings = r.read_settings(doc, "", Scenario)

    t = r.section(doc, "task", "", _TASK)
    if "task" not in doc:
        r.problem("task", "is required")
    raw_task = t.get("name", "surrogate-skills")
    if isinstance(raw_task, list) and raw_task and all(isinstance(x, str) for x in raw_task):
        for i, part in enumerate(raw_task):
            message = one_of(LLM_TASKS)(part)
            if message is not None:
                r.problem(f"task.name[{i}]", message)
        task_name = "+".join(raw_task)
    else:
        task_name = r.get(t, "name", "task", str, default="surrogate-skills", check=one_of(TASKS))
    # bounded: the validation set is scored every round, the test set at the end, the training set generated
    train = r.get(t, "train_size", "task", int, default=120, check=within(1, MAX_TRAIN))
    val = r.get(t, "val_size", "task", int, default=60, check=within(1, MAX_EVAL))
    test = r.get(t, "test_size", "task", int, default=120, check=within(1, MAX_EVAL))
    partition = r.get(t, "partition", "task", str, default="iid", check=one_of(PARTITIONS))
    alpha = r.get(t, "alpha", "task", float, default=None, check=within(0.001, 1000.0))
    if alpha is not None and partition != "dirichlet":
        r.problem("task.alpha", "applies to partition: dirichlet only")
    elif alpha is not None:
        partition = f"dirichlet:{alpha:g}"
    grader = r.get(t, "grader", "task", str, default="exact", check=one_of(GRADERS))
    if grader == "judge" and engine == "surrogate":
        r.problem("task.grader", "judge needs an LLM engine (openai or local): the judge role grades the answers")
    surrogate_task = task_name in SURROGATE_TASKS
    if isinstance(task_name, str) and (engine == "surrogate") != surrogate_task:
        r.problem("task.name", f"engine {engine} runs the task(s) "
                  f"{', '.join(SURROGATE_TASKS if engine == 'surrogate' else LLM_TASKS)}")
    if partition == "by-skill" and not surrogate_task:
        r.problem("task.partition", "by-skill applies to the surrogate task; use iid, dirichlet or per-task")
    if partition in ("dirichlet", "per-task") and surrogate_task:
        r.problem("task.partition", f"{partition} applies to the LLM tasks; the surrogate task takes iid or by-skill")
    split = r.get(t, "split", "task", str, default=DEFAULT_SPLIT, check=one_of(SPLIT_RULES))
    sources: dict[str, str] = {}
    if surrogate_task and ("source" in t or "split" in t):
        r.problem("task.source" if "source" in t else "task.split", "applies to the LLM tasks, not the surrogate's")
    elif "split" in t and "source" not in t:
        r.problem("task.split", "applies to the files of task.source; generated tasks take train/val/test_size")
    elif isinstance(task_name, str) and split in SPLIT_RULES and not any(p.startswith("task.name")
                                                                         for p, _ in r.problems):
        base = Path(source).parent if source else Path.cwd()
        sources, source_problems = scenario_sources(t.get("source"), task_name.split("+"), base, split)
        for where, message in source_problems:
            r.problem(where, message)

    c = r.section(doc, "clients", "", _CLIENTS)
    if "clients" not in doc:
        r.problem("clients", "is required")
    groups = read_groups(r, c.get("groups"), "clients.groups")
    if "groups" in c:
        count = r.get(c, "count", "clients", int, default=sum(g.count for g in groups),
                      check=within(1, MAX_CLIENTS))
        if groups and count != sum(g.count for g in groups):
            r.problem("clients.count", f"must equal the sum of the groups' counts ({sum(g.count for g in groups)})"
                      " or be left out")
    else:
        count = r.get(c, "count", "clients", int, check=within(0, MAX_CLIENTS))
    client_settings = r.read_settings(c, "clients", ClientsSpec)
    _check_id_room(r, [(f"clients.groups[{i}].name", g.name, g.count) for i, g in enumerate(groups)]
                   if "groups" in c else [("clients.id_prefix", client_settings["id_prefix"], count)])
    remote = client_settings["remote"]
    if count == 0 and not (isinstance(remote, int) and remote >= 1):
        r.problem("clients.count", "must be >= 1 (or 0 with clients.remote >= 1: a federation of remote clients only)")
    expected = count + remote if isinstance(count, int) and isinstance(remote, int) else None

    p = r.section(doc, "participation", "", _PARTICIPATION)
    participation = r.read_settings(p, "participation", ParticipationSpec)
    min_clients, min_updates = participation["min_clients"], participation["min_updates"]
    ad = r.section(p, "adaptive_deadline", "participation", _ADAPTIVE)
    adaptive_k = r.get(ad, "k", "participation.adaptive_deadline", float, default=None, check=at_least(0.0))
    if ad and adaptive_k is None and "k" not in ad:
        r.problem("participation.adaptive_deadline.k", "is required")
    adaptive_window = r.get(ad, "window", "participation.adaptive_deadline", int, default=20,
                            check=within(3, 100_000))

    a = r.section(doc, "aggregation", "", _AGGREGATION)
    aggregation = r.read_settings(a, "aggregation", AggregationSpec)
    strategy, mode, max_chars = aggregation["strategy"], aggregation["mode"], aggregation["max_prompt_chars"]
    buffer_size = r.get(a, "buffer_size", "aggregation", int, default=1 if mode != "buffered" else 2,
                        check=at_least(1))
    w = r.section(a, "weighting", "aggregation", _WEIGHTING)
    weighting_kind = r.get(w, "kind", "aggregation.weighting", str, default="polynomial", check=one_of(WEIGHTINGS))
    weighting_a = r.get(w, "a", "aggregation.weighting", float, default=0.5, check=at_least(0.0))
    weighting_b = r.get(w, "b", "aggregation.weighting", float, default=4.0, check=at_least(0.0))
    if mode == "async" and "buffer_size" in a and buffer_size != 1:
        r.problem("aggregation.buffer_size", "must be 1 in async mode (every update is merged on its own)")
    if strategy in LLM_STRATEGIES and engine == "surrogate":
        r.problem("aggregation.strategy", f"{strategy} needs an LLM engine (openai or local), not the surrogate")
    if aggregation["judge_retention"] and engine == "surrogate":
        r.problem("aggregation.judge_retention", "needs an LLM engine (openai or local): an LLM judges retention")
    if mode != "sync" and participation["overcommit"]:
        r.problem("participation.overcommit", "applies to sync mode only")
    if mode != "sync" and ad:  # buffered and async give each task its own deadline: round_deadline_s
        r.problem("participation.adaptive_deadline", "applies to sync mode only")

    if isinstance(prompt, str) and isinstance(max_chars, int) and len(prompt) > max_chars:
        r.problem("initial_prompt", f"{len(prompt)} characters > aggregation.max_prompt_chars ({max_chars})")
    if expected is not None and isinstance(min_clients, int) and min_clients > expected:
        r.problem("participation.min_clients", f"must be <= clients.count ({count})" if not remote else
                  f"must be <= clients.count + clients.remote ({expected})")
    if isinstance(min_updates, int) and isinstance(min_clients, int) and min_updates > min_clients:
        r.problem("participation.min_updates", f"must be <= participation.min_clients ({min_clients})")
    if isinstance(max_chars, int) and isinstance(max_bytes, int):
        security = top_settings["security"]
        plain = max_chars * 4 + 2048  # 4 bytes a character at worst, and the envelope
        if plain > max_bytes or secured_size(plain, security) > max_bytes:
            secured = f" once {security} (security)" if plain <= max_bytes else ""
            r.problem("aggregation.max_prompt_chars",
                      f"a prompt of {max_chars} characters may not fit in max_message_bytes ({max_bytes}){secured}; "
                      "lower it or raise max_message_bytes")
    if r.problems:
        raise ScenarioError(r.problems, source)

    chosen_seed = file_seed if seed is None else seed
    chosen_data_seed = file_data_seed if data_seed is None else data_seed
    scenario = Scenario(
        name=name,
        seed=chosen_seed,
        engine=engine,
        engine_spec=engine_spec,
        grader=grader,
        rounds=rounds,
        initial_prompt=prompt,
        data=DataSpec(task=task_name, seed=chosen_seed, num_shards=count + remote, train_size=train,
                      val_size=val, test_size=test, partition=partition,
                      data_seed=None if chosen_data_seed in (None, chosen_seed) else chosen_data_seed,
                      sources=encode_sources(sources) or None, split=split if sources else None),
        clients=ClientsSpec(count=count, groups=groups, **client_settings),
        participation=ParticipationSpec(adaptive_deadline_k=adaptive_k, adaptive_window=adaptive_window,
                                        **participation),
        aggregation=AggregationSpec(buffer_size=1 if mode == "async" else buffer_size,
                                    weighting=StalenessWeighting(kind=weighting_kind, a=weighting_a, b=weighting_b),
                                    **aggregation),
        max_message_bytes=max_bytes,
        time_scale=time_scale,
        **top_settings,
    )
    if scenario.clients.population == "virtual":
        obstacles = virtual_obstacles(scenario)
        if obstacles:
            raise ScenarioError([(path, f"{why} (clients.population is virtual)") for path, why in obstacles], source)
    return scenario


def _check_id_room(r: Reader, named: list[tuple[str, Any, Any]]) -> None:
    """Clients are NAME-0 ... NAME-(count-1) (zero-padded) and an id has at most 64 characters: a long
    ``id_prefix`` or group name passed its own check and then failed the run's first client id."""
    for where, prefix, count in named:
        last = f"{prefix}-{count - 1}" if isinstance(prefix, str) and isinstance(count, int) and count > 0 else ""
        if len(last) > 64:
            r.problem(where, f"too long for {count} clients: their last id, NAME-{count - 1}, has {len(last)} "
                             "characters (at most 64)")


MAX_FILE_BYTES = 16 * 1024 * 1024  # far above any scenario (a prompt fits in max_message_bytes / 4)
MAX_ALIAS_EXPANSION = 100_000  # values and characters that YAML aliases may add to a document, all together
MAX_DEPTH = 50  # nesting levels of a document (a scenario uses about 6)


class _Refused(Exception):
    """A YAML document the scenario loader will not build: (path, message), turned into a ScenarioError."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path, self.message = path, message


def _yaml_path(segments: list[str | int | None]) -> str:
    """``clients.groups[0].name`` from the keys and indexes leading to a node (long keys and paths cut)."""
    out = ""
    for segment in segments:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            key = "?" if segment is None else " ".join(segment.split())
            key = key if len(key) <= 40 else key[:37] + "..."
            out += f".{key}" if out else key
    return out if len(out) <= 120 else "..." + out[-117:]


class _ScenarioYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: refuses a duplicate key, aliases that expand past
    ``MAX_ALIAS_EXPANSION`` (an alias bomb: a few hundred bytes that expand to billions of values), a recursive
    alias and nesting past ``MAX_DEPTH``, each with its YAML path and line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str | int | None] = []  # the keys and indexes leading to the node being composed
        self._sizes: dict[int, int] = {}  # id(node) -> its size once expanded (values + scalar characters)
        self._expanded = 0  # what aliases added so far

    def _refuse(self, segments: list[str | int | None], message: str, mark: yaml.Mark) -> _Refused:
        return _Refused(_yaml_path(segments), f"{message} (line {mark.line + 1}, column {mark.column + 1})")

    def _next_mark(self) -> yaml.Mark:
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # untyped in the stubs
        return mark

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        segment = index.value if isinstance(index, yaml.ScalarNode) else index if isinstance(index, int) else None
        here = [*self._path[1:], segment] if self._path else []
        if self.check_event(yaml.AliasEvent):
            mark = self._next_mark()
            target = super().compose_node(parent, index)
            size = self._sizes.get(id(target))
            if size is None:  # the anchored value is still being composed: it would contain itself
                raise self._refuse(here, "a YAML alias inside the value it refers to (a recursive alias)", mark)
            self._expanded += size
            if self._expanded > MAX_ALIAS_EXPANSION:
                raise self._refuse(here, f"YAML aliases expand this document past {MAX_ALIAS_EXPANSION} values "
                                   "and characters (an alias bomb?); write the values out", mark)
            return target
        if len(self._path) > MAX_DEPTH:
            raise self._refuse(here, f"nested deeper than {MAX_DEPTH} levels", self._next_mark())
        self._path.append(segment)
        try:
            node = super().compose_node(parent, index)
            if isinstance(node, yaml.MappingNode):
                self._check_duplicates(node, here)
        finally:
            self._path.pop()
        if isinstance(node, yaml.ScalarNode):
            self._sizes[id(node)] = 1 + len(node.value)
            if holds_half_pair(node.value):
                raise self._refuse(here, "a string escapes half a surrogate pair (\\ud800-\\udfff), which no "
                                   "UTF-8 text holds: write the character itself, or its \\U escape (\\U0001F600)",
                                   node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            self._sizes[id(node)] = 1 + sum(self._sizes[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            self._sizes[id(node)] = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return node

    def _check_duplicates(self, node: yaml.MappingNode, here: list[str | int | None]) -> None:
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if (key.tag, key.value) in seen:
                    raise self._refuse([*here, key.value], "duplicate key", key.start_mark)
                seen.add((key.tag, key.value))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line saying where and what is wrong with the YAML."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[:exc.position].count("\n") + 1
        return f"not valid YAML on line {line}: unacceptable character #x{exc.character:04x}"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"not valid YAML {where}: {getattr(exc, 'problem', None) or exc}".split())


def read_yaml(path: str | Path) -> Any:
    """The parsed content of a scenario file, read through the bounded loader. Raises ``ScenarioError``
    naming the file: unreadable, too big, not UTF-8, not YAML, or refused (duplicate key, alias bomb)."""
    source = str(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ScenarioError([("", f"cannot read file: {exc.strerror or exc}")], source) from exc
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError([("", f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a scenario file")],
                            source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ScenarioError([("", f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}; "
                                  "save the file as UTF-8")], source) from exc
    try:
        return yaml.load(text, Loader=_ScenarioYamlLoader)
    except _Refused as refused:
        raise ScenarioError([(refused.path, refused.message)], source) from None
    except yaml.YAMLError as exc:
        raise ScenarioError([("", _yaml_problem(exc, text))], source) from exc


def load_scenario(path: str | Path, seed: int | None = None, data_seed: int | None = None) -> Scenario:
    """Read and check a scenario file. Raises ``ScenarioError`` (with YAML paths)."""
    return scenario_from_mapping(read_yaml(path), str(path), seed, data_seed)


def _group_mapping(g: ClientGroup) -> dict[str, Any]:
    lat = g.latency
    latency: dict[str, Any] = {"kind": lat.kind}
    for name in LATENCY_NEEDS[lat.kind]:
        value = getattr(lat, name)
        latency[name] = list(value) if isinstance(value, tuple) else value
    av = g.availability
    events = [{k: v for k, v in dataclasses.asdict(e).items() if v is not None and (k != "duration_s" or v)}
              for e in av.events]
    net = g.network
    return {
        "name": g.name, "count": g.count, "latency": latency, "behaviour": g.behaviour, "noise": g.noise,
        "stragglers": dataclasses.asdict(g.stragglers),
        "availability": {"dropout_p": av.dropout_p, "events": events,
                         "online": [dataclasses.asdict(i) for i in av.online]},
        "network": {"delay_s": net.delay_s, "jitter_s": net.jitter_s, "loss": net.loss, "duplicate": net.duplicate,
                    "reorder": net.reorder, "partitions": [dataclasses.asdict(i) for i in net.partitions]},
    }


def _task_mapping(d: DataSpec) -> dict[str, Any]:
    names = d.task.split("+")
    kind, _, alpha = d.partition.partition(":")
    out: dict[str, Any] = {"name": names[0] if len(names) == 1 else names, "train_size": d.train_size,
                           "val_size": d.val_size, "test_size": d.test_size, "partition": kind}
    if alpha:
        out["alpha"] = float(alpha)
    sources = decode_sources(d.sources)
    if sources:
        out["source"] = next(iter(sources.values())) if len(names) == 1 else sources
        out["split"] = d.split or DEFAULT_SPLIT
    return out


def _settings(spec: Any) -> dict[str, Any]:
    """The declared settings of a spec, as a scenario file writes them (unset optional ones left out)."""
    values = {f.name: getattr(spec, f.name) for f in settings_of(type(spec))}
    return {name: value for name, value in values.items() if value is not None}


def scenario_to_mapping(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain data that ``scenario_from_mapping`` reads back (summary.json, round trips)."""
    d = scenario.data
    c = scenario.clients
    p = scenario.participation
    a = scenario.aggregation
    clients: dict[str, Any] = {"count": c.count, **_settings(c)}
    if c.groups:
        clients["groups"] = [_group_mapping(g) for g in c.groups]
    participation: dict[str, Any] = _settings(p)
    if p.adaptive_deadline_k is not None:
        participation["adaptive_deadline"] = {"k": p.adaptive_deadline_k, "window": p.adaptive_window}
    return {
        "name": scenario.name,
        "seed": scenario.seed,
        "data_seed": scenario.data.generation_seed,
        "engine": engine_to_mapping(scenario.engine_spec),
        "rounds": scenario.rounds,
        "time_scale": scenario.time_scale,
        "initial_prompt": scenario.initial_prompt,
        "max_message_bytes": scenario.max_message_bytes,
        "task": {**_task_mapping(d), **({"grader": scenario.grader} if scenario.grader != "exact" else {})},
        "clients": clients,
        "participation": participation,
        "aggregation": {**_settings(a), "buffer_size": a.buffer_size, "weighting": dataclasses.asdict(a.weighting)},
        **_settings(scenario),
    }
