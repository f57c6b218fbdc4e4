"""A real FedTextGrad federation (TextGrad clients, LLM aggregation, LLM evaluation) over the embedded
broker, against a SCRIPTED OpenAI-compatible server: the whole path fedbus takes with vLLM or Ollama,
in seconds. The real model runs in tests/integration/test_local_federation.py."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fedbus.protocol.messages import DataSpec
from fedbus.runtime.address import BrokerAddress
from fedbus.tasks.federation import task_splits
from tests.conftest import ROOT, needs_library

pytestmark = [needs_library("textgrad"), pytest.mark.slow]  # TextGrad clients; each test is a whole LLM run

SCENARIO = """
name: scripted-llm
seed: 5
security: none  # one test attaches a remote `fedbus client`, which speaks v1 without an invitation
engine: {{name: openai, model: scripted-model, max_retries: 1, timeout_s: 10, concurrency: 4}}
rounds: 2
initial_prompt: "Answer the question. The last line of your response should be 'Answer: $VALUE'."
task: {{name: object_counting, train_size: 8, val_size: 3, test_size: 3}}
clients: {{count: 2, local_steps: 1, batch_size: 2}}
participation: {{min_clients: 2, min_updates: 1, round_deadline_s: {deadline}, join_timeout_s: 300}}
aggregation: {{strategy: {strategy}, max_prompt_chars: 4000, format_line: " Answer: $VALUE"}}
"""

Script = Callable[[str | None, str], tuple[int, str]]
DATA = DataSpec(task="object_counting", seed=5, num_shards=2, train_size=8, val_size=3, test_size=3)
WORKERS_DATA = DataSpec(task="object_counting", seed=5, num_shards=4, train_size=16, val_size=3, test_size=3)
TARGETS = {e.input: e.target for d in (DATA, WORKERS_DATA) for s in task_splits(d).values()
           for e in (*s.train, *s.val, *s.test)}


def scripted_model(system: str | None, user: str) -> tuple[int, str]:
    """Wrong until the prompt says to list items; the optimizer adds that; merges keep both prompts' lines
    (the paper's templates get the merged text alone, fedbus's tagged ones get it between tags)."""
    if user.startswith("Here is the role of the variable you will improve"):
        return 200, "<IMPROVED_VARIABLE>List every item before counting. Answer: $VALUE</IMPROVED_VARIABLE>"
    if user.startswith("You will give feedback"):
        return 200, "The prompt should tell the model to list every item before counting."
    if "<MERGED_PROMPT>" in user:
        return 200, "<MERGED_PROMPT>List every item before counting. Answer: $VALUE</MERGED_PROMPT>"
    if "List of Prompts to Merge:" in user:  # the authors' code appends the format line itself
        return 200, "List every item before counting."
    if "<INSTRUCTION>" in user:  # the retention judge: present when the words are there
        merged, instruction = (user.split(f"<{tag}>\n", 1)[1].split(f"\n</{tag}>", 1)[0]
                               for tag in ("PROMPT", "INSTRUCTION"))
        return 200, f"<PRESENT>{'yes' if instruction in merged else 'no'}</PRESENT>"
    right = system is not None and "List every item" in system
    return 200, f"Answer: {TARGETS[user] if right else -1}"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"script": scripted_model, "requests": 0, "tokenizer": True, "tokenized": 0,
                             "hold_feedback": None, "scored_prompts": 0}

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        state["requests"] += 1
        messages = body["messages"]
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        user = messages[-1]["content"]
        hold: asyncio.Event | None = state["hold_feedback"]
        if hold is not None and user.startswith("You will give feedback"):
            await hold.wait()  # a test keeps the clients' local steps (and so the round) going until it is ready
        status, text = state["script"](system, user)
        if status != 200:
            return web.Response(status=status, text="scripted failure")
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": len(user) // 4 + 5, "completion_tokens": len(text) // 4}})

    async def tokenize(request: web.Request) -> web.Response:  # as llama.cpp's server: one token per word here
        body = await request.json()
        state["tokenized"] += 1
        if not state["tokenizer"]:  # as OpenAI's and Ollama's servers: no such endpoint
            return web.Response(status=404, text="404: Not Found")
        return web.json_response({"tokens": list(range(len(body["content"].split())))})

    async def completions(request: web.Request) -> web.Response:  # as vLLM: echo scores the prompt's tokens
        body = await request.json()
        if not (body.get("echo") and body.get("logprobs") is not None and state["tokenizer"]):
            return web.Response(status=404, text="404: Not Found")
        state["scored_prompts"] += 1
        words = body["prompt"].split()  # one token per word; the i-th word has log-probability -(i % 3) - 0.5
        return web.json_response({
            "choices": [{"text": body["prompt"] + " x", "finish_reason": "length",
                         "logprobs": {"token_logprobs": [None, *(-(i % 3) - 0.5 for i in range(1, len(words))),
                                                         -0.1]}}],
            "usage": {"prompt_tokens": len(words), "completion_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/tokenize", tokenize)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", state
    await runner.cleanup()


def written_events(path: Path) -> list[dict[str, Any]]:
    """The events a running ``fedbus run`` has written so far (whole lines only)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


