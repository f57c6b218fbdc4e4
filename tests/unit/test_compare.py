"""``fedbus compare`` (fedbus/runtime/compare.py): rows, per-round rows, the text table and the CSV,
checked against the numbers in the summaries they come from."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fedbus.errors import FedbusError
from fedbus.results.compare import (
    COLUMNS,
    load_summaries,
    render,
    rounds_table,
    row,
    settings_columns,
    summary_problem,
    to_csv,
    with_settings,
)
from fedbus.scenario import load_scenario
from fedbus.sim.run import simulate
from tests.conftest import ROOT


def summary(run_id: str = "run-a", **totals: Any) -> dict[str, Any]:
    """The least of a summary.json that compare reads."""
    return {
        "run_id": run_id, "mode": "sync", "status": "completed",
        "scenario": {"name": "paper", "aggregation": {"strategy": "uid_summarize"}},
        "engine": {"name": "openai"},
        "final": {"test_accuracy": 0.123456, "initial_test_accuracy": 0.5, "prompt_chars": 812},
        "totals": {"rounds_closed": 2, "updates_accepted": 5, "updates_rejected": 1, "tokens": 300, "wall_s": 12.5,
                   **totals},
        "rounds": [
            {"round": 1, "status": "aggregated", "val_accuracy": 0.25, "global_prompt_chars": 400,
             "sentence_overlap": 0.75, "accepted": [{}, {}, {}], "rejected": [{}], "duration_s": 3.25},
            {"round": 2, "status": "no-quorum", "global_prompt_chars": 400, "accepted": [{}, {}], "rejected": [],
             "duration_s": 20.0},
        ],
    }


def parse_table(text: str) -> list[dict[str, str]]:
    """Read render()'s table back by the header's column positions (which also checks the alignment)."""
    header, *lines = text.splitlines()
    keys = header.split()
    starts: list[int] = []
    for key in keys:
        starts.append(header.index(key, starts[-1] + 1 if starts else 0))
    rows = []
    for line in lines:
        cells = [line[a:b].rstrip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        assert all(cell and not cell.startswith(" ") for cell in cells), f"misaligned: {line!r}"
        rows.append(dict(zip(keys, cells, strict=True)))
    return rows


def test_a_row_holds_the_summarys_numbers() -> None:
    """One row per run: names, status and totals copied, accuracies rounded to 4 places."""
    assert row(summary()) == {
        "run": "run-a", "scenario": "paper", "engine": "openai", "strategy": "uid_summarize", "mode": "sync",
        "status": "completed", "rounds": 2, "test_acc": 0.1235, "initial_acc": 0.5, "prompt_chars": 812,
        "accepted": 5, "rejected": 1, "tokens": 300, "wall_s": 12.5,
    }


def test_the_row_columns_are_the_documented_ones_in_order() -> None:
    """The row's keys are COLUMNS, in that order (the table's and the CSV's header)."""
    assert tuple(row(summary())) == COLUMNS


def test_tokens_of_every_use_win_over_the_clients_tokens() -> None:
    """With an LLM engine the row counts tokens of every use (clients, merges, evaluation), not only the clients'."""
    assert row(summary(tokens_all_uses=9_000))["tokens"] == 9_000
    assert row(summary())["tokens"] == 300


def test_rounds_table_has_one_row_per_run_and_round() -> None:
    """--rounds: a row per (run, round) in order, with the round's numbers; a missing value is None."""
    rows = rounds_table([summary("run-a"), summary("run-b")])
    assert [(r["run"], r["round"]) for r in rows] == [("run-a", 1), ("run-a", 2), ("run-b", 1), ("run-b", 2)]
    assert rows[0] == {"run": "run-a", "round": 1, "status": "aggregated", "val_acc": 0.25, "prompt_chars": 400,
                       "sentence_overlap": 0.75, "accepted": 3, "rejected": 1, "duration_s": 3.25}
    assert rows[1]["val_acc"] is None and rows[1]["sentence_overlap"] is None
    assert rows[1]["status"] == "no-quorum" and rows[1]["accepted"] == 2 and rows[1]["rejected"] == 0


def test_rounds_of_runs_written_before_the_rename_show_their_retention_as_sentence_overlap() -> None:
    """summary.json files from before 'retention' was renamed still compare: the same figure, its new name."""
    old = summary("old")
    old["rounds"][0]["retention"] = old["rounds"][0].pop("sentence_overlap")
    assert rounds_table([old])[0]["sentence_overlap"] == 0.75


def test_the_table_aligns_every_column_under_its_header() -> None:
    """render(): a header and a line per row; each value starts under its column's name."""
    other = summary("a-much-longer-run-id")
    other["final"]["test_accuracy"] = 1.0
    text = render([row(summary()), row(other)])
    parsed = parse_table(text)
    assert [r["run"] for r in parsed] == ["run-a", "a-much-longer-run-id"]
    assert [r["test_acc"] for r in parsed] == ["0.1235", "1.0"]
    assert parsed[0]["wall_s"] == "12.5" and parsed[0]["strategy"] == "uid_summarize"
    assert len({len(line) for line in text.splitlines()}) == 1, "every column is padded to its width"


