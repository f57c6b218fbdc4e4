"""The `fedbus` command as a user runs it, on the scenario files we ship."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fedbus.runtime.address import BrokerAddress
from tests.conftest import ROOT, needs_library

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
    first_sent: dict[str, float] = {}
    for e in lines:
        if e["event"] == "sent":
            first_sent.setdefault(e["id"], e["t"])
    early = [e["id"] for e in lines if e["event"] == "received" and e["t"] < first_sent.get(e["id"], e["t"])]
    assert not early, f"received before sent: one clock, and `sent` when a message leaves, order them: {early}"
    sent = {e["id"] for e in lines if e["event"] == "sent" and e.get("kind") == "update"}
    assert sent == {a["id"] for r in summary["rounds"] for a in r["accepted"]}, "a worker's events are missing"
    assert summary["conditions"]["connected"] == 4
    assert not list((tmp_path / "workers").glob("*.json")), "worker specs (they may hold a password) are removed"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_until(condition: Callable[[], bool], wait_s: float = 120.0) -> bool:
    """Poll ``condition`` until it holds; ``wait_s`` only bounds a hang."""
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _two_workers(run: subprocess.Popen[str] | subprocess.Popen[bytes]) -> list[int]:
    """The pids of the two worker processes ``run`` starts, once it has."""
    workers: list[int] = []

    def started() -> bool:
        workers[:] = [p for p in _children(run.pid) if "fedbus.runtime.worker_process" in _cmdline(p)]
        return len(workers) == 2

    assert _wait_until(started), "the run did not start two workers"
    return workers


@pytest.mark.parametrize("when", ["starting", "running"])
def test_a_killed_run_takes_its_worker_processes_along(tmp_path: Path, when: str) -> None:
    """SIGKILL of `fedbus run` leaves no client worker behind (they die with their parent), whether the workers
    were still starting (importing) or already running their clients."""
    run = subprocess.Popen([*FEDBUS, "run", "scenarios/stragglers.yaml", "--out", str(tmp_path), "--workers", "2",
                            "--quiet"], cwd=ROOT, stdin=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        workers = _two_workers(run)
        if when == "running":  # each worker writes its event part once it runs its clients
            assert _wait_until(lambda: len(list((tmp_path / "workers").glob("events-*.jsonl"))) == 2)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert _wait_until(lambda: not any(_alive(p) for p in workers)), f"workers outlived the run: {workers}"
    assert not (tmp_path / "summary.json").exists()


def test_a_worker_process_that_dies_mid_run_is_said(tmp_path: Path) -> None:
    """A worker process killed while the run goes on took its clients with it: the run says so at once
    (``worker-died`` in events.jsonl, a warning) and in summary.json (``client_processes_died``), and goes on with
    the clients it still has."""
    run = subprocess.Popen([*FEDBUS, "run", "scenarios/stragglers.yaml", "--out", str(tmp_path), "--workers", "2",
                            "--quiet"], cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        workers = _two_workers(run)
        log = tmp_path / "events.jsonl"
        assert _wait_until(lambda: log.exists() and "round-opened" in log.read_text()), "no round opened"
        os.kill(workers[1], signal.SIGKILL)
        _out, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    summary = json.loads((tmp_path / "summary.json").read_text())
    died = summary["client_processes_died"]
    assert [(d["worker"], d["exit_code"], d["during_run"]) for d in died] == [(1, -signal.SIGKILL, True)], died
    assert died[0]["clients"] == 4 and died[0]["first_client"].startswith("edge-")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["worker"] for e in events if e["event"] == "worker-died"] == [1]
    assert "worker process died" in stderr


def test_more_than_a_hundred_clients_in_the_runs_own_process_all_join(tmp_path: Path) -> None:
    """`--workers 0` with 120 clients on the embedded broker: every client is live when the first round opens.
    Clients that announced themselves before the aggregator subscribed reached it only as retained presences,
    of which rumqttd hands a new subscription at most 100: 20 were never seen, and the first round waited out the
    join timeout for them."""
    doc = {"name": "hundred-and-twenty", "seed": 5, "engine": "surrogate", "rounds": 1, "time_scale": 100,
           "task": {"name": "surrogate-skills", "train_size": 240, "val_size": 20, "test_size": 20},
           "clients": {"count": 120, "local_steps": 1, "batch_size": 1},
           "participation": {"fraction": 0.1, "min_clients": 5, "round_deadline_s": 300, "join_timeout_s": 6000},
           "aggregation": {"strategy": "concat", "max_prompt_chars": 12000}}
    scenario = tmp_path / "s.yaml"
    scenario.write_text(json.dumps(doc))  # JSON is YAML
    result = fedbus("run", str(scenario), "--out", str(tmp_path / "run"), "--workers", "0", "--quiet", timeout=180)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    opened = [e for e in events if e["event"] == "round-opened"]
    assert [e["live"] for e in opened] == [120], opened


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
    for expected in ("name:", "rounds: must be >= 1", "task.train_size: must be within [1, 100000000]",
                     "clients.count: must be >= 1", "clients.batch_sise: unknown key",
                     "participation.fraction: must be within"):
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


HIDE = """import sys
for name in {names!r}:
    sys.modules[name] = None  # as if not installed: find_spec() says None, and importing it fails
