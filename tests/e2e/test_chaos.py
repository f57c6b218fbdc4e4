"""Chaos: brokers restarted, the aggregator killed and resumed, clients killed and frozen, an aggregator
that disappears under a remote client. Real processes, real brokers, kill -9.

Each test asserts the run exits 0 (or resumes to 0) and that every round of the scenario is accounted
for: every selected client's update is aggregated once, or rejected with a recorded reason, or the
client is recorded as gone; no update id enters two aggregates. Waits are on conditions, bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import free_port
from tests.conftest import ROOT, _mosquitto_binary, mosquitto_test_conf, wait_port
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

FEDBUS = [sys.executable, "-m", "fedbus"]
ROUNDS = 12
SCENARIO = """\
name: chaos
seed: 3
security: {security}
engine: surrogate
rounds: {rounds}
initial_prompt: >-
  You will answer a reasoning question. Think step by step.
  The last line of your answer should be 'Answer: $VALUE' where VALUE is a number.
task: {{name: surrogate-skills, train_size: 160, val_size: 80, test_size: 160, partition: by-skill}}
clients: {{count: 4, local_steps: 2, batch_size: 3, step_latency_s: 0.4}}
participation: {{fraction: 1.0, min_clients: 2, min_updates: 2, round_deadline_s: {deadline}, join_timeout_s: 30}}
aggregation: {{strategy: concat, max_prompt_chars: 12000}}
"""
Summary = dict[str, Any]


# ---------------------------------------------------------------------- helpers




def events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line a kill cut short
    return found


def rounds_closed(out: Path) -> int:
    return sum(1 for e in events(out) if e["event"] == "round-closed")


def rounds_opened(out: Path) -> int:
    return sum(1 for e in events(out) if e["event"] == "round-opened")


def start_run(scenario: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*FEDBUS, "run", str(scenario), "--out", str(out), "--quiet", *extra], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], wait_s: float = 300.0) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"the process did not finish within {wait_s:g} s; stderr:\n{stderr[-3000:]}") from None
    return process.returncode, stderr


def summary_of(out: Path) -> Summary:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def assert_every_round_accounted(summary: Summary, rounds: int = ROUNDS) -> None:
    """All rounds closed, in order, once; every selected client's update aggregated once, rejected with a
    reason, reported failed, or the client recorded gone; no update id in two aggregates."""
    assert summary["status"] == "completed", summary["reason"]
    rs = summary["rounds"]
    assert [r["round"] for r in rs] == list(range(1, rounds + 1))
    accepted = Counter(a["id"] for r in rs for a in r["accepted"])
    assert all(n == 1 for n in accepted.values()), "an update entered two aggregates"
    for r in rs:
        answered = ({a["client"] for a in r["accepted"]} | {x["client"] for x in r["rejected"]}
                    | {f["client"] for f in r.get("failed", [])} | set(r["dropped"]) | set(r["missing"]))
        assert set(r["selected"]) <= answered, f"round {r['round']}: selected clients with no outcome"
        assert all(x["reason"] for x in r["rejected"])
    assert summary["totals"]["rounds_closed"] == rounds


def assert_no_update_lost(summary: Summary, evs: list[dict[str, Any]]) -> None:
    """Every update a client sent (some twice: a resend after the broker came back) reached the aggregator and
    was aggregated or rejected exactly once."""
    sent = {e["id"] for e in evs
            if e["event"] == "sent" and e.get("kind") == "update" and e.get("client") != "aggregator"}
    accepted = {a["id"] for r in summary["rounds"] for a in r["accepted"]}
    rejected = Counter(x["id"] for r in summary["rounds"] for x in r["rejected"] if x["id"])
    rejected.update(x["id"] for x in summary["rejected_after_last_round"] if x["id"])
    assert all(n == 1 for n in rejected.values()), "an update was rejected twice"
    assert not accepted & set(rejected), "an update both accepted and rejected"
    undecided = sorted(sent - accepted - set(rejected))
    assert not undecided, f"sent but never decided: {undecided}"


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "chaos.yaml"
    path.write_text(SCENARIO.format(rounds=ROUNDS, deadline=30, security="signed+sealed"), encoding="utf-8")
    return path


@pytest.fixture
def v1_scenario(tmp_path: Path) -> Path:
    """For runs a remote `fedbus client` joins: without an invitation it speaks protocol v1."""
    path = tmp_path / "chaos-v1.yaml"
    path.write_text(SCENARIO.format(rounds=ROUNDS, deadline=30, security="none"), encoding="utf-8")
    return path


class Mosquitto:
    """A mosquitto of our own (persistence on, broker-config/mosquitto.conf) that a test stops and restarts."""

    def __init__(self, workdir: Path) -> None:
        self.binary = _mosquitto_binary()
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(mosquitto_test_conf(self.port, workdir), encoding="utf-8")
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return BrokerAddress(host="127.0.0.1", port=self.port).url()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(30)
            self.process = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ---------------------------------------------------------------------- broker restarts


def test_a_run_survives_its_embedded_broker_killed(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = start_run(scenario, out)
    wait_until(lambda: rounds_closed(out) >= 3 or run.poll() is not None, "round 3 to close")
    pid = next(e["pid"] for e in events(out) if e["event"] == "broker-started")
    os.kill(pid, signal.SIGKILL)
    code, stderr = finish(run)
    assert code == 0, stderr[-3000:]
    summary, evs = summary_of(out), events(out)
    assert_every_round_accounted(summary)
    assert_no_update_lost(summary, evs)
    assert [e["event"] for e in evs if e["event"].startswith("broker-")] == \
        ["broker-started", "broker-died", "broker-started"]
    assert any(e["event"] == "reconnected" and e["client"] == "aggregator" for e in evs)
    assert {e["client"] for e in evs if e["event"] == "connected" and e["n"] >= 2} == \
        {f"client-{i}" for i in range(4)}, "every client reconnected"


def test_a_run_survives_a_mosquitto_restart(scenario: Path, tmp_path: Path, mosquitto: Mosquitto) -> None:
    out = tmp_path / "run"
    run = start_run(scenario, out, "--broker", mosquitto.url)
    wait_until(lambda: rounds_closed(out) >= 3 or run.poll() is not None, "round 3 to close")
    mosquitto.stop()
    time.sleep(3.0)  # the outage itself: the broker is away for three seconds
    mosquitto.start()
    code, stderr = finish(run)
    assert code == 0, stderr[-3000:]
    summary, evs = summary_of(out), events(out)
    assert_every_round_accounted(summary)
    assert_no_update_lost(summary, evs)
    assert any(e["event"] == "reconnected" and e["client"] == "aggregator" for e in evs)
    assert sum(r["status"] == "aggregated" for r in summary["rounds"]) >= ROUNDS - 1


# ---------------------------------------------------------------------- aggregator kill -9 and --resume


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_an_aggregator_killed_and_resumed_finishes_the_run(scenario: Path, tmp_path: Path, broker: str,
                                                           request: pytest.FixtureRequest) -> None:
    out = tmp_path / "run"
    extra: tuple[str, ...] = ()
    if broker == "mosquitto":
        extra = ("--broker", request.getfixturevalue("mosquitto").url)
    run = start_run(scenario, out, *extra)
    # in the middle of round 5: its tasks out, its clients at work (a round takes ~0.8 s of local steps)
    wait_until(lambda: rounds_opened(out) >= 5 or run.poll() is not None, "round 5 to open")
    run.kill()  # kill -9: no summary, no clean disconnect; the embedded broker and in-process clients die too
    run.wait(30)
    assert not (out / "summary.json").exists()
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["status"] == "running" and checkpoint["rounds_closed"] >= 4
    resumed = subprocess.run([*FEDBUS, "run", "--resume", str(out), "--quiet", *extra], cwd=ROOT, timeout=300,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(out)
    assert_every_round_accounted(summary)
    assert len(summary["resumes"]) == 1 and summary["resumes"][0]["rounds_closed_before"] >= 4
    assert summary["run_id"] == checkpoint["run_id"]
    # every round, the one open at the kill included: over mosquitto the killed clients' Last Wills reached the
    # resumed aggregator (queued for its persistent session) and closed that round as all gone, before the
    # clients it starts again could answer; they are now recorded as stale, from the earlier session
    assert [r["status"] for r in summary["rounds"]] == ["aggregated"] * ROUNDS, summary["rounds"]
    resumed_at = next(i for i, e in enumerate(events(out)) if e["event"] == "run-resumed")
    stale = [e for e in events(out)[resumed_at:] if e["event"] == "stale-presence"]
    assert all(e["session"] == "0" and e["current"] == "r1" for e in stale), stale
    if broker == "mosquitto":
        assert {e["client"] for e in stale if e["status"] == "offline"} == {f"client-{i}" for i in range(4)}, stale
    assert json.loads((out / "checkpoint.json").read_text())["status"] == "completed"
    again = subprocess.run([*FEDBUS, "run", "--resume", str(out)], cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, check=False)
    assert again.returncode != 0 and "nothing to resume" in again.stderr and "Traceback" not in again.stderr


def test_a_run_stopped_after_its_last_round_but_before_its_summary_ends_on_resume(tmp_path: Path) -> None:
    """kill -9 between the last round's close and the summary (about the last second of a run): the journal says
    finished, the checkpoint 'running', and there is no summary.json or global_prompts.jsonl. `--resume` used to
    refuse it ('already finished; nothing to resume') for ever, the results lost; it now ends the run: the same
    rounds, prompts and final scores as the run wrote when it was not stopped. Made exactly, not by a timed kill:
    a completed run's folder put back in that state."""
    scenario = tmp_path / "short.yaml"
    scenario.write_text(SCENARIO.format(rounds=3, deadline=30, security="signed+sealed"), encoding="utf-8")
    out = tmp_path / "run"
    code, stderr = finish(start_run(scenario, out))
    assert code == 0, stderr[-3000:]
    first, prompts = summary_of(out), (out / "global_prompts.jsonl").read_bytes()
    (out / "summary.json").unlink()
    (out / "global_prompts.jsonl").unlink()
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    (out / "checkpoint.json").write_text(json.dumps({**checkpoint, "status": "running"}))
    resumed = subprocess.run([*FEDBUS, "run", "--resume", str(out), "--quiet"], cwd=ROOT, timeout=300,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = summary_of(out)
    assert_every_round_accounted(summary, rounds=3)
    assert [r["status"] for r in summary["rounds"]] == [r["status"] for r in first["rounds"]]
    assert summary["final"]["prompt"] == first["final"]["prompt"]
    assert summary["final"]["test_accuracy"] == first["final"]["test_accuracy"] is not None
    assert (out / "global_prompts.jsonl").read_bytes() == prompts
    assert json.loads((out / "checkpoint.json").read_text())["status"] == "completed"


def test_an_interrupted_run_leaves_a_summary_that_compare_reads(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = start_run(scenario, out)
    wait_until(lambda: rounds_closed(out) >= 2 or run.poll() is not None, "round 2 to close")
    run.send_signal(signal.SIGTERM)
    code, stderr = finish(run, 120)
    assert code == 130 and "--resume" in stderr and "Traceback" not in stderr
    summary = summary_of(out)
    assert summary["status"] == "interrupted" and len(summary["rounds"]) >= 2
    table = subprocess.run([*FEDBUS, "compare", str(out)], cwd=ROOT, timeout=60, capture_output=True, text=True,
                           check=False)
    assert table.returncode == 0 and "interrupted" in table.stdout, table.stderr


def test_an_interrupted_run_with_workers_keeps_their_events_and_resumes_from_them(scenario: Path,
                                                                                 tmp_path: Path) -> None:
    """SIGINT of a run whose clients live in two worker processes: events.jsonl gets the workers' events (their
    parts were left unmerged, and the summary counted only the aggregator's); `--resume` then goes on, and in the
    end every update sent, in either run, is accounted for (a resumed worker's part had overwritten the first's)."""
    out = tmp_path / "run"
    run = start_run(scenario, out, "--workers", "2")
    wait_until(lambda: rounds_closed(out) >= 2 or run.poll() is not None, "round 2 to close")
    run.send_signal(signal.SIGINT)
    code, stderr = finish(run, 120)
    assert code == 130 and "Traceback" not in stderr, stderr[-3000:]
    summary, evs = summary_of(out), events(out)
    assert summary["status"] == "interrupted"
    sent = [e for e in evs if e["event"] == "sent" and e.get("kind") == "update" and "topic" not in e]
    assert sent, "the workers' clients' events are missing"
    assert summary["conditions"].get("connected", 0) >= 4
    assert not list((out / "workers").glob("events-*.jsonl")), "worker parts left unmerged"
    resumed = subprocess.run([*FEDBUS, "run", "--resume", str(out), "--quiet", "--workers", "2"], cwd=ROOT,
                             timeout=300, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary, evs = summary_of(out), events(out)
    assert summary["status"] == "completed"
    assert {e["id"] for e in sent} <= {e["id"] for e in evs if e["event"] == "sent"}, "the first run's events went"
    assert_every_round_accounted(summary)
    assert_no_update_lost(summary, evs)


def test_a_run_with_workers_killed_and_resumed_keeps_what_the_workers_logged(scenario: Path, tmp_path: Path) -> None:
    """kill -9 of a run with worker processes: they die with it, their event parts unmerged; the resumed run's
    workers append to those parts (they had overwritten them) and the end merges both runs' lines."""
    out = tmp_path / "run"
    run = start_run(scenario, out, "--workers", "2")
    wait_until(lambda: rounds_closed(out) >= 2 or run.poll() is not None, "round 2 to close")
    run.kill()
    run.wait(30)
    before = {json.loads(line)["id"] for part in (out / "workers").glob("events-*.jsonl")
              for line in part.read_text().splitlines()
              if line.endswith("}") and '"event":"sent"' in line and '"kind":"update"' in line}
    assert before, "the workers logged no update before the kill"
    resumed = subprocess.run([*FEDBUS, "run", "--resume", str(out), "--quiet", "--workers", "2"], cwd=ROOT,
                             timeout=300, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert before <= {e["id"] for e in events(out) if e["event"] == "sent"}, "the killed run's worker lines went"
    assert_every_round_accounted(summary_of(out))


# ---------------------------------------------------------------------- clients killed, frozen, abandoned


def start_client(broker: BrokerAddress, run_id: str, client: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*FEDBUS, "client", "--broker", broker.url(), "--run", run_id, "--id", client, *extra],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_remote_client_killed_or_frozen_mid_run(tmp_path: Path, embedded_broker: BrokerAddress, how: str) -> None:
    """Killed: its Last Will marks it gone at once. Frozen: its connection stays up (rumqttd does not time it
    out), so each round it is in waits for the deadline, records it missing, and goes on with the others."""
    rounds = 6
    scenario = tmp_path / "chaos.yaml"
    scenario.write_text(SCENARIO.format(rounds=rounds, deadline=6, security="none"), encoding="utf-8")
    run_id = f"chaos-{how.lower()}-{os.getpid()}"
    remote = start_client(embedded_broker, run_id, "remote-0")
    out = tmp_path / "run"
    run = start_run(scenario, out, "--broker", embedded_broker.url(), "--run-id", run_id)
    try:
        wait_until(lambda: any(e["event"] == "accepted" and e["client"] == "remote-0" for e in events(out)) or
                   run.poll() is not None, "the remote client's first accepted update")
        hit = rounds_closed(out)
        remote.send_signal(getattr(signal, how))
        code, stderr = finish(run)
    finally:
        if remote.poll() is None:
            remote.send_signal(signal.SIGCONT)
            remote.kill()
        remote.communicate()
    assert code == 0, stderr[-3000:]
    summary = summary_of(out)
    assert_every_round_accounted(summary, rounds)
    later = [r for r in summary["rounds"] if r["round"] > hit + 1]
    assert later, "rounds after the signal"
    assert not any(a["client"] == "remote-0" for r in later for a in r["accepted"])
    if how == "SIGKILL":
        assert not any("remote-0" in r["selected"] for r in later), "a dead client is not selected again"
    else:
        assert all("remote-0" in r["missing"] and r["close_reason"] == "deadline" for r in later)
    assert all(r["status"] == "aggregated" for r in summary["rounds"]), "the others carried the rounds"


def test_a_remote_client_gives_up_on_a_silent_aggregator(embedded_broker: BrokerAddress) -> None:
    started = time.monotonic()
    client = start_client(embedded_broker, f"nobody-{os.getpid()}", "lonely", "--aggregator-timeout", "3")
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "gave up: the aggregator" in lines[0] and "never heard from" in lines[0], stderr
    assert time.monotonic() - started < 45


def test_a_remote_client_leaves_when_its_aggregator_is_killed(v1_scenario: Path, tmp_path: Path,
                                                              embedded_broker: BrokerAddress) -> None:
    run_id = f"chaos-abandoned-{os.getpid()}"
    remote = start_client(embedded_broker, run_id, "remote-0", "--aggregator-timeout", "8")
    out = tmp_path / "run"
    run = start_run(v1_scenario, out, "--broker", embedded_broker.url(), "--run-id", run_id)
    wait_until(lambda: rounds_closed(out) >= 2 or run.poll() is not None, "round 2 to close")
    run.kill()
    run.communicate()
    stdout, stderr = remote.communicate(timeout=90)
    assert remote.returncode == 1, stderr
    assert "the aggregator went offline" in stdout, "its Last Will told the client at once"
    assert "gave up: the aggregator" in stderr and "offline" in stderr


def test_a_second_client_with_a_live_id_is_refused(embedded_broker: BrokerAddress) -> None:
    run_id = f"chaos-twins-{os.getpid()}"
    first = start_client(embedded_broker, run_id, "twin", "--aggregator-timeout", "60")
    try:
        assert first.stdout is not None
        wait_until(lambda: "connected to the broker" in (first.stdout.readline() or ""), "the first twin to connect",
                   60)
        second = subprocess.run([*FEDBUS, "client", "--broker", embedded_broker.url(), "--run", run_id, "--id", "twin"],
                                cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                check=False)
        assert second.returncode == 1 and "already live" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None, "the first one was not knocked off"
    finally:
        first.kill()
        first.communicate()
