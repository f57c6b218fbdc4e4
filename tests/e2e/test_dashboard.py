"""`fedbus run --dashboard`: the page in headless Chromium fills as rounds close; /metrics matches summary.json."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.browser import find_chromium, open_page
from tests.conftest import ROOT
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
FEDBUS = [sys.executable, "-m", "fedbus"]
# What the test reads off the page: closed rounds in the table, and each client's row in the timeline.
PAGE_STATE = """!document.getElementById('prompt') ? JSON.stringify({status: 'loading'}) : JSON.stringify({
  status: document.getElementById('status').textContent,
  closed: [...document.querySelectorAll('#rounds tbody tr')].filter(r => r.dataset.status !== 'open')
            .map(r => Number(r.dataset.round)),
  clients: [...document.querySelectorAll('#timeline .client')].map(c => ({
    id: c.dataset.client, state: c.dataset.state,
    cells: [...c.querySelectorAll('.cell')].filter(x => /\\bs-/.test(x.className)).length,
    pending: c.querySelectorAll('.cell.s-selected, .cell.s-working').length})),
  charts: [...document.querySelectorAll('svg.chart')].map(s => Number(s.dataset.points)),
  prompt: document.getElementById('prompt').textContent.length,
})"""


def slow_stragglers(tmp_path: Path, rounds: int = 4) -> Path:
    """The stragglers scenario slowed down (50 simulated seconds a wall second): rounds close one by one while
    the page is open, and some clients straggle."""
    doc = yaml.safe_load((ROOT / "scenarios" / "stragglers.yaml").read_text())
    doc["time_scale"] = 50
    doc["rounds"] = rounds
    path = tmp_path / "slow-stragglers.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        return str(response.read().decode())


def announced_url(stdout: Path, process: subprocess.Popen[bytes], prefix: str = "dashboard") -> str:
    """The dashboard's URL, once the command printed it."""
    url = ""

    def printed() -> bool:
        nonlocal url
        found = re.search(rf"{prefix}: (http://127\.0\.0\.1:\d+/)", stdout.read_text())
        url = found.group(1) if found else ""
        return bool(url) or process.poll() is not None

    wait_until(printed, f"the {prefix} URL on stdout", 60)
    assert url, stdout.read_text()
    return url


def wait_lingering(stdout: Path) -> None:
    """Until the run has finished and its page lingers: a Ctrl-C before that interrupts the run itself (summary.json
    is written a moment before the run ends)."""
    wait_until(lambda: "dashboard stays up" in stdout.read_text(), "the dashboard lingering after the run", 60)


def watch_page(chromium: str, profile: Path, start: Callable[[], str], screenshot: Path,
               wait_s: float = 180) -> list[dict[str, Any]]:
    """Start Chromium, then ``start()`` what serves the page (it returns the URL); open the page once (never
    reloaded) and read its state every 0.1 s until it says completed; screenshot it."""

    async def run() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(chromium, profile) as page:
            await page.goto(await asyncio.to_thread(start))
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                state = json.loads(await page.evaluate(PAGE_STATE))
                if state["status"] != "loading":
                    seen.append(state)
                if state["status"] == "completed":
                    await page.screenshot(screenshot)
                    return seen
                await asyncio.sleep(0.1)
        raise AssertionError(f"the page did not show the run completed in {wait_s:g} s; last: {seen[-1:]}")

    return asyncio.run(run())


