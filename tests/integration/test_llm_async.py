"""The paper's LLM aggregators beyond the paper: buffered and fully asynchronous FedTextGrad over the embedded
broker, against the SCRIPTED OpenAI-compatible server of test_llm_federation (TextGrad clients, LLM merges)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, needs_library
from tests.integration.test_llm_federation import SCENARIO, scripted_model, server  # noqa: F401 (a fixture)

pytestmark = [needs_library("textgrad"), pytest.mark.slow]

INITIAL = "Answer the question. The last line of your response should be 'Answer: $VALUE'."


async def run_in_mode(tmp_path: Path, url: str, strategy: str, mode: str) -> tuple[int, dict[str, Any], str]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO.format(strategy=strategy, deadline=60)
                        .replace("max_prompt_chars: 4000,", f"max_prompt_chars: 4000, mode: {mode},"))
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDBUS_CACHE": str(tmp_path / "cache")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", "run", str(scenario), "--out", str(out), "--engine-url", url, "--quiet",
        cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    code = await process.wait()
    if not (out / "summary.json").exists():
        pytest.fail(f"no summary.json (exit code {code}); stderr: {stderr.decode()[-3000:]}")
    return code, json.loads((out / "summary.json").read_text()), (out / "events.jsonl").read_text()


@pytest.mark.parametrize(("strategy", "mode"), [("uid_summarize", "async"), ("summarize", "buffered")])
async def test_llm_merges_run_in_buffered_and_async_mode_with_the_global_prompt_as_an_input(
        server: tuple[str, dict[str, Any]], tmp_path: Path, strategy: str, mode: str) -> None:  # noqa: F811
    url, state = server
    merges: list[str] = []

    def recording(system: str | None, user: str) -> tuple[int, str]:
        if "List of Prompts to Merge:" in user:
            merges.append(user)
        return scripted_model(system, user)

    state["script"] = recording
    code, summary, events = await run_in_mode(tmp_path, url, strategy, mode)
    assert code == 0, summary.get("reason")
    assert summary["mode"] == mode and summary["status"] == "completed"
    aggregated = [r for r in summary["rounds"] if r["status"] == "aggregated"]
    assert len(aggregated) == 2
    assert all(r["aggregation"]["strategy"] == strategy and "fallback" not in r["aggregation"] for r in aggregated)
    first = aggregated[0]["aggregation"]
    batch = 1 if mode == "async" else 2
    assert first["inputs"][0] == "global" and len(first["inputs"]) == 1 + batch
    assert len(first["staleness_weights"]) == batch
    assert merges, "the merge went to the engine"
    listed = merges[0].split("List of Prompts to Merge:\n", 1)[1]
    assert listed.startswith(INITIAL + "\n")  # the global prompt first, then the clients' prompts
    assert listed.count("List every item before counting.") == batch
    assert summary["final"]["prompt"] == "List every item before counting. Answer: $VALUE"
    assert '"event":"aggregated-by-llm"' in events
