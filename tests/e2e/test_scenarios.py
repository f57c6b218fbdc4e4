"""Every shipped scenario through `fedbus run`, over the embedded broker and over mosquitto."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedbus.faults.behaviour import is_hijack
from fedbus.runtime.address import BrokerAddress
from fedbus.scenario import load_scenario
from tests.conftest import ROOT

Summary = dict[str, Any]


def run(scenario: str, out: Path, broker: str | None, *extra: str) -> tuple[Summary, list[dict[str, Any]]]:
    args = [sys.executable, "-m", "fedbus", "run", f"scenarios/{scenario}.yaml", "--out", str(out), "--quiet",
            *extra]
    if broker:
        args += ["--broker", broker]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), events


def update_ids(events: list[dict[str, Any]], event: str) -> Counter[str]:
    return Counter(e["id"] for e in events if e["event"] == event and e.get("kind") == "update")


def assert_no_update_lost(summary: Summary, events: list[dict[str, Any]]) -> None:
    """Every update a client published reached the aggregator once, and is in exactly one aggregate or
    rejected with a reason; nothing the aggregator received was never sent."""
    sent = update_ids([e for e in events if e.get("client") != "aggregator"], "sent")
    received = update_ids(events, "received")
    assert sent, "no client sent an update"
    resent = Counter(e["id"] for e in events if e["event"] == "resent")  # no receipt yet: the same id again
    assert all(n == 1 + resent[i] for i, n in sent.items()), "a client logged one update as sent twice"
    assert all(n == 1 for n in received.values()), "a duplicate delivery reached the aggregator core"
    assert set(sent) - set(received) == set(), f"sent but never received: {sorted(set(sent) - set(received))}"
    assert set(received) - set(sent) == set(), f"received but never sent: {sorted(set(received) - set(sent))}"
    lost_on_link = {e["id"] for e in events if e["event"] == "link-lost" and e.get("direction") == "up"}
    assert not lost_on_link & set(received), "an update the fault plan lost arrived anyway"
    accepted = Counter(a["id"] for r in summary["rounds"] for a in r["accepted"])
    rejected = Counter(x["id"] for r in summary["rounds"] for x in r["rejected"] if x["id"])
    rejected.update(x["id"] for x in summary["rejected_after_last_round"] if x["id"])
    assert all(n == 1 for n in accepted.values()), "an update entered two aggregates"
    assert all(n == 1 for n in rejected.values()), "an update was rejected twice"
    assert not set(accepted) & set(rejected), "an update both accepted and rejected"
    assert set(accepted) | set(rejected) == set(received), \
        f"received but neither aggregated nor rejected: {sorted(set(received) - set(accepted) - set(rejected))}"
    assert summary["totals"]["updates_accepted"] == len(accepted)


def assert_rounds_aggregated(summary: Summary) -> None:
    """Every round (sync) or aggregation (buffered/async) of the scenario aggregated, each a new version,
    and the global prompt moved away from the initial one."""
    rs = rounds(summary)
    want = summary["scenario"]["rounds"]
    assert [r["round"] for r in rs] == list(range(1, want + 1))
    assert [r["status"] for r in rs] == ["aggregated"] * want, [r["status"] for r in rs]
    assert [r["version_after"] for r in rs] == list(range(1, want + 1))
    assert all(r["accepted"] for r in rs), "an aggregated round with no accepted update"
    assert summary["totals"]["rounds_aggregated"] == want == summary["final"]["version"]
    assert summary["final"]["prompt"] != summary["scenario"]["initial_prompt"]


def assert_aggregates_keep_every_prompt(summary: Summary) -> None:
    """Sync concat: every aggregate is exactly every accepted prompt joined by newlines (its length says so, to the
    character), and what the budget cut is recorded to the character; buffered/async merges never shrink the
    global prompt."""
    limit = summary["scenario"]["aggregation"]["max_prompt_chars"]
    rs = rounds(summary)
    if summary["mode"] == "sync":
        assert summary["scenario"]["aggregation"]["strategy"] == "concat"
        for r in rs:
            sent = [a["prompt_chars"] for a in r["accepted"]]
            assert r["aggregate_chars"] == sum(sent) + len(sent) - 1, f"round {r['round']}: a client's text is missing"
            assert r["global_prompt_chars"] == min(r["aggregate_chars"], limit)
            assert r["aggregate_cut_chars"] == r["aggregate_chars"] - r["global_prompt_chars"]
        whole = [r for r in rs if not r["aggregate_cut_chars"]]
        assert whole, "every aggregate hit the budget: nothing to check"
        assert [r["sentence_overlap"] for r in whole] == [1.0] * len(whole), "a concat aggregate lost a sentence"
        assert summary["totals"]["aggregate_chars_cut"] == sum(r["aggregate_cut_chars"] for r in rs)
        assert summary["conditions"].get("aggregate-cut", 0) == sum(1 for r in rs if r["aggregate_cut_chars"])
    else:
        chars = [r["global_prompt_chars"] for r in rs]
        assert chars == sorted(chars), f"a weighted merge shrank the global prompt: {chars}"


def rounds(summary: Summary) -> list[dict[str, Any]]:
    return list(summary["rounds"])


def rejections(s: Summary) -> list[tuple[str, str]]:
    return [(x["client"], x["reason"]) for r in rounds(s) for x in r["rejected"]]


def expected_deadlines(s: Summary, fixed: float, k: float, window: int) -> list[float]:
    """The adaptive rule, recomputed from the arrival times in the summary: before each round,
    min(fixed, median + k * MAD) of the last ``window`` arrivals, once three are known."""
    out: list[float] = []
    arrivals: list[float] = []
    for r in rounds(s):
        recent = arrivals[-window:]
        if len(recent) < 3:
            out.append(fixed)
        else:
            median = statistics.median(recent)
            out.append(min(fixed, median + k * statistics.median(abs(a - median) for a in recent)))
        arrivals += sorted(a["arrived_s"] for a in r["accepted"])
    return out


def check_stragglers(s: Summary, events: list[dict[str, Any]]) -> None:
    assert any(r["missing"] for r in rounds(s)), "no straggler missed a deadline"
    assert any(r["close_reason"] == "deadline" for r in rounds(s))
    assert ("stale-round" in {reason for _, reason in rejections(s)}
            or any(x["reason"] == "run-finished" for x in s["rejected_after_last_round"])), \
        "no straggler's update arrived after its round"
    opened = [e["deadline_s"] for e in events if e["event"] == "round-opened"]
    adaptive = s["scenario"]["participation"]["adaptive_deadline"]
    fixed = s["scenario"]["participation"]["round_deadline_s"]
    want = expected_deadlines(s, fixed, adaptive["k"], adaptive["window"])
    assert opened == pytest.approx(want, abs=0.01), "the adaptive deadline is not the documented formula"
    assert opened[0] == fixed
    if s["broker"]["kind"] == "simulated":  # on a real bus, load can stretch arrivals past the fixed deadline
        assert min(opened) < fixed * 0.75, f"the adaptive deadline never shortened a round: {opened}"


def check_dropouts(s: Summary, events: list[dict[str, Any]]) -> None:
    assert any("crashy-0" in r["dropped"] for r in rounds(s)), "the crash did not show as dropped"
    assert any("hangy-0" in r["missing"] for r in rounds(s)), "the hang did not show as missing"
    assert s["conditions"].get("hang", 0) >= 1
    assert any("crashy-0" in [a["client"] for a in r["accepted"]] for r in rounds(s)[2:]), "crashy never rejoined"


def check_partial(s: Summary, events: list[dict[str, Any]]) -> None:
    assert all(len(r["selected"]) < 24 for r in rounds(s))
    assert any(r["close_reason"] == "target-reached" for r in rounds(s))
    assert s["conditions"].get("dropout", 0) >= 1
    dropped_out = {(e["client"], e["round"]) for e in events if e["event"] == "dropout"}
    accepted = {(a["client"], r["round"]) for r in rounds(s) for a in r["accepted"]}
    assert not dropped_out & accepted, "a client that dropped out of a round had an update accepted for it"


def check_buffered(s: Summary, events: list[dict[str, Any]]) -> None:
    assert s["mode"] == "buffered"
    assert all(len(r["accepted"]) == 3 for r in rounds(s))
    stale = [a["staleness"] for r in rounds(s) for a in r["accepted"]]
    assert max(stale) <= 3
    assert max(stale) > 0
    assert all(a["weight"] == pytest.approx((1 + a["staleness"]) ** -0.5, abs=1e-3)
               for r in rounds(s) for a in r["accepted"])
    assert all(reason in ("too-stale", "run-finished") for _, reason in rejections(s)), rejections(s)


def check_async(s: Summary, events: list[dict[str, Any]]) -> None:
    assert s["mode"] == "async"
    assert all(len(r["accepted"]) == 1 for r in rounds(s))
    assert all(a["staleness"] <= 6 for r in rounds(s) for a in r["accepted"])
    assert [r["version_after"] for r in rounds(s)] == list(range(1, 13))


def check_lossy(s: Summary, events: list[dict[str, Any]]) -> None:
    assert s["conditions"].get("link-lost", 0) >= 1
    assert s["conditions"].get("link-duplicated", 0) >= 1
    assert any(r["missing"] for r in rounds(s)), "a lost update must show as missing"
    duplicated = {e["id"] for e in events if e["event"] == "link-duplicated" and e.get("direction") == "up"}
    updates = update_ids(events, "received")
    # the aggregator's own dedup lines carry the topic; the clients' do not
    dropped = Counter(e["id"] for e in events if e["event"] == "duplicate-delivery" and "topic" in e)
    assert duplicated, "no update was duplicated on its way up"
    assert s["totals"]["duplicates_dropped"] == sum(dropped.values()) >= len(duplicated)
    assert {i for i in dropped if i in updates} == duplicated, "a duplicated update was not dropped as a duplicate"
    lost = {(e["round"], e["client"]) for e in events if e["event"] == "link-lost" and e.get("direction") == "up"}
    for rnd, client in lost:
        r = rounds(s)[rnd - 1] if rnd <= len(rounds(s)) else None
        assert r is None or client not in [a["client"] for a in r["accepted"]], "a lost update was aggregated"


def check_partition(s: Summary, events: list[dict[str, Any]]) -> None:
    cut = [i for i, r in enumerate(rounds(s)) if {"island-0", "island-1"} & set(r["dropped"])]
    assert cut, "the partition did not drop the island clients"
    later = rounds(s)[cut[0] + 1:]
    assert any("island-0" in [a["client"] for a in r["accepted"]] for r in later), "island never came back"


def check_hostile(s: Summary, events: list[dict[str, Any]]) -> None:
    replayed = [reason for client, reason in rejections(s) if client.startswith("replayer")]
    assert replayed, "the replaying client was never rejected"
    assert set(replayed) == {"stale-round"}, replayed
    replayer = s["clients"]["replayer-0"]
    assert replayer["accepted"] <= 1 < replayer["rejected"], "the replayed stale updates were accepted"
    hostile = [a for r in rounds(s) for a in r["accepted"] if a["client"] == "hostile-0"]
    assert hostile, "the hostile client's valid-looking updates should be accepted (they are well-formed)"
    assert any(a["client"].startswith("noisy") for r in rounds(s) for a in r["accepted"])
    # the effect: concat carries the hijack into the global prompt (fedbus filters nothing)
    assert is_hijack(s["final"]["prompt"]), "the hijacking instruction never reached the global prompt"


def check_large(s: Summary, events: list[dict[str, Any]]) -> None:
    assert s["scenario"]["clients"]["count"] == 200
    assert s["conditions"]["connected"] >= 200
    assert all(len(r["selected"]) == 25 for r in rounds(s))
    if s["broker"]["kind"] != "simulated":
        assert s["client_processes"] >= 1, "200 clients should be spread over worker processes"


def check_quickstart(s: Summary, events: list[dict[str, Any]]) -> None:
    assert all(len(r["accepted"]) == 4 for r in rounds(s))
    assert all(r["close_reason"] == "all-answered" for r in rounds(s))
    assert rejections(s) == [] and s["rejected_after_last_round"] == []


CHECKS: dict[str, Callable[[Summary, list[dict[str, Any]]], None]] = {
    "quickstart": check_quickstart,
    "stragglers": check_stragglers,
    "dropouts": check_dropouts,
    "partial-participation": check_partial,
    "buffered-async": check_buffered,
    "fully-async": check_async,
    "lossy-network": check_lossy,
    "partition": check_partition,
    "hostile-clients": check_hostile,
    "large-federation": check_large,
}


# Scenarios on real LLMs: exercised by tests/integration/test_llm_federation.py and test_paper_scenarios.py
# (scripted server) and tests/integration/test_local_federation.py (the embedded model), not run whole here.
LLM_SCENARIOS = {"local-llm", "openai-compatible", "paper-heterogeneous", "paper-homogeneous", "paper-centralized",
                 "paper-concat-overflow", "paper-local"}


def test_every_scenario_file_has_an_end_to_end_check() -> None:
    """No shipped surrogate scenario goes untested; the LLM ones are the ones named above."""
    shipped = {p.stem: load_scenario(p).engine for p in (ROOT / "scenarios").glob("*.yaml")}
    assert {name for name, engine in shipped.items() if engine == "surrogate"} == set(CHECKS)
    assert {name for name, engine in shipped.items() if engine != "surrogate"} <= LLM_SCENARIOS


def check_outcome(name: str, summary: Summary, events: list[dict[str, Any]]) -> None:
    """What every scenario run must show, then the scenario's own signature."""
    assert_no_update_lost(summary, events)
    assert_rounds_aggregated(summary)
    assert_aggregates_keep_every_prompt(summary)
    CHECKS[name](summary, events)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_scenario_on_the_embedded_broker(name: str, tmp_path: Path) -> None:
    """The scenario completes on the embedded rumqttd and its summary shows the injected conditions."""
    summary, events = run(name, tmp_path, None)
    assert summary["status"] == "completed"
    check_outcome(name, summary, events)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_scenario_on_mosquitto(name: str, tmp_path: Path, mosquitto_broker: BrokerAddress) -> None:
    """The scenario completes on mosquitto and its summary shows the injected conditions."""
    summary, events = run(name, tmp_path, mosquitto_broker.url())
    assert summary["status"] == "completed"
    assert summary["broker"]["kind"] == "external"
    check_outcome(name, summary, events)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_scenario_simulated(name: str, tmp_path: Path) -> None:
    """The scenario completes in the deterministic simulator, with the same conditions showing."""
    summary, events = run(name, tmp_path, None, "--simulate")
    assert summary["status"] == "completed"
    assert summary["broker"]["kind"] == "simulated"
    check_outcome(name, summary, events)


