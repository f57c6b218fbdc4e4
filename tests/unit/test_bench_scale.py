"""bench/scale.py's pure parts: the rows and their selection, the generated scenarios, reading a run's timing,
medians and ratios, the issue's targets, and the tables. Nothing here starts a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import scale
from fedbus.scenario import scenario_from_mapping
from tests.conftest import ROOT


def row(name: str) -> scale.Row:
    return next(r for r in scale.default_rows() if r.name == name)


def ok(label: str, **fields: float | int | None) -> scale.Measurement:
    base: dict[str, object] = {"rounds": 3, "wall_s": 10.0, "cpu_s": 8.0, "peak_bytes": 100 * scale.MIB}
    return scale.Measurement(label=label, **{**base, **fields})  # type: ignore[arg-type]


def test_default_rows_cover_sizes_fractions_backends_and_the_virtual_populations() -> None:
    """18 real rows (3 sizes x 2 fractions x 3 backends, 5 rounds up to 100 clients, 3 at 1,000) and three virtual
    --simulate rows of 100 participants per round for 10 rounds."""
    rows = scale.default_rows()
    real = [r for r in rows if not r.virtual]
    assert len(real) == 18 and len({r.name for r in rows}) == len(rows) == 21
    assert {r.rounds for r in real if r.clients <= 100} == {5} and {r.rounds for r in real if r.clients == 1000} == {3}
    virtual = [r for r in rows if r.virtual]
    assert [r.clients for r in virtual] == [10_000, 100_000, 1_000_000]
    assert all(r.backend == "simulate" and r.rounds == 10 and r.per_round == 100 for r in virtual)
    assert row("n1000-f0.1-embedded").per_round == 100 and row("n10-f0.1-mosquitto").per_round == 1


def test_only_picks_a_client_count_a_glob_or_all_terms_of_a_comma_list() -> None:
    """A bare number is a client count (10 is not 100), anything else a glob over names; commas AND, repeats OR."""
    rows = scale.default_rows()
    names = [r.name for r in scale.select_rows(rows, ["10"])]
    assert names == ["n10-f0.1-embedded", "n10-f0.1-mosquitto", "n10-f0.1-simulate", "n10-f1-embedded",
                     "n10-f1-mosquitto", "n10-f1-simulate"]
    assert [r.name for r in scale.select_rows(rows, ["1000,f1-,embedded"])] == ["n1000-f1-embedded"]
    assert len(scale.select_rows(rows, ["virtual", "n10-f1-simulate"])) == 4
    assert scale.select_rows(rows, []) == rows and scale.select_rows(rows, ["nothing-like-this"]) == []


SAMPLE = [*[r.name for r in scale.default_rows() if not r.virtual][::5], "n1000000-virtual-simulate"]


@pytest.mark.parametrize("name", SAMPLE)
def test_generated_scenarios_are_valid_and_carry_the_workload(name: str) -> None:
    """Each row's YAML loads as a scenario with the issue's workload (surrogate, concat, 1 step, batch 1,
    train_size 2 x N, a prompt of exactly --prompt-chars characters) and its N, fraction and rounds."""
    r = row(name)
    doc = yaml.safe_load(scale.scenario_yaml(scale.scenario_doc(r, prompt_chars=2048)))
    scenario = scenario_from_mapping(doc, source=name)
    assert scenario.engine == "surrogate" and scenario.aggregation.strategy == "concat"
    assert (scenario.clients.count, scenario.rounds, scenario.participation.fraction) == (r.clients, r.rounds,
                                                                                           r.fraction)
    assert (scenario.clients.local_steps, scenario.clients.batch_size) == (1, 1)
    assert scenario.data.train_size == 2 * r.clients
    assert len(scenario.initial_prompt) == scenario.aggregation.max_prompt_chars == 2048
    assert scenario.clients.population == ("virtual" if r.virtual else "auto")


def test_the_deployment_scenario_has_only_remote_clients() -> None:
    """--deployment: no clients of the run's own, 10 remote ones it waits for."""
    doc = scale.scenario_doc(scale.Row(clients=10, fraction=1.0, backend="embedded", rounds=5), remote=10)
    scenario = scenario_from_mapping(doc)
    assert (scenario.clients.count, scenario.clients.remote, scenario.participation.min_clients) == (0, 10, 10)


