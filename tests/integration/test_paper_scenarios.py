"""Each paper experiment the README's table lists runs from its command: the paper scenarios as shipped, swept
as the README says, shrunk only in size (`--grid` of one value: fewer examples, rounds and steps), against a
SCRIPTED OpenAI-compatible server (tests/integration/test_llm_federation.py's), so the whole path runs in
seconds. The model's answers are scripted: these runs check that each experiment runs and records what it
studies, not what a model would score."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, needs_library
from tests.integration.test_llm_federation import server  # noqa: F401 (a fixture)

pytestmark = [needs_library("textgrad"), pytest.mark.slow]

IMPROVED = ("List every item and count them one by one. The last line of your response should be of the "
            "following format: 'Answer: $VALUE' where VALUE is a numerical value.")
SMALL = ["--grid", "task.val_size=2", "--grid", "task.test_size=2", "--grid", "rounds=2"]
ONE_STEP = ["--grid", "clients.local_steps=1", "--grid", "clients.batch_size=1"]


def scripted(system: str | None, user: str) -> tuple[int, str]:
    """Any task: a fixed critique, a fixed improved prompt, the paper's merge answered with its text alone,
    and every question answered 3."""
    if user.startswith("Here is the role of the variable you will improve"):
        return 200, f"<IMPROVED_VARIABLE>{IMPROVED}</IMPROVED_VARIABLE>"
    if user.startswith("You will give feedback"):
        return 200, "The prompt should ask the model to list every item before counting."
    if "List of Prompts to Merge:" in user:
        return 200, "List every item and count them one by one."
    return 200, "Let me count.\nAnswer: 3"


async def sweep(tmp_path: Path, url: str, scenario: str, *grid: str, train: int = 6,
                steps: tuple[str, ...] = tuple(ONE_STEP)) -> list[dict[str, Any]]:
    out = tmp_path / "sweep"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDBUS_CACHE": str(tmp_path / "cache")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", "sweep", f"scenarios/{scenario}.yaml", *grid, *SMALL, *steps,
        "--grid", f"task.train_size={train}", "--seeds", "1",
        "--out", str(out), "--engine-url", url, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=400)
    finally:
        if process.returncode is None:  # a hung sweep must not outlive the test, nor its runs
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert await process.wait() == 0, output.decode()[-3000:]
    manifest = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert all(c["status"] == "completed" for c in manifest["cells"]), manifest["cells"]
    return [json.loads((out / c["folder"] / "summary.json").read_text(encoding="utf-8")) for c in manifest["cells"]]


async def test_the_homogeneous_experiments_sweep_local_steps_clients_and_batch_size(
        server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:  # noqa: F811
    """The README's three homogeneous rows at once: local steps, clients and batch size as grid axes of the one
    scenario (two values each would be eight runs: one axis varies, the others take one value each)."""
    url, state = server
    state["script"] = scripted
    summaries = await sweep(tmp_path, url, "paper-homogeneous", "--grid", "clients.count=3,4",
                            steps=("--grid", "clients.local_steps=1,2", "--grid", "clients.batch_size=2"))
    assert [(s["scenario"]["clients"]["count"], s["scenario"]["clients"]["local_steps"]) for s in summaries] == [
        (3, 1), (3, 2), (4, 1), (4, 2)]
    assert [sum(a["steps"] for a in s["rounds"][0]["accepted"]) for s in summaries] == [3, 6, 4, 8]
    for s in summaries:
        assert s["status"] == "completed" and s["scenario"]["aggregation"]["strategy"] == "concat"
        first = s["rounds"][0]
        assert first["status"] == "aggregated"
        assert first["global_prompt_chars"] == first["aggregate_chars"] > len(IMPROVED)  # concat, nothing cut
        assert first["context"]["window_tokens"] == 8192 and first["context"]["overflow"] is False
        assert 0.0 <= s["final"]["best_val_test_accuracy"] <= 1.0 and s["final"]["best_val_round"] in (0, 1, 2)


async def test_the_centralized_baseline_is_one_client_on_all_the_data(
        server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:  # noqa: F811
    url, state = server
    state["script"] = scripted
    [s] = await sweep(tmp_path, url, "paper-centralized")
    assert s["status"] == "completed"
    assert all(r["status"] == "aggregated" and len(r["accepted"]) == 1 for r in s["rounds"])
    assert s["final"]["prompt"] == IMPROVED  # the aggregate of one prompt is that prompt
    assert {"test_accuracy", "best_val_round", "best_val_test_accuracy"} <= set(s["final"])


async def test_concat_overflow_is_recorded_with_the_sizes(server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:  # noqa: F811
    """The paper's concat finding, with the window set small enough for scripted prompts to overflow it."""
    url, state = server
    state["script"] = scripted
    [s] = await sweep(tmp_path, url, "paper-concat-overflow", "--grid", "aggregation.context_tokens=200",
                       train=20)  # a shard for each of the ten clients
    first = s["rounds"][0]
    assert first["context"] == {"window_tokens": 200, "prompt_tokens_est": first["global_prompt_tokens_est"],
                                "overflow": True}
    assert first["global_prompt_chars"] >= 10 * len(IMPROVED)  # ten clients' prompts, every one kept
    assert s["totals"]["aggregate_chars_cut"] == 0
    assert s["conditions"]["context-overflow"] >= 1


@pytest.mark.parametrize("strategy", ["concat", "summarize", "uid_summarize"])
async def test_the_heterogeneous_aggregator_comparison_runs_each_aggregator(
        server: tuple[str, dict[str, Any]], tmp_path: Path, strategy: str) -> None:  # noqa: F811
    url, state = server
    state["script"] = scripted
    [s] = await sweep(tmp_path, url, "paper-heterogeneous", "--grid", f"aggregation.strategy={strategy}")
    assert s["status"] == "completed"
    aggregated = [r for r in s["rounds"] if r["status"] == "aggregated"]
    assert aggregated
    if strategy == "concat":  # no LLM call: the aggregate is every prompt as sent
        assert all(r["global_prompt_chars"] == r["aggregate_chars"] for r in aggregated)
    else:
        assert all(r["aggregation"]["strategy"] == strategy and "fallback" not in r["aggregation"]
                   for r in aggregated)
        assert s["final"]["prompt"].startswith("List every item and count them one by one.")
