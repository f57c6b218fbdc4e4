"""The simulator replays exactly: same scenario and seed, same bytes in events.jsonl."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedbus.errors import EngineError
from fedbus.scenario import load_scenario
from fedbus.sim.run import simulate
from tests.conftest import ROOT
from tests.waiting import wait_until

# The scenarios with the most randomness in them: latency draws, dropouts, crashes, link faults, async merges.
REPLAYED = ["dropouts", "lossy-network", "partition", "fully-async", "partial-participation"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", REPLAYED)
def test_same_scenario_and_seed_give_byte_identical_events(name: str, tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    first = simulate(scenario, tmp_path / "a", progress=False)
    second = simulate(scenario, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "events.jsonl").read_bytes() == (tmp_path / "b" / "events.jsonl").read_bytes()
    assert first["rounds"] == second["rounds"]
    assert first["final"] == second["final"]
    assert first["totals"]["events"] > 50


def simulate_in_a_process(name: str, out: Path, hash_seed: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run([sys.executable, "-m", "fedbus", "run", f"scenarios/{name}.yaml", "--simulate", "--quiet",
                             "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                            check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return (out / "events.jsonl").read_bytes()


@pytest.mark.parametrize("name", ["lossy-network", "hostile-clients", "buffered-async"])
def test_replay_is_exact_across_processes_and_hash_seeds(name: str, tmp_path: Path) -> None:
    """Two `fedbus run --simulate` processes with different PYTHONHASHSEED write the same events.jsonl bytes
    (no set or dict order leaks into a decision)."""
    first = simulate_in_a_process(name, tmp_path / "a", "1")
    second = simulate_in_a_process(name, tmp_path / "b", "2")
    assert first.count(b"\n") > 50
    assert first == second


def test_another_seed_gives_another_run(tmp_path: Path) -> None:
    path = ROOT / "scenarios" / "lossy-network.yaml"
    simulate(load_scenario(path), tmp_path / "a", progress=False)
    simulate(load_scenario(path, seed=12345), tmp_path / "b", progress=False)
    assert digest(tmp_path / "a" / "events.jsonl") != digest(tmp_path / "b" / "events.jsonl")


def test_events_carry_virtual_time(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "stragglers.yaml")
    summary = simulate(scenario, tmp_path, progress=False)
    times = [json.loads(line)["t"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert times == sorted(times), "virtual time never runs backwards"
    assert 0 < times[-1] <= summary["simulated"]["virtual_s"]
    # a straggler scenario spans minutes of simulated time and takes well under that in wall time
    assert summary["simulated"]["virtual_s"] > 60
    assert summary["totals"]["wall_s"] < summary["simulated"]["virtual_s"]


def test_the_simulator_refuses_a_real_engine(tmp_path: Path) -> None:
    scenario = dataclasses.replace(load_scenario(ROOT / "scenarios" / "quickstart.yaml"), engine="openai")
    with pytest.raises(EngineError, match="surrogate"):
        simulate(scenario, tmp_path, progress=False)


LONG_SIMULATION = """\
name: long-simulation
seed: 5
engine: surrogate
rounds: 100000
task: {name: surrogate-skills, train_size: 200000}
clients: {count: 100000, population: virtual}
participation: {fraction: 0.0002}
aggregation: {strategy: concat}
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_simulation_leaves_its_rounds_in_an_interrupted_summary(sig: signal.Signals,
                                                                               tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM in the middle of a simulation: exit 130, summary.json with status 'interrupted' and the
    rounds closed so far (they left events.jsonl alone, and SIGTERM a bare exit 143), and a line saying the
    simulation is run again rather than resumed."""
    scenario, out = tmp_path / "long.yaml", tmp_path / "run"
    scenario.write_text(LONG_SIMULATION, encoding="utf-8")
    run = subprocess.Popen([sys.executable, "-m", "fedbus", "run", str(scenario), "--simulate", "--quiet", "--out",
                            str(out)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    events = out / "events.jsonl"
    wait_until(lambda: run.poll() is not None or (events.exists() and b'"round-closed"' in events.read_bytes()),
               "a round to close")
    run.send_signal(sig)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "run it again" in stderr and f"so far are in {out / 'summary.json'}" in stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "interrupted" and "not resumed" in summary["reason"]
    assert 1 <= len(summary["rounds"]) < 100000 and summary["totals"]["rounds_closed"] == len(summary["rounds"])
