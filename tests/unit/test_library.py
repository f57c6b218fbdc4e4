"""`import fedbus`: an explicit face, custom strategies and optimizers that a run really uses, no network library
loaded by a simulation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

import fedbus
from fedbus.aggregator import strategies
from fedbus.client import optimizer as optimizers
from fedbus.protocol.messages import DataSpec
from tests.conftest import ROOT

QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def shortest(current: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> str:
    """A user's strategy: the shortest client prompt becomes the global prompt."""
    return min((p for _, p in prompts), key=len, default=current)


class Appender:
    """A user's optimizer: appends one sentence naming the client and round; no LLM."""

    engine = "appender"

    def __init__(self, client: str) -> None:
        self.client = client

    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int) -> fedbus.LocalOutcome:
        return fedbus.LocalOutcome(prompt=f"{prompt} {self.client} was here in round {round}.", steps=steps,
                                   accepted_steps=steps, batch_acc_before=0.0, batch_acc_after=0.5, llm_calls=0,
                                   tokens=0)


def appender(client: str, data: DataSpec, shard: int) -> Appender:
    return Appender(client)


@pytest.fixture
def registered() -> Iterator[None]:
    fedbus.register_strategy("shortest", shortest)
    fedbus.register_optimizer("appender", appender)
    yield
    strategies.STRATEGIES.pop("shortest", None)
    optimizers.OPTIMIZERS.pop("appender", None)


def test_the_face_is_explicit() -> None:
    """`fedbus.__all__` names the library's entry points, and each exists."""
    assert {"load_scenario", "Scenario", "run", "simulate", "Strategy", "LocalOptimizer", "register_strategy",
            "register_optimizer"} <= set(fedbus.__all__)
    assert all(hasattr(fedbus, name) for name in fedbus.__all__)


def test_simulate_returns_the_summary() -> None:
    """fedbus.simulate(path) runs the quickstart in virtual time and returns summary.json's content."""
    summary = fedbus.simulate(QUICKSTART)
    assert summary["status"] == "completed" and summary["broker"]["kind"] == "simulated"
    assert len(summary["rounds"]) == 3


def test_a_custom_strategy_and_optimizer_run(registered: None) -> None:
    """A registered strategy and optimizer named in the scenario are the ones the federation uses."""
    base = fedbus.load_scenario(QUICKSTART)
    doc = {"name": "custom", "seed": 3, "rounds": 2, "task": {"name": "surrogate-skills"},
           "initial_prompt": "Answer.", "clients": {"count": 3, "optimizer": "appender"},
           "aggregation": {"strategy": "shortest"}}
    summary = fedbus.simulate(fedbus.scenario_from_mapping(doc))
    assert base.aggregation.strategy == "concat"
    final = summary["final"]["prompt"]
    # round 1: every client appends to "Answer."; shortest wins (all equal length: the first by client order)
    assert final == "Answer. client-0 was here in round 1. client-0 was here in round 2."
    assert summary["scenario"]["clients"]["optimizer"] == "appender"
    assert summary["scenario"]["aggregation"]["strategy"] == "shortest"


def test_references_work_without_registering() -> None:
    """`package.module:function` names a strategy and an optimizer any process can import."""
    doc = {"name": "refs", "seed": 3, "rounds": 1, "task": {"name": "surrogate-skills"}, "initial_prompt": "Go.",
           "clients": {"count": 2, "optimizer": "tests.unit.test_library:appender"},
           "aggregation": {"strategy": "tests.unit.test_library:shortest"}}
    summary = fedbus.simulate(fedbus.scenario_from_mapping(doc))
    assert summary["final"]["prompt"] == "Go. client-0 was here in round 1."


def test_an_unknown_optimizer_is_refused_at_its_yaml_path() -> None:
    """clients.optimizer must be registered or importable; the error names the path."""
    doc = {"name": "bad", "rounds": 1, "task": {"name": "surrogate-skills"}, "clients": {"count": 2,
                                                                                      "optimizer": "nope"}}
    with pytest.raises(fedbus.ScenarioError, match=r"clients\.optimizer: unknown optimizer 'nope'"):
        fedbus.scenario_from_mapping(doc)


def test_simulate_loads_no_network_library() -> None:
    """In a fresh interpreter, `import fedbus; fedbus.simulate(quickstart)` loads none of aiomqtt, paho,
    iotcore, aiohttp (nor asyncio or fedbus.runtime)."""
    code = ("import sys, json, fedbus; s = fedbus.simulate(sys.argv[1]); assert s['status'] == 'completed'; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('aiomqtt', 'paho', 'iotcore', 'aiohttp', 'asyncio') or m.startswith('fedbus.runtime'))))")
    out = subprocess.run([sys.executable, "-c", code, str(QUICKSTART)], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120)
    assert json.loads(out.stdout) == []
    # and prints nothing of its own: it printed "completed: ... results in /tmp/fedbus-.../summary.json", a folder
    # removed before the call returned
    assert out.stderr == ""




class Careless:
    """A user's optimizer with a bug: it returns a dict, not a LocalOutcome."""

    engine = "careless"

    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int) -> object:
        return {"prompt": prompt + " More."}


def careless(client: str, data: DataSpec, shard: int) -> Careless:
    return Careless()


def test_an_optimizer_that_returns_garbage_fails_its_rounds_not_the_run() -> None:
    """A result that is not a LocalOutcome is a local failure, recorded and reported to the aggregator (no round
    waits for its deadline); the run completes without it."""
    doc = {"name": "careless", "seed": 3, "rounds": 2, "task": {"name": "surrogate-skills"},
           "clients": {"count": 2, "optimizer": "tests.unit.test_library:careless"},
           "participation": {"round_deadline_s": 5, "join_timeout_s": 30}}
    summary = fedbus.simulate(fedbus.scenario_from_mapping(doc))
    assert summary["status"] == "completed"
    assert all(r["status"] == "no-quorum" and r["missing"] == [] and r["close_reason"] == "all-answered"
               for r in summary["rounds"])
    assert all(sorted((f["client"], f["reason"]) for f in r["failed"]) == [("client-0", "client-failed"),
                                                                           ("client-1", "client-failed")]
               for r in summary["rounds"])
    assert summary["conditions"]["local-failed"] == 4 and summary["totals"]["failures_reported"] == 4


def test_a_local_outcome_is_checked_at_the_door() -> None:
    """A LocalOutcome with a non-text prompt or impossible numbers cannot be built."""
    good = {"prompt": "p", "steps": 1, "accepted_steps": 1, "batch_acc_before": 0.0, "batch_acc_after": 1.0,
            "llm_calls": 0, "tokens": 0}
    fedbus.LocalOutcome(**good)  # type: ignore[arg-type]
    for bad in ({"prompt": None}, {"batch_acc_after": 1.5}, {"tokens": -1}):
        with pytest.raises((TypeError, ValueError)):
            fedbus.LocalOutcome(**{**good, **bad})  # type: ignore[arg-type]
