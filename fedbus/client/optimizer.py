"""The client's local optimizer interface, and the surrogate behind it.

A ``LocalOptimizer`` runs ``steps`` local steps from a prompt on the client's own data and says
what it did. The surrogate is a seeded model (see :mod:`fedbus.surrogate.model`); the TextGrad
optimizer on real LLMs implements the same interface.

The run's prompt budget (``max_prompt_chars``, announced in each task) reaches an optimizer whose
``optimize`` takes a keyword ``max_chars``: drivers call :func:`optimize_task` (or, in virtual time,
:func:`optimize_task_now`), which passes it only to optimizers that take it, so optimizers written
without it keep working. Whatever an optimizer returns, the client cuts a prompt over the budget
before sending it (:class:`fedbus.client.core.ClientCore`).
"""

from __future__ import annotations

import functools
import inspect
import random
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from fedbus.errors import EngineError
from fedbus.plugins import check_name, lookup
from fedbus.protocol.messages import DataSpec, Task, UpdateStats
from fedbus.surrogate import model, task


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalOutcome:
    """What one round of local optimization produced."""

    prompt: str
    steps: int
    accepted_steps: int
    batch_acc_before: float
    batch_acc_after: float
    llm_calls: int
    tokens: int
    step_reasons: tuple[str, ...] = ()  # per step, why the prompt changed or not (TextGrad optimizer)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"LocalOutcome.prompt must be a string, got {type(self.prompt).__name__}")
        # the same checks an update's stats get on the wire: fail here, inside the optimizer's round
        UpdateStats(steps=self.steps, accepted_steps=self.accepted_steps, batch_acc_before=self.batch_acc_before,
                    batch_acc_after=self.batch_acc_after, llm_calls=self.llm_calls, tokens=self.tokens,
                    duration_s=0.0)


def checked_outcome(result: object) -> LocalOutcome:
    """An optimizer's result, if it is a ``LocalOutcome``; else an ``EngineError`` that fails the round."""
    if not isinstance(result, LocalOutcome):
        raise EngineError(f"the optimizer returned {type(result).__name__}, not a LocalOutcome")
    return result


class LocalOptimizer(Protocol):
    """Optimizes a prompt on one client's private data."""

    engine: str

    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int) -> LocalOutcome:
        """Run ``steps`` local steps from ``prompt``; raise ``EngineError`` on failure (anything else it raises
        is a bug, yet it too fails only this round). It may also take ``max_chars: int | None``, the run's prompt
        budget: then it should return a prompt of at most that many characters."""
        ...


OptimizerFactory = Callable[[str, DataSpec, str, "int | None"], LocalOptimizer]
"""(engine name, the run's data description, client id, shard or None) -> that client's optimizer."""


def shard_for(client: str, num_shards: int) -> int:
    """The shard a client uses when none is assigned: a stable hash of its id."""
    return zlib.crc32(client.encode("utf-8")) % num_shards


class SurrogateOptimizer:
    """The surrogate optimizer (no LLM): seeded per (seed, client, round), so runs replay."""

    engine = "surrogate"

    def __init__(self, spec: DataSpec, shard_index: int, client: str) -> None:
        if spec.task != "surrogate-skills":
            raise EngineError(f"the surrogate optimizer only knows task 'surrogate-skills', not {spec.task!r}")
        self._spec = spec
        self._client = client
        self._shard = task.shard(spec, task.generate(spec), shard_index)

    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int,
                       max_chars: int | None = None) -> LocalOutcome:
        return self.optimize_now(prompt, round=round, steps=steps, batch_size=batch_size, max_chars=max_chars)

    def optimize_now(self, prompt: str, *, round: int, steps: int, batch_size: int,
                     max_chars: int | None = None) -> LocalOutcome:
        """The same, synchronously: the surrogate waits for nothing (the simulator calls this)."""
        rng = random.Random(f"surrogate/{self._spec.seed}/{self._client}/{round}")
        result = model.optimize(prompt, self._shard, steps, batch_size, rng, max_chars=max_chars)
        return LocalOutcome(prompt=result.prompt, steps=result.steps, accepted_steps=result.accepted_steps,
                            batch_acc_before=result.batch_acc_before, batch_acc_after=result.batch_acc_after,
                            llm_calls=result.cost.llm_calls, tokens=result.cost.tokens)


