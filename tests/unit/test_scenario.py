"""The scenario loader: shipped files load, every mistake is reported at its YAML path."""

from __future__ import annotations

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
