"""Engines per role, cut replies and `fedbus evaluate`, end to end against a SCRIPTED OpenAI-compatible server
(fedbus run and fedbus evaluate as subprocesses, as with vLLM or Ollama)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fedbus.protocol.messages import DataSpec
from fedbus.tasks.federation import task_splits
from tests.conftest import ROOT, needs_library

pytestmark = [needs_library("textgrad"), pytest.mark.slow]  # TextGrad clients; a whole LLM run

SCENARIO = """
name: scripted-roles
seed: 5
security: none
engine:
  name: openai
  model: small-model
  max_retries: 1
  timeout_s: 10
  top_p: 0.9
  roles:
    backward: {model: big-model}
    optimizer: {model: big-model, max_tokens: 1000}
    aggregator: {max_tokens: 64}
    evaluator: {model: eval-model, top_p: 0.5}
rounds: 2
initial_prompt: "Answer the question. The last line of your response should be 'Answer: $VALUE'."
task: {name: object_counting, train_size: 8, val_size: 3, test_size: 3}
clients: {count: 2, local_steps: 1, batch_size: 2}
participation: {min_clients: 2, min_updates: 1, round_deadline_s: 60, join_timeout_s: 30}
aggregation: {strategy: summarize, max_prompt_chars: 4000, format_line: " Answer: $VALUE"}
"""

DATA = DataSpec(task="object_counting", seed=5, num_shards=2, train_size=8, val_size=3, test_size=3)
SPLITS = task_splits(DATA)["object_counting"]
TARGETS = {e.input: e.target for e in (*SPLITS.train, *SPLITS.val, *SPLITS.test)}
GOOD = "List every item before counting."


def reply(body: dict[str, Any]) -> tuple[str, str]:
    """The scripted model: (text, finish_reason). A merge asked with max_tokens < 100 is cut."""
    messages = body["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    user = messages[-1]["content"]
    if user.startswith("Here is the role of the variable you will improve"):
        return f"<IMPROVED_VARIABLE>{GOOD} Answer: $VALUE</IMPROVED_VARIABLE>", "stop"
    if user.startswith("You will give feedback"):
        return "The prompt should tell the model to list every item before counting.", "stop"
    if user.startswith("Below is a question from a question-answering task"):  # the judge (task.grader: judge)
        target = user.split("**Ground truth answer**: ")[1].split("\n")[0]
        prediction = user.rsplit("**Reasoning and prediction from the language model**: ", 1)[1]
        return f"<ACCURACY> {int(prediction == f'Answer: {target}')} </ACCURACY>", "stop"
    if "List of Prompts to Merge:" in user:
        return ("List every item", "length") if body["max_tokens"] < 100 else (GOOD, "stop")
    right = system is not None and "List every item" in system
    return f"Answer: {TARGETS.get(user, -2) if right else -1}", "stop"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        text, finish = reply(body)
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": text},
                                               "finish_reason": finish}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": len(text) // 4 + 1}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", bodies
    await runner.cleanup()


async def fedbus(tmp_path: Path, *args: str, url_env: str | None = None) -> tuple[int, str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDBUS_CACHE": str(tmp_path / "cache"),
           **({} if url_env is None else {"FEDBUS_ENGINE_URL": url_env})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", *args, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    assert "Traceback" not in stderr.decode(), stderr.decode()[-3000:]
    return await process.wait(), stdout.decode(), stderr.decode()


async def test_each_role_runs_on_its_engine_and_a_cut_merge_falls_back(
        server: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Feedback and updates go to big-model, scoring to eval-model with its top_p, the clients' answers to the
    base engine; the aggregator's 64-token merges come back cut, are counted, and concat is used instead."""
    url, bodies = server
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    code, _out, stderr = await fedbus(tmp_path, "run", str(tmp_path / "scenario.yaml"), "--out", str(tmp_path / "out"),
                                      "--engine-url", url, "--quiet")
    assert code == 0, stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "completed"
    train = {e.input for e in SPLITS.train}
    scored = {e.input for e in (*SPLITS.val, *SPLITS.test)}
    for body in bodies:
        user = body["messages"][-1]["content"]
        if user.startswith(("You will give feedback", "Here is the role")):
            assert body["model"] == "big-model" and body["top_p"] == 0.9
        elif user in train:
            assert (body["model"], body["top_p"], body["max_tokens"]) == ("small-model", 0.9, 512)
        elif user in scored:
            assert (body["model"], body["top_p"]) == ("eval-model", 0.5)
        else:
            assert "List of Prompts to Merge:" in user and body["max_tokens"] == 64
    rounds = summary["rounds"]
    assert [r["aggregation"]["fallback"] for r in rounds] == ["concat (truncated)"] * 2
    assert all(r["aggregation"]["truncated"] for r in rounds)
    llm = summary["llm"]
    by_role = llm["by_role"]
    assert by_role["aggregator"]["truncated"] == 2 and llm["truncated"] == 2
    assert (by_role["backward"]["model"], by_role["optimizer"]["max_tokens"], by_role["evaluator"]["top_p"]) == (
        "big-model", 1000, 0.5)
    assert by_role["backward"]["calls"] == 2 * by_role["optimizer"]["calls"] * 2  # 2B feedback per update, B = 2
    assert by_role["judge"]["calls"] == 0 and by_role["evaluator"]["calls"] >= 3 * 3  # val each round, test x2
    assert llm["calls"] == sum(role["calls"] for role in by_role.values())
    assert llm["calls"] - llm["cached_calls"] == len(bodies)
    assert llm["sampling"]["top_p"] == 0.9


