"""summary.json: the run as plain data, built from the aggregator's round results.

Updates and failure reports are counted apart. A round's ``rejected`` lists the updates (and garbage on
update topics) that entered no aggregate; its ``failed`` lists the failure reports, each with reason
'client-failed' when it answered the client's task, or the check that refused it. So every update a client
sent is in exactly one aggregate or in one ``rejected`` list (``rejected_after_last_round`` after the end),
and every failure report in one ``failed`` list (``failed_after_last_round``).

Under protocol v2, ``security`` says what the aggregator ran with (mode, its key's fingerprint), and
``forgeries`` what it refused before knowing who sent it (unsigned, altered, signed by another key, too large
to check): counted by reason and channel, the first few listed with the topic's client as ``claimed``. A
forgery is never in a round's ``rejected`` list nor in ``clients``: it is held against nobody.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from fedbus import __version__
from fedbus.aggregator.effects import Rejection, RoundResult
from fedbus.aggregator.llm_merge import sentence_overlap
from fedbus.aggregator.session import Forgeries, NodeOutcome
from fedbus.results.eventlog import EventLog
from fedbus.results.prompt_measures import complexity
from fedbus.scenario import Scenario, scenario_to_mapping
from fedbus.text import estimate_tokens

# Event-log entries that show the injected conditions at work, summed into summary.json.
CONDITION_EVENTS = ("dropout", "hang", "hang-ignored", "task-lost", "work-discarded", "gone", "connected",
                    "disconnected", "link-lost", "link-duplicated", "link-held", "link-held-at-end", "queued-offline",
                    "duplicate-delivery", "stale-presence", "received-malformed", "received-forged", "local-failed",
                    "send-refused", "prompt-cut", "aggregate-cut", "context-overflow")

SURROGATE_NOTE = ("surrogate optimizer: a seeded model of textual-gradient updates, not an LLM; "
                  "its accuracies are not benchmark results")


def context_window(scenario: Scenario) -> int | None:
    """The engine's context in tokens: ``aggregation.context_tokens``, else the local engine's per-slot context
    (``ctx_size / parallel``), else unknown."""
    spec = scenario.engine_spec
    if scenario.aggregation.context_tokens is not None:
        return scenario.aggregation.context_tokens
    return spec.ctx_size // spec.parallel if spec.name == "local" else None


def prompt_record(result: RoundResult, context_tokens: int | None = None) -> dict[str, Any]:
    """The global prompt's size, its complexity (the authors' model-free measures), how much of the clients'
    wording reappears in it (lexical: ``sentence_overlap``), and, with the engine's context known, whether the
    prompt alone (estimated at 4 characters a token, before any question) overflows it."""
    tokens = estimate_tokens(result.prompt)
    record: dict[str, Any] = {
        "global_prompt_tokens_est": tokens,
        "sentence_overlap": round(sentence_overlap([a.prompt for a in result.accepted], result.prompt), 4),
        "complexity": complexity(result.prompt)}
    if context_tokens is not None:
        record["context"] = {"window_tokens": context_tokens, "prompt_tokens_est": tokens,
                             "overflow": tokens > context_tokens}
    return record


def rejection_record(r: Rejection) -> dict[str, Any]:
    return {"client": r.client, "id": r.msg_id, "round": r.round, "reason": r.reason, "detail": r.detail,
            "at_s": round(r.at, 4)}


def updates_only(rejections: tuple[Rejection, ...] | list[Rejection]) -> list[Rejection]:
    return [r for r in rejections if r.kind != "failure"]


def failures_only(rejections: tuple[Rejection, ...] | list[Rejection]) -> list[Rejection]:
    return [r for r in rejections if r.kind == "failure"]


def round_record(result: RoundResult, extra: dict[str, Any]) -> dict[str, Any]:
    rejected = updates_only(result.rejected)
    return {
        "round": result.round,
        "status": result.status,
        "close_reason": result.close_reason,
        "version_before": result.version_before,
        "version_after": result.version_after,
        "selected": list(result.selected),
        "accepted": [
            {"client": a.client, "id": a.msg_id, "base_version": a.base_version, "prompt_chars": len(a.prompt),
             "steps": a.stats.steps, "accepted_steps": a.stats.accepted_steps,
             "batch_acc_before": a.stats.batch_acc_before, "batch_acc_after": a.stats.batch_acc_after,
             "llm_calls": a.stats.llm_calls, "tokens": a.stats.tokens, "local_duration_s": a.stats.duration_s,
             "arrived_s": round(a.at - result.opened_at, 4), "staleness": a.staleness, "weight": round(a.weight, 4)}
            for a in result.accepted
        ],
        "rejected": [rejection_record(r) for r in rejected],
        "failed": [rejection_record(r) for r in failures_only(result.rejected)],
        "dropped": list(result.dropped),
        "missing": list(result.missing),
        "late": sorted({r.client for r in rejected
                        if r.client and r.reason in ("late", "stale-round", "too-stale", "not-assigned")}),
        "global_prompt_chars": len(result.prompt),
        "aggregate_chars": result.aggregate_chars,  # before the cut at max_prompt_chars
        "aggregate_cut_chars": result.cut_chars,  # lost to that cut (the event log says so too: aggregate-cut)
        "duration_s": round(result.duration_s, 4),
        **extra,
    }


def forgeries_record(forgeries: Forgeries) -> dict[str, Any]:
    """What the aggregator refused unauthenticated: how many, why, on which channels, and the first few."""
    return {"total": forgeries.total, "by_reason": dict(sorted(forgeries.by_reason.items())),
            "by_channel": dict(sorted(forgeries.by_channel.items())),
            "first": [{"topic": f.topic, "claimed": f.claimed, "reason": f.reason, "detail": f.detail,
                       "at_s": round(f.at, 4)} for f in forgeries.first]}


def client_records(rounds: list[tuple[RoundResult, dict[str, Any]]], known: list[str],
                   after: Sequence[Rejection] = ()) -> dict[str, Any]:
    """Per client: how often selected, how often its update was accepted or rejected, how often it reported a
    failure (``after``: the rejections after the last round count too), participation rate."""
    closed = len(rounds)

    def blank() -> dict[str, Any]:
        return {"selected": 0, "accepted": 0, "rejected": 0, "failed": 0}

    out: dict[str, dict[str, Any]] = {c: blank() for c in known}
    for result, _ in rounds:
        for c in result.selected:
            out.setdefault(c, blank())["selected"] += 1
        for a in result.accepted:
            out.setdefault(a.client, blank())["accepted"] += 1
    for r in itertools.chain((r for result, _ in rounds for r in result.rejected), after):
        if r.client is not None:
            out.setdefault(r.client, blank())["failed" if r.kind == "failure" else "rejected"] += 1
    for record in out.values():
        record["participation_rate"] = round(record["accepted"] / closed, 4) if closed else 0.0
    return dict(sorted(out.items()))


def build_summary(*, run_id: str, scenario: Scenario, scenario_file: str, broker: dict[str, Any],
                  outcome: NodeOutcome, events: EventLog, final: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """summary.json's content, the same for a run over a broker and a simulated one."""
    finished = outcome.finished
    rounds = [round_record(result, extra) for result, extra in outcome.rounds]
    after = [*(finished.leftover_rejections if finished else ()), *outcome.late_rejections]
    return {
        "fedbus_version": __version__,
        "run_id": run_id,
        "scenario_file": scenario_file,
        "scenario": scenario_to_mapping(scenario),
        "seed": scenario.seed,
        "engine": {"name": scenario.engine, "note": SURROGATE_NOTE if scenario.engine == "surrogate" else ""},
        "broker": broker,
        "mode": scenario.aggregation.mode,
        "security": dict(outcome.security),
        "time_scale": scenario.time_scale,
        "conditions": {name: events.counts[name] for name in CONDITION_EVENTS if events.counts[name]},
        "status": finished.status if finished else "failed",
        "reason": finished.reason if finished else "the aggregator stopped before the run finished",
        "rounds": rounds,
        "rejected_after_last_round": [rejection_record(r) for r in updates_only(after)],
        "failed_after_last_round": [rejection_record(r) for r in failures_only(after)],
        # a virtual population lists the clients that took part, not a million that never existed
        "clients": client_records(outcome.rounds, [] if scenario.clients.population == "virtual"
                                  else list(scenario.client_ids()), after),
        "forgeries": forgeries_record(outcome.forgeries),
        "final": final,
        "totals": {
            "rounds_closed": len(rounds),
            "rounds_aggregated": sum(1 for r in rounds if r["status"] == "aggregated"),
            "updates_accepted": sum(len(r["accepted"]) for r in rounds),
            "updates_rejected": sum(len(r["rejected"]) for r in rounds) + len(updates_only(after)),
            "aggregate_chars_cut": sum(r["aggregate_cut_chars"] for r in rounds),
            "failures_reported": sum(len(r["failed"]) for r in rounds) + len(failures_only(after)),
            "duplicates_dropped": outcome.duplicates_dropped,
            "forgeries": outcome.forgeries.total,
            "loop_stalls": outcome.stalls,
            "loop_stalled_s": round(outcome.stalled_s, 3),
            "llm_calls": sum(a["llm_calls"] for r in rounds for a in r["accepted"]),
            "tokens": sum(a["tokens"] for r in rounds for a in r["accepted"]),
            "messages_sent": outcome.messages_sent,
            "messages_received": outcome.messages_received,
            "events": events.count,
            "wall_s": round(wall_s, 3),
        },
    }
