"""The `fedbus` command as a user runs it, on the scenario files we ship."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fedbus.runtime.address import BrokerAddress
from tests.conftest import ROOT

FEDBUS = [sys.executable, "-m", "fedbus"]


def fedbus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDBUS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def test_quickstart_runs_on_the_embedded_broker(tmp_path: Path) -> None:
    """`fedbus run scenarios/quickstart.yaml` exits 0 and writes a complete summary.json and events.jsonl."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "surrogate (NOT an LLM" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["engine"]["name"] == "surrogate" and "not an LLM" in summary["engine"]["note"]
    assert summary["broker"]["kind"] == "embedded-rumqttd"
    assert summary["seed"] == 7
    rounds = summary["rounds"]
    assert len(rounds) == summary["scenario"]["rounds"]
    for r in rounds:
        assert set(r) >= {"selected", "accepted", "rejected", "global_prompt_chars", "val_accuracy", "duration_s"}
        assert 0.0 <= r["val_accuracy"] <= 1.0
        assert len(r["accepted"]) == 4
    assert [(r["status"], r["version_after"]) for r in rounds] == [("aggregated", n) for n in range(1, len(rounds) + 1)]
    assert summary["final"]["prompt"] != summary["scenario"]["initial_prompt"]
    assert summary["final"]["version"] == len(rounds)
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
    assert summary["totals"]["updates_accepted"] == 4 * len(rounds)
    assert summary["totals"]["llm_calls"] > 0
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    sent_updates = [e for e in lines if e["event"] == "sent" and e.get("kind") == "update"]
    accepted = [e for e in lines if e["event"] == "accepted"]
    assert len(sent_updates) == len(accepted) == summary["totals"]["updates_accepted"]


def test_seed_flag_overrides_and_is_recorded(tmp_path: Path) -> None:
    """--seed replaces the scenario's seed and the summary says which seed ran."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--out", str(tmp_path), "--seed", "11", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 11


def test_quickstart_runs_on_mosquitto(mosquitto_broker: BrokerAddress, tmp_path: Path) -> None:
    """--broker points a run at an external mosquitto; the summary names it."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--out", str(tmp_path), "--broker", mosquitto_broker.url())
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["broker"] == {"kind": "external", "url": mosquitto_broker.url()}
    assert summary["status"] == "completed"


def test_clients_spread_over_worker_processes(tmp_path: Path) -> None:
    """--workers 2: the clients run in two other processes; their events are merged, in time order."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--out", str(tmp_path), "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["client_processes"] == 2
    assert summary["totals"]["updates_accepted"] == 4 * len(summary["rounds"])
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["t"] for e in lines] == sorted(e["t"] for e in lines)
    sent = {e["id"] for e in lines if e["event"] == "sent" and e.get("kind") == "update"}
    assert sent == {a["id"] for r in summary["rounds"] for a in r["accepted"]}, "a worker's events are missing"
    assert summary["conditions"]["connected"] == 4
    assert not list((tmp_path / "workers").glob("*.json")), "worker specs (they may hold a password) are removed"


def test_a_killed_run_takes_its_worker_processes_along(tmp_path: Path) -> None:
    """SIGKILL of `fedbus run` leaves no client worker behind (they die with their parent)."""
    import os
    import signal
    import time

    run = subprocess.Popen([*FEDBUS, "run", "scenarios/stragglers.yaml", "--out", str(tmp_path), "--workers", "2",
                            "--quiet"], cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)
            out = subprocess.run(["pgrep", "-P", str(run.pid), "-f", "clients.pool"], capture_output=True,
                                 text=True, check=False)
            workers = [int(p) for p in out.stdout.split()]
        assert len(workers) == 2, "the run did not start two workers"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    time.sleep(1.0)
    alive = [p for p in workers if os.path.exists(f"/proc/{p}") and "Z" not in
             open(f"/proc/{p}/stat").read().split()[2]]  # noqa: SIM115 - a one-line read
    assert alive == []


def test_every_shipped_scenario_is_valid() -> None:
    """`fedbus validate scenarios/*.yaml` accepts every scenario we ship."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.yaml"))
    result = fedbus("validate", *files)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(": ok") == len(files)


BAD = """\
name: bad one
rounds: 0
task: {train_size: -1}
clients: {count: 0, batch_sise: 3}
participation: {fraction: 2}
"""


def test_validate_names_the_yaml_path_of_every_mistake(tmp_path: Path) -> None:
    """A broken scenario gets exit code 2 and one line per mistake, each naming its YAML path."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    result = fedbus("validate", str(bad))
    assert result.returncode == 2
    for expected in ("name:", "rounds: must be >= 1", "task.train_size: must be >= 1", "clients.count: must be >= 1",
                     "clients.batch_sise: unknown key", "participation.fraction: must be within"):
        assert expected in result.stdout, result.stdout


def test_run_refuses_an_invalid_scenario(tmp_path: Path) -> None:
    """`fedbus run` on a broken scenario exits 2 with the same paths and starts nothing."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD, encoding="utf-8")
    result = fedbus("run", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "clients.count: must be >= 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported with its line, not a traceback."""
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nclients: {count: 3\nrounds: 2\n", encoding="utf-8")
    result = fedbus("validate", str(bad))
    assert result.returncode == 2
    assert "line" in result.stdout and "Traceback" not in result.stdout + result.stderr