def test_run_facts_reads_connect_and_rounds_wall_from_a_real_run() -> None:
    """connect = last `connected` minus `run-started`; rounds = `run-finished` minus the first `round-opened`;
    participant-rounds = the rounds' `selected` summed; under --simulate (virtual t) only the summary counts."""
    summary = {"status": "completed", "rounds": [{"selected": ["a", "b"], "accepted": [{}, {}]},
                                                 {"selected": ["a"], "accepted": [{}]}],
               "simulated": {"virtual_s": 120.5}}
    events = [{"event": "run-started", "t": 0.5}, {"event": "connected", "t": 1.5}, {"event": "connected", "t": 1.0},
              {"event": "round-opened", "t": 2.0}, {"event": "round-opened", "t": 3.0},
              {"event": "run-finished", "t": 4.5}]
    facts = scale.run_facts(summary, events, clock_is_wall=True)
    assert facts["connect_s"] == pytest.approx(1.0) and facts["rounds_wall_s"] == pytest.approx(2.5)
    assert (facts["participant_rounds"], facts["accepted"], facts["rounds_closed"]) == (3, 3, 2)
    simulated = scale.run_facts(summary, events, clock_is_wall=False)
    assert simulated["rounds_wall_s"] is None and simulated["connect_s"] is None and simulated["virtual_s"] == 120.5
    assert scale.tail_rounds_wall([(10.0, "round-opened"), (11.0, "round-opened"), (12.5, "run-finished")]) == 2.5
    assert scale.tail_rounds_wall([(10.0, "round-opened")]) is None


def test_measurement_derives_per_client_cost_per_round_wall_and_speedup() -> None:
    """ms/client/round = rounds wall / participant-rounds; per-round wall = rounds wall / rounds; speedup = virtual
    seconds / wall seconds."""
    m = ok("x", rounds_wall_s=6.0, rounds_cpu_s=9.0, participant_rounds=3000, virtual_s=5000.0)
    assert m.ms_per_client_round == pytest.approx(2.0) and m.round_wall_s == pytest.approx(2.0)
    assert m.cpu_ms_per_client_round == pytest.approx(3.0)
    assert m.speedup == pytest.approx(500.0)
    assert ok("y").ms_per_client_round is None and ok("y").speedup is None and ok("y").cpu_ms_per_client_round is None


def test_combine_takes_medians_of_successes_and_reports_a_failure_only_if_all_failed() -> None:
    """The median of K repeats ignores failed repeats; all failed: the first failure's first line."""
    runs = [ok("r", wall_s=1.0), scale.failed("r", "\n  boom\nmore"), ok("r", wall_s=3.0), ok("r", wall_s=2.0)]
    assert scale.combine(runs).wall_s == 2.0 and scale.combine(runs).ok
    only = scale.combine([scale.failed("r", "clients.population: unknown key\nsecond line")])
    assert not only.ok and only.error == "clients.population: unknown key"


def test_paired_ratios_are_medians_of_pairs() -> None:
    """Each fedbus run against the Flower run just after it; pairs with a failure are skipped."""
    ours = [ok("a", wall_s=1.0, cpu_s=1.0), ok("a", wall_s=2.0, cpu_s=1.0), scale.failed("a", "x")]
    theirs = [ok("b", wall_s=10.0, cpu_s=4.0), ok("b", wall_s=10.0, cpu_s=2.0), ok("b", wall_s=1.0, cpu_s=1.0)]
    wall, cpu = scale.paired_ratios(ours, theirs) or (0.0, 0.0)
    assert wall == pytest.approx(0.15) and cpu == pytest.approx(0.375)
    assert scale.paired_ratios([scale.failed("a", "x")], theirs) is None
    # memory: a pair where either side could not read PSS (0) is left out of that ratio only
    ours = [ok("a", peak_pss_bytes=10.0), ok("a", peak_pss_bytes=0.0), ok("a", peak_pss_bytes=30.0)]
    theirs = [ok("b", peak_pss_bytes=100.0), ok("b", peak_pss_bytes=100.0), ok("b", peak_pss_bytes=100.0)]
    both = scale.paired_all(ours, theirs)
    assert both.pss == pytest.approx(0.2) and both.rss == pytest.approx(1.0) and both.wall == pytest.approx(1.0)
    assert scale.paired_all(ours, [ok("b", peak_pss_bytes=0.0)] * 3).pss is None


