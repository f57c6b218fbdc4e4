"""How a run scores its global prompt: the surrogate's seeded accuracy, or a real LLM on each task's splits.

One object per run, chosen once, so the run itself does not branch on the engine: after every round it
adds the validation accuracy (and, on an LLM, the evaluation record, the engine's own token count and
what the LLM merge cost) to the round's record; at the end it scores the initial and the final prompt
on the test split.
"""

from __future__ import annotations

from typing import Any, Protocol

from fedbus.aggregator.effects import RoundResult
from fedbus.llm.engine import ChatEngine
from fedbus.protocol.messages import DataSpec
from fedbus.results.prompt_log import best_record
from fedbus.runtime.llm_evaluation import Evaluation, LLMEvaluator
from fedbus.runtime.llm_run import LLMReducer, count_tokens, prompt_surprisal
from fedbus.surrogate.evaluation import make_evaluator
from fedbus.tasks.federation import client_mean_accuracy


class Scoring(Protocol):
    async def round_extra(self, result: RoundResult) -> dict[str, Any]:
        """What the round's record gains: at least ``val_accuracy``."""
        ...

    async def final(self, initial_prompt: str, prompt: str, rounds: int,
                    best: tuple[int, float, str] | None = None) -> dict[str, Any]:
        """``test_accuracy`` and ``initial_test_accuracy`` (and any detail) for summary.json's ``final``; with
        ``best`` (the best-by-validation round, its accuracy and prompt) also that prompt's test accuracy."""
        ...



def per_task_final(data: DataSpec, final: Evaluation) -> dict[str, Any]:
    """For a run of several tasks: each task's test accuracy and size, and the mean over the clients of each
    one's accuracy on its own test set (``per-task``: its task's); ``test_accuracy`` is the mean over tasks."""
    if len(final.per_task) < 2:
        return {}
    return {"per_task": {name: {"test_accuracy": round(accuracy, 4), "questions": final.per_task_questions[name]}
                         for name, accuracy in final.per_task.items()},
            "test_accuracy_client_mean": client_mean_accuracy(data, final.per_task, final.per_task_questions)}


class SurrogateScoring:
    """The surrogate's accuracy: one seeded draw per (seed, split, round), so runs replay."""

    def __init__(self, engine: str, data: DataSpec) -> None:
        self._evaluator = make_evaluator(engine, data)

    async def round_extra(self, result: RoundResult) -> dict[str, Any]:
        return {"val_accuracy": await self._evaluator.accuracy(result.prompt, "val", result.round)}

    async def final(self, initial_prompt: str, prompt: str, rounds: int,
                    best: tuple[int, float, str] | None = None) -> dict[str, Any]:
        tested = None if best is None else await self._evaluator.accuracy(best[2], "test", rounds + 1)
        return {"test_accuracy": await self._evaluator.accuracy(prompt, "test", rounds + 1),
                "initial_test_accuracy": await self._evaluator.accuracy(initial_prompt, "test", 0),
                **best_record(best, tested)}


class LLMScoring:
    """A real LLM answers each task's questions under the global prompt."""

    def __init__(self, engine: ChatEngine, data: DataSpec, reducer: LLMReducer) -> None:
        self._engine = engine
        self._data = data
        self._evaluator = LLMEvaluator(engine, data)
        self._reducer = reducer

    async def round_extra(self, result: RoundResult) -> dict[str, Any]:
        evaluation = await self._evaluator.evaluate(result.prompt, "val")
        extra: dict[str, Any] = {"val_accuracy": evaluation.accuracy, "val": evaluation.record()}
        counted = await count_tokens(self._engine, result.prompt)
        if counted is not None:
            extra["global_prompt_tokens"] = counted  # by the engine's own tokenizer
        scored = await prompt_surprisal(self._engine, result.prompt)
        if scored is not None:
            extra["surprisal"] = scored  # run.py files it under complexity
        if result.round in self._reducer.by_round:
            extra["aggregation"] = self._reducer.by_round.pop(result.round)
        return extra

    async def final(self, initial_prompt: str, prompt: str, rounds: int,
                    best: tuple[int, float, str] | None = None) -> dict[str, Any]:
        initial = await self._evaluator.evaluate(initial_prompt, "test")
        final = await self._evaluator.evaluate(prompt, "test")
        out = {"test_accuracy": final.accuracy, "initial_test_accuracy": initial.accuracy,
               "test": final.record(), "initial_test": initial.record(), **per_task_final(self._data, final)}
        if best is not None and best[2] == prompt:
            return out | best_record(best, final.accuracy)  # the same prompt: the same answers, no second pass
        tested = None if best is None else await self._evaluator.evaluate(best[2], "test")
        return out | best_record(best, None if tested is None else tested.accuracy)