def test_an_empty_comparison_says_so() -> None:
    """No rows: the table says '(no runs)' and the CSV is empty."""
    assert render([]) == "(no runs)"
    assert to_csv([]) == ""


def test_the_csv_reads_back_to_the_rows() -> None:
    """to_csv(): a header of the row keys, then one line per row, readable by the csv module."""
    rows = rounds_table([summary("run-a"), summary("run-b")])
    back = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [list(r) for r in back] == [list(rows[0])] * 4
    assert back == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


def test_summaries_load_from_run_directories_or_files(tmp_path: Path) -> None:
    """A path may be a run directory holding summary.json or the file itself; order is kept."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary(name)), encoding="utf-8")
    loaded = load_summaries([tmp_path / "two", tmp_path / "one" / "summary.json"])
    assert [s["run_id"] for s in loaded] == ["two", "one"]


@pytest.mark.parametrize("content", [None, "{not json", ""])
def test_a_missing_or_broken_summary_is_a_fedbus_error_naming_the_file(tmp_path: Path, content: str | None) -> None:
    """A run directory without a readable summary.json fails with the file's path, not a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "summary.json").write_text(content, encoding="utf-8")
    with pytest.raises(FedbusError, match=r"run/summary\.json: not a readable summary\.json"):
        load_summaries([run])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two real summaries: the quickstart simulated with two seeds."""
    out = tmp_path_factory.mktemp("compare")
    path = ROOT / "scenarios" / "quickstart.yaml"
    first = simulate(load_scenario(path), out / "a", progress=False)
    second = simulate(load_scenario(path, seed=8), out / "b", progress=False)
    return [first, second]


def test_rows_of_real_runs_match_their_summaries(simulated: list[dict[str, Any]]) -> None:
    """On summaries a simulated run wrote, each row's numbers are that run's."""
    for s, r in zip(simulated, [row(s) for s in simulated], strict=True):
        assert r["run"] == s["run_id"] and r["scenario"] == "quickstart" and r["engine"] == "surrogate"
        assert r["rounds"] == s["totals"]["rounds_closed"] == len(s["rounds"]) == 3
        assert r["test_acc"] == round(s["final"]["test_accuracy"], 4)
        assert r["initial_acc"] == round(s["final"]["initial_test_accuracy"], 4)
        assert r["prompt_chars"] == s["final"]["prompt_chars"] == len(s["final"]["prompt"])
        assert r["accepted"] == sum(len(x["accepted"]) for x in s["rounds"])
        assert r["tokens"] == s["totals"]["tokens"] > 0
    assert row(simulated[0])["run"] != row(simulated[1])["run"]


def test_round_rows_of_real_runs_match_their_summaries(simulated: list[dict[str, Any]]) -> None:
    """Per-round rows carry each round's validation accuracy, prompt size and sentence overlap as summary.json
    has them."""
    rows = rounds_table(simulated)
    expected = [(s["run_id"], x["round"], x["val_accuracy"], x["global_prompt_chars"], x["sentence_overlap"],
                 len(x["accepted"]), x["duration_s"]) for s in simulated for x in s["rounds"]]
    assert [(r["run"], r["round"], r["val_acc"], r["prompt_chars"], r["sentence_overlap"], r["accepted"],
             r["duration_s"]) for r in rows] == expected
    assert len(rows) == 6


def test_compare_does_not_change_the_summaries(simulated: list[dict[str, Any]]) -> None:
    """Building rows reads the summaries and leaves them as they were."""
    before = copy.deepcopy(simulated)
    render([row(s) for s in simulated])
    to_csv(rounds_table(simulated))
    assert simulated == before


@pytest.mark.parametrize(("content", "problem"), [
    ('{"a": 1}', "no run_id"),
    ("[1, 2]", "the file holds an array, not an object"),
    ("null", "the file holds null, not an object"),
])
def test_json_that_is_not_a_run_summary_is_a_fedbus_error_naming_the_file(tmp_path: Path, content: str,
                                                                          problem: str) -> None:
    """Valid JSON that is not a summary.json (another tool's file, a list) fails at load, naming the file and
    what is missing, instead of a KeyError or TypeError in row()."""
    file = tmp_path / "other.json"
    file.write_text(content, encoding="utf-8")
    with pytest.raises(FedbusError) as info:
        load_summaries([file])
    assert str(info.value) == f"{file}: not a run summary ({problem})"


def test_every_field_compare_reads_is_checked_with_its_type() -> None:
    """summary_problem() names the first field row() or rounds_table() would trip on, with its JSON types."""
    assert summary_problem(summary()) is None
    broken = summary()
    broken["final"]["test_accuracy"] = "high"
    assert summary_problem(broken) == "final.test_accuracy is a string, not a number or null"
    broken = summary()
    del broken["totals"]["wall_s"]
    assert summary_problem(broken) == "no totals.wall_s"
    broken = summary()
    broken["rounds"][1]["accepted"] = 3
    assert summary_problem(broken) == "rounds[1].accepted is a number, not an array"
    broken = summary()
    broken["final"]["prompt_chars"] = True
    assert summary_problem(broken) == "final.prompt_chars is a boolean, not an integer"


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"run_id": "caf\xe9"}', "UnicodeDecodeError"),
    (b"[" * 100_000, "RecursionError"),
])
def test_undecodable_json_is_a_fedbus_error(tmp_path: Path, content: bytes, reason: str) -> None:
    """Bytes that are not UTF-8, or JSON nested past Python's stack: a FedbusError naming the file, one line."""
    file = tmp_path / "summary.json"
    file.write_bytes(content)
    with pytest.raises(FedbusError, match=rf"summary\.json: not a readable summary\.json \({reason}: ") as info:
        load_summaries([file])
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ settings that differ between runs


def with_scenario(run_id: str, seed: int, steps: int, strategy: str = "uid_summarize") -> dict[str, Any]:
    s = summary(run_id)
    s["seed"] = seed
    s["scenario"] = {"name": "paper", "seed": seed, "clients": {"count": 4, "local_steps": steps},
                     "aggregation": {"strategy": strategy, "mode": "sync"}}
    return s


def test_settings_that_differ_become_columns_after_run(tmp_path: Path) -> None:
    """Runs that differ in scenario settings get a column per differing setting (dotted key) and the seed; what
    the fixed columns show (strategy) is not repeated; the columns go right after `run`."""
    runs = [with_scenario("a", 1, 1, "concat"), with_scenario("b", 2, 3, "summarize")]
    settings = settings_columns([tmp_path / "a", tmp_path / "b"], runs)
    assert settings == [{"seed": 1, "clients.local_steps": 1}, {"seed": 2, "clients.local_steps": 3}]
    rows = with_settings([row(runs[0])], settings[0])
    assert list(rows[0])[:3] == ["run", "seed", "clients.local_steps"]
    assert {k: v for k, v in rows[0].items() if k not in settings[0]} == row(runs[0])
    assert settings_columns([tmp_path], [with_scenario("a", 1, 1)]) == [{}], "one run alone: nothing differs"


def test_a_setting_named_as_a_fixed_column_does_not_replace_it() -> None:
    """A sweep over `rounds` (the scenario's) beside the fixed `rounds` (closed by the run): the row of an
    aborted 5-round run showed rounds 5 under one name, or 2, never both."""
    run = with_scenario("a", 1, 2)
    fixed = row(run)
    rows = with_settings([fixed], {"rounds": 99, "seed": 1})
    assert rows[0]["rounds"] == fixed["rounds"] and rows[0]["setting.rounds"] == 99 and rows[0]["seed"] == 1
    assert list(rows[0])[:3] == ["run", "setting.rounds", "seed"]


def test_runs_of_a_sweep_show_its_grid_keys_and_seed(tmp_path: Path) -> None:
    """Compared runs inside a sweep folder (sweep.json above them) show the sweep's varied grid keys and seed, even
    where these runs agree; a grid key of one value (set for every cell) is not a column."""
    sweep = tmp_path / "sweep"
    cell = sweep / "cells" / "local_steps-2" / "seed-1"
    cell.mkdir(parents=True)
    grid = [{"key": "clients.local_steps", "values": [1, 2]}, {"key": "rounds", "values": [2]}]  # rounds: not varied
    (sweep / "sweep.json").write_text(json.dumps({"grid": grid, "cells": []}), encoding="utf-8")
    runs = [with_scenario("a", 1, 2), with_scenario("b", 1, 2)]
    assert settings_columns([cell, cell / "summary.json"], runs) == [{"clients.local_steps": 2, "seed": 1}] * 2
    text = render(with_settings([row(runs[0])], {"clients.local_steps": 2, "seed": 1}))
    assert parse_table(text)[0]["clients.local_steps"] == "2"


def test_a_data_seed_that_follows_the_seed_is_not_a_varied_setting() -> None:
    """Unset, data_seed is the seed: runs over seeds 1 and 2 vary by seed alone. Set apart from the seed (a grid
    over data_seed), it is a setting of its own."""
    from fedbus.experiments.grouping import scenario_settings

    assert "data_seed" not in scenario_settings({"seed": 2, "data_seed": 2, "clients": {"count": 3}})
    assert scenario_settings({"seed": 2, "data_seed": 7})["data_seed"] == 7
