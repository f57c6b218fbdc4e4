"""The TextGrad local optimizer: FedTextGrad's local steps on a real LLM, behind ``LocalOptimizer``.

Each step samples a batch from the client's own training shard (seeded by run seed, client and
round, so a rerun at temperature 0 with the response cache replays), runs
:func:`fedbus.llm.textgrad_engine.local_step` in a thread of its own pool (not asyncio's default one, which
the engine itself needs), and bridges textgrad's synchronous
calls to the async engine on the event loop. Several clients in one process therefore optimize
concurrently, bounded by the engine's own concurrency limit. Given :class:`~fedbus.llm.roles.Engines`, the
forward pass, the feedback and the update each go to their role's engine.

A step that fails on the engine (timeouts, 5xx after retries, a malformed body) fails the round for
this client: ``optimize`` raises ``EngineError``, the worker records ``local-error`` and reports the
failure to the aggregator instead of an update. A reply that ignores the optimizer's tags only
costs the step (the prompt stays as it was) and is reported in ``step_reasons``; so does a step whose
prompt would exceed the run's budget (``max_chars``): it is reverted as ``reverted-over-budget``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedbus.client.optimizer import LocalOutcome
from fedbus.errors import EngineError
from fedbus.llm.engine import ChatEngine
from fedbus.llm.judge import GRADERS
from fedbus.llm.roles import Engines
from fedbus.llm.textgrad_engine import StepChats, SyncChat, local_step
from fedbus.protocol.messages import DataSpec
from fedbus.tasks.answers import is_correct
from fedbus.tasks.federation import client_data

# The threads TextGrad's synchronous steps run in. Not asyncio's default executor: a step waits in its thread
# on the engine, and the engine itself uses that executor (the response cache's SQLite calls), which has
# cpu + 4 threads. Six clients stepping at once on 2 cores took them all and waited forever on each other.
_STEP_THREADS = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="textgrad-step")


class _Bridge:
    """``chat(prompt, system)`` for a worker thread, carried out by ``engine`` on the event loop; counts tokens."""

    def __init__(self, engine: ChatEngine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop
        self._lock = threading.Lock()
        self.tokens = 0
        self.cached = 0

    def __call__(self, prompt: str, system: str | None) -> str:
        return self.ask(self._engine, prompt, system)

    def ask(self, engine: ChatEngine, prompt: str, system: str | None) -> str:
        future = asyncio.run_coroutine_threadsafe(engine.complete(prompt, system=system), self._loop)
        completion = future.result()
        with self._lock:
            if completion.cached:
                self.cached += 1
            else:
                self.tokens += completion.prompt_tokens + completion.completion_tokens
        return completion.text

    def chats(self, engines: Engines, *, judged: bool = False) -> StepChats:
        """One chat per role of a local step, all counted here (``judged``: the judge's too)."""
        def on(engine: ChatEngine) -> SyncChat:
            return lambda prompt, system: self.ask(engine, prompt, system)
        return StepChats(forward=on(engines.forward), backward=on(engines.backward), optimizer=on(engines.optimizer),
                         judge=on(engines.judge) if judged else None)


class TextGradOptimizer:
    """FedTextGrad's client: ``steps`` TextGrad steps per round on this client's shard."""

    def __init__(self, engine: ChatEngine | Engines, spec: DataSpec, shard: int, client: str, *, strict: bool = False,
                 step_on_perfect_batch: bool = False, grader: str = "exact", log_dir: Path | None = None,
                 validation_revert: bool = False) -> None:
        """``grader``: ``exact`` (the ``Answer:`` line equals the target) or ``judge`` (the authors' LLM judge, on the
        judge role's engine, grades the batch and is the loss). ``validation_revert``: TextGrad's
        ``run_validation_revert``: a step the batch kept is also scored on the validation set, and reverted when
        the new prompt scores lower there than the old one (exact grading)."""
        if grader not in GRADERS:
            raise ValueError(f"Invalid grader: {grader!r}")
        self._grader = grader
        self._engines = engine if isinstance(engine, Engines) else None
        self._chat_engine = engine.forward if isinstance(engine, Engines) else engine
        self.engine = self._chat_engine.name
        self._spec = spec
        self._client = client
        self._strict = strict
        self._step_on_perfect_batch = step_on_perfect_batch
        self._log_dir = log_dir
        data = client_data(spec, shard)
        self._train = data.train
        self._val = data.val if validation_revert else ()
        self._val_scores: dict[str, tuple[float, int, int]] = {}  # prompt -> (accuracy, calls, tokens) once
        if not self._train:
            raise EngineError(f"client {client} has no training examples (shard {shard})")

    async def optimize(self, prompt: str, *, round: int, steps: int, batch_size: int,
                       max_chars: int | None = None) -> LocalOutcome:
        rng = random.Random(f"textgrad/{self._spec.seed}/{self._client}/{round}")
        bridge = _Bridge(self._chat_engine, asyncio.get_running_loop())
        engines = self._engines or (Engines.single(self._chat_engine) if self._grader == "judge" else None)
        chat: SyncChat | StepChats = (bridge if engines is None
                                      else bridge.chats(engines, judged=self._grader == "judge"))
        calls = accepted = val_tokens = 0
        reasons: list[str] = []
        first_before: float | None = None
        last_after = 0.0
        for _ in range(steps):
            batch = rng.sample(self._train, min(batch_size, len(self._train)))
            step = functools.partial(local_step, prompt, [(e.input, e.target) for e in batch], chat, is_correct,
                                     strict=self._strict, step_on_perfect_batch=self._step_on_perfect_batch,
                                     log_dir=self._log_dir)
            outcome = await asyncio.get_running_loop().run_in_executor(_STEP_THREADS, step)
            calls += outcome.llm_calls
            if outcome.reason.startswith("engine-error"):
                raise EngineError(f"local step {len(reasons) + 1} of round {round}: {outcome.reason}")
            first_before = outcome.acc_before if first_before is None else first_before
            if max_chars is not None and len(outcome.prompt) > max_chars and outcome.prompt != prompt:
                reasons.append(f"reverted-over-budget: {len(outcome.prompt)} > {max_chars} characters")
                last_after = outcome.acc_before
                continue
            if self._val and outcome.prompt != prompt:
                (before, asked_before, spent_before) = await self._val_accuracy(prompt)
                (after, asked, spent) = await self._val_accuracy(outcome.prompt)
                calls += asked_before + asked
                val_tokens += spent_before + spent
                if after < before:
                    reasons.append(f"reverted-validation: {after:.3f} < {before:.3f}")
                    last_after = outcome.acc_before
                    continue
            reasons.append(outcome.reason)
            last_after = outcome.acc_after
            accepted += outcome.accepted
            prompt = outcome.prompt
        return LocalOutcome(prompt=prompt, steps=steps, accepted_steps=accepted,
                            batch_acc_before=first_before or 0.0, batch_acc_after=last_after, llm_calls=calls,
                            tokens=bridge.tokens + val_tokens, step_reasons=tuple(reasons))

    async def _val_accuracy(self, prompt: str) -> tuple[float, int, int]:
        """The forward engine's accuracy on the validation set under ``prompt``, and the calls and tokens it took
        (the first time: a prompt is scored once per client)."""
        if prompt in self._val_scores:
            return self._val_scores[prompt][0], 0, 0
        replies = await asyncio.gather(*(self._chat_engine.complete(e.input, system=prompt) for e in self._val))
        right = sum(is_correct(r.text, e.target) for r, e in zip(replies, self._val, strict=True))
        spent = sum(0 if r.cached else r.prompt_tokens + r.completion_tokens for r in replies)
        self._val_scores[prompt] = (right / len(self._val), len(replies), spent)
        return self._val_scores[prompt]