def test_targets_met_not_met_and_not_measured() -> None:
    """Each of the issue's targets is judged on its row; a row that did not run here is 'not measured', one that
    ran and failed is 'NOT met' (a failure is no excuse)."""
    results = {
        "n1000-f1-embedded": ok("n1000-f1-embedded", rounds_wall_s=1.5, rounds_cpu_s=3.3, participant_rounds=3000,
                                connect_s=4.0),
        "n10000-virtual-simulate": ok("n10000-virtual-simulate", rounds=10, rounds_wall_s=1.0),
        "n100000-virtual-simulate": ok("n100000-virtual-simulate", rounds=10, rounds_wall_s=1.2),
        "n1000000-virtual-simulate": ok("n1000000-virtual-simulate", rounds=10, rounds_wall_s=1.4, wall_s=30.0,
                                        peak_bytes=3 * scale.GIB, virtual_s=600.0),
    }
    deployment = scale.Ratios(wall=0.04, cpu=0.1, rss=0.12, pss=0.2)
    verdicts = {t.goal: t.verdict
                for t in scale.check_targets(results, {"n1000-f1-embedded": (0.2, 0.6)}, deployment)}
    assert verdicts == {
        "wall <= 0.25 x Flower": "met", "CPU <= 0.5 x Flower": "NOT met",
        "<= 1 ms (wall) per client per round after connect": "met",
        "1,000 connections up in <= 3 s": "NOT met",
        "wall <= 60 s": "met", "peak memory <= 2 GiB": "NOT met", ">= 1000 x faster than simulated time": "NOT met",
        "per-round wall within 1.5x of each other": "met",
        "wall <= 0.05 x Flower Deployment Engine": "met",
        "memory <= 0.15 x Flower Deployment Engine (peak PSS summed)": "NOT met"}
    targets = {t.goal: t for t in scale.check_targets(results, {}, deployment)}
    assert targets["memory <= 0.15 x Flower Deployment Engine (peak PSS summed)"].measured == \
        "0.200x (RSS summed: 0.120x)"
    assert targets["<= 1 ms (wall) per client per round after connect"].measured == \
        "0.50 ms (CPU 1.10 ms, every process)"
    # a deployment that ran and failed on fedbus's side is NOT met; one not run here is not measured
    results["deployment-n10/fedbus"] = scale.failed("deployment-n10/fedbus", "the aggregator did not start")
    verdicts = {t.goal: t.verdict for t in scale.check_targets(results, {})}
    assert verdicts["wall <= 0.05 x Flower Deployment Engine"] == "NOT met"
    del results["deployment-n10/fedbus"]
    verdicts = {t.goal: t.verdict for t in scale.check_targets(results, {})}
    assert verdicts["wall <= 0.05 x Flower Deployment Engine"] == "not measured"
    results["n1000000-virtual-simulate"] = scale.failed("n1000000-virtual-simulate", "unknown key")
    targets = {t.goal: t for t in scale.check_targets(results, {})}
    assert targets["wall <= 0.25 x Flower"].verdict == "not measured"  # no Flower here: not run
    for goal in ("wall <= 60 s", "per-round wall within 1.5x of each other"):
        assert targets[goal].verdict == "NOT met" and "unknown key" in targets[goal].measured
    del results["n1000000-virtual-simulate"]
    assert {t.goal: t.verdict for t in scale.check_targets(results, {})}["wall <= 60 s"] == "not measured"


def test_a_degraded_run_is_no_measurement_and_failures_are_counted() -> None:
    """The workload has no faults: a round that did not aggregate, a participant whose update was not accepted
    or a client process that died makes the run fail (it would look cheaper than the other side's); the median
    of repeats says how many failed; a traceback's error is its last line."""
    summary: dict[str, Any] = {"status": "completed", "rounds": [
        {"status": "aggregated", "selected": ["a", "b"], "accepted": [{"id": "1"}, {"id": "2"}]}]}
    facts = scale.run_facts(summary, [], clock_is_wall=False)
    assert scale.degradation(summary, facts) == ""
    summary["rounds"][0]["accepted"].pop()
    assert "1 updates accepted of 2" in scale.degradation(summary, scale.run_facts(summary, [], clock_is_wall=False))
    summary["rounds"][0]["accepted"].append({"id": "2"})
    summary["client_processes_died"] = [{"worker": 1}]
    assert "died" in scale.degradation(summary, scale.run_facts(summary, [], clock_is_wall=False))
    summary["rounds"][0]["status"] = "no-quorum"
    assert "no-quorum" in scale.degradation(summary, scale.run_facts(summary, [], clock_is_wall=False))
    median = scale.combine([ok("n10-f1-embedded"), scale.failed("n10-f1-embedded", "boom"), ok("n10-f1-embedded")])
    assert median.ok and median.failed_runs == 1 and "1 of the runs failed" in scale.cells(median)[0]
    assert scale.failed("x", "Traceback (most recent call last):\n  File ...\nKeyError: 'a'").error == "KeyError: 'a'"


