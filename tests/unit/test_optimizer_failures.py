"""Whatever a client's optimizer raises fails that round only, in the simulator as over MQTT
(tests/integration/test_federation.py has the asyncio worker's side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedbus.client.optimizer import LocalOutcome, SurrogateOptimizer, make_optimizer
from fedbus.errors import EngineError, failure_text
from fedbus.protocol.messages import DataSpec
from fedbus.scenario import scenario_from_mapping
from fedbus.sim.run import simulate


@pytest.mark.parametrize(("exc", "reason"), [
    (EngineError("HTTP 500 after 2 attempts"), "HTTP 500 after 2 attempts"),
    (RuntimeError("a bug"), "RuntimeError: a bug"),
    (ModuleNotFoundError("No module named 'textgrad'"), "ModuleNotFoundError: No module named 'textgrad'"),
    (KeyError("x"), "KeyError: 'x'"),
    (ValueError(), "ValueError"),
    (EngineError(), "EngineError"),
])
def test_failure_text_names_the_type_unless_an_engine_error_says_why(exc: Exception, reason: str) -> None:
    """An EngineError's message is the reason; anything else (a bug) is named by its type too."""
    assert failure_text(exc) == reason


class BrokenInRoundOne(SurrogateOptimizer):
    """The surrogate, with a bug that shows in round 1 only."""

    def optimize_now(self, prompt: str, *, round: int, steps: int, batch_size: int) -> LocalOutcome:
        if round == 1:
            raise RuntimeError("a bug in the optimizer")
        return super().optimize_now(prompt, round=round, steps=steps, batch_size=batch_size)


def test_the_simulator_fails_the_round_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """client-0's optimizer raises in round 1: it reports the failure, so round 1 closes at once without it
    (answered, not missing), and it is back in round 2."""
    def make(engine: str, spec: DataSpec, client: str, shard: int | None) -> SurrogateOptimizer:
        optimizer = make_optimizer(engine, spec, client, shard)
        assert isinstance(optimizer, SurrogateOptimizer)
        if client != "client-0":
            return optimizer
        return BrokenInRoundOne(spec, 0 if shard is None else shard, client)

    monkeypatch.setattr("fedbus.client.optimizer.make_optimizer", make)
    scenario = scenario_from_mapping({
        "name": "broken-optimizer", "seed": 3, "rounds": 2,
        "task": {"train_size": 40, "val_size": 10, "test_size": 10},
        "clients": {"count": 2, "local_steps": 1, "batch_size": 3},
        "participation": {"min_clients": 2, "min_updates": 1, "round_deadline_s": 30, "join_timeout_s": 30},
    })
    summary = simulate(scenario, tmp_path, progress=False)
    assert summary["status"] == "completed"
    first, second = summary["rounds"]
    assert [a["client"] for a in first["accepted"]] == ["client-1"] and first["missing"] == []
    assert first["close_reason"] == "all-answered" and first["rejected"] == []
    assert [(f["client"], f["round"], f["reason"], f["detail"]) for f in first["failed"]] == [
        ("client-0", 1, "client-failed", "RuntimeError: a bug in the optimizer")]
    assert summary["clients"]["client-0"]["failed"] == 1 and summary["totals"]["failures_reported"] == 1
    assert sorted(a["client"] for a in second["accepted"]) == ["client-0", "client-1"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "local-failed"]
    assert [(e["client"], e["round"], e["detail"]) for e in failed] == [
        ("client-0", 1, "RuntimeError: a bug in the optimizer")]
