"""The scenario model and its YAML loader. Pure: no I/O beyond reading the file.

The names below load their module when first used (PEP 562): a process that only needs a part of a scenario's
model (a ``fedbus client``'s conditions) does not import the YAML loader and its validation for it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedbus.scenario.loader import load_scenario, scenario_from_mapping, scenario_to_mapping
    from fedbus.scenario.model import Scenario

__all__ = ["Scenario", "load_scenario", "scenario_from_mapping", "scenario_to_mapping"]
_WHERE = {"Scenario": "fedbus.scenario.model", "load_scenario": "fedbus.scenario.loader",
          "scenario_from_mapping": "fedbus.scenario.loader", "scenario_to_mapping": "fedbus.scenario.loader"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
