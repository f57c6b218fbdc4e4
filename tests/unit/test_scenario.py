"""The scenario loader: shipped files load, every mistake is reported at its YAML path."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fedbus.errors import ScenarioError
from fedbus.scenario.loader import load_scenario, scenario_from_mapping, scenario_to_mapping

SCENARIOS = sorted((Path(__file__).parents[2] / "scenarios").glob("*.yaml"))


def minimal(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {"name": "t", "rounds": 2, "task": {"name": "surrogate-skills"},
                              "clients": {"count": 3}}
    doc.update(overrides)
    return doc


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_loads_and_round_trips(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario_from_mapping(scenario_to_mapping(scenario)) == scenario


def test_there_are_shipped_scenarios() -> None:
    assert len(SCENARIOS) >= 10


def test_a_seed_from_the_command_line_wins() -> None:
    assert scenario_from_mapping(minimal(seed=3), seed=9).seed == 9
    assert scenario_from_mapping(minimal(seed=3)).seed == 3
    for big in (2**60, -1):  # past 2**53 it crashed building the run's data spec, with a traceback
        for key in ("seed", "data_seed"):
            with pytest.raises(ScenarioError) as info:
                scenario_from_mapping(minimal(), **{key: big})  # type: ignore[arg-type]
            assert any(line.startswith(f"{key}:") for line in info.value.lines()), info.value.lines()


def problems(doc: object) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        scenario_from_mapping(doc)
    return info.value.lines()


def test_every_mistake_is_reported_with_its_path() -> None:
    lines = problems(minimal(rounds=0, clients={"count": 0, "batch_size": "three"}, colour="red"))
    assert any(line.startswith("rounds:") for line in lines), lines
    assert any(line.startswith("clients.count:") and ">= 1" in line for line in lines), lines
    assert any(line.startswith("clients.batch_size:") for line in lines), lines
    assert any("colour" in line for line in lines), lines


GROUP = {"name": "g", "count": 2}


@pytest.mark.parametrize(("doc", "path", "says"), [
    # each of these passed `fedbus validate` and then crashed `fedbus run` with a traceback
    (minimal(clients={"count": 3, "id_prefix": "p" * 64}), "clients.id_prefix", "has 66 characters"),
    (minimal(clients={"groups": [{"name": "g" * 63, "count": 12}]}), "clients.groups[0].name", "has 66 characters"),
    (minimal(participation={"round_deadline_s": float("inf")}), "participation.round_deadline_s", "finite"),
    (minimal(participation={"join_timeout_s": float("nan")}), "participation.join_timeout_s", "finite"),
    (minimal(clients={"step_latency_s": 10**400}), "clients.step_latency_s", "2**53"),
    (minimal(participation={"adaptive_deadline": {"k": 1, "window": 10**9}}),
     "participation.adaptive_deadline.window", "within [3, 100000]"),
    (minimal(clients={"groups": [{**GROUP, "latency": {"kind": "lognormal", "median_s": 1, "sigma": 1e6}}]}),
     "clients.groups[0].latency.sigma", "within [0.0, 10.0]"),
    (minimal(clients={"groups": [{**GROUP, "latency": {"kind": "trace", "values_s": [1.0, float("nan")]}}]}),
     "clients.groups[0].latency.values_s[1]", "within [0, 1e+09]"),
    # these validated and then ran as something else than they said (or gave up at once)
    (minimal(clients={"groups": [{**GROUP, "latency": {"kind": "uniform", "low_s": 10, "high_s": 5}}]}),
     "clients.groups[0].latency.high_s", "must be at least low_s (10), got 5"),
    (minimal(clients={"groups": [{**GROUP, "latency": {"kind": "constant", "value_s": 1, "median_s": 3}}]}),
     "clients.groups[0].latency.median_s", "is not a setting of kind constant (it takes value_s)"),
    (minimal(participation={"adaptive_deadline": {"k": 2}}, aggregation={"mode": "async"}),
     "participation.adaptive_deadline", "applies to sync mode only"),
    (minimal(participation={"join_timeout_s": 0}), "participation.join_timeout_s", "must be >= 0.001"),
    # these validated and then ran for hours
    (minimal(task={"name": "surrogate-skills", "train_size": 10**12}), "task.train_size", "within"),
    (minimal(task={"name": "surrogate-skills", "val_size": 10**9}), "task.val_size", "within"),
    (minimal(clients={"count": 10**12}), "clients.count", "within"),
])
def test_values_that_would_crash_or_stall_a_run_are_refused_at_their_path(doc: dict[str, object], path: str,
                                                                          says: str) -> None:
    lines = problems(doc)
    assert any(line.startswith(f"{path}:") and says in line for line in lines), lines


def test_an_empty_or_non_string_key_is_quoted_in_its_path() -> None:
    """`"": 1` at the top was reported as ': unknown key', a path of nothing."""
    lines = problems({**minimal(), "": 1, 3: 4})
    assert any(line.startswith("'': unknown key") for line in lines), lines
    assert any(line.startswith("3: unknown key") for line in lines), lines
    assert any(line.startswith("clients.'': unknown key") for line in problems(minimal(clients={"count": 2, "": 0})))


def test_count_zero_is_a_federation_of_remote_clients_only() -> None:
    """clients.count 0 needs clients.remote >= 1; min_clients then counts the remote clients, and so do the shards."""
    scenario = scenario_from_mapping(minimal(clients={"count": 0, "remote": 10},
                                             participation={"min_clients": 10, "min_updates": 10}))
    assert scenario.client_ids() == () and scenario.groups() == ()
    assert scenario.expected_clients == 10 and scenario.data.num_shards == 10
    assert scenario_from_mapping(scenario_to_mapping(scenario)) == scenario
    lines = problems(minimal(clients={"count": 0}))
    assert any(line.startswith("clients.count:") and "clients.remote >= 1" in line for line in lines), lines
    lines = problems(minimal(clients={"count": 0, "remote": 2}, participation={"min_clients": 3}))
    assert any(line.startswith("participation.min_clients:") and "(2)" in line for line in lines), lines
    assert problems(minimal(clients={"count": 1, "remote": -1}))


def test_remote_clients_add_to_the_own_ones() -> None:
    """clients.remote: the run expects its own clients and the remote ones; the own ones keep their shards."""
    scenario = scenario_from_mapping(minimal(clients={"count": 2, "remote": 3}, participation={"min_clients": 5}))
    assert scenario.client_ids() == ("client-0", "client-1")
    assert scenario.expected_clients == 5 and scenario.data.num_shards == 5
    assert scenario_from_mapping(minimal()).clients.remote == 0
    assert problems(minimal(participation={"min_clients": 4}))  # 3 own clients, none remote


def test_missing_required_fields_are_named() -> None:
    lines = problems({"name": "t"})
    assert any(line.startswith("rounds") for line in lines), lines
    assert any(line.startswith("clients") for line in lines), lines


def test_a_scenario_must_be_a_mapping() -> None:
    assert problems(["not", "a", "mapping"])


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\nrounds: [1, 2\nclients: {count: 3}\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "broken.yaml" in str(info.value)
    assert "line" in str(info.value)


def test_a_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope\.yaml"):
        load_scenario(tmp_path / "nope.yaml")


def test_engine_is_a_name_or_a_mapping() -> None:
    assert scenario_from_mapping(minimal(engine="surrogate")).engine_spec.name == "surrogate"
    spec = scenario_from_mapping(minimal(engine={"name": "openai", "model": "qwen2.5", "base_url": "http://h:8000/v1",
                                                 "api_key_env": "MY_KEY", "max_tokens": 256},
                                         task={"name": "object_counting"})).engine_spec
    assert (spec.name, spec.model, spec.api_key_env, spec.max_tokens) == ("openai", "qwen2.5", "MY_KEY", 256)
    local = scenario_from_mapping(minimal(engine="local", task={"name": "object_counting"}))
    assert local.engine == "local" and local.engine_spec.threads == 1
    assert scenario_from_mapping(scenario_to_mapping(local)) == local


def test_engine_mistakes_are_reported_with_their_paths() -> None:
    lines = problems(minimal(engine={"name": "openai", "max_tokens": 0, "api_key": "sk-123"}))
    assert any(line.startswith("engine.model:") for line in lines), lines
    assert any(line.startswith("engine.max_tokens:") for line in lines), lines
    assert any(line.startswith("engine.api_key:") for line in lines), lines
    assert any(line.startswith("engine.name:") for line in problems(minimal(engine="gpt-7")))


def test_llm_tasks_partitions_and_mixtures() -> None:
    doc = minimal(engine="local", task={"name": ["object_counting", "multistep_arithmetic_two"],
                                        "partition": "dirichlet", "alpha": 0.3})
    scenario = scenario_from_mapping(doc)
    assert scenario.data.task == "object_counting+multistep_arithmetic_two"
    assert scenario.data.partition == "dirichlet:0.3"
    assert scenario_from_mapping(scenario_to_mapping(scenario)) == scenario


def test_engine_and_task_must_fit_together() -> None:
    assert any(line.startswith("task.name:") for line in problems(minimal(task={"name": "object_counting"})))
    assert any(line.startswith("task.name:") for line in problems(minimal(engine="local")))
    lines = problems(minimal(engine="local", task={"name": ["object_counting", "sudoku"], "alpha": 2}))
    assert any(line.startswith("task.name[1]:") for line in lines), lines
    assert any(line.startswith("task.alpha:") for line in lines), lines


@pytest.mark.parametrize(("section", "spec"), [("clients", "ClientsSpec"), ("participation", "ParticipationSpec"),
                                                ("aggregation", "AggregationSpec")])
def test_every_declared_setting_is_read_with_its_default_type_and_path(section: str, spec: str) -> None:
    """Each field declared with `setting` is read from YAML by its declaration: absent, it takes the declared
    default; of the wrong type, the error names `section.field`."""
    import dataclasses

    from fedbus.scenario import model
    from fedbus.scenario.reader import settings_of

    base = {"name": "decl", "rounds": 1, "task": {"name": "surrogate-skills"}, "clients": {"count": 2}}
    scenario = scenario_from_mapping(base)
    declared = settings_of(getattr(model, spec))
    assert declared, "nothing declared"
    values = getattr(scenario, section)
    for f in declared:
        assert getattr(values, f.name) == f.default, f.name
        doc = {**base, section: {**base.get(section, {}), f.name: ["not", "a", "value"]}}
        with pytest.raises(ScenarioError) as caught:
            scenario_from_mapping(doc)
        assert f"{section}.{f.name}" in [path for path, _ in caught.value.problems]
    assert {f.name for f in dataclasses.fields(getattr(model, spec))} >= {f.name for f in declared}


def test_an_initial_prompt_over_the_prompt_budget_is_refused() -> None:
    """initial_prompt longer than aggregation.max_prompt_chars is an error at initial_prompt, before any run."""
    doc = {"name": "long", "rounds": 1, "task": {"name": "surrogate-skills"}, "clients": {"count": 1},
           "initial_prompt": "x" * 201, "aggregation": {"max_prompt_chars": 200}}
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(doc)
    assert caught.value.problems == (("initial_prompt", "201 characters > aggregation.max_prompt_chars (200)"),)


# ------------------------------------------------------------------ bad files: each refused in one line


def alias_bomb(levels: int = 10) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**levels strings (9**10: 3.5 billion)."""
    keys = "abcdefghijklmnop"[:levels]
    lines = [f"a: &a [{','.join(['lol'] * 9)}]"]
    lines += [f"{key}: &{key} [{','.join([f'*{prev}'] * 9)}]" for prev, key in itertools.pairwise(keys)]
    return "\n".join([*lines, f"name: *{keys[-1]}", ""])


