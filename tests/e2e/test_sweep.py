"""`fedbus sweep` and `fedbus report` as a user runs them: a surrogate sweep of the quickstart (simulated),
resumed, reported, and compared."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fedbus.cli import main
from tests.conftest import ROOT
from tests.waiting import wait_until

FEDBUS = [sys.executable, "-m", "fedbus"]
SWEEP = ["scenarios/quickstart.yaml", "--grid", "clients.local_steps=1,2", "--grid", "rounds=2", "--seeds", "1..2",
         "--simulate", "--jobs", "2"]
CELLS = ["local_steps-1", "local_steps-2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fedbus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDBUS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def summary_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart, 2 rounds, over local_steps 1 and 2 and seeds 1 and 2, simulated, 2 runs at a time."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    result = fedbus("sweep", *SWEEP, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
def test_a_sweep_runs_every_cell_with_every_seed_in_its_own_folder(swept: Path) -> None:
    """Each (cell, seed) has its scenario.yaml (the base with the overrides and the seed) and a completed run;
    sweep.json records the base, the grid, the seeds, and each cell's overrides, seed, folder and status."""
    manifest = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    assert manifest["base"] == "scenarios/quickstart.yaml" and manifest["seeds"] == [1, 2]
    assert manifest["grid"] == [{"key": "clients.local_steps", "values": [1, 2]}, {"key": "rounds", "values": [2]}]
    assert [(c["cell"], c["seed"], c["folder"], c["status"]) for c in manifest["cells"]] == [
        (cell, seed, f"cells/{cell}/seed-{seed}", "completed") for cell in CELLS for seed in (1, 2)]
    for record in manifest["cells"]:
        folder = swept / record["folder"]
        summary = summary_of(folder)
        steps = record["overrides"]["clients.local_steps"]
        assert record["overrides"] == {"clients.local_steps": steps, "rounds": 2}
        assert summary["status"] == "completed" and summary["seed"] == record["seed"]
        assert summary["scenario"]["clients"]["local_steps"] == steps and len(summary["rounds"]) == 2
        assert summary["run_id"] == record["run_id"] == f"quickstart-local_steps-{steps}-s{record['seed']}"
        assert "seed: " + str(record["seed"]) in (folder / "scenario.yaml").read_text(encoding="utf-8")
        assert record["exit_code"] == 0 and record["skipped"] is False


