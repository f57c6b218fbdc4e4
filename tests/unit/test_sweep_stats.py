"""fedbus.experiments' pure parts: the Student-t interval, the grid and seed expansion, overrides and their
validation (naming the YAML path), grouping runs by their varied settings, timelines, rejection counts and cost."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest

from fedbus.errors import ScenarioError
from fedbus.experiments.costs import NO_TOKEN_COUNTS, Price, cost_estimate, parse_prices, run_cost
from fedbus.experiments.grid import apply_overrides, expand, parse_grid, parse_seeds, parse_value, run_id, short_names
from fedbus.experiments.grouping import (
    RunRecord,
    against,
    final_estimate,
    final_test_accuracy,
    flatten,
    group_runs,
    numeric_keys,
    rejection_counts,
    round_series,
    timeline,
    val_accuracy,
    varied_keys,
)
from fedbus.experiments.page import Image, Table, render
from fedbus.experiments.stats import Estimate, mean_ci, t_cdf, t_quantile
from fedbus.experiments.sweep import plan
from fedbus.scenario.loader import read_yaml
from tests.conftest import ROOT

# ------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423),
                                              (120, 1.9799)])
def test_t_quantile_matches_the_printed_table(df: int, expected: float) -> None:
    """t(0.975, df) agrees with the standard two-sided 95% table to 4 decimals."""
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-5)


def test_t_cdf_known_values_and_symmetry() -> None:
    """df=1 is the Cauchy distribution (P(T<=1) = 3/4); the CDF is 1/2 at 0 and symmetric."""
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    assert t_cdf(0.0, 7) == 0.5
    assert t_cdf(-1.3, 5) == pytest.approx(1 - t_cdf(1.3, 5), abs=1e-12)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4), abs=1e-9)
    assert t_quantile(0.995, 1) == pytest.approx(63.6567, abs=5e-4)


def test_mean_ci_of_known_samples() -> None:
    """mean ± t(0.975, n-1)·s/√n: [1..5] gives 3 ± 2.7764·1.5811/2.2361; [0.2, 0.4] gives 0.3 ± 12.7062·0.1."""
    five = mean_ci([1, 2, 3, 4, 5])
    assert five is not None and five.mean == 3.0 and five.n == 5
    assert five.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), abs=1e-6)
    two = mean_ci([0.2, 0.4])
    assert two is not None and two.mean == pytest.approx(0.3)
    assert two.half_width == pytest.approx(1.270620, abs=1e-5)
    assert (two.low, two.high) == pytest.approx((0.3 - 1.270620, 0.3 + 1.270620), abs=1e-5)
    same = mean_ci([0.5, 0.5, 0.5])
    assert same is not None and same.half_width == 0.0
    ninety = mean_ci([1, 2, 3, 4, 5], confidence=0.90)
    assert ninety is not None and ninety.half_width == pytest.approx(2.131847 * math.sqrt(0.5), abs=1e-5)


def test_one_value_has_no_interval_and_none_has_no_estimate() -> None:
    """One seed: the mean, no half-width, and the text says so; no values: None."""
    one = mean_ci([0.4])
    assert one == Estimate(mean=0.4, half_width=None, n=1)
    assert one.text() == "0.400 (1 seed: no interval)"
    assert mean_ci([]) is None
    assert Estimate(mean=0.41234, half_width=0.031, n=3).text() == "0.412 ± 0.031"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="n must be"):
        Estimate(mean=1.0, half_width=None, n=0)
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(1.0, 3)


# ----------------------------------------------------------------------------------------------- the grid


def test_grid_values_are_yaml_scalars() -> None:
    """--grid values read as YAML: ints, floats, booleans, null and strings."""
    axes = parse_grid(["clients.local_steps=1,2", "aggregation.strategy=concat, summarize",
                       "participation.fraction=0.5,1.0", "clients.strict=true,false"])
    assert [a.key for a in axes] == ["clients.local_steps", "aggregation.strategy", "participation.fraction",
                                     "clients.strict"]
    assert axes[0].values == (1, 2) and axes[1].values == ("concat", "summarize")
    assert axes[2].values == (0.5, 1.0) and axes[3].values == (True, False)
    assert parse_value("null") is None
    with pytest.raises(ValueError, match="not a YAML scalar"):
        parse_value("{a: 1}")


def test_grid_mistakes_are_all_named_at_once() -> None:
    """A bad option, the seed, a repeated key, a repeated value, an empty value and overlapping keys: one
    ScenarioError listing every problem with the key it concerns."""
    with pytest.raises(ScenarioError) as info:
        parse_grid(["nokey", "bad key=1", "seed=1,2", "rounds=1", "rounds=2", "clients.count=1,1",
                    "clients.batch_size=1,", "clients.local_steps=1,2", "clients=3", "task.name=[a"])
    problems = dict(info.value.problems)
    assert "expected KEY=V1,V2" in problems["nokey"] and "'bad key=1'" in problems[""]
    assert problems["seed"] == "the seed is swept with --seeds, not --grid"
    assert "two --grid options" in problems["rounds"]
    assert "given twice" in problems["clients.count"]
    assert "empty value" in problems["clients.batch_size"]
    assert "not a YAML scalar" in problems["task.name"]
    assert any(path == "clients" and "overlaps" in message for path, message in info.value.problems)
    # the error says "--grid: KEY: ..." once, not "--grid: KEY: --grid value ..."
    assert str(info.value).startswith("--grid: ") and not any(m.startswith("--grid") for _, m in info.value.problems)


@pytest.mark.parametrize(("text", "seeds"), [("1..5", (1, 2, 3, 4, 5)), ("3", (3,)), ("1,3,7", (1, 3, 7)),
                                             ("1..3,9,2", (1, 2, 3, 9)), ("0..0", (0,))])
def test_seeds_expand(text: str, seeds: tuple[int, ...]) -> None:
    """1..5 is inclusive; lists and ranges mix; each seed once, in order given."""
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["5..1", "a", "1..", "-1", "1..100000"])
def test_bad_seeds_are_refused_naming_the_seed(text: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_seeds(text)
    assert info.value.problems[0][0] == "seed"
    assert str(info.value).startswith("--seeds: seed: ") and str(info.value).count("--seeds") == 1, str(info.value)


def test_expansion_is_the_cartesian_product_named_by_the_varied_axes() -> None:
    """Every combination, first axis slowest; names from the axes with two or more values, short key names."""
    cells = expand(parse_grid(["clients.local_steps=1,2", "aggregation.strategy=concat,summarize", "rounds=2"]))
    assert [c.name for c in cells] == ["local_steps-1__strategy-concat", "local_steps-1__strategy-summarize",
                                       "local_steps-2__strategy-concat", "local_steps-2__strategy-summarize"]
    assert cells[1].settings() == {"clients.local_steps": 1, "aggregation.strategy": "summarize", "rounds": 2}
    only = expand(parse_grid(["rounds=2"]))
    assert [(c.name, c.settings()) for c in only] == [("base", {"rounds": 2})]
    assert [c.name for c in expand(())] == ["base"]


def test_short_names_keep_what_tells_keys_apart() -> None:
    assert short_names(["clients.count", "task.count", "rounds"]) == {
        "clients.count": "clients.count", "task.count": "task.count", "rounds": "rounds"}
    assert short_names(["clients.local_steps", "aggregation.strategy"]) == {
        "clients.local_steps": "local_steps", "aggregation.strategy": "strategy"}


def test_overrides_set_nested_keys_and_the_seed_without_touching_the_base() -> None:
    """Dotted keys reach into mappings (made when missing); the seed is set; the base is copied, not changed."""
    base = {"name": "q", "seed": 7, "clients": {"count": 4}}
    doc, problems = apply_overrides(base, [("clients.local_steps", 2), ("aggregation.weighting.a", 0.3)], seed=3)
    assert problems == []
    assert doc == {"name": "q", "seed": 3, "clients": {"count": 4, "local_steps": 2},
                   "aggregation": {"weighting": {"a": 0.3}}}
    assert base == {"name": "q", "seed": 7, "clients": {"count": 4}}


def test_an_override_through_a_non_mapping_names_the_path() -> None:
    _, problems = apply_overrides({"engine": "surrogate"}, [("engine.model", "x")], seed=1)
    assert problems == [("engine.model", "cannot set it: engine is str 'surrogate' in the base scenario, not a "
                                         "mapping (write it as a mapping there)")]


def test_run_ids_name_the_cell_and_stay_valid() -> None:
    cells = expand(parse_grid(["clients.local_steps=1,2"]))
    assert run_id("quickstart", cells[0], 3) == "quickstart-local_steps-1-s3"
    assert run_id("quickstart", expand(())[0], 3) == "quickstart-s3"
    long = expand(parse_grid(["aggregation.strategy=" + "x" * 70]))[0]
    made = run_id("quickstart", long, 12)
    assert len(made) <= 64 and made.startswith("quickstart-") and made.endswith("-s12")


# ---------------------------------------------------------------------------------------- plan validation


def quickstart() -> dict[str, Any]:
    doc = read_yaml(ROOT / "scenarios" / "quickstart.yaml")
    assert isinstance(doc, dict)
    return doc


def test_a_plan_is_every_cell_with_every_seed() -> None:
    runs = plan(quickstart(), parse_grid(["clients.local_steps=1,2"]), [1, 2], simulate=True)
    assert [(r.cell.name, r.seed, r.folder) for r in runs] == [
        ("local_steps-1", 1, "cells/local_steps-1/seed-1"), ("local_steps-1", 2, "cells/local_steps-1/seed-2"),
        ("local_steps-2", 1, "cells/local_steps-2/seed-1"), ("local_steps-2", 2, "cells/local_steps-2/seed-2")]
    assert runs[3].scenario["clients"]["local_steps"] == 2 and runs[3].scenario["seed"] == 2


def test_invalid_keys_and_values_are_named_by_their_yaml_path_once() -> None:
    """An unknown key, a value out of range and --simulate on an LLM engine: each problem once, with its YAML
    path and the cells it is in."""
    with pytest.raises(ScenarioError) as info:
        plan(quickstart(), parse_grid(["clients.local_stepz=1,2", "clients.count=0,2"]), [1, 2], simulate=True,
             source="quickstart.yaml")
    problems = info.value.problems
    assert len(set(problems)) == len(problems)
    by_path = dict(problems)
    assert by_path["clients.local_stepz"].startswith("unknown key") and "(every cell)" in by_path[
        "clients.local_stepz"]
    assert "must be >= 1" in by_path["clients.count"]
    assert "(cells local_stepz-1__count-0, local_stepz-2__count-0)" in by_path["clients.count"]
    with pytest.raises(ScenarioError) as llm:
        plan(read_yaml(ROOT / "scenarios" / "local-llm.yaml"), (), [1], simulate=True)
    assert llm.value.problems[0][0] == "engine" and "surrogate engine only" in llm.value.problems[0][1]


# ------------------------------------------------------------------------------------------------ grouping


def summary(val: list[float], test: float, chars: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    rounds = [{"round": i + 1, "val_accuracy": v, "global_prompt_chars": (chars or [100] * len(val))[i],
               "selected": [], "accepted": [], "rejected": []} for i, v in enumerate(val)]
    return {"rounds": rounds, "final": {"test_accuracy": test, "initial_test_accuracy": 0.1,
                                        "prompt_chars": 500}, **extra}


def run(steps: Any, seed: int, s: dict[str, Any] | None, strategy: str = "concat") -> RunRecord:
    settings = flatten({"name": "q", "seed": seed, "clients": {"local_steps": steps, "count": 4},
                        "aggregation": {"strategy": strategy}, "task": {"name": ["a", "b"]}})
    return RunRecord(folder=f"f{steps}-{seed}", settings=settings, seed=seed, status="completed" if s else "failed",
                     summary=s)


def test_flatten_makes_dotted_keys_and_lists_comparable() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": "[1,2]", "e": "x"}


def test_varied_keys_leave_out_the_seed_and_put_the_grid_first() -> None:
    runs = [run(1, 1, None, "concat"), run(2, 2, None, "summarize"), run(2, 3, None, "concat")]
    settings = [r.settings for r in runs]
    assert varied_keys(settings) == ("clients.local_steps", "aggregation.strategy")
    assert varied_keys(settings, first=["aggregation.strategy"]) == ("aggregation.strategy", "clients.local_steps")
    assert varied_keys([{"a": 1}, {"a": 1, "b": 2}]) == ("b",), "a key missing from one run differs"
    assert varied_keys([{"a": 2}, {"a": 2.0}]) == (), "the grid's 2 and the record's 2.0 are one value"


def test_runs_group_by_their_varied_values_in_order_of_appearance() -> None:
    runs = [run(2, 1, summary([0.5], 0.4)), run(1, 1, summary([0.2], 0.2)), run(2.0, 2, summary([0.7], 0.6))]
    groups = group_runs(runs, ["clients.local_steps"])
    assert [g.values for g in groups] == [(("clients.local_steps", 2),), (("clients.local_steps", 1),)]
    assert [len(g.runs) for g in groups] == [2, 1]
    assert groups[0].label({"clients.local_steps": "local_steps"}) == "local_steps=2"
    assert group_runs(runs, [])[0].label() == "all runs"


def test_round_series_and_final_estimates_are_over_seeds() -> None:
    """Per round: the estimate over the runs that have that round; a failed run adds nothing."""
    runs = [run(1, 1, summary([0.2, 0.4], 0.3)), run(1, 2, summary([0.4, 0.6, 0.9], 0.5)), run(1, 3, None)]
    (group,) = group_runs(runs, ["clients.local_steps"])
    series = round_series(group, val_accuracy)
    assert [(x, e.n) for x, e in series] == [(1.0, 2), (2.0, 2), (3.0, 1)]
    assert series[0][1].mean == pytest.approx(0.3) and series[0][1].half_width == pytest.approx(1.27062, abs=1e-5)
    assert series[2][1].half_width is None
    final = final_estimate(group, final_test_accuracy)
    assert final is not None and final.mean == pytest.approx(0.4) and final.n == 2


def test_accuracy_against_a_numeric_setting_has_a_line_per_other_setting() -> None:
    runs = [run(steps, seed, summary([0.1], 0.1 * steps + 0.01 * seed), strategy)
            for strategy in ("concat", "summarize") for steps in (2, 1) for seed in (1, 2)]
    keys = ("clients.local_steps", "aggregation.strategy")
    assert numeric_keys(runs, keys) == ("clients.local_steps",)
    lines = against(runs, "clients.local_steps", keys, final_test_accuracy)
    assert [s.label for s in lines] == ["strategy=concat", "strategy=summarize"]
    assert [x for x, _ in lines[0].points] == [1.0, 2.0]
    assert lines[0].points[1][1].mean == pytest.approx(0.215)


def test_the_timeline_says_what_each_client_was_in_each_round() -> None:
    record = {"run_id": "r", "clients": {"a": {}, "b": {}, "c": {}, "d": {}},
              "rounds": [{"round": 1, "selected": ["a", "b", "c"], "accepted": [{"client": "a"}],
                          "rejected": [{"client": "b", "reason": "stale-round"}], "failed": [], "dropped": ["c"],
                          "missing": []},
                         {"round": 2, "selected": ["a", "d"], "accepted": [{"client": "a"}], "rejected": [],
                          "failed": [{"client": "d"}], "dropped": [], "missing": []}]}
    line = timeline(record)
    assert line.clients == ("a", "b", "c", "d") and line.rounds == (1, 2)
    assert line.states == (("accepted", "rejected", "dropped", "not selected"),
                           ("accepted", "not selected", "not selected", "failed"))


def test_rejection_reasons_are_counted_over_runs_most_frequent_first() -> None:
    one = {"rounds": [{"rejected": [{"reason": "stale-round"}, {"reason": "duplicate"}]}],
           "rejected_after_last_round": [{"reason": "run-finished"}]}
    two = {"rounds": [{"rejected": [{"reason": "stale-round"}]}, {"rejected": []}]}
    assert rejection_counts([one, two]) == {"stale-round": 2, "duplicate": 1, "run-finished": 1}
    assert rejection_counts([]) == {}


# ---------------------------------------------------------------------------------------------------- cost


def test_cost_is_tokens_times_price_per_million() -> None:
    prices = parse_prices({"qwen": {"input": 0.5, "output": 2}})
    llm = {"llm": {"model": "qwen", "prompt_tokens": 2_000_000, "completion_tokens": 500_000}}
    assert run_cost(llm, prices).value == pytest.approx(2.0)
    assert run_cost({"totals": {"tokens": 5}}, prices).note == NO_TOKEN_COUNTS
    assert run_cost({"llm": {**llm["llm"], "model": "other"}}, prices).note == "no price for other"
    estimate = cost_estimate([llm, llm], prices)
    assert isinstance(estimate, Estimate) and estimate.mean == pytest.approx(2.0) and estimate.half_width == 0
    assert cost_estimate([{"rounds": []}], prices) == NO_TOKEN_COUNTS


def test_a_bad_price_table_names_the_model() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_prices({"a": {"input": -1, "output": 1}, "b": {"input": 1}, "c": 3}, "prices.yaml")
    assert [path for path, _ in info.value.problems] == ["a", "b", "c"]
    assert "must be a number >= 0" in info.value.problems[0][1]
    assert Price(input=0, output=0.25).output == 0.25


# ------------------------------------------------------------------------------------------------------ page


def test_the_page_escapes_text_and_links_images_by_relative_path() -> None:
    page = render(title="t", intro=["a <b> & c"], table=Table(header=("x<y",), rows=(("1 ± 2",),)),
                  images=[Image(file="accuracy.png", heading="Acc", caption="cap")], notes=["n"])
    assert "a &lt;b&gt; &amp; c" in page and "<th>x&lt;y</th>" in page and "<td>1 ± 2</td>" in page
    assert '<img src="accuracy.png"' in page
    assert "http" not in page and "<script" not in page


def test_the_pure_modules_and_the_report_import_no_plotting_or_process_library() -> None:
    """grid, stats, grouping, costs and page load no I/O library; the report and the CLI load matplotlib only
    when they draw (checked in a fresh interpreter)."""
    pure = ["fedbus.experiments.grid", "fedbus.experiments.stats", "fedbus.experiments.grouping",
            "fedbus.experiments.costs", "fedbus.experiments.page"]
    code = (f"import sys, json; [__import__(m) for m in {pure!r}]; "
            "print(json.dumps(sorted(m for m in ('matplotlib', 'subprocess', 'asyncio', 'threading') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    code = ("import sys, fedbus.experiments.report, fedbus.experiments.plots, fedbus.cli; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