"""


def fedbus_without(libraries: tuple[str, ...], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`fedbus ARGS` in an interpreter where ``libraries`` cannot be imported (a sitecustomize hides them)."""
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE.format(names=libraries), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([*FEDBUS, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False, env=env)


@pytest.mark.parametrize(("hidden", "scenario", "line"), [
    (("textgrad",), "openai-compatible", "fedbus run: textgrad is not installed: pip install 'fedbus[llm]'"),
    pytest.param(("xllamacpp",), "local-llm", "fedbus run: xllamacpp is not installed: pip install 'fedbus[local]'",
                 marks=needs_library("textgrad")),
])
def test_run_without_an_optional_library_says_which_extra(hidden: tuple[str, ...], scenario: str, line: str,
                                                          tmp_path: Path) -> None:
    """An LLM scenario without its library: one line naming the extra, exit code 1, and nothing started."""
    out = tmp_path / "out"
    result = fedbus_without(hidden, tmp_path, "run", f"scenarios/{scenario}.yaml", "--out", str(out),
                            "--engine-url", "http://127.0.0.1:9/v1")
    assert (result.returncode, result.stderr, result.stdout) == (1, line + "\n", "")
    assert not out.exists()


def test_client_without_textgrad_says_which_extra(tmp_path: Path) -> None:
    """`fedbus client --engine openai` without textgrad: one line naming the extra, before joining anything."""
    result = fedbus_without(("textgrad",), tmp_path, "client", "--broker", "mqtt://127.0.0.1:9", "--run", "r1",
                            "--engine", "openai", "--engine-url", "http://127.0.0.1:9/v1", "--model", "m")
    assert (result.returncode, result.stderr, result.stdout) == (
        1, "fedbus client: textgrad is not installed: pip install 'fedbus[llm]'\n", "")


def test_resume_of_a_folder_that_is_no_run_to_resume_is_a_bad_option(tmp_path: Path) -> None:
    """--resume of a missing folder exited 1 (a failure) where every other bad option exits 2, and of a --simulate
    run's folder said it was not a fedbus run's."""
    missing = fedbus("run", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr, missing.stderr
    simulated = tmp_path / "sim"
    assert fedbus("run", "scenarios/quickstart.yaml", "--simulate", "--quiet", "--out", str(simulated)).returncode == 0
    refused = fedbus("run", "--resume", str(simulated))
    assert refused.returncode == 2, refused.stderr
    assert "a --simulate run, which is not resumed: run it again" in refused.stderr, refused.stderr
    assert "Traceback" not in missing.stderr + refused.stderr


@pytest.mark.parametrize(("extra", "doc", "says"), [
    (["--simulate"], "clients: {count: 3, remote: 2}", "fedbus run: --simulate has no remote clients"),
    ([], "clients: {count: 3, population: virtual}", "clients.population: virtual runs only in the simulator"),
], ids=["remote-under-simulate", "virtual-over-a-broker"])
def test_a_scenario_the_chosen_backend_cannot_run_is_refused_before_it_starts(tmp_path: Path, extra: list[str],
                                                                              doc: str, says: str) -> None:
    """clients.remote under --simulate was ignored in silence (no remote client can join a simulation), and a
    virtual population over a broker exited 1 (a failure) where every invalid scenario exits 2."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"name: t\nrounds: 1\ntask: {{name: surrogate-skills}}\n{doc}\n", encoding="utf-8")
    result = fedbus("run", str(scenario), *extra, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
