"""Parity: the simulator and the MQTT runtime drive the same sessions, so without timing-dependent conditions
they take the same decisions: the same updates accepted and rejected in each round, the same global prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedbus.runtime.run import RunOptions, run_scenario
from fedbus.scenario import Scenario, load_scenario, scenario_from_mapping
from fedbus.sim.run import simulate
from tests.conftest import ROOT

# Conditions whose outcome does not depend on how fast a machine is: seeded partial participation, clients
# that skip rounds, noisy, hostile and replaying clients, all answering at once; a round waits for every
# participant, and a deadline only ends rounds that a skipping or replaying client leaves open (300 simulated
# seconds = 3 wall seconds here, far beyond the milliseconds an answer takes).
CONDITIONS = {
    "name": "parity", "seed": 41, "engine": "surrogate", "rounds": 3, "time_scale": 100,
    "task": {"name": "surrogate-skills", "train_size": 60, "val_size": 20, "test_size": 20},
    "clients": {"local_steps": 2, "batch_size": 3, "groups": [
        {"name": "honest", "count": 4, "availability": {"dropout_p": 0.25}},
        {"name": "noisy", "count": 1, "behaviour": "noisy", "noise": 0.5},
        {"name": "hostile", "count": 1, "behaviour": "hostile"},
        {"name": "replayer", "count": 1, "behaviour": "stale"},
    ]},
    "participation": {"fraction": 0.75, "min_clients": 4, "min_updates": 1, "round_deadline_s": 300,
                      "join_timeout_s": 3000},
    "aggregation": {"strategy": "concat", "max_prompt_chars": 12000},
}


def decisions(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round: who was selected, which updates entered the aggregate, which were rejected and why, and the
    resulting global prompt's size and accuracy."""
    return [{"round": r["round"], "status": r["status"], "selected": r["selected"],
             "accepted": sorted((a["client"], a["id"], a["base_version"], a["prompt_chars"]) for a in r["accepted"]),
             "rejected": sorted((x["client"], x["id"], x["reason"]) for x in r["rejected"]),
             "dropped": r["dropped"], "prompt_chars": r["global_prompt_chars"], "val_accuracy": r["val_accuracy"]}
            for r in summary["rounds"]]


async def both(scenario: Scenario, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    simulated = simulate(scenario, tmp_path / "sim", progress=False)
    over_mqtt = await run_scenario(scenario, RunOptions(out_dir=tmp_path / "mqtt", progress=False, workers=0))
    return simulated, over_mqtt


@pytest.mark.parametrize("name", ["quickstart", "conditions"])
async def test_simulator_and_mqtt_runtime_decide_alike(name: str, tmp_path: Path) -> None:
    """Same scenario and seed, perfect network: both drivers accept and reject the same updates per round and
    end with the same global prompt."""
    if name == "quickstart":
        scenario = load_scenario(ROOT / "scenarios" / "quickstart.yaml")
    else:
        scenario = scenario_from_mapping(CONDITIONS)
    simulated, over_mqtt = await both(scenario, tmp_path)
    assert simulated["status"] == over_mqtt["status"] == "completed"
    assert over_mqtt["broker"]["kind"] == "embedded-rumqttd" and simulated["broker"]["kind"] == "simulated"
    assert decisions(simulated) == decisions(over_mqtt)
    assert simulated["final"]["prompt"] == over_mqtt["final"]["prompt"]
    assert simulated["final"]["test_accuracy"] == over_mqtt["final"]["test_accuracy"]
    if name == "conditions":  # the conditions did act, or the comparison proves little
        rejected = {x[2] for r in decisions(simulated) for x in r["rejected"]}
        assert "stale-round" in rejected
        assert any(len(r["selected"]) < 7 for r in decisions(simulated)), "participation was not partial"
        assert sum(len(r["accepted"]) for r in decisions(simulated)) < sum(
            len(r["selected"]) for r in decisions(simulated)), "nobody skipped a round"


def test_the_conditions_scenario_round_trips() -> None:
    """The parity scenario is a valid scenario file as written (it could be shipped as YAML)."""
    scenario = scenario_from_mapping(yaml.safe_load(yaml.safe_dump(CONDITIONS)))
    assert scenario.clients.count == 7
