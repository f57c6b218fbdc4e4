"""``fedbus sweep``: every cell of a grid, with every seed, each a ``fedbus run`` in its own process and folder.

The plan is checked whole before anything runs (every cell's scenario through the scenario loader, so a bad key
or value is named by its YAML path). A cell whose folder already holds a completed run of the same scenario is
skipped; anything else (never run, interrupted, failed, crashed, settings changed) runs again from scratch.
Up to ``jobs`` runs at a time; one that crashes is recorded and the sweep goes on. LLM runs share the response
cache: each child inherits this process's environment, so ``$FEDBUS_CACHE`` (or ``~/.cache/fedbus``) is the same
for all of them, and ``no_cache`` passes ``--no-cache`` to each.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import yaml

from fedbus.errors import FedbusError, ScenarioError
from fedbus.experiments.grid import Axis, Cell, apply_overrides, count_runs, expand, run_id
from fedbus.experiments.manifest import (
    DONE,
    FORMAT,
    LOG_FILE,
    PENDING,
    SCENARIO_FILE,
    SWEEP_FILE,
    cell_folder,
    read_manifest,
    read_summary,
    write_json,
)

STOP_GRACE_S = 30.0  # how long an interrupted run may take to write its summary before it is killed


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepOptions:
    """What ``fedbus sweep`` was asked to do."""

    base: Path
    out: Path
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...] | None  # None: the base scenario's own seed
    jobs: int = 1
    simulate: bool = False
    no_cache: bool = False
    engine_url: str | None = None
    log_level: str = "WARNING"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedRun:
    """One (cell, seed): its overrides, where it runs, its run id and the scenario it runs."""

    cell: Cell
    seed: int
    folder: str
    run_id: str
    scenario: dict[str, Any]
    status: str = PENDING
    exit_code: int | None = None
    wall_s: float | None = None
    skipped: bool = False

    def record(self) -> dict[str, Any]:
        return {"cell": self.cell.name, "overrides": self.cell.settings(), "seed": self.seed, "folder": self.folder,
                "run_id": self.run_id, "status": self.status, "exit_code": self.exit_code, "wall_s": self.wall_s,
                "skipped": self.skipped}


def plan(base: dict[str, Any], axes: Sequence[Axis], seeds: Sequence[int], *, simulate: bool,
         source: str = "") -> tuple[PlannedRun, ...]:
    """Every (cell, seed), its scenario checked by the scenario loader; a ScenarioError listing every problem,
    once, with the cells it is found in (``clients.local_steps: must be >= 1, got 0 (cell local_steps-0)``). Pure."""
    from fedbus.scenario import scenario_from_mapping

    cells = expand(axes)
    count_runs(cells, seeds)
    found: dict[tuple[str, str], list[str]] = {}
    runs: list[PlannedRun] = []
    for cell in cells:
        built = [apply_overrides(base, cell.overrides, seed) for seed in seeds]
        folder = Path(source).parent if source else Path()
        docs = [absolute_sources(doc, folder) for doc, _ in built]  # a run reads its copy from its own folder
        problems = list(built[0][1])
        try:
            scenario = scenario_from_mapping(docs[0], source)  # the seed changes nothing a check looks at
        except ScenarioError as exc:
            problems += exc.problems
        else:
            if simulate and scenario.engine != "surrogate":
                problems.append(("engine", f"--simulate runs the surrogate engine only, not {scenario.engine!r}"))
            if simulate and scenario.clients.count == 0:
                problems.append(("clients.count", "--simulate needs clients of its own (clients.count >= 1)"))
            if not problems:
                runs += [PlannedRun(cell=cell, seed=seed, folder=cell_folder(cell.name, seed),
                                    run_id=run_id(scenario.name, cell, seed), scenario=doc)
                         for seed, doc in zip(seeds, docs, strict=True)]
        for problem in problems:
            found.setdefault(problem, []).append(cell.name)
    if found:
        raise ScenarioError([(path, f"{message} ({_which(names, len(cells))})")
                             for (path, message), names in found.items()], source)
    return tuple(runs)


def absolute_sources(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``doc`` with each relative ``task.source`` path made absolute from ``folder`` (the base scenario's): the
    copy a run reads lies in the run's own folder, where a relative path would point elsewhere. Pure."""
    task = doc.get("task")
    if not isinstance(task, dict) or "source" not in task:
        return doc

    def absolute(path: Any) -> Any:
        if not isinstance(path, str) or not path.strip() or Path(path).expanduser().is_absolute():
            return path
        return str((folder / path).resolve())

    raw = task["source"]
    fixed = {k: absolute(v) for k, v in raw.items()} if isinstance(raw, dict) else absolute(raw)
    return {**doc, "task": {**task, "source": fixed}}


