"""The run's prompt budget reaches the optimizers that take it (fedbus/client/optimizer.py), and only those."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fedbus.client.optimizer import LocalOutcome, SurrogateOptimizer, optimize_task, optimize_task_now, takes_budget
from fedbus.errors import EngineError
from fedbus.protocol.messages import DataSpec, Task

SPEC = DataSpec(task="surrogate-skills", seed=3, num_shards=2, train_size=60, val_size=10, test_size=10)
BARE = "You will answer a reasoning question."


def task(budget: int, prompt: str = BARE) -> Task:
    return Task(run="r", round=2, client="c", msg_id="t-2", sent=0.0, version=1, prompt=prompt, local_steps=6,
                batch_size=3, deadline_s=9.0, max_prompt_chars=budget)


def outcome(prompt: str) -> LocalOutcome:
    return LocalOutcome(prompt=prompt, steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0,
                        llm_calls=1, tokens=1)


class Plain:
    """A user's optimizer written before budgets: no max_chars."""

    engine = "plain"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int) -> LocalOutcome:
        self.calls.append({"prompt": prompt, "round": round, "steps": steps, "batch_size": batch_size})
        return outcome(prompt + " More.")


class Budgeted(Plain):
    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int,
                       max_chars: int | None = None) -> LocalOutcome:
        self.calls.append({"prompt": prompt, "round": round, "max_chars": max_chars})
        return outcome(prompt[: max_chars or None])


class Open(Plain):
    async def optimize(self, prompt: str, **options: Any) -> LocalOutcome:
        self.calls.append(options)
        return outcome(prompt)


def test_which_optimizers_take_a_budget() -> None:
    """A method takes the budget if it names max_chars or takes **kwargs; a builtin's unknown signature does not."""
    assert takes_budget(Budgeted().optimize) and takes_budget(Open().optimize)
    assert not takes_budget(Plain().optimize)
    assert takes_budget(SurrogateOptimizer(SPEC, 0, "c").optimize_now)
    assert not takes_budget(print)


def test_optimize_task_passes_the_tasks_settings_and_the_budget_only_where_it_is_taken() -> None:
    """An optimizer written before budgets is called as before; one that takes max_chars gets the task's."""
    plain, budgeted, open_ = Plain(), Budgeted(), Open()
    assert asyncio.run(optimize_task(plain, task(30))).prompt == BARE + " More."
    assert plain.calls == [{"prompt": BARE, "round": 2, "steps": 6, "batch_size": 3}]
    assert asyncio.run(optimize_task(budgeted, task(10))).prompt == BARE[:10]
    assert budgeted.calls == [{"prompt": BARE, "round": 2, "max_chars": 10}]
    asyncio.run(optimize_task(open_, task(77)))
    assert open_.calls == [{"round": 2, "steps": 6, "batch_size": 3, "max_chars": 77}]


def test_optimize_task_now_steps_any_optimizer_and_budgets_the_surrogate() -> None:
    """In virtual time: the surrogate synchronously within the budget, a user's optimizer stepped at once."""
    surrogate = SurrogateOptimizer(SPEC, 0, "c")
    assert optimize_task_now(surrogate, task(len(BARE))).prompt == BARE
    assert len(optimize_task_now(surrogate, task(len(BARE) + 60)).prompt) <= len(BARE) + 60
    assert optimize_task_now(Plain(), task(5)).prompt == BARE + " More."


def test_a_result_that_is_not_an_outcome_is_an_engine_error() -> None:
    """optimize_task checks what comes back, as the drivers did."""
    class Careless(Plain):
        async def optimize(self, prompt: str, *, round: int, steps: int,  # type: ignore[override]
                           batch_size: int) -> object:
            return {"prompt": prompt}

    with pytest.raises(EngineError, match="returned dict, not a LocalOutcome"):
        asyncio.run(optimize_task(Careless(), task(5)))  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="returned dict"):
        optimize_task_now(Careless(), task(5))  # type: ignore[arg-type]
