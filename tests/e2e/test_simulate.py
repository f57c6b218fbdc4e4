"""The simulator replays exactly: same scenario and seed, same bytes in events.jsonl."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbus.errors import EngineError
from fedbus.scenario import load_scenario
from fedbus.sim.run import simulate
from tests.conftest import ROOT
from tests.waiting import wait_until

# The scenarios with the most randomness in them: latency draws, dropouts, crashes, link faults, async merges.
REPLAYED = ["dropouts", "lossy-network", "partition", "fully-async", "partial-participation"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", REPLAYED)
def test_same_scenario_and_seed_give_byte_identical_events(name: str, tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    first = simulate(scenario, tmp_path / "a", progress=False)
    second = simulate(scenario, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "events.jsonl").read_bytes() == (tmp_path / "b" / "events.jsonl").read_bytes()
    assert first["rounds"] == second["rounds"]
    assert first["final"] == second["final"]
    assert first["totals"]["events"] > 50


def simulate_in_a_process(name: str, out: Path, hash_seed: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run([sys.executable, "-m", "fedbus", "run", f"scenarios/{name}.yaml", "--simulate", "--quiet",
                             "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                            check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return (out / "events.jsonl").read_bytes()


@pytest.mark.parametrize("name", ["lossy-network", "hostile-clients", "buffered-async"])
def test_replay_is_exact_across_processes_and_hash_seeds(name: str, tmp_path: Path) -> None:
    """Two `fedbus run --simulate` processes with different PYTHONHASHSEED write the same events.jsonl bytes
    (no set or dict order leaks into a decision)."""
    first = simulate_in_a_process(name, tmp_path / "a", "1")
    second = simulate_in_a_process(name, tmp_path / "b", "2")
    assert first.count(b"\n") > 50
    assert first == second


def test_another_seed_gives_another_run(tmp_path: Path) -> None:
    path = ROOT / "scenarios" / "lossy-network.yaml"
    simulate(load_scenario(path), tmp_path / "a", progress=False)
    simulate(load_scenario(path, seed=12345), tmp_path / "b", progress=False)
    assert digest(tmp_path / "a" / "events.jsonl") != digest(tmp_path / "b" / "events.jsonl")


def test_events_carry_virtual_time(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "stragglers.yaml")
    summary = simulate(scenario, tmp_path, progress=False)
    times = [json.loads(line)["t"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert times == sorted(times), "virtual time never runs backwards"
    assert 0 < times[-1] <= summary["simulated"]["virtual_s"]
    # a straggler scenario spans minutes of simulated time and takes well under that in wall time
    assert summary["simulated"]["virtual_s"] > 60
    assert summary["totals"]["wall_s"] < summary["simulated"]["virtual_s"]


def test_the_simulator_refuses_a_real_engine(tmp_path: Path) -> None:
    scenario = dataclasses.replace(load_scenario(ROOT / "scenarios" / "quickstart.yaml"), engine="openai")
    with pytest.raises(EngineError, match="surrogate"):
        simulate(scenario, tmp_path, progress=False)


LONG_SIMULATION = """\
name: long-simulation
seed: 5
engine: surrogate
rounds: 100000
task: {name: surrogate-skills, train_size: 200000}
clients: {count: 100000, population: virtual}
participation: {fraction: 0.0002}
aggregation: {strategy: concat}
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_simulation_leaves_its_rounds_in_an_interrupted_summary(sig: signal.Signals,
                                                                               tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM in the middle of a simulation: exit 130, summary.json with status 'interrupted' and the
    rounds closed so far (they left events.jsonl alone, and SIGTERM a bare exit 143), and a line saying the
    simulation is run again rather than resumed."""
    scenario, out = tmp_path / "long.yaml", tmp_path / "run"
    scenario.write_text(LONG_SIMULATION, encoding="utf-8")
    run = subprocess.Popen([sys.executable, "-m", "fedbus", "run", str(scenario), "--simulate", "--quiet", "--out",
                            str(out)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    events = out / "events.jsonl"
    wait_until(lambda: run.poll() is not None or (events.exists() and b'"round-closed"' in events.read_bytes()),
               "a round to close")
    run.send_signal(sig)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "run it again" in stderr and f"so far are in {out / 'summary.json'}" in stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "interrupted" and "not resumed" in summary["reason"]
    assert 1 <= len(summary["rounds"]) < 100000 and summary["totals"]["rounds_closed"] == len(summary["rounds"])


BUFFERED_AT_END = """
name: buf-end
seed: 2
engine: surrogate
rounds: 1
task: {name: surrogate-skills, train_size: 50, val_size: 10, test_size: 10}
clients: {count: 5, local_steps: 1}
participation: {min_clients: 2, round_deadline_s: 100, join_timeout_s: 100}
aggregation: {mode: buffered, buffer_size: 2}
"""
LATE_IN_SYNC = """
name: sync-late
seed: 2
engine: surrogate
rounds: 1
task: {name: surrogate-skills, train_size: 50, val_size: 10, test_size: 10}
clients:
  local_steps: 1
  groups:
    - {name: fast, count: 2, latency: {kind: constant, value_s: 1}}
    - {name: slow, count: 1, latency: {kind: constant, value_s: 9.9995}}
participation: {min_clients: 3, min_updates: 1, round_deadline_s: 10, join_timeout_s: 100}
aggregation: {strategy: concat}
"""


def _simulated(text: str, tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and events.jsonl's lines of the scenario ``text`` simulated."""
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    summary = simulate(load_scenario(path), tmp_path / "out", progress=False)
    return summary, [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("text", "told"), [(BUFFERED_AT_END, True), (LATE_IN_SYNC, False)],
                         ids=["buffered-at-the-end", "late-in-sync"])
def test_an_update_the_end_of_the_run_leaves_out_is_rejected_in_every_record(text: str, told: bool,
                                                                              tmp_path: Path) -> None:
    """Buffered mode, one round of two of five updates: the other three were 'accepted' into the buffer and then
    only listed in summary.json's rejected_after_last_round, with no event and no receipt, and the totals and the
    per-client counts left them out, as they left out a sync run's update rejected after its last round. Now each
    is rejected as any update is, and events.jsonl, the client's receipt and summary.json agree (the late sync
    update's sender has left with the run's end by the time its receipt comes)."""
    summary, lines = _simulated(text, tmp_path)
    aggregated = {a["id"] for r in summary["rounds"] for a in r["accepted"]}
    left_out = {r["id"] for r in summary["rejected_after_last_round"]}
    assert left_out, "the scenario leaves updates out at the end"
    rejected = [e for e in lines if e["event"] == "rejected" and e.get("kind") == "update"]
    receipts = {e["id"] for e in lines if e["event"] == "update-rejected"}
    assert {e["id"] for e in rejected if e["reason"] == "run-finished"} == left_out
    assert (left_out <= receipts) == told, "each client still there was told"
    assert not aggregated & left_out
    sent = {e["id"] for e in lines if e["event"] == "sent" and e.get("kind") == "update"}
    assert sent == aggregated | {e["id"] for e in rejected}, "every update sent is aggregated or rejected"
    assert summary["totals"]["updates_rejected"] == len(rejected)
    assert sum(c["rejected"] for c in summary["clients"].values()) == len(rejected)


DELAYED_AT_END = """
name: delayed-end
seed: 1
engine: surrogate
rounds: 1
task: {name: surrogate-skills, train_size: 40, val_size: 10, test_size: 10}
clients:
  local_steps: 1
  groups:
    - {name: fast, count: 2, latency: {kind: constant, value_s: 5}}
    - {name: slowlink, count: 1, latency: {kind: constant, value_s: 1}, network: {delay_s: 6}}
participation: {min_clients: 3, min_updates: 1, round_deadline_s: 10, join_timeout_s: 100}
aggregation: {strategy: concat}
"""


def test_an_update_its_link_still_delays_when_the_run_ends_is_said(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """slowlink-0's update leaves its client at t=7 and its link delays it 6 s, past the run's end at t=10: it was
    in no event at all (no sent, no link-held-at-end), and the summary called the client missing. Every update a
    client makes is now in events.jsonl: this one as held at the end, delayed."""
    from fedbus.client import session as client_session
    from fedbus.protocol.messages import Failure, Update

    made: dict[str, str] = {}
    send = client_session.ClientSession._send

    def noting(self: client_session.ClientSession, sent: client_session.Send) -> list[Any]:
        if isinstance(sent.message, Update | Failure):
            made.setdefault(sent.message.msg_id, self.client)
        return send(self, sent)

    monkeypatch.setattr(client_session.ClientSession, "_send", noting)
    _summary, lines = _simulated(DELAYED_AT_END, tmp_path)
    said = {e["id"] for e in lines if e.get("client") != "aggregator" and e.get("id") and e["event"] in
            ("sent", "link-lost", "link-held", "queued-offline", "link-held-at-end", "send-refused")}
    assert made and set(made) <= said, {k: v for k, v in made.items() if k not in said}
    (held,) = [e for e in lines if e["event"] == "link-held-at-end"]
    assert held["client"] == "slowlink-0" and held["delayed"] is True and held["kind"] == "update"
    assert not any(e["event"] == "sent" and e.get("id") == held["id"] for e in lines), "never sent"
