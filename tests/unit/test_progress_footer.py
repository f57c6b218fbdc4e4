"""The last line a run prints (fedbus/results/progress.py): a run that finished but whose figures mean little
says so there, not only in summary.json."""

from __future__ import annotations

import io
from typing import Any

from fedbus.results.progress import Progress


def footer(summary: dict[str, Any]) -> str:
    stream = io.StringIO()
    Progress(enabled=False, quiet_stream=stream).footer(summary, "runs/x")
    return stream.getvalue()


def summary(statuses: list[str], llm: dict[str, int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "completed", "reason": f"{len(statuses)} rounds",
                           "final": {"test_accuracy": 0.0, "initial_test_accuracy": 0.0},
                           "rounds": [{"round": i + 1, "status": s} for i, s in enumerate(statuses)]}
    if llm is not None:
        out["llm"] = llm
    return out


def test_a_run_where_no_round_aggregated_or_every_llm_call_failed_says_so_on_its_last_line() -> None:
    """A dead LLM server (all 299 calls failed, every round no-quorum) used to end 'completed: 3 rounds; test
    accuracy 0.000' and nothing more."""
    line = footer(summary(["no-quorum"] * 3, {"calls": 299, "failures": 299}))
    assert line.startswith("completed: 3 rounds; test accuracy 0.000")
    assert "WARNING: none of the 3 rounds aggregated" in line and "WARNING: all 299 LLM calls failed" in line
    fine = footer(summary(["aggregated", "no-quorum"], {"calls": 10, "failures": 3}))
    assert "WARNING" not in fine and fine.count("\n") == 1
