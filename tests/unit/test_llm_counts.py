"""summary.json's LLM counts over a resumed run and worker processes (fedbus/runtime/llm_run.py): what the
earlier sessions and the workers counted comes from their events.jsonl lines, each one's last."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fedbus.llm import ScriptedEngine
from fedbus.results.eventlog import EventLog
from fedbus.runtime.llm_run import llm_counts, llm_summary
from fedbus.scenario.engine import EngineSpec


def test_a_resumed_run_counts_every_session_and_each_workers_last_count(tmp_path: Path) -> None:
    """After a kill and a resume, summary.json counted only the last session (37 of 60 calls the server saw),
    and a killed worker's calls not at all (it wrote its count only as it ended)."""
    events = EventLog(tmp_path / "events.jsonl")
    events.record("llm-counters", boot="0", calls=5, prompt_tokens=50)   # session 0, round 1
    events.record("llm-counters", boot="0", calls=9, prompt_tokens=90)   # session 0, round 2: its last
    events.record("worker-llm", worker="client-0", boot="0", calls=3, prompt_tokens=30)
    events.record("worker-llm", worker="client-0", boot="0", calls=7, prompt_tokens=70)  # killed after this
    events.record("worker-llm", worker="client-8", boot="0", calls=2, prompt_tokens=20)
    events.record("llm-counters", boot="r1", calls=1, prompt_tokens=10)  # this session's own: in memory instead
    events.record("worker-llm", worker="client-0", boot="r1", calls=4, prompt_tokens=40)
    events.record("worker-llm", calls=100, prompt_tokens=1000)  # a line of an older fedbus: counted as it is
    events.close()
    engine = ScriptedEngine(["a", "b"])
    asyncio.run(engine.complete("q1"))
    asyncio.run(engine.complete("q2"))
    now = llm_counts(engine)
    llm = llm_summary(EngineSpec(name="openai", base_url="http://x/v1", model="m"), engine,
                      tmp_path / "events.jsonl", boot="r1")["llm"]
    assert llm["calls"] == now["calls"] + 9 + 7 + 2 + 4 + 100 == 124
    assert llm["prompt_tokens"] == now["prompt_tokens"] + 90 + 70 + 20 + 40 + 1000
    assert llm["earlier_sessions"] == 1 and llm["worker_processes"] == 4
