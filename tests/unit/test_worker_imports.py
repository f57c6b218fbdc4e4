"""What a client worker process loads: its clients, not the aggregator. Each module costs start-up time in every
worker, and the workers' start-up is part of how long 1,000 clients take to connect (tens of ms per module group
on a slow core)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

AGGREGATOR_ONLY = ("fedbus.aggregator.rounds", "fedbus.aggregator.stream", "fedbus.aggregator.base",
                   "fedbus.aggregator.membership", "fedbus.aggregator.session")


def test_a_client_worker_loads_none_of_the_aggregators_modules() -> None:
    code = ("import sys, fedbus.runtime.pool, fedbus.runtime.worker_process; "
            f"print(','.join(m for m in {AGGREGATOR_ONLY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True).stdout.strip()
    assert loaded == ""


def test_the_planner_still_makes_a_core_for_each_mode() -> None:
    from fedbus.plan import make_core
    from fedbus.scenario.loader import scenario_from_mapping

    base = {"name": "modes", "rounds": 1, "task": {"name": "surrogate-skills"}, "clients": {"count": 2}}
    sync = make_core(scenario_from_mapping(base), "r-1")
    stream = make_core(scenario_from_mapping({**base, "aggregation": {"mode": "async"}}), "r-1")
    assert type(sync).__name__ == "RoundAggregator" and type(stream).__name__ == "StreamAggregator"
