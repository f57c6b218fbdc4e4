"""`fedbus` options and exit codes as a user meets them: compare (table, CSV, per round), exit codes 1 and 3,
--strategy, --no-cache and --workers 0."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fedbus.runtime.broker import free_port
from fedbus.runtime.pool import auto_workers
from tests.conftest import ROOT

FEDBUS = [sys.executable, "-m", "fedbus"]


def fedbus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDBUS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def summary_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def table(text: str) -> list[dict[str, str]]:
    """`fedbus compare`'s table as dicts, cut at the header's column positions."""
    header, *lines = text.splitlines()
    keys = header.split()
    starts: list[int] = []
    for key in keys:
        starts.append(header.index(key, starts[-1] + 1 if starts else 0))
    return [{k: line[a:b].strip() for k, a, b in zip(keys, starts, [*starts[1:], None], strict=True)}
            for line in lines]


# ------------------------------------------------------------------ fedbus compare


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The quickstart simulated with seeds 7 and 8 by `fedbus run --simulate`."""
    out = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in ("7", "8"):
        run = out / f"seed-{seed}"
        result = fedbus("run", "scenarios/quickstart.yaml", "--simulate", "--seed", seed, "--out", str(run), "--quiet")
        assert result.returncode == 0, result.stderr
        runs.append(run)
    return runs


def test_compare_prints_a_row_per_run_with_the_summaries_numbers(two_runs: list[Path]) -> None:
    """`fedbus compare A B`: one table row per run, in argument order, holding each summary's own numbers."""
    result = fedbus("compare", *map(str, two_runs))
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert len(rows) == 2
    for got, run in zip(rows, two_runs, strict=True):
        s = summary_of(run)
        assert got["run"] == s["run_id"] and got["scenario"] == "quickstart" and got["engine"] == "surrogate"
        assert got["strategy"] == "concat" and got["mode"] == "sync" and got["status"] == "completed"
        assert int(got["rounds"]) == s["totals"]["rounds_closed"] == 3
        assert float(got["test_acc"]) == round(s["final"]["test_accuracy"], 4)
        assert float(got["initial_acc"]) == round(s["final"]["initial_test_accuracy"], 4)
        assert int(got["prompt_chars"]) == s["final"]["prompt_chars"]
        assert int(got["accepted"]) == s["totals"]["updates_accepted"] == 12
        assert int(got["rejected"]) == s["totals"]["updates_rejected"]
        assert int(got["tokens"]) == s["totals"]["tokens"]
        assert float(got["wall_s"]) == s["totals"]["wall_s"]
    assert rows[0]["run"] != rows[1]["run"]


def test_compare_csv_has_the_same_rows(two_runs: list[Path]) -> None:
    """--csv: the same columns and values as the table, as CSV a spreadsheet or pandas reads."""
    as_table = table(fedbus("compare", *map(str, two_runs)).stdout)
    result = fedbus("compare", "--csv", *map(str, two_runs))
    assert result.returncode == 0, result.stderr
    assert list(csv.DictReader(io.StringIO(result.stdout))) == as_table


def test_compare_rounds_csv_has_a_row_per_round(two_runs: list[Path]) -> None:
    """--rounds --csv: one row per (run, round) with that round's validation accuracy, prompt size and counts;
    a summary.json path works as well as a run directory."""
    result = fedbus("compare", "--rounds", "--csv", str(two_runs[0] / "summary.json"), str(two_runs[1]))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = [(s["run_id"], str(r["round"]), r["status"], str(r["val_accuracy"]), str(r["global_prompt_chars"]),
                 str(r["sentence_overlap"]), str(len(r["accepted"])), str(len(r["rejected"])), str(r["duration_s"]))
                for s in map(summary_of, two_runs) for r in s["rounds"]]
    assert [(r["run"], r["round"], r["status"], r["val_acc"], r["prompt_chars"], r["sentence_overlap"], r["accepted"],
             r["rejected"], r["duration_s"]) for r in rows] == expected
    assert len(rows) == 6


def test_compare_rounds_table_matches_the_rounds_csv(two_runs: list[Path]) -> None:
    """--rounds without --csv prints the same per-round rows as an aligned table."""
    as_csv = list(csv.DictReader(io.StringIO(fedbus("compare", "--rounds", "--csv", *map(str, two_runs)).stdout)))
    result = fedbus("compare", "--rounds", *map(str, two_runs))
    assert result.returncode == 0, result.stderr
    assert table(result.stdout) == as_csv


def test_compare_of_a_run_without_a_summary_exits_1(tmp_path: Path) -> None:
    """A path with no summary.json: exit 1 and one line naming the file, no traceback."""
    result = fedbus("compare", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path / 'summary.json'}: not a readable summary.json" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ exit codes 1 and 3

NEVER_ONLINE = """\
name: never-online
seed: 1
engine: surrogate
rounds: 2
time_scale: 1000
task: {name: surrogate-skills, train_size: 40, val_size: 10, test_size: 10}
clients:
  local_steps: 1
  batch_size: 2
  groups:
    - name: late
      count: 2
      availability: {online: [{start_s: 3000, end_s: 4000}]}  # 3 s of real time: long after the abort
participation: {min_clients: 2, min_updates: 1, round_deadline_s: 10, join_timeout_s: 5}
"""


