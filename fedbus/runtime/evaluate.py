"""``fedbus evaluate``: score a saved prompt on an engine, for prompt transfer (a prompt optimized on one model,
judged on another).

The prompt comes from a text file (taken as it is, less one trailing newline), a run's ``summary.json`` (its
final prompt) or a ``global_prompts.jsonl`` (the last round's prompt, or ``round``'s). The questions are a
scenario's (``--scenario``: its task, sizes and data seed, so a run's own test set) or a generated task's
(``--task``, the scenario defaults' sizes, ``--seed``). The engine is the scenario's evaluator role, or the
OpenAI-compatible server the command line names (``--engine-url`` and ``--model`` win over the scenario's).
Scoring is the run's own: :class:`~fedbus.runtime.llm_evaluation.LLMEvaluator`, the prompt as system prompt,
graded as the scenario's ``task.grader`` (or ``--grader``) says; the LLM judge is the scenario's judge role where
it names a server, else the engine being evaluated.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedbus.errors import EngineError, FedbusError
from fedbus.protocol.messages import DataSpec
from fedbus.runtime.engines import EngineOverrides, effective_spec, open_engine
from fedbus.runtime.llm_evaluation import LLMEvaluator
from fedbus.scenario.engine import GRADERS, EngineSpec

SPLITS = ("test", "val")


class PromptFileError(FedbusError):
    """A prompt file that holds no prompt fedbus can read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateRequest:
    """What ``fedbus evaluate`` was asked."""

    prompt_file: Path
    split: str = "test"
    round: int | None = None  # global_prompts.jsonl: this round's prompt (default: the last line)
    scenario: Path | None = None
    task: str | None = None  # without a scenario: a generated task (object_counting if None)
    seed: int = 0  # without a scenario: the data seed
    engine_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = None
    cache: bool = True
    grader: str | None = None  # None: the scenario's task.grader, else exact

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"Invalid split: {self.split!r} (test or val)")
        if self.grader not in (None, *GRADERS):
            raise ValueError(f"Invalid grader: {self.grader!r} (exact or judge)")