def refused(tmp_path: Path, text: str | bytes) -> ScenarioError:
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert all("\n" not in line for line in info.value.lines()), "every problem is one line"
    return info.value


def test_an_alias_bomb_is_refused_with_little_memory(tmp_path: Path) -> None:
    """A 10-level YAML alias bomb (on main: minutes and gigabytes while an error message rendered the value) is
    refused while the file is read, naming where the aliases went past the limit, in a few MB."""
    import tracemalloc

    text = alias_bomb()
    assert len(text.encode()) < 400
    tracemalloc.start()
    try:
        error = refused(tmp_path, text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024, f"{peak} bytes at the peak"
    ((path, message),) = error.problems
    assert path == "e[2]" and "aliases expand" in message and "(line 5, column " in message


def test_aliases_within_the_limit_still_work(tmp_path: Path) -> None:
    """Anchors, aliases and merge keys of an ordinary size load as before (the bound is on expansion only)."""
    path = tmp_path / "anchors.yaml"
    path.write_text("""\
name: anchors
rounds: 1
task: {name: surrogate-skills}
clients:
  groups:
    - &edge {name: edge, count: 2, latency: {kind: lognormal, median_s: 40, sigma: 0.4}}
    - {<<: *edge, name: edge2}
""", encoding="utf-8")
    groups = load_scenario(path).clients.groups
    assert [g.name for g in groups] == ["edge", "edge2"] and groups[0].latency == groups[1].latency


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    """An alias inside the value it names (a list that contains itself) is refused at its path."""
    error = refused(tmp_path, "name: &a [1, *a]\n")
    assert error.problems[0][0] == "name[1]" and "recursive alias" in error.problems[0][1]


def test_nesting_past_the_limit_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    """100,000 nested brackets: refused past MAX_DEPTH levels, not a RecursionError from the YAML composer."""
    from fedbus.scenario.loader import MAX_DEPTH

    error = refused(tmp_path, "name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert f"nested deeper than {MAX_DEPTH} levels" in error.problems[0][1]


@pytest.mark.parametrize(("text", "path"), [
    ("name: t\nrounds: 2\ntask: {name: surrogate-skills}\nclients:\n  count: 3\n  count: 4\n", "clients.count"),
    ("name: t\nrounds: 2\nrounds: 3\ntask: {name: surrogate-skills}\nclients: {count: 3}\n", "rounds"),
    ("name: t\nrounds: 2\ntask: {name: surrogate-skills}\nclients: {count: 3, groups: [{name: a, count: 1, "
     "name: b}]}\n", "clients.groups[0].name"),
])
def test_a_duplicate_key_is_refused_with_its_path(tmp_path: Path, text: str, path: str) -> None:
    """A key given twice (YAML would silently keep the last) is refused: 'clients.count: duplicate key'."""
    error = refused(tmp_path, text)
    assert error.problems == ((path, error.problems[0][1]),)
    assert error.problems[0][1].startswith("duplicate key (line ")


@pytest.mark.parametrize(("text", "path"), [
    ('name: t\nrounds: 2\ninitial_prompt: "Think \\ud800"\n', "initial_prompt"),
    ('name: t\nrounds: 2\nclients: {groups: [{name: "a\\ud83d\\ude00", count: 1}]}\n', "clients.groups[0].name"),
    ('name: t\n"k\\udfff": 1\n', "?"),  # a key: its line and column say where
])
def test_half_a_surrogate_pair_is_refused_with_its_path(tmp_path: Path, text: str, path: str) -> None:
    """YAML can escape half a surrogate pair (PyYAML reads even a whole pair's two escapes as two halves); no UTF-8
    text holds one, and a run crashed encoding the first message with it: refused where it is written."""
    error = refused(tmp_path, text)
    assert [where for where, _ in error.problems] == [path]
    assert "half a surrogate pair" in error.problems[0][1] and "\\U0001F600" in error.problems[0][1]


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    """Latin-1 bytes: one problem naming the file, the byte and its line, not a UnicodeDecodeError."""
    error = refused(tmp_path, b"name: t\nrounds: 2\ninitial_prompt: caf\xe9\n")
    assert "bad.yaml" in str(error)
    assert error.lines() == ["not UTF-8 text: byte 0xe9 on line 3; save the file as UTF-8"]


@pytest.mark.parametrize(("text", "expected"), [
    ("name: t\x00\n", "not valid YAML on line 1: unacceptable character #x0000"),
    ("name: t\n---\nname: u\n", "but found another document"),
    ("name: !!python/object:os.system x\n", "could not determine a constructor"),
])
def test_other_unreadable_yaml_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    """A control character, two documents, an unsafe tag: each one problem on one line."""
    assert expected in refused(tmp_path, text).lines()[0]


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    """A file past MAX_FILE_BYTES (a wrong path, /dev/zero) is refused after reading just past the limit."""
    from fedbus.scenario.loader import MAX_FILE_BYTES

    path = tmp_path / "big.yaml"
    with path.open("wb") as file:
        file.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ScenarioError, match="larger than 16 MiB"):
        load_scenario(path)


def test_a_huge_value_is_never_rendered_whole() -> None:
    """A wrong-typed value of a million items (or characters) is quoted cut short, so every problem stays short."""
    lines = problems(minimal(name=list(range(1_000_000)), rounds="x" * 1_000_000))
    assert len(lines) == 2 and all(len(line) < 300 for line in lines), lines
    assert lines[0].startswith("name: must be a string, got list [0, 1, 2, 3, ...]")


def test_a_negative_seed_given_for_the_file_is_refused() -> None:
    """The seed a caller passes instead of the file's is checked like the file's: >= 0."""
    assert problems_with_seed(-5) == [
        "seed: the seed given instead of the file's must be an integer within [0, 2**53], got -5"]


def problems_with_seed(seed: int) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        scenario_from_mapping(minimal(), seed=seed)
    return info.value.lines()


def test_an_engine_url_and_key_variable_are_checked_before_a_run() -> None:
    """engine.base_url must be http(s) and engine.api_key_env a name: found by validate, not by the engine later."""
    lines = problems(minimal(engine={"name": "openai", "model": "m", "base_url": "localhost:8000", "api_key_env": ""},
                             task={"name": "object_counting"}))
    assert lines == ["engine.base_url: must be an http:// or https:// URL, got 'localhost:8000'",
                     "engine.api_key_env: must name an environment variable (leave it out for a server without a key)"]
