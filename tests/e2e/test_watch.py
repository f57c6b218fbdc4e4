"""`fedbus watch` shows a run another process hosts; the terminal shows remote clients and a client's rounds."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import free_port
from tests.conftest import ROOT
from tests.e2e.test_dashboard import announced_url, slow_stragglers
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
FEDBUS = [sys.executable, "-m", "fedbus"]


def api(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/summary", timeout=10) as response:  # loopback only
        view: dict[str, Any] = json.loads(response.read())
    return view


def popen(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen([*FEDBUS, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    return process.wait(60)


def test_watch_shows_a_run_started_by_another_process(tmp_path: Path, embedded_broker: BrokerAddress) -> None:
    """A watcher on the broker before the run starts sees every round of a signed+sealed run another process
    hosts: selections, accepted updates and rejections as summary.json counts them, the prompts; and the page
    lists what the bus cannot show."""
    run_id, out = f"watched-{uuid.uuid4().hex[:8]}", tmp_path / "run"
    broker = embedded_broker.url(redact=False)
    watcher = popen(["watch", "--broker", broker, "--run", run_id], tmp_path / "watch.txt")
    run = None
    try:
        url = announced_url(tmp_path / "watch.txt", watcher)
        wait_until(lambda: bool(api(url)["header"].get("subscribed")), "the watcher to subscribe", 60)
        run = popen(["run", str(slow_stragglers(tmp_path, rounds=3)), "--out", str(out), "--broker", broker,
                     "--run-id", run_id, "--quiet"], tmp_path / "run.txt")
        wait_until(lambda: api(url)["status"] == "finished", "the watcher to see the run finish", 180)
        assert run.wait(60) == 0, (tmp_path / "run.txt").read_text()
        summary, view = json.loads((out / "summary.json").read_text()), api(url)
    finally:
        if run is not None:
            stop(run)
        code = stop(watcher)
    assert code == 0, (tmp_path / "watch.txt").read_text()
    assert view["source"] == "watch" and view["header"]["security"] == "signed+sealed"
    assert [r["round"] for r in view["rounds"]] == [r["round"] for r in summary["rounds"]]
    assert [r["selected"] for r in view["rounds"]] == [len(r["selected"]) for r in summary["rounds"]]
    totals = summary["totals"]
    assert view["counters"]["rounds_closed"] == totals["rounds_closed"]
    assert view["counters"]["updates_accepted"] == totals["updates_accepted"]
    assert view["counters"]["updates_rejected"] == totals["updates_rejected"]  # those after the last round too
    assert {c["client"] for c in view["clients"]} == set(summary["clients"])
    prompts = {p["round"]: p for p in view["prompts"]}
    assert prompts[totals["rounds_closed"]]["prompt"] == summary["final"]["prompt"]
    # each round's prompt and status as the run recorded them (they came one round late, rounds 'closed')
    assert [r["status"] for r in view["rounds"]] == [r["status"] for r in summary["rounds"]]
    for line in (out / "global_prompts.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert prompts[record["round"]]["prompt"] == record["prompt"], record["round"]
    assert prompts[0]["prompt"] == summary["scenario"]["initial_prompt"]
    assert any("accuracy" in note for note in view["header"]["unobservable"])
    assert all(r["val_accuracy"] is None for r in view["rounds"])  # not on the bus: not made up


def test_progress_counts_a_remote_client_and_the_client_prints_its_rounds(tmp_path: Path) -> None:
    """A run expecting one remote client prints a line when it joins (and leaves); `fedbus client` prints a line
    per round (task received, update sent, outcome); --quiet still says how the run ended and where."""
    doc = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    doc["clients"]["remote"] = 1
    doc["security"] = "none"
    doc["rounds"] = 2
    doc["clients"]["step_latency_s"] = 0.3  # a second a round: the display's next look sees the client joined
    scenario = tmp_path / "remote.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    port, run_id, out = free_port(), "remote-run", tmp_path / "run"
    run = popen(["run", str(scenario), "--out", str(out), "--broker-port", str(port), "--run-id", run_id],
                tmp_path / "run.txt")
    client = None
    try:
        wait_until(lambda: "round  selected" in (tmp_path / "run.txt").read_text(), "the run's header", 60)
        client = popen(["client", "--broker", f"mqtt://127.0.0.1:{port}", "--run", run_id, "--id", "far-away"],
                       tmp_path / "client.txt")
        assert run.wait(120) == 0, (tmp_path / "run.txt").read_text()
        assert client.wait(60) == 0, (tmp_path / "client.txt").read_text()
    finally:
        for process in (run, client):
            if process is not None:
                stop(process)
    shown = (tmp_path / "run.txt").read_text()
    assert re.search(r"clients: 5 live of 5 known, 1 remote \(\+1 live\)", shown), shown
    client_lines = (tmp_path / "client.txt").read_text()
    for n in (1, 2):
        assert re.search(rf"round {n}: task received", client_lines), client_lines
        assert re.search(rf"round {n}: update sent", client_lines), client_lines
        assert re.search(rf"round {n}: update (accepted|rejected)", client_lines), client_lines
    quiet = subprocess.run([*FEDBUS, "run", "scenarios/quickstart.yaml", "--out", str(tmp_path / "quiet"), "--quiet"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                           check=False)
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert re.fullmatch(rf"completed: 3 rounds; .*results in {re.escape(str(tmp_path / 'quiet'))}/summary\.json.*\n",
                        quiet.stderr), quiet.stderr