@pytest.mark.slow
def test_a_second_sweep_skips_the_completed_cells(swept: Path) -> None:
    """The same command again: every run is said to be skipped and no summary.json is written again."""
    before = {p: p.read_bytes() for p in swept.glob("cells/*/seed-*/summary.json")}
    result = fedbus("sweep", *SWEEP, "--out", str(swept))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped (already completed") == 4
    assert "4 of 4 runs completed (0 now, 4 skipped" in result.stdout
    assert {p: p.read_bytes() for p in swept.glob("cells/*/seed-*/summary.json")} == before
    manifest = json.loads((swept / "sweep.json").read_text(encoding="utf-8"))
    assert all(c["skipped"] and c["status"] == "completed" for c in manifest["cells"])


@pytest.mark.slow
def test_an_interrupted_or_missing_run_is_run_again(swept: Path, tmp_path: Path) -> None:
    """A run whose summary says interrupted, and one with no summary, run again; the completed ones do not."""
    copy = tmp_path / "sweep"
    shutil.copytree(swept, copy)
    cut = copy / "cells" / "local_steps-2" / "seed-1"
    summary = summary_of(cut)
    summary["status"] = "interrupted"
    (cut / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (copy / "cells" / "local_steps-1" / "seed-2" / "summary.json").unlink()
    result = fedbus("sweep", *SWEEP, "--out", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped (already completed") == 2
    assert "4 of 4 runs completed (2 now, 2 skipped" in result.stdout
    assert summary_of(cut)["status"] == "completed"
    ran = {c["folder"] for c in json.loads((copy / "sweep.json").read_text())["cells"] if not c["skipped"]}
    assert ran == {"cells/local_steps-2/seed-1", "cells/local_steps-1/seed-2"}




@pytest.mark.slow
def test_a_stopped_sweep_records_the_run_in_flight_as_interrupted(tmp_path: Path) -> None:
    """SIGTERM to a sweep over the embedded broker: the run in flight is stopped and recorded as interrupted
    (the next sweep runs it again: test_an_interrupted_or_missing_run_is_run_again), the one not started stays
    pending, exit 130."""
    out = tmp_path / "sweep"
    args = ["scenarios/quickstart.yaml", "--grid", "clients.step_latency_s=1", "--grid", "clients.local_steps=1",
            "--seeds", "1..2", "--out", str(out)]
    sweep = subprocess.Popen([*FEDBUS, "sweep", *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = out / "cells" / "base" / "seed-1" / "events.jsonl"
        wait_until(lambda: (events.exists() and "round-opened" in events.read_text(encoding="utf-8"))
                   or sweep.poll() is not None, "the first run's first round")
        sweep.send_signal(signal.SIGTERM)
        _, stderr = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    assert sweep.returncode == 130, stderr
    cells = {c["folder"]: c for c in json.loads((out / "sweep.json").read_text(encoding="utf-8"))["cells"]}
    assert cells["cells/base/seed-1"]["status"] == "interrupted"
    assert summary_of(out / "cells" / "base" / "seed-1")["status"] == "interrupted"
    assert cells["cells/base/seed-2"]["status"] == "pending"
    assert not (out / "cells" / "base" / "seed-2").exists()


def test_invalid_keys_and_values_stop_the_sweep_before_anything_runs(tmp_path: Path) -> None:
    """A misspelt key and a bad value: every problem printed with its YAML path, exit 2, nothing written."""
    out = tmp_path / "never"
    result = fedbus("sweep", "scenarios/quickstart.yaml", "--grid", "clients.local_stepz=1,2", "--grid",
                    "clients.count=0,4", "--seeds", "1..2", "--simulate", "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith("scenarios/quickstart.yaml: clients.local_stepz: unknown key") for line in lines)
    assert any(line.startswith("scenarios/quickstart.yaml: clients.count: must be >= 1") for line in lines)
    assert not out.exists()
    bad = fedbus("sweep", "scenarios/quickstart.yaml", "--grid", "seed=1,2", "--out", str(out))
    assert bad.returncode == 2 and "--grid: seed: the seed is swept with --seeds" in bad.stderr


class _Page(HTMLParser):
    """The images and table cells of the report's page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []
        self.rows: list[list[str]] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


def png_size(path: Path) -> tuple[int, int]:
    """A PNG's width and height, read from its IHDR chunk after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_the_report_draws_charts_and_a_page_with_the_cells_and_their_intervals(swept: Path, tmp_path: Path) -> None:
    """`fedbus report DIR`: valid PNGs of a reasonable size, an index.html that references each of them by relative
    path (and nothing on the internet), and a table row per cell with its local_steps and a mean ± CI."""
    prices = tmp_path / "prices.yaml"
    prices.write_text("some-model: {input: 0.1, output: 0.4}\n", encoding="utf-8")
    out = tmp_path / "report"
    result = fedbus("report", str(swept), "--out", str(out), "--prices", str(prices))
    assert result.returncode == 0, result.stderr
    assert "4 of 4 runs completed; varied: clients.local_steps" in result.stdout
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"accuracy.png", "prompt_length.png", "final_accuracy_vs_local_steps.png",
            "participation.png"} <= set(pngs)
    for name in pngs:
        width, height = png_size(out / name)
        assert width >= 400 and height >= 150 and (out / name).stat().st_size > 5_000, name
    page = _Page()
    html = (out / "index.html").read_text(encoding="utf-8")
    page.feed(html)
    assert sorted(page.images) == pngs
    assert "http://" not in html and "https://" not in html and "<script" not in html
    header, *rows = page.rows
    assert header[0] == "local_steps" and any("test accuracy" in h for h in header) and header[-1].startswith("cost")
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(r[1] == "2 of 2 completed" for r in rows)
    assert all(" ± " in r[2] for r in rows), "final test accuracy with its interval"
    assert all(r[-1] == "no token counts" for r in rows), "a surrogate run has no token counts to price"
    assert "No update was rejected" in html


def test_the_report_of_a_stopped_sweep_groups_its_unfinished_runs_with_their_cells(swept: Path,
                                                                                     tmp_path: Path) -> None:
    """A sweep stopped with a run crashed (no summary, the manifest says 'crashed (exit -9)') and one never
    started (no folder at all): each stays in its own cell, under the sweep's word for it. The never-started run
    had only its overrides as settings, so every other setting looked varied (38 columns, 23 charts), and the
    crashed one's raw scenario.yaml said population 'auto' where the simulated runs recorded 'eager'."""
    copy = tmp_path / "sweep"
    shutil.copytree(swept, copy)
    (copy / "cells" / "local_steps-1" / "seed-2" / "summary.json").unlink()
    shutil.rmtree(copy / "cells" / "local_steps-2" / "seed-2")
    manifest = json.loads((copy / "sweep.json").read_text(encoding="utf-8"))
    for cell in manifest["cells"]:
        if cell["folder"] == "cells/local_steps-1/seed-2":
            cell["status"] = "crashed (exit -9)"
        if cell["folder"] == "cells/local_steps-2/seed-2":
            cell["status"] = "pending"
    (copy / "sweep.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = fedbus("report", str(copy), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "2 of 4 runs completed; varied: clients.local_steps;" in result.stdout, result.stdout
    page = _Page()
    page.feed((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    _header, *rows = page.rows
    assert [r[0] for r in rows] == ["1", "2"], rows
    assert "crashed (exit -9)" in rows[0][1] and "pending" in rows[1][1], rows


@pytest.mark.slow
def test_compare_shows_the_settings_a_sweeps_runs_differ_in(swept: Path) -> None:
    """`fedbus compare` of a sweep's runs: a column for the grid key and one for the seed."""
    result = fedbus("compare", "--csv", *(str(swept / "cells" / cell / "seed-1") for cell in CELLS))
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.startswith("run,clients.local_steps,seed,scenario,")
    assert [line.split(",")[1:3] for line in lines] == [["1", "1"], ["2", "1"]]


def test_report_without_matplotlib_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """matplotlib missing: one line naming the extra to install, exit 2, nothing written."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what importlib then reports as not installed
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    assert "pip install 'fedbus[report]'" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


def test_report_of_a_folder_without_runs_exits_1(tmp_path: Path) -> None:
    result = fedbus("report", str(tmp_path))
    assert result.returncode == 1
    assert "neither a sweep folder (sweep.json) nor a run folder (summary.json)" in result.stderr