def test_a_simulated_run_that_cannot_start_exits_3(tmp_path: Path) -> None:
    """Clients that are not online within join_timeout_s abort the run: exit 3 and status 'aborted'."""
    scenario = write(tmp_path / "never.yaml", NEVER_ONLINE)
    result = fedbus("run", str(scenario), "--simulate", "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 3, result.stderr
    s = summary_of(tmp_path / "out")
    assert s["status"] == "aborted" and "fewer than 2 clients" in s["reason"]
    assert s["totals"]["rounds_aggregated"] == 0


def test_a_run_on_the_embedded_broker_that_cannot_start_exits_3(tmp_path: Path) -> None:
    """The same abort over a real broker: exit 3, and the summary is still written."""
    scenario = write(tmp_path / "never.yaml", NEVER_ONLINE)
    result = fedbus("run", str(scenario), "--out", str(tmp_path / "out"), "--quiet")
    assert result.returncode == 3, result.stderr
    s = summary_of(tmp_path / "out")
    assert s["status"] == "aborted" and s["broker"]["kind"] == "embedded-rumqttd"
    assert s["totals"]["rounds_aggregated"] == 0


def test_an_unreachable_broker_exits_1(tmp_path: Path) -> None:
    """--broker pointing at nothing fails the run with exit code 1."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                    "--out", str(tmp_path / "out"), "--quiet", timeout=60)
    assert result.returncode == 1


def test_an_unreachable_broker_is_reported_in_one_line(tmp_path: Path) -> None:
    """An unreachable broker is reported as 'broker problem', not as a traceback."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                    "--out", str(tmp_path / "out"), "--quiet", timeout=60)
    assert "fedbus run: broker problem: cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ --strategy


def test_an_unknown_strategy_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """--strategy goes through the scenario's checks: an unknown name exits 2 naming aggregation.strategy."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--strategy", "average", "--simulate",
                    "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "aggregation.strategy" in result.stderr and "average" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_llm_strategy_on_the_surrogate_is_refused(tmp_path: Path) -> None:
    """--strategy summarize on a surrogate scenario exits 2: it needs an LLM engine."""
    result = fedbus("run", "scenarios/quickstart.yaml", "--strategy", "summarize", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "aggregation.strategy: summarize needs an LLM engine" in result.stderr
    assert not (tmp_path / "out").exists()


LLM_SCENARIO = """\
name: options-llm
seed: 5
engine: {name: openai, model: scripted-model, max_retries: 0, timeout_s: 10, concurrency: 4}
rounds: 1
initial_prompt: "Answer the question. The last line of your response should be 'Answer: $VALUE'."
task: {name: object_counting, train_size: 4, val_size: 2, test_size: 2}
clients: {count: 2, local_steps: 1, batch_size: 2}
participation: {min_clients: 2, min_updates: 1, round_deadline_s: 120, join_timeout_s: 30}
aggregation: {strategy: summarize, max_prompt_chars: 4000}
"""


@pytest.fixture
async def scripted_llm() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """An OpenAI-compatible server that plays a model: tagged improvements and merges, fixed answers."""
    seen = {"requests": 0}

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen["requests"] += 1
        user = body["messages"][-1]["content"]
        if user.startswith("Here is the role of the variable you will improve"):
            text = "<IMPROVED_VARIABLE>List every item before counting. Answer: $VALUE</IMPROVED_VARIABLE>"
        elif "<MERGED_PROMPT>" in user:
            text = "<MERGED_PROMPT>List every item before counting. Answer: $VALUE</MERGED_PROMPT>"
        elif user.startswith("You will give feedback"):
            text = "Tell the model to list every item before counting."
        else:
            text = "Answer: 3"
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def test_strategy_and_no_cache_reach_an_llm_run(scripted_llm: tuple[str, dict[str, int]],
                                                      tmp_path: Path) -> None:
    """--strategy replaces the scenario's aggregator (used and recorded); --no-cache sends every call to the
    server and writes nothing to the response cache."""
    url, seen = scripted_llm
    scenario = write(tmp_path / "llm.yaml", LLM_SCENARIO)
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEDBUS_CACHE": str(cache)}
    process = await asyncio.create_subprocess_exec(
        *FEDBUS, "run", str(scenario), "--out", str(out), "--engine-url", url, "--quiet",
        "--strategy", "uid_summarize", "--no-cache", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, stderr.decode()[-3000:]
    s = summary_of(out)
    assert s["status"] == "completed"
    assert s["scenario"]["aggregation"]["strategy"] == "uid_summarize"
    assert [r["aggregation"]["strategy"] for r in s["rounds"]] == ["uid_summarize"]
    assert s["llm"]["cache"] is False
    assert s["llm"]["cached_calls"] == 0
    assert s["llm"]["calls"] > 0 and seen["requests"] == s["llm"]["calls"]
    responses = cache / "responses"
    assert not responses.exists() or not any(responses.iterdir()), "--no-cache wrote to the response cache"


# ------------------------------------------------------------------ --workers 0

IN_PROCESS = """\
name: in-process
seed: 4
engine: surrogate
rounds: 1
time_scale: 100
task: {name: surrogate-skills, train_size: 202, val_size: 10, test_size: 10}
clients: {count: 101, local_steps: 1, batch_size: 2}
participation: {fraction: 0.05, min_clients: 2, min_updates: 2, round_deadline_s: 600, join_timeout_s: 3000}
"""


def test_workers_0_keeps_every_client_in_the_run_process(tmp_path: Path) -> None:
    """--workers 0: 101 clients (the default would spread them over worker processes) all run inside
    `fedbus run`; the summary says 0 client processes and no worker was started."""
    assert auto_workers(101, cpus=2) >= 1, "the default for this scenario would start workers"
    scenario = write(tmp_path / "inprocess.yaml", IN_PROCESS)
    out = tmp_path / "out"
    result = fedbus("run", str(scenario), "--workers", "0", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    s = summary_of(out)
    assert s["status"] == "completed"
    assert s["client_processes"] == 0
    assert s["conditions"]["connected"] == 101
    assert len(s["rounds"][0]["accepted"]) >= 2
    events = [json.loads(line) for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not any(e["event"] == "workers-started" for e in events)
    assert not (out / "workers").exists()