def test_dashboard_shows_rounds_live_and_metrics_match_the_summary(tmp_path: Path) -> None:
    """The page (pushed, never reloaded) shows rounds as they close and every client's timeline; a screenshot
    lands in the run folder; /metrics parses and its counters equal summary.json's."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not found (scripts/install-chromium.sh installs Debian's package)")
    from prometheus_client.parser import text_string_to_metric_families

    out, stdout_path = tmp_path / "run", tmp_path / "stdout.txt"
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        """`fedbus run --dashboard`, once Chromium is up (so that the page is open before the first round)."""
        with stdout_path.open("w") as stdout:
            processes.append(subprocess.Popen(
                [*FEDBUS, "run", str(slow_stragglers(tmp_path)), "--out", str(out), "--dashboard", "127.0.0.1:0",
                 "--dashboard-linger", "300"], cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
        return announced_url(stdout_path, processes[0])

    try:
        seen = watch_page(chromium, tmp_path / "chromium", start, out / "dashboard.png")
        url = announced_url(stdout_path, processes[0])
        wait_until((out / "summary.json").exists, "summary.json", 60)
        summary = json.loads((out / "summary.json").read_text())
        rounds, final = summary["totals"]["rounds_closed"], seen[-1]
        # rounds appeared one after another on the same page: it saw some closed while others were not yet
        counts = sorted({len(s["closed"]) for s in seen})
        assert any(0 < n < rounds for n in counts), counts
        assert sorted(final["closed"]) == list(range(1, rounds + 1))
        assert final["charts"] == [rounds, rounds]  # accuracy and prompt length, one point a round
        assert final["prompt"] > 0
        # the timeline: every client, each with a cell for every round it was selected in, filling while it ran
        selected = Counter(c for r in summary["rounds"] for c in r["selected"])
        assert {c["id"] for c in final["clients"]} == set(summary["clients"])
        assert all(c["cells"] >= selected[c["id"]] for c in final["clients"]), final["clients"]
        assert all(c["pending"] == 0 for c in final["clients"]), final["clients"]  # every round closed: resolved
        assert any(c["cells"] > 0 for s in seen if s["status"] == "running" for c in s["clients"])
        assert (out / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        samples = {f.name: f.samples for f in text_string_to_metric_families(fetch(url + "metrics"))}
        value = {name: sum(s.value for s in found) for name, found in samples.items()}
        totals = summary["totals"]
        assert value["fedbus_rounds_closed"] == totals["rounds_closed"]
        assert value["fedbus_updates_accepted"] == totals["updates_accepted"]
        rejected = Counter(r["reason"] for rnd in summary["rounds"] for r in rnd["rejected"])
        rejected.update(r["reason"] for r in summary["rejected_after_last_round"])
        assert {s.labels["reason"]: s.value for s in samples["fedbus_updates_rejected"]} == dict(rejected)
        assert value["fedbus_llm_calls"] == totals["llm_calls"]
        assert value["fedbus_llm_tokens"] == totals["tokens"]
        counted = [s.value for s in samples["fedbus_round_duration_seconds"] if s.name.endswith("_count")]
        assert counted == [totals["rounds_closed"]]
        assert value["fedbus_clients_connected"] == len(summary["clients"])
        api = json.loads(fetch(url + "api/summary"))
        assert api["status"] == summary["status"] == "completed"
        assert [(r["accepted"], r["rejected_total"], r["late"]) for r in api["rounds"]] == [
            (len(r["accepted"]), len(r["rejected"]), len(r["late"])) for r in summary["rounds"]]
        wait_lingering(stdout_path)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # ends the linger
    assert processes[0].wait(60) == 0, stdout_path.read_text()


def test_dashboard_beyond_loopback_on_an_open_broker_is_refused(tmp_path: Path) -> None:
    """--dashboard 0.0.0.0:PORT on a run whose broker has no users stops before anything starts, saying why."""
    result = subprocess.run([*FEDBUS, "run", "scenarios/quickstart.yaml", "--out", str(tmp_path / "run"),
                             "--dashboard", "0.0.0.0:0"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 2, result.stderr
    assert "refusing to serve the dashboard on 0.0.0.0" in result.stderr and "--users" in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_dashboard_of_a_run_with_worker_processes_counts_their_clients(tmp_path: Path) -> None:
    """--workers 2: the clients' events live in the workers' own logs while the run goes, and are merged into
    events.jsonl at the end; the page follows both and counts each event once (its /metrics equal summary.json)."""
    out, stdout_path = tmp_path / "run", tmp_path / "stdout.txt"
    with stdout_path.open("w") as stdout:
        process = subprocess.Popen([*FEDBUS, "run", "scenarios/quickstart.yaml", "--workers", "2", "--out", str(out),
                                    "--dashboard", "127.0.0.1:0", "--dashboard-linger", "300"], cwd=ROOT,
                                   stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = announced_url(stdout_path, process)
        wait_until((out / "summary.json").exists, "summary.json", 120)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["client_processes"] == 2
        wait_until(lambda: json.loads(fetch(url + "api/summary"))["status"] == "completed", "the page's end", 30)
        api = json.loads(fetch(url + "api/summary"))
        assert {c["client"] for c in api["clients"]} == set(summary["clients"])
        assert all(c["cells"] for c in api["clients"])  # every client's rounds, from the workers' logs
        metrics = fetch(url + "metrics")
        accepted = re.search(r"^fedbus_updates_accepted_total\{[^}]*\} (\S+)$", metrics, re.MULTILINE)
        assert accepted is not None and float(accepted.group(1)) == summary["totals"]["updates_accepted"]
        calls = sum(float(v) for v in re.findall(r"^fedbus_llm_calls_total\{[^}]*\} (\S+)$", metrics, re.MULTILINE))
        assert calls == summary["totals"]["llm_calls"]  # the workers' updates, counted once
        wait_lingering(stdout_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # ends the linger, as Ctrl-C does (a scheduler's stop)
    assert process.wait(60) == 0, stdout_path.read_text()
