"""Server-side evaluation of the global prompt on the shared validation and test splits."""

from __future__ import annotations

import random
from typing import Protocol

from fedbus.errors import EngineError
from fedbus.protocol.messages import DataSpec
from fedbus.surrogate import model, task


class Evaluator(Protocol):
    """Scores a prompt on a split ('val' or 'test')."""

    async def accuracy(self, prompt: str, split: str, round: int) -> float: ...


class SurrogateEvaluator:
    """The surrogate's accuracy: one seeded draw per (seed, split, round), so runs replay."""

    def __init__(self, spec: DataSpec) -> None:
        self._spec = spec
        self._data = task.generate(spec)

    async def accuracy(self, prompt: str, split: str, round: int) -> float:
        return self.accuracy_now(prompt, split, round)

    def accuracy_now(self, prompt: str, split: str, round: int) -> float:
        """The same, synchronously (the simulator calls this)."""
        examples = {"val": self._data.val, "test": self._data.test}.get(split)
        if examples is None:
            raise EngineError(f"unknown split {split!r}")
        return model.accuracy(prompt, examples, random.Random(f"eval/{self._spec.seed}/{split}/{round}"))


def make_evaluator(engine: str, spec: DataSpec) -> Evaluator:
    if engine == "surrogate":
        return SurrogateEvaluator(spec)
    raise EngineError(f"unknown engine {engine!r}; this build has: surrogate")