async def fedbus_run(tmp_path: Path, url: str, strategy: str, *,
                     deadline: float = 60, text: str | None = None,
                    extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(text if text is not None else SCENARIO.format(strategy=strategy, deadline=deadline))
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDBUS_CACHE": str(tmp_path / "cache")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", "run", str(scenario), "--out", str(out), "--engine-url", url, "--quiet",
        *extra, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    code = await process.wait()
    if not (out / "summary.json").exists():
        pytest.fail(f"no summary.json (exit code {code}); stderr: {stderr.decode()[-3000:]}")
    assert "Traceback" not in stderr.decode(), stderr.decode()[-3000:]  # failures are logged as lines, not crashes
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return code, json.loads((out / "summary.json").read_text()), events


@pytest.mark.parametrize("strategy", ["summarize", "uid_summarize", "summarize_tagged"])
async def test_a_textgrad_federation_runs_against_an_openai_compatible_server(
        server: tuple[str, dict[str, Any]], tmp_path: Path, strategy: str) -> None:
    url, state = server
    code, summary, events = await fedbus_run(tmp_path, url, strategy)
    assert code == 0, summary.get("reason")
    assert summary["status"] == "completed"
    assert summary["engine"]["name"] == "openai"
    rounds = summary["rounds"]
    assert [r["status"] for r in rounds] == ["aggregated", "aggregated"]
    assert all(r["aggregation"]["strategy"] == strategy and "fallback" not in r["aggregation"] for r in rounds)
    assert rounds[0]["accepted"][0]["llm_calls"] == 4 * 2 + 1  # TextGrad: forward, 2 feedbacks each, update, recheck
    assert all(a["tokens"] > 0 for a in rounds[0]["accepted"])  # later rounds may be answered from the cache
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and r["val"]["questions"] == 3 for r in rounds)
    assert summary["final"]["prompt"] == "List every item before counting. Answer: $VALUE"
    assert summary["final"]["test_accuracy"] > summary["final"]["initial_test_accuracy"]
    assert rounds[0]["sentence_overlap"] == 1.0
    assert [r["global_prompt_tokens"] for r in rounds] == [7, 7]  # the server's tokenizer: one per word here
    assert state["tokenized"] == 2  # once per round, not an LLM call
    surprisals = [-(i % 3) - 0.5 for i in range(1, 7)]  # the server's scores of the 7-word prompt's last 6 words
    mean = sum(-v for v in surprisals) / 6
    assert rounds[0]["complexity"]["surprisal"] == {
        "mean_nats": round(mean, 4), "max_nats": 2.5, "tokens": 6, "model": "scripted-model",
        "variance": round(sum((-v - mean) ** 2 for v in surprisals) / 5, 4)}
    assert state["scored_prompts"] == 2  # once per round, not an LLM call
    llm = summary["llm"]
    assert llm["calls"] - llm["cached_calls"] == state["requests"]  # repeated questions come from the cache
    assert llm["prompt_tokens"] > 0 and llm["failures"] == 0
    assert summary["local_steps"]["step_reasons"] == {"improved": 2, "perfect-batch": 2}  # round 2 starts right
    assert rounds[1]["val_accuracy"] == 1.0 and summary["final"]["test_accuracy"] == 1.0
    assert any(e["event"] == "aggregated-by-llm" for e in events)


