"""Evaluating the global prompt with a real LLM: each task's validation set every round, its test set at the end.

The prompt is the system prompt; each question is the user message; a reply is right when its
``Answer: <number>`` (sign kept) equals the target, or, given a ``judge`` engine (``task.grader: judge``), when
the authors' LLM judge says so (:mod:`fedbus.llm.judge`; a verdict without its tags counts wrong and is counted in
``unjudged``). An engine failure on a question counts as a wrong answer and is counted in ``errors``, so a
flaky server shows in the record, not as a crash.
With a ``per-task`` partition each client is judged on its own task: the per-task accuracies are
also the per-client ones, and ``accuracy`` is their mean (the paper's average over clients).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fedbus.errors import EngineError
from fedbus.llm.engine import ChatEngine
from fedbus.llm.judge import judged_correct
from fedbus.protocol.messages import DataSpec
from fedbus.tasks.answers import is_correct
from fedbus.tasks.example import Example
from fedbus.tasks.federation import task_splits


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """How a prompt did on one split."""

    accuracy: float  # mean over tasks
    per_task: dict[str, float]
    questions: int
    per_task_questions: dict[str, int]
    errors: int  # questions the engine failed to answer (counted wrong)
    prompt_tokens: int
    completion_tokens: int
    unjudged: int | None = None  # judged: verdicts without their tags (counted wrong); None: graded exactly

    def record(self) -> dict[str, object]:
        return {"accuracy": round(self.accuracy, 4), "per_task": {k: round(v, 4) for k, v in self.per_task.items()},
                "questions": self.questions, "errors": self.errors,
                "tokens": self.prompt_tokens + self.completion_tokens,
                **({} if self.unjudged is None else {"unjudged": self.unjudged})}


class LLMEvaluator:
    """Scores prompts on the run's validation and test sets with ``engine``."""

    def __init__(self, engine: ChatEngine, spec: DataSpec, judge: ChatEngine | None = None) -> None:
        self._engine = engine
        self._judge = judge
        self._splits = task_splits(spec)

    async def accuracy(self, prompt: str, split: str, round: int) -> float:
        return (await self.evaluate(prompt, split)).accuracy

    async def evaluate(self, prompt: str, split: str) -> Evaluation:
        if split not in ("val", "test"):
            raise EngineError(f"unknown split {split!r}")
        per_task: dict[str, float] = {}
        per_task_questions: dict[str, int] = {}
        questions = errors = prompt_tokens = completion_tokens = 0
        unjudged: list[str] = []  # judged: the questions whose verdict had no tags
        for name, splits in self._splits.items():
            examples = splits.val if split == "val" else splits.test
            async with asyncio.TaskGroup() as group:  # the engine's semaphore bounds the concurrency
                tasks = [group.create_task(self._ask(prompt, example, unjudged)) for example in examples]
            answers = [task.result() for task in tasks]
            per_task[name] = sum(ok for ok, *_ in answers) / len(answers) if answers else 0.0
            per_task_questions[name] = len(answers)
            questions += len(answers)
            errors += sum(failed for _, failed, _, _ in answers)
            prompt_tokens += sum(p for *_, p, _ in answers)
            completion_tokens += sum(c for *_, c in answers)
        mean = sum(per_task.values()) / len(per_task) if per_task else 0.0
        return Evaluation(accuracy=mean, per_task=per_task, questions=questions, per_task_questions=per_task_questions,
                          errors=errors, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          unjudged=None if self._judge is None else len(unjudged))

    async def _ask(self, prompt: str, example: Example, unjudged: list[str]) -> tuple[bool, bool, int, int]:
        try:
            reply = await self._engine.complete(example.input, system=prompt)
        except EngineError:
            return False, True, 0, 0
        tokens = (0, 0) if reply.cached else (reply.prompt_tokens, reply.completion_tokens)
        if self._judge is None:
            return is_correct(reply.text, example.target), False, *tokens
        try:  # the judge's own tokens are in its role's counts
            right, decided = await judged_correct(self._judge, example.input, example.target, reply.text)
        except EngineError:
            return False, True, *tokens
        if not decided:
            unjudged.append(example.input)
        return right, False, *tokens