def make_optimizer(engine: str, spec: DataSpec, client: str, shard_index: int | None) -> LocalOptimizer:
    """The optimizer for ``engine``; ``EngineError`` for an engine this build does not have."""
    index = shard_for(client, spec.num_shards) if shard_index is None else shard_index
    if not 0 <= index < spec.num_shards:
        raise EngineError(f"shard {index} is outside 0..{spec.num_shards - 1}")
    if engine == "surrogate":
        return SurrogateOptimizer(spec, index, client)
    if engine in ("openai", "local"):
        raise EngineError(f"this federation runs engine {engine!r}: start the client with --engine local (the "
                          "embedded model) or --engine openai --engine-url URL --model NAME")
    raise EngineError(f"unknown engine {engine!r}; this build has: surrogate, openai, local")


UserOptimizerFactory = Callable[[str, DataSpec, int], LocalOptimizer]
"""What a user registers: (client id, the run's data description, the client's shard) -> its optimizer."""
OPTIMIZERS: dict[str, UserOptimizerFactory] = {}


def register_optimizer(name: str, factory: UserOptimizerFactory) -> None:
    """Make ``factory`` available to scenarios as ``clients.optimizer: name`` in this process.

    The optimizer's ``optimize`` is awaited over MQTT; in the simulator it must finish without waiting
    for I/O (it is stepped to completion at once). To reach worker processes or another machine, name
    it as ``package.module:function`` in the scenario instead.
    """
    check_name(name, ("surrogate", "textgrad"))
    OPTIMIZERS[name] = factory


def get_optimizer(name: str) -> UserOptimizerFactory:
    """The optimizer factory registered as ``name``, or the one a ``package.module:function`` names."""
    found: UserOptimizerFactory = lookup(name, OPTIMIZERS, "optimizer")
    return found


def user_optimizer(name: str) -> OptimizerFactory:
    """A scenario's ``clients.optimizer`` as the factory clients call (whatever engine the run announces)."""
    factory = get_optimizer(name)

    def make(_engine: str, spec: DataSpec, client: str, shard_index: int | None) -> LocalOptimizer:
        return factory(client, spec, shard_for(client, spec.num_shards) if shard_index is None else shard_index)

    return make


def scenario_optimizer(name: str | None) -> OptimizerFactory:
    """The factory for a scenario's ``clients.optimizer``: the engine's own (surrogate) when unset."""
    return make_optimizer if name is None else user_optimizer(name)


def takes_budget(method: Callable[..., object]) -> bool:
    """True if an optimizer's ``optimize`` (or ``optimize_now``) accepts the keyword ``max_chars``."""
    return _takes_budget(getattr(method, "__func__", method))  # a bound method is new on every access


@functools.lru_cache(maxsize=256)
def _takes_budget(method: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): do not guess
        return False
    return any(p.name == "max_chars" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _task_arguments(method: Callable[..., object], task: Task) -> dict[str, Any]:
    arguments: dict[str, Any] = {"round": task.round, "steps": task.local_steps, "batch_size": task.batch_size}
    if takes_budget(method):
        arguments["max_chars"] = task.max_prompt_chars
    return arguments


async def optimize_task(optimizer: LocalOptimizer, task: Task) -> LocalOutcome:
    """Run ``optimizer`` on ``task``: its prompt, round, steps and batch size, and its prompt budget for an
    optimizer that takes one. Raises what the optimizer raises; a result that is no ``LocalOutcome`` is an
    ``EngineError``."""
    return checked_outcome(await optimizer.optimize(task.prompt, **_task_arguments(optimizer.optimize, task)))


def optimize_task_now(optimizer: LocalOptimizer, task: Task) -> LocalOutcome:
    """The same without an event loop (the simulator): the surrogate synchronously, any other optimizer stepped
    to its result with :func:`run_now`."""
    if isinstance(optimizer, SurrogateOptimizer):
        return optimizer.optimize_now(task.prompt, **_task_arguments(optimizer.optimize_now, task))
    return run_now(optimizer.optimize(task.prompt, **_task_arguments(optimizer.optimize, task)))


def run_now(outcome: Coroutine[Any, Any, LocalOutcome]) -> LocalOutcome:
    """Step a coroutine that never waits for I/O to its result, without an event loop (the simulator)."""
    try:
        outcome.send(None)
    except StopIteration as done:
        return checked_outcome(done.value)
    outcome.close()
    raise EngineError("the optimizer waited for I/O: the simulator can only step optimizers that never wait")
