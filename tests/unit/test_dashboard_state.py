"""The dashboard's pure parts: the view folded from event records, /metrics text, and where it may listen."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from fedbus.dashboard.bind import DashboardAddress, access_for, parse_address
from fedbus.dashboard.metrics import render
from fedbus.dashboard.state import DashboardState, prompt_diff


def fold(records: list[dict[str, Any]]) -> DashboardState:
    state = DashboardState()
    for record in records:
        state.apply(record)
    return state


ROUND_ONE = [
    {"t": 0.0, "event": "run-started", "run": "r-1", "scenario": "s", "engine": "surrogate", "broker": "mqtt://x"},
    {"t": 0.1, "event": "connected", "client": "a"},
    {"t": 0.1, "event": "connected", "client": "b"},
    {"t": 0.2, "event": "round-opened", "round": 1, "selected": ["a", "b"], "live": 2},
    {"t": 0.2, "event": "sent", "kind": "task", "topic": "t/a", "client": "a", "round": 1},
    {"t": 0.2, "event": "sent", "kind": "task", "topic": "t/b", "client": "b", "round": 1},
    {"t": 0.3, "event": "received", "client": "a", "kind": "task", "round": 1},
    {"t": 0.3, "event": "received", "client": "b", "kind": "task", "round": 1},
    {"t": 0.5, "event": "sent", "client": "a", "kind": "update", "round": 1},
    {"t": 0.7, "event": "received", "kind": "update", "topic": "u/a", "client": "a", "round": 1},
    {"t": 0.7, "event": "accepted", "client": "a", "round": 1, "id": "a-1"},
    {"t": 1.2, "event": "round-closed", "round": 1, "status": "aggregated", "val_accuracy": 0.5},
]


def test_a_round_folds_into_the_table_and_the_timeline() -> None:
    """Selected, accepted, the straggler (selected, still working at the close), duration and latency."""
    state = fold(ROUND_ONE)
    view = state.view()
    (row,) = view["rounds"]
    assert (row["selected"], row["accepted"], row["status"], row["val_accuracy"]) == (2, 1, "aggregated", 0.5)
    assert row["duration_s"] == pytest.approx(1.0)
    cells = {c["client"]: (c["state"], c["cells"]) for c in view["clients"]}
    assert cells == {"a": ("online", {"1": "accepted"}), "b": ("straggling", {"1": "straggling"})}
    assert state.update_latencies == [pytest.approx(0.5)]
    assert view["counters"]["rounds_closed"] == 1 and view["counters"]["updates_accepted"] == 1


def test_rejections_count_by_reason_and_failures_apart() -> None:
    """A late update shows as straggling, a bad one as rejected; failure reports are not update rejections."""
    state = fold([*ROUND_ONE,
                  {"t": 1.5, "event": "rejected", "client": "b", "round": 1, "reason": "stale-round", "kind": "update"},
                  {"t": 1.6, "event": "rejected", "client": "a", "round": 1, "reason": "too-large", "kind": "update"},
                  {"t": 1.7, "event": "rejected", "client": "c", "round": 1, "reason": "client-failed",
                   "kind": "failure"}])
    view = state.view()
    assert view["counters"]["rejected_by_reason"] == {"stale-round": 1, "too-large": 1}
    assert view["counters"]["failures_by_reason"] == {"client-failed": 1}
    cells = {c["client"]: c["cells"]["1"] for c in view["clients"]}
    assert cells == {"a": "rejected", "b": "straggling", "c": "failed"}


def test_the_round_record_wins_and_brings_the_prompt_and_its_diff() -> None:
    """summary.json's record (sent by the run) sets counts, tokens and the prompt, whose diff is word-level."""
    state = fold([{"event": "run-header", "initial_prompt": "Think step by step."}, *ROUND_ONE,
                  {"event": "round-summary", "round": 1, "status": "aggregated", "selected": ["a", "b"],
                   "accepted": [{"client": "a", "llm_calls": 3, "tokens": 100}], "rejected": [], "failed": [],
                   "dropped": ["b"], "late": [], "global_prompt_chars": 26, "val_accuracy": 0.6, "duration_s": 40.0,
                   "prompt": "Think step by step. Count."}])
    view = state.view()
    assert view["rounds"][0]["duration_s"] == 40.0 and view["rounds"][0]["val_accuracy"] == 0.6
    assert view["counters"]["llm_calls"] == {"client": 3} and view["counters"]["tokens"] == {"client": 100}
    assert {c["client"]: c["cells"]["1"] for c in view["clients"]}["b"] == "dropped"
    assert view["prompts"][0]["diff"] == [["=", "Think step by step."], ["+", " Count."]]


