"""What a ``fedbus run`` on a real LLM adds: the LLM aggregators, TextGrad clients, evaluation and token totals.

The aggregator core only asks for a ``Reduce``; :class:`LLMReducer` carries it out at the edge: for
the LLM strategies (``summarize``, ``uid_summarize``, ``summarize_tagged``, ``uid_guided``) it sends the merge
request to the engine and turns the reply into the prompt. An unusable reply (empty; for the tagged variants, no
tags) falls back to ``concat`` for that round and says so in events.jsonl and in the
round's record (``aggregation.fallback``); an engine failure fails the reduce, and the core records
the round as ``reduce-failed``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, cast

from fedbus.aggregator.effects import Reduce
from fedbus.aggregator.llm_merge import FORMAT_LINE, merge_inputs, merge_request, merged_prompt
from fedbus.aggregator.strategies import LLM_STRATEGIES, carry_out
from fedbus.client.optimizer import LocalOptimizer, OptimizerFactory, shard_for
from fedbus.client.textgrad_optimizer import TextGradOptimizer
from fedbus.llm.engine import CallCounters, ChatEngine, EngineStatistics
from fedbus.llm.roles import Engines
from fedbus.llm.textgrad_engine import load_textgrad
from fedbus.protocol.messages import DataSpec
from fedbus.results.eventlog import EventLog, read_events
from fedbus.results.prompt_measures import surprisal
from fedbus.scenario.engine import EngineSpec


class LLMReducer:
    """Carries out ``Reduce`` effects; the LLM strategies go through ``engine``. Remembers what each round cost."""

    def __init__(self, engine: ChatEngine | None, events: EventLog, format_line: str = FORMAT_LINE) -> None:
        self._engine = engine
        self._events = events
        self._format_line = format_line
        self.by_round: dict[int, dict[str, Any]] = {}

    def recall(self, events_path: Path, closed: Collection[int]) -> None:
        """After a resume: the merge records of rounds merged but not yet closed when the run stopped (their
        evaluation is redone, not their merge, which the journal kept), from the ``aggregated-by-llm`` lines
        written then; without them such a round's ``aggregation`` (and a fallback's reason) was lost."""
        for event in read_events(events_path):
            number = event.get("round")
            if event.get("event") == "aggregated-by-llm" and isinstance(number, int) and number not in closed:
                self.by_round[number] = {k: v for k, v in event.items() if k not in ("t", "event", "round")}

    async def __call__(self, effect: Reduce) -> str:
        if effect.strategy not in LLM_STRATEGIES or self._engine is None:
            return carry_out(effect.strategy, effect.current_prompt, effect.prompts, effect.max_chars, effect.weights)
        inputs = merge_inputs(effect.current_prompt, effect.prompts, effect.weights)
        request = merge_request(effect.strategy, inputs, effect.max_chars)
        reply = await self._engine.complete(request.prompt, system=request.system)
        merged = merged_prompt(request, reply.text, self._format_line, truncated=reply.truncated)
        record: dict[str, Any] = {"strategy": effect.strategy, "llm_calls": 1, "cached": reply.cached,
                                  "tokens": 0 if reply.cached else reply.prompt_tokens + reply.completion_tokens}
        if reply.truncated:
            record["truncated"] = True  # cut at the aggregator's max_tokens: not used, concat instead
        if effect.weights:  # buffered / async: the global prompt was merged too; the weights were not applied
            record["inputs"] = ["global", *(client for client, _p in effect.prompts)]
            record["staleness_weights"] = list(effect.weights)
        if merged.prompt is None:
            record["fallback"] = f"concat ({merged.problem})"
            self._events.record("aggregation-fallback", round=effect.round, strategy=effect.strategy,
                                problem=merged.problem, reply=reply.text[:300])
            prompt = carry_out("concat", effect.current_prompt, effect.prompts, effect.max_chars, effect.weights)
        else:
            prompt = merged.prompt  # the core cuts at max_prompt_chars, and records a cut
        self.by_round[effect.round] = record
        self._events.record("aggregated-by-llm", round=effect.round, **record)
        return prompt


async def load_optimizer_library(log_dir: Path) -> None:
    """Import textgrad now, before the federation starts: it takes seconds (many more on a busy machine), and
    paid inside the first local step it would eat the first round's deadline."""
    await asyncio.to_thread(load_textgrad, log_dir)