def read_prompt(path: Path, round: int | None = None) -> tuple[str, dict[str, Any]]:
    """The prompt ``path`` holds, and where it came from (``{"round": n}`` for a global_prompts.jsonl line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"{path}: cannot read: {exc}") from None
    if path.suffix == ".jsonl":
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        chosen = [line for line in lines if round is None or line.get("round") == round]
        if not chosen or not isinstance(chosen[-1].get("prompt"), str):
            rounds = ", ".join(str(line.get("round")) for line in lines)
            raise PromptFileError(f"{path}: no prompt{'' if round is None else f' for round {round}'} "
                                  f"(rounds: {rounds or 'none'})")
        return chosen[-1]["prompt"], {"round": chosen[-1].get("round")}
    if round is not None:
        raise PromptFileError("--round applies to a global_prompts.jsonl file")
    if path.suffix == ".json":
        try:
            document = json.loads(text)
            prompt = document["final"]["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PromptFileError(f"{path}: not a summary.json with final.prompt") from None
        if not isinstance(prompt, str):
            raise PromptFileError(f"{path}: final.prompt is not text")
        return prompt, {"from": "final"}
    prompt = text.removesuffix("\n")
    if not prompt.strip():
        raise PromptFileError(f"{path}: empty")
    return prompt, {}


def _data_and_engine(request: EvaluateRequest) -> tuple[DataSpec, EngineSpec, EngineSpec | None]:
    """The questions, the engine to evaluate (the scenario's evaluator role, or a generated task and the command
    line's server) and the judge's engine where the answers are judged."""
    from fedbus.scenario import load_scenario
    from fedbus.scenario.loader import scenario_from_mapping

    if request.scenario is not None:
        scenario = load_scenario(request.scenario)
        data, spec = scenario.data, scenario.engine_spec.for_role("evaluator")
        grader = request.grader or scenario.grader
        judge: EngineSpec | None = scenario.engine_spec.for_role("judge") if scenario.engine_spec.is_llm else None
        if request.task is not None and request.task not in data.task.split("+"):
            raise EngineError(f"--task {request.task}: the scenario's task is {data.task}")
        if request.task is not None and request.task != data.task:
            data = replace(data, task=request.task)
    else:
        document = {"name": "evaluate", "seed": request.seed, "rounds": 1, "clients": {"count": 1},
                    "engine": {"name": "openai", "model": request.model or "unset"},
                    "task": {"name": request.task or "object_counting"}}
        data, spec = scenario_from_mapping(document).data, EngineSpec(name="openai")
        grader, judge = request.grader or "exact", None
    if request.model is not None or request.engine_url is not None or spec.name == "surrogate":
        spec = replace(spec, name="openai", model=request.model or ("" if spec.name != "openai" else spec.model),
                       base_url=request.engine_url or (spec.base_url if spec.name == "openai" else ""))
    if request.api_key_env is not None:
        spec = replace(spec, api_key_env=request.api_key_env)
    if request.max_tokens is not None:
        spec = replace(spec, max_tokens=request.max_tokens)
    if spec.name == "openai" and not spec.model:
        raise EngineError("give --model (the server's model name)")
    spec = replace(spec, cache=spec.cache and request.cache)
    if grader != "judge":
        return data, spec, None
    if judge is None or (judge.name == "openai" and not judge.base_url):
        judge = spec  # no judge server of its own: the engine being evaluated judges
    return data, spec, replace(judge, cache=judge.cache and request.cache)


async def evaluate_prompt(request: EvaluateRequest, environ: Mapping[str, str]) -> dict[str, Any]:
    """Score the prompt; the result as ``--json`` writes it."""
    prompt, origin = read_prompt(request.prompt_file, request.round)
    data, raw_spec, raw_judge = _data_and_engine(request)
    overrides = EngineOverrides(base_url=request.engine_url)
    spec = effective_spec(raw_spec, overrides, environ)  # the flag over the env
    # a judge that is the evaluated engine follows it to the server the flag or $FEDBUS_ENGINE_URL names
    judge_spec = spec if raw_judge == raw_spec else (
        None if raw_judge is None else effective_spec(raw_judge, overrides, environ) if not raw_judge.base_url
        else raw_judge)
    if "local" in (spec.name, judge_spec and judge_spec.name):
        from fedbus.llm.extras import require_libraries

        require_libraries("local")
    async with contextlib.AsyncExitStack() as stack:
        engine = await stack.enter_async_context(open_engine(spec, environ=environ))
        judge = None
        if judge_spec is not None:
            judge = engine if judge_spec == spec else await stack.enter_async_context(
                open_engine(judge_spec, environ=environ))
        evaluation = await LLMEvaluator(engine, data, judge=judge).evaluate(prompt, request.split)
        stats = engine.statistics()
    return {"prompt_file": str(request.prompt_file), **origin, "prompt_chars": len(prompt), "split": request.split,
            "task": data.task, "engine": spec.name, "model": engine.model, "base_url": spec.base_url or None,
            "sampling": {"max_tokens": spec.max_tokens, "temperature": spec.temperature, "top_p": spec.top_p},
            **evaluation.record(), "llm_calls": stats.calls, "cached_calls": stats.cached_calls,
            "truncated": stats.truncated, "grader": "exact" if judge_spec is None else "judge",
            **({} if judge_spec is None else {"judge_model": judge_spec.model})}


def result_line(result: Mapping[str, Any]) -> str:
    """The line ``fedbus evaluate`` prints."""
    per_task = result.get("per_task") or {}
    tasks = ", ".join(f"{name} {value:.4f}" for name, value in per_task.items()) if len(per_task) > 1 else ""
    errors = f", {result['errors']} engine errors" if result.get("errors") else ""
    cut = f", {result['truncated']} replies cut at max_tokens" if result.get("truncated") else ""
    return (f"{result['split']} accuracy {result['accuracy']:.4f} on {result['questions']} questions"
            f"{' (' + tasks + ')' if tasks else ''}{errors}{cut}; {result['model']}"
            f"{' at ' + result['base_url'] if result.get('base_url') else ''}")


__all__ = ["SPLITS", "EvaluateRequest", "PromptFileError", "evaluate_prompt", "read_prompt", "result_line"]