def test_prompt_diff_marks_added_and_removed_words() -> None:
    assert prompt_diff("a b c", "a x c") == [["=", "a "], ["-", "b"], ["+", "x"], ["=", " c"]]


def test_unknown_records_change_nothing() -> None:
    state = DashboardState()
    assert state.apply({"event": "something-new", "t": 3.0}) is False
    assert state.version == 0


def test_metrics_parse_and_count_what_was_folded() -> None:
    """/metrics is valid Prometheus text (its own parser reads it) with the folded counters."""
    parser = pytest.importorskip("prometheus_client.parser")
    state = fold([*ROUND_ONE, {"t": 1.5, "event": "rejected", "client": "b", "round": 1, "reason": "stale-round",
                               "kind": "update"}])
    families = {f.name: f for f in parser.text_string_to_metric_families(render(state))}
    assert families["fedbus_rounds_closed"].samples[0].value == 1
    assert families["fedbus_updates_accepted"].samples[0].value == 1
    assert [(s.labels["reason"], s.value) for s in families["fedbus_updates_rejected"].samples] == [("stale-round", 1)]
    counts = {s.name: s.value for s in families["fedbus_update_latency_seconds"].samples if "le" not in s.labels}
    assert counts["fedbus_update_latency_seconds_count"] == 1
    assert families["fedbus_round_duration_seconds"].type == "histogram"


@pytest.mark.parametrize(("text", "host", "port"), [("8765", "127.0.0.1", 8765), ("0.0.0.0:80", "0.0.0.0", 80),
                                                    ("[::1]:9000", "::1", 9000), (":0", "127.0.0.1", 0)])
def test_dashboard_address_parses(text: str, host: str, port: int) -> None:
    assert parse_address(text) == DashboardAddress(host=host, port=port)


@pytest.mark.parametrize("text", ["", "host:", "127.0.0.1:70000", "port"])
def test_a_wrong_dashboard_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with what is wrong
        parse_address(text)


def test_beyond_loopback_the_broker_rule_applies() -> None:
    """Loopback: open. Elsewhere: the broker's logins, or --insecure; neither: refused, saying what to do."""
    loopback, anywhere = DashboardAddress(port=1), DashboardAddress(host="0.0.0.0", port=1)
    assert access_for(loopback, {}, insecure=False).logins == {}
    assert access_for(anywhere, {"u": "p"}, insecure=False).logins == {"u": "p"}
    assert access_for(anywhere, {}, insecure=True).logins == {}
    with pytest.raises(ValueError, match="--users"):
        access_for(anywhere, {}, insecure=False)


def test_the_pure_modules_do_not_import_aiohttp() -> None:
    code = ("import sys, fedbus.dashboard.state, fedbus.dashboard.metrics, fedbus.dashboard.bind, "
            "fedbus.dashboard.command; print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_round_record_alone_marks_the_stragglers() -> None:
    """The run's record of a closed round may come before the log's round-closed line: who was still working
    straggled all the same."""
    opened = [r for r in ROUND_ONE if r["event"] != "round-closed"]
    state = fold([*opened, {"event": "round-summary", "round": 1, "status": "aggregated", "selected": ["a", "b"],
                            "accepted": [{"client": "a"}], "rejected": [], "failed": [], "dropped": [], "late": []}])
    assert {c["client"]: c["cells"]["1"] for c in state.view()["clients"]} == {"a": "accepted", "b": "straggling"}


def test_a_buffered_runs_task_numbers_open_no_rounds() -> None:
    """In a buffered or async run a task's 'round' is its own number; the aggregations are numbered by
    round-closed and the round records. A view per task number stayed 'open' for ever (28 beside 8)."""
    records = [{"t": 0.0, "event": "run-header", "mode": "buffered"},
               {"t": 0.1, "event": "round-opened", "round": 9, "selected": ["a"], "live": 2},
               {"t": 0.2, "event": "accepted", "client": "a", "round": 9, "id": "a-9"},
               {"t": 0.3, "event": "rejected", "client": "b", "round": 10, "reason": "late"},
               {"t": 0.4, "event": "round-closed", "round": 1, "status": "aggregated"}]
    view = fold(records).view()
    assert [(r["round"], r["status"]) for r in view["rounds"]] == [(1, "aggregated")]
    assert view["counters"]["updates_accepted"] == 1 and view["counters"]["updates_rejected"] == 1
    assert 9 in [r["round"] for r in fold(records[1:]).view()["rounds"]], "a sync run (the default) keeps them"
