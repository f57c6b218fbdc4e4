"""Real data files in scenarios (task.source, task.split), data_seed, and accuracy per task and per client."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from fedbus.errors import ScenarioError
from fedbus.protocol.codec import decode, encode
from fedbus.protocol.messages import DataSpec, GlobalState
from fedbus.runtime.llm_evaluation import Evaluation
from fedbus.runtime.scoring import per_task_final
from fedbus.scenario.loader import load_scenario, scenario_from_mapping, scenario_to_mapping
from fedbus.tasks import DatasetError
from fedbus.tasks.federation import client_data, client_mean_accuracy, task_splits
from fedbus.tasks.sources import decode_sources, encode_sources, load_source


def write_gsm8k(folder: Path, train: int = 450, test: int = 450) -> Path:
    """A GSM8K-format folder: question i of each file has the answer i."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        rows = [json.dumps({"question": f"{name} question {i}?", "answer": f"Work.\n#### {i}"}) for i in range(count)]
        (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def write_bbh(path: Path, count: int = 180) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    examples = [{"input": f"I have {i} apples. How many fruits do I have?", "target": str(i)} for i in range(count)]
    path.write_text(json.dumps({"examples": examples}), encoding="utf-8")
    return path


def scenario_doc(task: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "data", "engine": {"name": "openai", "model": "m"}, "rounds": 1, "task": task,
            "clients": {"count": 3}, **top}


def numbers(examples: tuple[Any, ...]) -> list[int]:
    return [int(e.target) for e in examples]


def test_fedtextgrad_gsm8k_split_is_the_authors_dspy_split(tmp_path: Path) -> None:
    """Seed-0 shuffles of train and test (a fresh Random(0) each), then train[:50], train[200:300], test[300:400]."""
    folder = write_gsm8k(tmp_path / "gsm8k")
    splits = load_source("gsm8k", folder, "fedtextgrad")
    train, test = list(range(450)), list(range(450))
    random.Random(0).shuffle(train)
    random.Random(0).shuffle(test)
    assert numbers(splits.train) == train[:50]
    assert numbers(splits.val) == train[200:300]
    assert numbers(splits.test) == test[300:400]


def test_textgrad_gsm8k_split_and_both_bbh_splits(tmp_path: Path) -> None:
    """TextGrad's GSM8K: val train[:100], train train[100:], test test[:300]; BBH: 50 / 100 / rest under both rules."""
    splits = load_source("gsm8k", write_gsm8k(tmp_path / "g") / "train.jsonl", "textgrad")  # a file: its folder
    assert numbers(splits.val) == list(range(100))
    assert numbers(splits.train) == list(range(100, 450))
    assert numbers(splits.test) == list(range(300))
    bbh = write_bbh(tmp_path / "object_counting.json")
    for rule in ("textgrad", "fedtextgrad"):
        cut = load_source("object_counting", bbh, rule)
        assert (numbers(cut.train), numbers(cut.val), numbers(cut.test)) == (
            list(range(50)), list(range(50, 150)), list(range(150, 180)))
        assert cut.tasks() == frozenset({"object_counting"})


def test_a_relative_source_is_read_from_the_scenario_folder_and_reaches_every_client(tmp_path: Path) -> None:
    """task.source relative to the YAML's folder; the spec carries the absolute path; clients derive their shard."""
    write_gsm8k(tmp_path / "data" / "gsm8k")
    doc = scenario_doc({"name": ["object_counting", "multistep_arithmetic_two", "gsm8k"], "partition": "per-task",
                        "source": {"gsm8k": "data/gsm8k"}, "split": "fedtextgrad"})
    scenario = scenario_from_mapping(doc, str(tmp_path / "scenario.yaml"))
    assert decode_sources(scenario.data.sources) == {"gsm8k": str((tmp_path / "data" / "gsm8k").resolve())}
    assert scenario.data.split == "fedtextgrad"
    third = client_data(scenario.data, 2)
    assert third.tasks() == frozenset({"gsm8k"}) and len(third.train) == 50 and len(third.test) == 100
    assert client_data(scenario.data, 0).tasks() == frozenset({"object_counting"})
    assert scenario_from_mapping(scenario_to_mapping(scenario)) == scenario  # absolute paths round-trip
    message = GlobalState(run="r", round=0, client="aggregator", msg_id="m", sent=0.0, version=0, prompt="p",
                          status="running", engine="openai", data=scenario.data, rounds=1)
    assert decode(encode(message)) == message


def test_one_path_for_a_one_task_run(tmp_path: Path) -> None:
    """A plain string source names the single task's file; sizes then come from the split rule."""
    write_bbh(tmp_path / "oc.json")
    doc = scenario_doc({"name": "object_counting", "source": "oc.json"})
    scenario = scenario_from_mapping(doc, str(tmp_path / "s.yaml"))
    assert len(task_splits(scenario.data)["object_counting"].test) == 30


@pytest.mark.parametrize(("task", "content", "where", "says"), [
    ({"name": "object_counting", "source": "missing.json"}, None, "task.source", "missing.json: no such file"),
    ({"name": "object_counting", "source": "bad.json"}, "{\n  [", "task.source", "bad.json: line 2: invalid JSON"),
    ({"name": "gsm8k"}, None, "task.source", "gsm8k is real data, not generated"),
    ({"name": ["object_counting", "gsm8k"], "source": "x"}, None, "task.source", "give a mapping of task to file"),
    ({"name": "object_counting", "source": {"gsm8k": "x"}}, None, "task.source.gsm8k", "not one of the run's tasks"),
    ({"name": "object_counting", "split": "textgrad"}, None, "task.split", "applies to the files of task.source"),
    ({"name": "object_counting", "source": "bad.json", "split": "dspy"}, "{}", "task.split", "must be one of"),
])
def test_a_bad_source_is_a_problem_naming_the_yaml_path_and_the_file(tmp_path: Path, task: dict[str, Any],
                                                                      content: str | None, where: str,
                                                                      says: str) -> None:
    """Missing, malformed or misplaced sources are ScenarioErrors with the YAML path and the file and line."""
    if content is not None:
        (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(scenario_doc(task), str(tmp_path / "s.yaml"))
    assert any(path == where and says in message for path, message in caught.value.problems), caught.value.problems


def test_a_bad_gsm8k_line_is_named(tmp_path: Path) -> None:
    """A malformed JSONL line is reported with its file and line number."""
    folder = write_gsm8k(tmp_path / "g", train=3, test=3)
    (folder / "test.jsonl").write_text('{"question": "q?", "answer": "#### 1"}\n{"question": "q2?"}\n', "utf-8")
    with pytest.raises(DatasetError, match=r"test.jsonl: line 2: answer must be a string"):
        load_source("gsm8k", folder, "textgrad")


def test_sources_travel_as_task_path_lines() -> None:
    """encode_sources / decode_sources round-trip; a path with a newline cannot travel."""
    sources = {"gsm8k": "/data/gsm8k", "object_counting": "/data/a=b.json"}
    assert decode_sources(encode_sources(sources)) == sources
    assert decode_sources(None) == {}
    with pytest.raises(ValueError, match="cannot carry"):
        encode_sources({"gsm8k": "/a\nb"})


def test_data_seed_changes_the_data_and_not_the_run_seed(tmp_path: Path) -> None:
    """data_seed defaults to the seed (same bytes as before); set, it alone changes the data; --data-seed wins."""
    base = {"name": "object_counting", "train_size": 5, "val_size": 5, "test_size": 5}
    plain = scenario_from_mapping(scenario_doc(base, seed=3))
    assert plain.data.data_seed is None and plain.data.generation_seed == 3
    other = scenario_from_mapping(scenario_doc(base, seed=3, data_seed=8))
    assert other.seed == other.data.seed == 3 and other.data.generation_seed == 8
    assert task_splits(other.data) != task_splits(plain.data)
    assert task_splits(other.data) == task_splits(scenario_from_mapping(scenario_doc(base, seed=8)).data)
    assert scenario_to_mapping(other)["data_seed"] == 8 and scenario_to_mapping(plain)["data_seed"] == 3
    assert scenario_from_mapping(scenario_to_mapping(other)) == other
    assert scenario_from_mapping(scenario_to_mapping(plain)) == plain
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(scenario_doc(base, seed=3, data_seed=8)), encoding="utf-8")
    assert load_scenario(path, data_seed=11).data.generation_seed == 11
    with pytest.raises(ScenarioError, match="data_seed"):
        scenario_from_mapping(scenario_doc(base, data_seed=-1))


def test_client_mean_weights_each_client_by_its_own_task() -> None:
    """per-task: 5 clients over 3 tasks count tasks 0 and 1 twice; iid: every client scores the pooled questions."""
    per_task = {"a": 1.0, "b": 0.5, "c": 0.0}
    questions = {"a": 100, "b": 100, "c": 300}
    spec = DataSpec(task="object_counting+multistep_arithmetic_two+word_problems", seed=1, num_shards=5,
                    train_size=9, val_size=3, test_size=3, partition="per-task")
    named = dict(zip(("object_counting", "multistep_arithmetic_two", "word_problems"), per_task.values(), strict=True))
    sizes = dict(zip(named, questions.values(), strict=True))
    assert client_mean_accuracy(spec, named, sizes) == pytest.approx((1.0 + 0.5 + 0.0 + 1.0 + 0.5) / 5)
    iid = DataSpec(task=spec.task, seed=1, num_shards=5, train_size=9, val_size=3, test_size=3)
    assert client_mean_accuracy(iid, named, sizes) == pytest.approx((100 + 50) / 500)


def test_summary_final_gains_per_task_figures_for_several_tasks_only() -> None:
    """per_task {task: {test_accuracy, questions}} and test_accuracy_client_mean beside test_accuracy."""
    spec = DataSpec(task="object_counting+word_problems", seed=1, num_shards=3, train_size=9, val_size=3,
                    test_size=3, partition="per-task")
    final = Evaluation(accuracy=0.5, per_task={"object_counting": 0.8, "word_problems": 0.2}, questions=20,
                       per_task_questions={"object_counting": 10, "word_problems": 10}, errors=0, prompt_tokens=0,
                       completion_tokens=0)
    out = per_task_final(spec, final)
    assert out["per_task"] == {"object_counting": {"test_accuracy": 0.8, "questions": 10},
                               "word_problems": {"test_accuracy": 0.2, "questions": 10}}
    assert out["test_accuracy_client_mean"] == pytest.approx((0.8 + 0.2 + 0.8) / 3)
    one = Evaluation(accuracy=0.8, per_task={"object_counting": 0.8}, questions=10,
                     per_task_questions={"object_counting": 10}, errors=0, prompt_tokens=0, completion_tokens=0)
    assert per_task_final(spec, one) == {}


def test_paper_heterogeneous_gives_each_client_its_own_task_and_takes_the_real_files(tmp_path: Path) -> None:
    """Three clients, three different tasks (the third generated word problems); its commented real-data
    variant (gsm8k from task.source, the authors' split) loads too."""
    path = Path(__file__).resolve().parents[2] / "scenarios" / "paper-heterogeneous.yaml"
    scenario = load_scenario(path)
    held = [client_data(scenario.data, i).tasks() for i in range(scenario.expected_clients)]
    assert held == [frozenset({"object_counting"}), frozenset({"multistep_arithmetic_two"}),
                    frozenset({"word_problems"})]
    write_gsm8k(tmp_path / "gsm8k")
    write_bbh(tmp_path / "bbh" / "object_counting.json")
    doc = scenario_to_mapping(scenario)
    doc["task"] = {"name": ["object_counting", "multistep_arithmetic_two", "gsm8k"], "partition": "per-task",
                   "source": {"object_counting": "bbh/object_counting.json", "gsm8k": "gsm8k"},
                   "split": "fedtextgrad"}
    real = scenario_from_mapping(doc, str(tmp_path / "paper.yaml"))
    assert [client_data(real.data, i).tasks() for i in range(3)] == [
        frozenset({"object_counting"}), frozenset({"multistep_arithmetic_two"}), frozenset({"gsm8k"})]
    assert len(client_data(real.data, 0).train) == 50 and len(client_data(real.data, 2).val) == 100


def test_fedbus_run_data_seed_reaches_the_summary(tmp_path: Path) -> None:
    """`fedbus run --data-seed 5` keeps the run seed and shows the data seed in summary.json's scenario block."""
    from fedbus.cli import main

    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--simulate", "--data-seed", "5", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["scenario"]["data_seed"] == 5
    assert summary["seed"] == summary["scenario"]["seed"] == load_scenario(scenario).seed != 5


def test_a_sweep_gives_each_run_the_source_paths_the_base_scenario_meant(tmp_path: Path) -> None:
    """A relative task.source is from the base scenario's folder; each run reads a copy in its own folder, so the
    sweep writes the paths absolute, and the copy loads from anywhere."""
    from fedbus.experiments.grid import Axis
    from fedbus.experiments.sweep import plan
    from fedbus.scenario import scenario_from_mapping

    write_bbh(tmp_path / "data" / "object_counting.json")
    base = scenario_doc({"name": "object_counting", "source": "data/object_counting.json"})
    runs = plan(base, [Axis(key="rounds", values=(1,), texts=("1",))], [1], simulate=False,
                source=str(tmp_path / "base.yaml"))
    [run] = runs
    assert run.scenario["task"]["source"] == str((tmp_path / "data" / "object_counting.json").resolve())
    elsewhere = tmp_path / "sweep" / "cells" / "rounds-1" / "seed-1"
    scenario = scenario_from_mapping(run.scenario, str(elsewhere / "scenario.yaml"))
    assert scenario.data.sources  # the file was found from the run's folder