async def test_fedbus_evaluate_scores_a_saved_prompt_on_another_engine(
        server: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    url, bodies = server
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    prompts = tmp_path / "global_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"round": n, "prompt": p}) + "\n"
                               for n, p in ((0, "Answer the question."), (1, f"{GOOD} Answer: $VALUE"))))
    code, out, stderr = await fedbus(tmp_path, "evaluate", str(prompts), "--scenario", str(scenario),
                                     "--engine-url", url, "--model", "other-model", "--json", str(tmp_path / "e.json"))
    assert code == 0, stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert (result["accuracy"], result["questions"], result["round"], result["model"]) == (1.0, 3, 1, "other-model")
    assert out.startswith("test accuracy 1.0000 on 3 questions") and "other-model" in out
    assert {b["model"] for b in bodies} == {"other-model"} and {b["top_p"] for b in bodies} == {0.5}  # evaluator's
    code, out, _ = await fedbus(tmp_path, "evaluate", str(prompts), "--round", "0", "--scenario", str(scenario),
                                "--engine-url", url, "--model", "other-model", "--split", "val")
    assert code == 0 and out.startswith("val accuracy 0.0000 on 3 questions")
    text = tmp_path / "prompt.txt"
    text.write_text("Answer the question.\n")
    code, out, _ = await fedbus(tmp_path, "evaluate", str(text), "--task", "object_counting", "--engine-url", url,
                                "--model", "m", "--max-tokens", "77", "--json", str(tmp_path / "t.json"))
    result = json.loads((tmp_path / "t.json").read_text())
    assert code == 0 and (result["questions"], result["sampling"]["max_tokens"]) == (120, 77)  # the task's defaults
    assert bodies[-1]["max_tokens"] == 77 and "top_p" not in bodies[-1]
    code, _, stderr = await fedbus(tmp_path, "evaluate", str(text), "--engine-url", url)
    assert code != 0 and "--model" in stderr
    before = len(bodies)
    code, out, _ = await fedbus(tmp_path, "evaluate", str(prompts), "--scenario", str(scenario), "--grader", "judge",
                                "--engine-url", url, "--model", "other-model", "--json", str(tmp_path / "j.json"))
    result = json.loads((tmp_path / "j.json").read_text())
    assert code == 0 and (result["grader"], result["accuracy"], result["unjudged"]) == ("judge", 1.0, 0)
    judged = [b for b in bodies[before:] if b["messages"][-1]["content"].startswith("Below is a question")]
    assert len(judged) == 3  # the scenario's judge role names no server of its own: the evaluated engine judges
    code, out, stderr = await fedbus(tmp_path, "evaluate", str(prompts), "--scenario", str(scenario), "--grader",
                                     "judge", "--model", "other-model", "--no-cache", url_env=url)
    assert code == 0, stderr  # the server from $FEDBUS_ENGINE_URL serves the judge too
    assert out.startswith("test accuracy 1.0000 on 3 questions")


async def test_a_judged_federation_grades_by_the_judge_role(
        server: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """task.grader: judge: the clients' batches and the run's scores are graded by the judge role's model."""
    url, bodies = server
    judged = (SCENARIO.replace("object_counting, train_size", "object_counting, grader: judge, train_size")
              .replace("    evaluator: {model: eval-model, top_p: 0.5}", "    judge: {model: judge-model}")
              .replace("aggregator: {max_tokens: 64}", "aggregator: {max_tokens: 500}"))
    (tmp_path / "scenario.yaml").write_text(judged)
    code, _out, stderr = await fedbus(tmp_path, "run", str(tmp_path / "scenario.yaml"), "--out", str(tmp_path / "out"),
                                      "--engine-url", url, "--quiet")
    assert code == 0, stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    judge_bodies = [b for b in bodies if b["messages"][-1]["content"].startswith("Below is a question")]
    assert judge_bodies and {b["model"] for b in judge_bodies} == {"judge-model"}
    assert all(b["model"] != "judge-model" for b in bodies if b not in judge_bodies)
    by_role = summary["llm"]["by_role"]
    assert by_role["judge"]["calls"] == by_role["forward"]["calls"] + by_role["evaluator"]["calls"]  # one per answer
    assert all(r["val"]["unjudged"] == 0 for r in summary["rounds"])
    assert summary["local_steps"]["step_reasons"].get("improved") == 2
    assert summary["final"]["test_accuracy"] == 1.0 > summary["final"]["initial_test_accuracy"]
    assert [r["aggregation"].get("fallback") for r in summary["rounds"]] == [None, None]


async def test_a_worker_reaches_the_runs_embedded_server_by_its_url_with_the_runs_cache_keys(
        server: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """engine local with a base_url (what a worker process gets): no server of its own is started; the calls go
    to that URL, under the local engine's cache identity (so the run and its workers share cache entries)."""
    from fedbus.runtime.engines import open_engines
    from fedbus.scenario.engine import EngineSpec

    url, bodies = server
    spec = EngineSpec(name="local", model="qwen-local", base_url=url)
    async with open_engines(spec, environ={"FEDBUS_CACHE": str(tmp_path)}) as engines:
        first = await engines.forward.complete("What is 2 + 2?")
        again = await engines.evaluator.complete("What is 2 + 2?")
    assert engines.local_url is None  # nothing was started
    assert engines.forward.identity == "local:qwen-local" and engines.forward.name == "local"
    assert bodies[-1]["model"] == "qwen-local" and len(bodies) == 1
    assert not first.cached and again.cached
