"""Reading the runs a report or a comparison is about: sweep folders (sweep.json and its cells) and plain run
folders (a summary.json). The file edge of ``grouping``: it turns folders into :class:`RunRecord` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbus.errors import FedbusError, ScenarioError
from fedbus.experiments.grouping import RunRecord, scenario_settings
from fedbus.experiments.manifest import DONE, SCENARIO_FILE, SWEEP_FILE, read_manifest, read_summary


@dataclass(frozen=True, slots=True, kw_only=True)
class Collection:
    """The runs found, in order, and the grid keys of the sweeps among them (in grid order)."""

    runs: tuple[RunRecord, ...]
    grid_keys: tuple[str, ...]


def settings_of(summary: dict[str, Any] | None, folder: Path) -> dict[str, Any]:
    """A run's scenario settings as dotted keys: from its summary's scenario record, else from the scenario.yaml a
    sweep wrote into its folder (normalized the same way), else none."""
    if summary is not None and isinstance(summary.get("scenario"), dict):
        return scenario_settings(summary["scenario"])
    from fedbus.scenario import load_scenario, scenario_to_mapping

    try:
        return scenario_settings(scenario_to_mapping(load_scenario(folder / SCENARIO_FILE)))
    except ScenarioError:
        return {}


def _record(folder: Path, status: str, summary: dict[str, Any] | None, overrides: dict[str, Any],
            seed: Any) -> RunRecord:
    settings = settings_of(summary, folder)
    for key, value in overrides.items():
        settings.setdefault(key, value)
    if summary is not None and type(summary.get("seed")) is int:
        seed = summary["seed"]
    return RunRecord(folder=str(folder), settings=settings, seed=seed if type(seed) is int else None,
                     status=status, summary=summary if status == DONE else None)


def collect(paths: Sequence[Path]) -> Collection:
    """Every run under ``paths``: a sweep folder gives its cells (in manifest order), a run folder or summary.json
    file gives itself. Only completed runs carry their summary (the statistics are over those); the others keep
    their status. A path that is neither is a FedbusError naming it."""
    runs: list[RunRecord] = []
    grid: dict[str, None] = {}
    for path in paths:
        if path.is_dir() and (path / SWEEP_FILE).is_file():
            manifest = read_manifest(path)
            grid |= dict.fromkeys(str(axis.get("key")) for axis in manifest.get("grid", ()) if isinstance(axis, dict))
            for cell in manifest["cells"]:
                folder = path / cell["folder"]
                status, summary = read_summary(folder)
                runs.append(_record(folder, status, summary, dict(cell["overrides"]), cell.get("seed")))
            continue
        folder = path if path.is_dir() else path.parent
        if not (folder / "summary.json").is_file():
            raise FedbusError(f"{path}: neither a sweep folder ({SWEEP_FILE}) nor a run folder (summary.json)")
        status, summary = read_summary(folder)
        if summary is None:
            raise FedbusError(f"{folder / 'summary.json'}: not a run summary")
        runs.append(_record(folder, status, summary, {}, None))
    return Collection(runs=tuple(runs), grid_keys=tuple(grid))
