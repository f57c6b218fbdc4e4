"""fedbus: federated textual-gradient prompt optimization over a real MQTT bus.

The library face::

    import fedbus

    scenario = fedbus.load_scenario("scenarios/quickstart.yaml")
    summary = fedbus.simulate(scenario)                     # virtual time, in-memory broker: a dict
    summary = await fedbus.run(scenario, out_dir="runs/q")   # over a real broker (embedded rumqttd by default)

Plugin points: ``register_strategy`` (or ``aggregation.strategy: package.module:function`` in a scenario)
and ``register_optimizer`` (or ``clients.optimizer: package.module:function``). Importing fedbus loads no
network library; ``run`` loads the MQTT runtime when it is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbus.lazy import exports

if TYPE_CHECKING:
    from fedbus.aggregator.strategies import Strategy, register_strategy
    from fedbus.client.optimizer import LocalOptimizer, LocalOutcome, OptimizerFactory, register_optimizer
    from fedbus.errors import FedbusError, ScenarioError
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.scenario import Scenario, load_scenario, scenario_from_mapping

# Loaded on first use (PEP 562), so that `import fedbus.tasks` or `fedbus.protocol` stays as light as it was.
if not TYPE_CHECKING:  # mypy checks the names imported above instead
    __getattr__, __dir__ = exports(__name__, globals(), {
        "fedbus.aggregator.strategies": ("Strategy", "register_strategy"),
        "fedbus.client.optimizer": ("LocalOptimizer", "LocalOutcome", "OptimizerFactory", "register_optimizer"),
        "fedbus.errors": ("FedbusError", "ScenarioError"),
        "fedbus.scenario": ("Scenario", "load_scenario", "scenario_from_mapping"),
    })

__version__ = "0.1.0"
__all__ = [
    "FedbusError",
    "LocalOptimizer",
    "LocalOutcome",
    "OptimizerFactory",
    "Scenario",
    "ScenarioError",
    "Strategy",
    "__version__",
    "load_scenario",
    "register_optimizer",
    "register_strategy",
    "run",
    "scenario_from_mapping",
    "simulate",
]


def _scenario(scenario: Scenario | str | Path) -> Scenario:
    from fedbus.scenario import Scenario, load_scenario

    return scenario if isinstance(scenario, Scenario) else load_scenario(scenario)


def simulate(scenario: Scenario | str | Path, out_dir: str | Path | None = None, *,
             progress: bool = False) -> dict[str, Any]:
    """Run ``scenario`` in virtual time over the in-memory broker and return summary.json's content.

    Deterministic: the same scenario and seed give the same events, byte for byte. ``out_dir`` keeps
    events.jsonl and summary.json; without it they go to a temporary directory that is removed.
    ``progress``: print the round lines and how the run ended (the CLI's display); without it nothing is printed.
    """
    from fedbus.sim.run import simulate as simulate_run

    chosen = _scenario(scenario)
    if out_dir is not None:
        return simulate_run(chosen, Path(out_dir), progress=progress, footer=progress)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedbus-") as tmp:
        return simulate_run(chosen, Path(tmp), progress=progress, footer=progress)


async def run(scenario: Scenario | str | Path, out_dir: str | Path, *, broker_url: str | None = None,
              run_id: str | None = None, workers: int | None = None, progress: bool = False,
              engine: EngineOverrides | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``scenario`` over a real MQTT broker (``broker_url``, or an embedded rumqttd) to its end and
    return summary.json's content (also written to ``out_dir`` with events.jsonl).

    ``environ``: what an LLM run may read from the environment (the API key its engine names,
    ``FEDBUS_ENGINE_URL``, ``FEDBUS_CACHE``); pass ``os.environ`` to behave like the CLI. Nothing else
    in fedbus reads environment variables. ``progress``: print the round lines and how the run ended; without it
    nothing is printed. fedbus logs through the standard ``logging`` tree under ``fedbus.*`` (what the app's
    handlers show; without any, Python prints warnings and errors to stderr), not to stdout."""
    from fedbus.logs import as_library

    as_library()  # before the runtime's modules load structlog: whether the app had loaded it is told apart then
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.runtime.run import RunOptions, run_scenario

    options = RunOptions(out_dir=Path(out_dir), broker_url=broker_url, run_id=run_id, workers=workers,
                         progress=progress, footer=progress, engine=engine or EngineOverrides(),
                         environ=dict(environ or {}))
    return await run_scenario(_scenario(scenario), options)
