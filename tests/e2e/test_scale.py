"""Correctness at scale: 1,000 clients over the embedded broker, and a virtual population of 100,000 in the
simulator, each aggregating every round with no update lost. (Speed is bench/scale.py's, not a test's.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.test_scenarios import assert_no_update_lost

VIRTUAL = """\
name: virtual-100k
seed: 11
engine: surrogate
rounds: 4
initial_prompt: "Answer the question. End with 'Answer: N'."
task: {name: surrogate-skills, train_size: 200000, val_size: 40, test_size: 40, partition: by-skill}
clients:
  local_steps: 1
  batch_size: 1
  groups:
    - {name: phone, count: 90000, latency: {kind: lognormal, median_s: 20, sigma: 0.5},
       availability: {dropout_p: 0.1}}
    - {name: noisy, count: 10000, behaviour: noisy}
participation: {fraction: 0.001, min_clients: 50, min_updates: 50, round_deadline_s: 300}
aggregation: {strategy: concat, max_prompt_chars: 40000}
"""

REAL_BUS = """\
name: thousand
seed: 5
engine: surrogate
rounds: 2
time_scale: 50
initial_prompt: "Answer the question. End with 'Answer: N'."
task: {name: surrogate-skills, train_size: 2000, val_size: 40, test_size: 40}
clients: {count: 1000, local_steps: 1, batch_size: 1}
participation: {fraction: 1.0, min_clients: 1000, min_updates: 1000, round_deadline_s: 6000, join_timeout_s: 12000}
aggregation: {strategy: concat, max_prompt_chars: 2000}
"""

# Runs fedbus in this interpreter and prints its peak resident memory (KiB) last.
MEASURED = ("import resource, sys\nfrom fedbus.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(status)\n")


def run(args: list[str], timeout: float) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-c", MEASURED, "run", *args, "--quiet"], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.split()[-1]), result.stdout


def results(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), events


def assert_every_round_aggregated(summary: dict[str, Any]) -> None:
    rounds = summary["rounds"]
    assert summary["status"] == "completed", summary["reason"]
    assert [r["status"] for r in rounds] == ["aggregated"] * summary["scenario"]["rounds"]
    assert [r["version_after"] for r in rounds] == list(range(1, len(rounds) + 1))


@pytest.mark.slow
def test_a_virtual_population_of_100000_aggregates_every_round_in_bounded_memory(tmp_path: Path) -> None:
    scenario = tmp_path / "virtual.yaml"
    scenario.write_text(VIRTUAL, encoding="utf-8")
    peak_kib, _ = run(["--simulate", str(scenario), "--out", str(tmp_path / "a")], timeout=300)
    summary, events = results(tmp_path / "a")
    assert_every_round_aggregated(summary)
    assert_no_update_lost(summary, events)
    assert summary["simulated"]["population"] == "virtual"
    selected = [c for r in summary["rounds"] for c in r["selected"]]
    assert all(len(r["selected"]) == 100 for r in summary["rounds"])
    assert summary["simulated"]["clients_instantiated"] == len(set(selected))  # only the ones selected exist
    assert any(c.startswith("noisy-") for c in selected) and any(c.startswith("phone-") for c in selected)
    dropouts = [e for e in events if e["event"] == "dropout"]
    assert dropouts, "no phone skipped a round (dropout_p 0.1 over ~360 phone tasks)"
    assert all(r["missing"] or r["dropped"] or len(r["accepted"]) == 100 for r in summary["rounds"])
    assert set(summary["clients"]) == set(selected)  # per-client records of those that took part, not 100,000
    # Eagerly, 100,000 clients with their sessions and shards take gigabytes: a virtual one stays small.
    assert peak_kib < 1024 * 1024, f"peak memory {peak_kib} KiB"
    run(["--simulate", str(scenario), "--out", str(tmp_path / "b")], timeout=300)  # same seed, same bytes
    assert (tmp_path / "a" / "events.jsonl").read_bytes() == (tmp_path / "b" / "events.jsonl").read_bytes()


@pytest.mark.slow
def test_a_thousand_clients_over_the_embedded_broker_aggregate_every_round(tmp_path: Path) -> None:
    scenario = tmp_path / "thousand.yaml"
    scenario.write_text(REAL_BUS, encoding="utf-8")
    run([str(scenario), "--out", str(tmp_path / "run")], timeout=600)
    summary, events = results(tmp_path / "run")
    assert_every_round_aggregated(summary)
    assert all(len(r["accepted"]) == 1000 for r in summary["rounds"])
    assert_no_update_lost(summary, events)
