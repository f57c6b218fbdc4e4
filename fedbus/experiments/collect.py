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
from fedbus.experiments.manifest import DONE, PENDING, SCENARIO_FILE, SWEEP_FILE, read_manifest, read_summary


@dataclass(frozen=True, slots=True, kw_only=True)
class Collection:
    """The runs found, in order, and the grid keys of the sweeps among them (in grid order)."""

    runs: tuple[RunRecord, ...]
    grid_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """What a sweep's manifest says of a cell, for a run that left no summary: its base scenario file, its
    overrides and seed, whether the sweep simulated, and the status the sweep gave it."""

    base: Path | None
    overrides: dict[str, Any]
    seed: Any
    simulate: bool
    status: str | None


def settings_of(summary: dict[str, Any] | None, folder: Path, planned: Planned | None = None) -> dict[str, Any]:
    """A run's scenario settings as dotted keys: from its summary's scenario record, else from the scenario.yaml a
    sweep wrote into its folder, else (a run that never started) from the sweep's base file and the cell's
    overrides, each normalized as a run records it (a simulation's population resolved); else none."""
    if summary is not None and isinstance(summary.get("scenario"), dict):
        return scenario_settings(summary["scenario"])
    from fedbus.scenario import load_scenario, scenario_from_mapping, scenario_to_mapping

    try:
        scenario = load_scenario(folder / SCENARIO_FILE)
    except ScenarioError:
        if planned is None or planned.base is None:
            return {}
        try:
            import yaml

            from fedbus.experiments.grid import apply_overrides

            base = yaml.safe_load(planned.base.read_text(encoding="utf-8"))
            doc, _unset = apply_overrides(base, planned.overrides.items(),
                                            planned.seed if type(planned.seed) is int else 0)
            scenario = scenario_from_mapping(doc, str(planned.base))
        except (OSError, ValueError, AttributeError, yaml.YAMLError, ScenarioError):
            return {}
    if planned is not None and planned.simulate:
        from fedbus.scenario.population import for_simulation

        scenario = for_simulation(scenario)
    return scenario_settings(scenario_to_mapping(scenario))


def _record(folder: Path, status: str, summary: dict[str, Any] | None, overrides: dict[str, Any],
            seed: Any, *, planned: Planned | None = None) -> RunRecord:
    if summary is None and planned is not None and planned.status not in (None, DONE, PENDING):
        status = planned.status  # 'crashed (exit -9)', 'interrupted', 'running': the sweep's word, not 'pending'
    settings = settings_of(summary, folder, planned)
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
            base = manifest.get("base_resolved") or manifest.get("base")
            for cell in manifest["cells"]:
                folder = path / cell["folder"]
                status, summary = read_summary(folder)
                planned = Planned(base=Path(str(base)) if base else None, overrides=dict(cell["overrides"]),
                                  seed=cell.get("seed"), simulate=bool(manifest.get("simulate")),
                                  status=str(cell["status"]) if cell.get("status") else None)
                runs.append(_record(folder, status, summary, dict(cell["overrides"]), cell.get("seed"),
                                    planned=planned))
            continue
        folder = path if path.is_dir() else path.parent
        if not (folder / "summary.json").is_file():
            raise FedbusError(f"{path}: neither a sweep folder ({SWEEP_FILE}) nor a run folder (summary.json)")
        status, summary = read_summary(folder)
        if summary is None:
            raise FedbusError(f"{folder / 'summary.json'}: not a run summary")
        runs.append(_record(folder, status, summary, {}, None))
    return Collection(runs=tuple(runs), grid_keys=tuple(grid))