async def test_a_reply_without_tags_falls_back_to_concat(server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, state = server

    def no_tags(system: str | None, user: str) -> tuple[int, str]:
        if "<MERGED_PROMPT>" in user:
            return 200, "Here is a merged prompt, without the tags you asked for."
        return scripted_model(system, user)

    state["script"] = no_tags
    state["tokenizer"] = False  # and a server without /tokenize, as OpenAI's and Ollama's
    code, summary, events = await fedbus_run(tmp_path, url, "summarize_tagged")
    assert code == 0
    assert all(r["aggregation"]["fallback"] == "concat (missing-tags)" for r in summary["rounds"])
    assert sum(e["event"] == "aggregation-fallback" for e in events) == 2
    assert not any("global_prompt_tokens" in r for r in summary["rounds"])  # no count rather than a guess
    assert all(r["complexity"]["surprisal"].startswith("unavailable") for r in summary["rounds"])
    assert state["tokenized"] == 1  # asked once, then never again


async def test_instruction_retention_is_judged_per_instruction_each_client_added(
        server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """aggregation.judge_retention: the judge role reads each round's global prompt against the sentences each
    client's update added to the prompt it started from."""
    url, _state = server
    scenario = SCENARIO.format(strategy="summarize", deadline=60).replace(
        'format_line: " Answer: $VALUE"}', 'format_line: " Answer: $VALUE", judge_retention: true}')
    code, summary, _events = await fedbus_run(tmp_path, url, "summarize", text=scenario)
    assert code == 0, summary.get("reason")
    first = summary["rounds"][0]["instruction_retention"]
    # each client added "List every item before counting." and "Answer: $VALUE"; the merge kept both
    assert (first["instructions"], first["judged"], first["kept"], first["share"]) == (2, 2, 2, 1.0)
    assert first["by_client"] == {c: {"instructions": 2, "kept": 2} for c in ("client-0", "client-1")}
    assert first["model"] == "scripted-model"
    second = summary["rounds"][1]["instruction_retention"]  # round 2's updates add nothing to the global prompt
    assert (second["instructions"], second["share"]) == (0, None)


async def test_textgrad_clients_run_in_worker_processes_on_the_runs_engine(
        server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """--workers 2: four TextGrad clients in two worker processes, each opening the run's engine with half its
    concurrency; every call any process made is in the run's totals."""
    url, state = server
    scenario = SCENARIO.format(strategy="summarize", deadline=120).replace("count: 2", "count: 4").replace(
        "min_clients: 2", "min_clients: 4").replace("train_size: 8", "train_size: 16")
    code, summary, events = await fedbus_run(tmp_path, url, "summarize", text=scenario, extra=("--workers", "2"))
    assert code == 0, summary.get("reason")
    assert summary["client_processes"] == 2
    assert [len(r["accepted"]) for r in summary["rounds"]] == [4, 4]
    llm = summary["llm"]
    assert llm["worker_processes"] == 2
    assert llm["calls"] - llm["cached_calls"] == state["requests"]  # the workers' calls are counted too
    client_calls = sum(a["llm_calls"] for r in summary["rounds"] for a in r["accepted"])
    assert llm["by_role"]["forward"]["calls"] + llm["by_role"]["optimizer"]["calls"] <= llm["calls"]
    assert client_calls > 0 and llm["by_role"]["backward"]["calls"] > 0  # the clients' feedback, in the workers
    assert sum(e["event"] == "worker-llm" for e in events) == 2


async def test_an_empty_paper_merge_falls_back_to_concat(server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    """The authors' template takes the reply as it comes; a blank reply is not a prompt, so the round says so."""
    url, state = server

    def blank(system: str | None, user: str) -> tuple[int, str]:
        return (200, "  \n") if "List of Prompts to Merge:" in user else scripted_model(system, user)

    state["script"] = blank
    code, summary, events = await fedbus_run(tmp_path, url, "summarize")
    assert code == 0
    assert [r["aggregation"]["fallback"] for r in summary["rounds"]] == ["concat (empty)"] * 2
    assert sum(e["event"] == "aggregation-fallback" and e["problem"] == "empty" for e in events) == 2


async def test_a_failing_server_marks_clients_failed_and_the_run_goes_on(
        server: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, state = server

    def broken_feedback(system: str | None, user: str) -> tuple[int, str]:
        if user.startswith("You will give feedback"):
            return 500, ""
        return scripted_model(system, user)

    state["script"] = broken_feedback
    code, summary, events = await fedbus_run(tmp_path, url, "summarize", deadline=60)  # clients report failures
    assert summary["status"] == "completed", summary["reason"]  # the run goes on
    assert code == 0
    assert all(r["status"] == "no-quorum" and not r["missing"] and r["close_reason"] == "all-answered"
               and {(f["client"], f["reason"]) for f in r["failed"]} == {("client-0", "client-failed"),
                                                                           ("client-1", "client-failed")}
               for r in summary["rounds"])
    failed = [e for e in events if e["event"] == "local-error"]
    assert len(failed) == 4 and all("500" in e["reason"] for e in failed)
    assert summary["local_steps"]["failed_rounds"] == 4
    assert summary["llm"]["retries"] >= 4 and summary["llm"]["failures"] >= 4


async def test_a_client_on_another_machine_brings_its_own_llm(
        server: tuple[str, dict[str, Any]], tmp_path: Path, embedded_broker: BrokerAddress, run_id: str) -> None:
    """`fedbus client --engine openai --engine-url ... --model ...` joins a running LLM federation."""
    url, state = server
    hold = state["hold_feedback"] = asyncio.Event()  # round 1 stays open until the visitor is online
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO.format(strategy="summarize", deadline=300).replace("rounds: 2", "rounds: 3")
                        .replace("timeout_s: 10", "timeout_s: 300"))  # held requests must not time out
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDBUS_CACHE": str(tmp_path / "cache")}
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", "run", str(scenario), "--out", str(out), "--engine-url", url, "--quiet",
        "--broker", embedded_broker.url(), "--run-id", run_id, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    deadline = asyncio.get_running_loop().time() + 180  # a bound for a hang, not a speed target
    while not any(e["event"] == "round-opened" for e in written_events(out / "events.jsonl")):
        if run.returncode is not None:
            _stdout, stderr = await run.communicate()
            pytest.fail(f"fedbus run exited with {run.returncode} before a round opened: {stderr.decode()[-3000:]}")
        assert asyncio.get_running_loop().time() < deadline, "the federation never opened a round"
        await asyncio.sleep(0.1)
    visitor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedbus", "client", "--broker", embedded_broker.url(), "--run", run_id,
        "--id", "visitor", "--engine", "openai", "--engine-url", url, "--model", "scripted-model",
        "--log-dir", str(tmp_path / "visitor"), cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    while not any(e["event"] == "received" and e.get("kind") == "presence" and e.get("client") == "visitor"
                  for e in written_events(out / "events.jsonl")):
        if visitor.returncode is not None:
            visitor_out, _ = await visitor.communicate()
            pytest.fail(f"the visitor exited with {visitor.returncode} before it was online: {visitor_out.decode()}")
        assert asyncio.get_running_loop().time() < deadline, "the visitor never came online"
        await asyncio.sleep(0.1)
    hold.set()
    await asyncio.wait_for(run.communicate(), timeout=400)
    visitor_out, _ = await asyncio.wait_for(visitor.communicate(), timeout=120)
    assert visitor.returncode == 0, visitor_out.decode()[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    joined = [r for r in summary["rounds"] if "visitor" in [a["client"] for a in r["accepted"]]]
    assert joined, "the visitor's updates never entered an aggregate"
    assert all(a["llm_calls"] > 0 for r in joined for a in r["accepted"] if a["client"] == "visitor")
    assert any((tmp_path / "visitor" / "textgrad").iterdir()), "the visitor ran TextGrad with its own engine"
