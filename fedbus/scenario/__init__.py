"""The scenario model and its YAML loader. Pure: no I/O beyond reading the file."""

from fedbus.scenario.loader import load_scenario, scenario_from_mapping, scenario_to_mapping
from fedbus.scenario.model import Scenario

__all__ = ["Scenario", "load_scenario", "scenario_from_mapping", "scenario_to_mapping"]