def _which(cells: Sequence[str], total: int) -> str:
    if len(cells) == total and total > 1:
        return "every cell"
    shown = ", ".join(cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
    return f"cell{'s' if len(cells) > 1 else ''} {shown}"


def base_seed(base: dict[str, Any]) -> int:
    seed = base.get("seed", 0)
    return seed if type(seed) is int and seed >= 0 else 0


def _already_done(out: Path, run: PlannedRun) -> tuple[bool, str]:
    """Whether ``run``'s folder holds a completed run of the same scenario; the status found there."""
    folder = out / run.folder
    status, _ = read_summary(folder)
    if status != DONE:
        return False, status
    try:
        written = yaml.safe_load((folder / SCENARIO_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False, "settings unknown"
    return (True, status) if written == run.scenario else (False, "settings changed")


def _previous_records(out: Path) -> dict[str, dict[str, Any]]:
    """The cell records of the sweep.json already in ``out`` (an earlier sweep there), by folder; none if it has
    none or it cannot be read."""
    try:
        manifest = read_manifest(out)
    except FedbusError:
        return {}
    return {cell["folder"]: cell for cell in manifest["cells"]}


class _Children:
    """The runs in flight, so that an interrupt reaches every one of them and starts no more."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def start(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self.stopping:
                return None
            # its own session: a Ctrl-C at the terminal reaches the sweep only, which passes it on once
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
            self._running.add(child)
            return child

    def done(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._running.discard(child)

    def interrupt(self) -> None:
        """SIGTERM to every run (each writes summary.json as interrupted; SIGINT may be ignored in a child of a
        background job), then a kill for any still there after the grace time."""
        with self._lock:
            self.stopping = True
            running = list(self._running)
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in running:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


class Sweep:
    """Runs a plan into ``options.out``, keeping sweep.json up to date after every run."""

    def __init__(self, options: SweepOptions, runs: Sequence[PlannedRun], say: Callable[[str], None]) -> None:
        self.options = options
        self.runs = list(runs)
        self._say = say
        self._lock = threading.Lock()
        self._children = _Children()
        self._finished = 0

    def manifest(self) -> dict[str, Any]:
        o = self.options
        return {"format": FORMAT, "base": str(o.base), "base_resolved": str(o.base.resolve()),
                "grid": [{"key": a.key, "values": list(a.values)} for a in o.axes],
                "seeds": list(dict.fromkeys(r.seed for r in self.runs)),
                "simulate": o.simulate, "cells": [r.record() for r in self.runs]}

    def _update(self, index: int, run: PlannedRun) -> None:
        with self._lock:
            self.runs[index] = run
            write_json(self.options.out / SWEEP_FILE, self.manifest())

    def argv(self, run: PlannedRun) -> list[str]:
        folder = self.options.out / run.folder
        argv = [sys.executable, "-m", "fedbus", "--log-level", self.options.log_level, "run",
                str(folder / SCENARIO_FILE), "--out", str(folder), "--run-id", run.run_id, "--quiet"]
        if self.options.simulate:
            argv.append("--simulate")
        if self.options.no_cache:
            argv.append("--no-cache")
        if self.options.engine_url:
            argv += ["--engine-url", self.options.engine_url]
        return argv

    def run(self) -> list[PlannedRun]:
        """Skip what is done, run the rest (``jobs`` at a time); the runs as they ended."""
        todo: list[int] = []
        before = _previous_records(self.options.out)
        for i, run in enumerate(self.runs):
            done, found = _already_done(self.options.out, run)
            if done:
                old = before.get(run.folder, {})
                self.runs[i] = replace(run, status=found, skipped=True,
                                       exit_code=old.get("exit_code") if type(old.get("exit_code")) is int else None,
                                       wall_s=old.get("wall_s") if isinstance(old.get("wall_s"), float) else None)
                self._say(f"{run.cell.name} seed {run.seed}: skipped (already completed in {run.folder})")
            else:
                todo.append(i)
                self.runs[i] = replace(run, status=PENDING if found in (PENDING, DONE) else found)
        self.options.out.mkdir(parents=True, exist_ok=True)
        write_json(self.options.out / SWEEP_FILE, self.manifest())
        if not todo:
            return self.runs
        self._say(f"running {len(todo)} of {len(self.runs)} runs, {min(self.options.jobs, len(todo))} at a time")
        executor = ThreadPoolExecutor(max_workers=self.options.jobs, thread_name_prefix="sweep")
        try:
            futures = {executor.submit(self._one, i, len(todo)): i for i in todo}
            for future in as_completed(futures):
                future.result()
        except BaseException:  # Ctrl-C, SIGTERM: stop every run, record them as they ended, then go
            self._children.interrupt()
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
        return self.runs

    def _one(self, index: int, total: int) -> None:
        run = self.runs[index]
        folder = self.options.out / run.folder
        if self._children.stopping:  # the sweep is stopping: leave this run's folder as it was
            return
        if folder.exists():  # a run cut short, or of other settings: start it afresh
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        header = (f"# fedbus sweep: {self.options.base} with {_overrides_text(run.cell)}, seed {run.seed}\n")
        (folder / SCENARIO_FILE).write_text(
            header + yaml.safe_dump(run.scenario, sort_keys=False, allow_unicode=True), encoding="utf-8")
        self._update(index, replace(run, status="running"))
        started = time.monotonic()
        with (folder / LOG_FILE).open("wb") as log:
            child = self._children.start(self.argv(run), log)
            if child is None:
                self._update(index, replace(run, status=PENDING))
                return
            try:
                code = child.wait()
            finally:
                self._children.done(child)
        wall = round(time.monotonic() - started, 3)
        status, summary = read_summary(folder)
        if summary is None:
            status = f"crashed (exit {code})"
        ended = replace(run, status=status, exit_code=code, wall_s=wall)
        self._update(index, ended)
        with self._lock:
            self._finished += 1
            count = self._finished
        self._say(f"[{count}/{total}] {run.cell.name} seed {run.seed}: {_outcome(ended, summary, folder)}")


def _overrides_text(cell: Cell) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in cell.overrides) or "no overrides"


def _outcome(run: PlannedRun, summary: dict[str, Any] | None, folder: Path) -> str:
    if summary is None:
        tail = _last_line(folder / LOG_FILE)
        return f"{run.status} after {run.wall_s} s; see {folder / LOG_FILE}{f': {tail}' if tail else ''}"
    accuracy = summary["final"]["test_accuracy"]
    shown = f"; test accuracy {accuracy:.3f}" if isinstance(accuracy, int | float) else ""
    return f"{run.status} in {run.wall_s} s{shown}"


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def run_sweep(options: SweepOptions, say: Callable[[str], None]) -> list[PlannedRun]:
    """Check the whole plan (ScenarioError: nothing ran), then run it; the runs as they ended."""
    from fedbus.scenario.loader import read_yaml

    base = read_yaml(options.base)
    if not isinstance(base, dict):
        raise ScenarioError([("", f"a scenario must be a mapping, got {type(base).__name__}")], str(options.base))
    seeds = options.seeds if options.seeds is not None else (base_seed(base),)
    runs = plan(base, options.axes, seeds, simulate=options.simulate, source=str(options.base))
    cells = len({r.cell.name for r in runs})
    say(f"fedbus sweep: {cells} cell{'s' if cells != 1 else ''} × {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
        f" = {len(runs)} runs into {options.out}")
    return Sweep(options, runs, say).run()


def outcome_line(runs: Sequence[PlannedRun], out: Path) -> tuple[str, bool]:
    """The sweep's last line, and whether every run is completed."""
    done = [r for r in runs if r.status == DONE]
    skipped = sum(r.skipped for r in done)
    others = [r for r in runs if r.status != DONE]
    text = (f"fedbus sweep: {len(done)} of {len(runs)} runs completed ({len(done) - skipped} now, {skipped} "
            f"skipped as already completed); manifest {out / SWEEP_FILE}")
    if others:
        text += (f"; not completed: {', '.join(f'{r.folder} ({r.status})' for r in others[:10])}"
                 f"{' ...' if len(others) > 10 else ''}; run the same command again to retry them")
    else:
        text += f"; charts: fedbus report {out}"
    return text, not others
