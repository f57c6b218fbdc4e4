"""A sweep's folder on disk: ``sweep.json`` (the manifest) and each cell's run folder. The file edge of sweeps.

Layout::

    DIR/sweep.json                              base file, grid, seeds, and per cell: overrides, seed, folder, status
    DIR/cells/<cell>/seed-<s>/scenario.yaml     the base scenario with the cell's overrides and seed
    DIR/cells/<cell>/seed-<s>/summary.json ...  that run's results (fedbus run --out there)
    DIR/cells/<cell>/seed-<s>/run.log           its stdout and stderr
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbus.errors import FedbusError
from fedbus.results.compare import summary_problem
from fedbus.results.jsonfile import pretty_json

SWEEP_FILE = "sweep.json"
SCENARIO_FILE = "scenario.yaml"
LOG_FILE = "run.log"
FORMAT = 1
DONE = "completed"  # the one status a cell is not run again for
PENDING = "pending"  # not run yet (or its folder holds no summary.json)
UNREADABLE = "unreadable"  # a summary.json that is not a run summary (cut short by a kill, edited)


def cell_folder(cell: str, seed: int) -> str:
    """A cell's run folder, relative to the sweep's."""
    return f"cells/{cell}/seed-{seed}"


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``content`` so that a reader sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(pretty_json(content), encoding="utf-8")
    os.replace(tmp, path)


def read_summary(folder: Path) -> tuple[str, dict[str, Any] | None]:
    """A run folder's status and summary: (``pending``, None) without summary.json, (``unreadable``, None) for
    one that is not a run summary, else (its ``status``, its content)."""
    file = folder / "summary.json"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return PENDING, None
    except (OSError, ValueError, RecursionError):
        return UNREADABLE, None
    if summary_problem(summary) is not None:
        return UNREADABLE, None
    return str(summary["status"]), summary


def read_manifest(folder: Path) -> dict[str, Any]:
    """``folder/sweep.json``, checked to hold the cells a report reads; a FedbusError naming it if not."""
    file = folder / SWEEP_FILE
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise FedbusError(f"{file}: not a readable sweep manifest ({type(exc).__name__}: {str(exc)[:200]})") from exc
    cells = manifest.get("cells") if isinstance(manifest, dict) else None
    if not isinstance(cells, list) or not all(
            isinstance(c, dict) and isinstance(c.get("folder"), str) and isinstance(c.get("overrides"), dict)
            for c in cells):
        raise FedbusError(f"{file}: not a sweep manifest (no cells with folder and overrides)")
    return dict(manifest)


def find_sweep(path: Path) -> Path | None:
    """The sweep folder that ``path`` (a run folder or a summary.json) lies in: the nearest folder above it, or
    itself, holding sweep.json."""
    here = path.resolve()
    for folder in (here, *here.parents):
        if (folder / SWEEP_FILE).is_file():
            return folder
    return None