def test_an_update_its_link_holds_to_the_end_is_said_over_a_real_broker(tmp_path: Path) -> None:
    """Everything on one client's links is reordered (held until the link's next message, which never comes: its
    tasks, so it never has an update to send): at the end each connected client logs what its links still hold,
    so that nothing vanishes without a word."""
    doc = {"name": "held-to-the-end", "seed": 3, "engine": "surrogate", "rounds": 2, "time_scale": 100,
           "task": {"name": "surrogate-skills", "train_size": 60, "val_size": 20, "test_size": 20},
           "clients": {"local_steps": 1, "batch_size": 1, "groups": [
               {"name": "fine", "count": 2}, {"name": "stuck", "count": 1, "network": {"reorder": 1.0}}]},
           "participation": {"min_clients": 3, "min_updates": 1, "round_deadline_s": 200, "join_timeout_s": 3000},
           "aggregation": {"strategy": "concat", "max_prompt_chars": 12_000}}
    path = tmp_path / "held.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    result = subprocess.run([sys.executable, "-m", "fedbus", "run", str(path), "--out", str(tmp_path / "run"),
                             "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    held = [e["id"] for e in events if e["event"] == "link-held" and e["client"] == "stuck-0"]
    at_end = [e for e in events if e["event"] == "link-held-at-end"]
    assert len(held) == 2 and [e["id"] for e in at_end] == held, (held, at_end)  # its two rounds' tasks
    assert {(e["client"], e["direction"], e["kind"]) for e in at_end} == {("stuck-0", "down", "task")}
    assert [e["round"] for e in at_end] == [1, 2]
    assert summary["conditions"]["link-held-at-end"] == 2
    assert_no_update_lost(summary, events)