def optimizer_factory(engine: ChatEngine | Engines, log_dir: Path, *, strict: bool = False,
                      step_on_perfect_batch: bool = False, grader: str = "exact",
                      validation_revert: bool = False) -> OptimizerFactory:
    """``make(engine_name, spec, client, shard)`` for the worker: TextGrad clients sharing ``engine`` (or the
    forward, backward, optimizer and judge engines of ``Engines``)."""
    def make(_engine_name: str, spec: DataSpec, client: str, shard: int | None) -> LocalOptimizer:
        index = shard_for(client, spec.num_shards) if shard is None else shard
        return TextGradOptimizer(engine, spec, index, client, strict=strict,
                                 step_on_perfect_batch=step_on_perfect_batch, grader=grader, log_dir=log_dir,
                                 validation_revert=validation_revert)
    return make


def local_step_totals(events_path: Path) -> dict[str, Any]:
    """How the clients' local steps went, from events.jsonl: reasons counted, failures counted."""
    reasons: Counter[str] = Counter()
    failures = 0
    for event in read_events(events_path):  # a line a kill cut short (then resumed) is skipped
        if event.get("event") == "local-steps":
            reasons.update(r.split(":")[0] for r in event.get("reasons", ()))
        elif event.get("event") == "local-error":
            failures += 1
    return {"step_reasons": dict(sorted(reasons.items())), "failed_rounds": failures}


async def prompt_surprisal(engine: ChatEngine | None, text: str) -> dict[str, Any] | None:
    """The authors' surprisal figures of ``text`` under the engine's model, where the engine scores prompts."""
    logprobs = None if engine is None else getattr(engine, "prompt_logprobs", None)
    if engine is None or logprobs is None:
        return None
    scored = await logprobs(text)
    return surprisal(scored, engine.model) if scored else None


async def count_tokens(engine: ChatEngine | None, text: str) -> int | None:
    """``text``'s length in the engine's own tokens, where the engine has a tokenizer endpoint."""
    count = getattr(engine, "count_tokens", None)
    return None if count is None else cast("int | None", await count(text))


def llm_counts(engine: ChatEngine | Engines) -> dict[str, Any]:
    """What an engine counted so far, as the ``llm-counters`` and ``worker-llm`` lines of events.jsonl hold it."""
    return {**asdict(engine.statistics()), **({"by_role": engine.by_role()} if isinstance(engine, Engines) else {})}


def llm_summary(spec: EngineSpec, engine: ChatEngine | Engines, events_path: Path, boot: str = "0") -> dict[str, Any]:
    """What summary.json adds for a run on an LLM: the clients' local steps, the engine and what it cost (with
    ``Engines``: also each role's model, sampling, calls, tokens and truncated replies, in ``llm.by_role``).

    The counts are this process's engines', plus (a resumed run) what the run's earlier sessions counted (their
    last ``llm-counters`` line each: at their last closed round, or as they were interrupted), plus the worker
    processes' (the last ``worker-llm`` line of each worker of each session: written every few seconds, so a
    killed worker's count is at most that old)."""
    llm: dict[str, Any] = {
        "engine": spec.name, "model": engine.model, "base_url": spec.base_url or None,
        "sampling": {"max_tokens": spec.max_tokens, "temperature": spec.temperature, "seed": spec.seed,
                     "top_p": spec.top_p},
        "cache": spec.cache, **llm_counts(engine)}
    earlier, workers = _logged_counts(events_path, boot)
    for counts in [*earlier, *workers]:  # engines of earlier sessions and of worker processes: their counts join
        for key in _TOTALS:
            llm[key] += counts.get(key, 0)
        for role, stats in counts.get("by_role", {}).items():
            if role in llm.get("by_role", {}):
                for key in _ROLE_COUNTS:
                    llm["by_role"][role][key] += stats.get(key, 0)
    if workers:
        llm["worker_processes"] = len(workers)
    if earlier:
        llm["earlier_sessions"] = len(earlier)
    return {"local_steps": local_step_totals(events_path), "llm": llm}


_TOTALS = tuple(f.name for f in fields(EngineStatistics))  # what summary.json's llm block counts
_ROLE_COUNTS = tuple(f.name for f in fields(CallCounters))  # what llm.by_role counts for each role


def _logged_counts(events_path: Path, boot: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The last ``llm-counters`` line of each earlier session (not ``boot``, the one now counting in memory), and
    the last ``worker-llm`` line of each worker of each session (each holds the worker's totals so far; lines
    without a worker and boot, from before they were written as they go, count each)."""
    earlier: dict[str, dict[str, Any]] = {}
    workers: dict[object, dict[str, Any]] = {}
    for number, event in enumerate(read_events(events_path)):
        kind = event.get("event")
        if kind == "llm-counters" and str(event.get("boot")) != boot:
            earlier[str(event.get("boot"))] = event
        elif kind == "worker-llm":
            key = (event["boot"], event["worker"]) if "worker" in event and "boot" in event else number
            workers[key] = event
    return list(earlier.values()), list(workers.values())
