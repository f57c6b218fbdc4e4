"""summary.json's accounting (fedbus/results/summary.py): updates and failure reports are counted apart."""

from __future__ import annotations

from fedbus.aggregator.effects import Accepted, Rejection, RoundResult
from fedbus.protocol.messages import UpdateStats
from fedbus.results.summary import client_records, round_record

STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0, llm_calls=2, tokens=5,
                    duration_s=0.1)


def result() -> RoundResult:
    return RoundResult(
        round=1, status="aggregated", version_before=0, version_after=1, selected=("a", "b", "c"),
        accepted=(Accepted(client="a", msg_id="a-1", round=1, base_version=0, prompt="P a", stats=STATS, at=1.0),),
        rejected=(Rejection(client="b", msg_id="b-1", round=1, reason="wrong-base-version", detail="v2", at=1.5),
                  Rejection(client="c", msg_id="c-f1", round=1, reason="client-failed", detail="E: down", at=2.0,
                            kind="failure"),
                  Rejection(client="c", msg_id="c-f0", round=0, reason="stale-round", detail="old", at=2.5,
                            kind="failure")),
        dropped=(), missing=(), opened_at=0.0, closed_at=3.0, prompt="P", close_reason="all-answered")


def test_a_round_lists_rejected_updates_and_failure_reports_apart() -> None:
    """'rejected' holds the updates (sent = received = accepted + rejected stays true for updates); 'failed' the
    failure reports, whatever their reason; a stale failure does not make its client 'late'."""
    record = round_record(result(), {})
    assert [(x["client"], x["reason"]) for x in record["rejected"]] == [("b", "wrong-base-version")]
    assert [(x["client"], x["id"], x["reason"], x["detail"]) for x in record["failed"]] == [
        ("c", "c-f1", "client-failed", "E: down"), ("c", "c-f0", "stale-round", "old")]
    assert record["late"] == []


def test_per_client_counts_say_how_often_a_client_failed() -> None:
    """clients.<id>.failed counts its failure reports; rejected counts only its rejected updates."""
    records = client_records([(result(), {})], ["a", "b", "c"])
    assert {c: (r["accepted"], r["rejected"], r["failed"]) for c, r in records.items()} == {
        "a": (1, 0, 0), "b": (0, 1, 0), "c": (0, 0, 2)}