def test_tables_align_columns_and_let_a_failure_run_on() -> None:
    """Text: one line per row, equal widths; a failed row prints 'failed: <error>'; markdown pads short rows."""
    rows = [scale.cells(ok("n10-f1-embedded", connect_s=0.05)), scale.cells(scale.failed("n1000000-virtual", "no"))]
    text = scale.text_table(scale.COLUMNS, rows).splitlines()
    assert len(text) == 3 and len(text[0]) == len(text[1])
    assert text[2].split() == ["n1000000-virtual", "failed:", "no"]
    markdown = scale.markdown_table(scale.COLUMNS, rows).splitlines()
    assert markdown[0].startswith("| row | wall s |") and all(line.count("|") == len(scale.COLUMNS) + 1
                                                             for line in markdown)


TREE_CHECK = """
import json, os, sys, time
from bench import scale
assert scale.become_subreaper()
tree = scale.Tree(interval=0.02, pss_interval=10.0)
events = sys.argv[1]
burn = ("import time; t = time.process_time()\\nwhile time.process_time() - t < 0.3: pass\\n"
        "open(EVENTS, 'a').write('{\\"event\\":\\"round-opened\\"}\\\\n')\\n"
        "time.sleep(1.0)\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass\\n"
        "open(EVENTS, 'a').write('{\\"event\\":\\"run-finished\\"}\\\\n')").replace("EVENTS", repr(events))
spawn = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {burn!r}])"
with scale.measured(tree) as cost:
    tree.tail(scale.Path(events))
    tree.popen([sys.executable, "-c", spawn]).wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and scale.descendants(scale.process_table(), os.getpid()):
        tree.reap(scale.process_table())
        time.sleep(0.02)
left = scale.descendants(scale.process_table(), os.getpid())
print(json.dumps({"cpu_s": cost[0].cpu_s, "peak_bytes": cost[0].peak_bytes, "pss": cost[0].peak_pss_bytes,
                  "window": cost[0].rounds_cpu_s, "left": left}))
"""


def test_the_tree_counts_the_cpu_of_an_orphaned_grandchild(tmp_path: Path) -> None:
    """A child that starts a grandchild and exits at once: the grandchild, reparented to the benchmark (a child
    subreaper), still counts in CPU, and nothing is left afterwards; its peak RSS and PSS are read, and the CPU it
    spent between the round-opened and run-finished lines it writes to the tailed events file (0.4 s of its 0.7)
    is the rounds' CPU (a second's sleep after round-opened: a loaded machine's tail may see the line late). In a
    subprocess, to keep pytest no subreaper."""
    done = subprocess.run([sys.executable, "-c", TREE_CHECK, str(tmp_path / "events.jsonl")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cpu_s"] >= 0.7 and result["peak_bytes"] > 0 and result["left"] == []
    assert 0 < result["pss"] <= result["peak_bytes"]
    assert result["window"] is not None and 0.35 <= result["window"] < 0.65


def test_vs_flower_without_flower_says_how_to_install_and_exits_2(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--vs-flower where flwr is not importable: one message naming `pip install -e '.[bench]'`, exit code 2."""
    monkeypatch.setattr(scale, "flower_available", lambda: "not importable: flwr, ray")
    assert scale.main(["--vs-flower", "--only", "10"]) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


def test_the_header_names_the_cpu_generation_and_its_single_core_yardstick(capsys: pytest.CaptureFixture[str],
                                                                           tmp_path: Path) -> None:
    """Absolute figures differ threefold between machines of one kind: the report says which CPU (family and model
    where the name is only 'AMD EPYC') and how fast one core ran a fixed Python loop."""
    speed = scale.yardstick_ms(repeats=1)
    assert 0 < speed < 60_000
    host = scale.machine()
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    if "cpu family" in cpuinfo:
        assert "family" in host["cpu_model"] and "MHz" in host["cpu_model"]
    report = scale.Report(rows=[], flower={}, deployment=[], targets=[])
    scale.print_report(report, scale.Settings(workdir=tmp_path, yardstick_ms=speed), markdown=False)
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("Measured on ") and f"single-core yardstick {speed:.1f} ms" in header
