"""The scenario model and its YAML loader. Pure: no I/O beyond reading the file.

The names below load their module when first used (PEP 562): a process that only needs a part of a scenario's
model (a ``fedbus client``'s conditions) does not import the YAML loader and its validation for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedbus.lazy import exports

if TYPE_CHECKING:
    from fedbus.scenario.loader import load_scenario, scenario_from_mapping, scenario_to_mapping
    from fedbus.scenario.model import Scenario

__all__ = ["Scenario", "load_scenario", "scenario_from_mapping", "scenario_to_mapping"]
if not TYPE_CHECKING:  # mypy checks the names imported above instead
    __getattr__, __dir__ = exports(__name__, globals(), {
        "fedbus.scenario.model": ("Scenario",),
        "fedbus.scenario.loader": ("load_scenario", "scenario_from_mapping", "scenario_to_mapping"),
    })
