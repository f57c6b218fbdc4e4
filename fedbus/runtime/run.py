"""``fedbus run``: broker, aggregator and the scenario's clients in one process, then summary.json."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from fedbus.aggregator.effects import RoundResult
from fedbus.client.optimizer import make_optimizer, user_optimizer
from fedbus.llm.engine import ChatEngine
from fedbus.llm.extras import require_libraries
from fedbus.plan import make_core
from fedbus.plugins import is_reference
from fedbus.results.eventlog import EventLog
from fedbus.results.progress import Progress
from fedbus.results.summary import build_summary, prompt_record, round_record
from fedbus.runtime.address import BrokerAddress, parse_broker_url
from fedbus.runtime.aggregator_node import AggregatorNode
from fedbus.runtime.broker import EmbeddedBroker, EmbeddedBrokerConfig
from fedbus.runtime.client_node import ClientConfig
from fedbus.runtime.engines import EngineOverrides, effective_spec, open_engine
from fedbus.runtime.limits import ensure_open_files
from fedbus.runtime.llm_evaluation import LLMEvaluator
from fedbus.runtime.llm_run import (
    LLMReducer,
    count_tokens,
    load_optimizer_library,
    local_step_totals,
    optimizer_factory,
)
from fedbus.runtime.pool import WorkerPool, auto_workers, run_guarded
from fedbus.scenario import Scenario
from fedbus.scenario.engine import EngineSpec
from fedbus.surrogate.evaluation import make_evaluator

log = structlog.get_logger("fedbus.run")
CLIENT_EXIT_GRACE_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a scenario."""

    out_dir: Path
    broker_url: str | None = None
    run_id: str | None = None
    progress: bool = True
    scenario_file: str = ""
    workers: int | None = None  # client processes; None: auto_workers(clients), 0: clients run in this process
    engine: EngineOverrides = field(default_factory=EngineOverrides)
    # the environment the CLI read (FEDBUS_ENGINE_URL and friends, API keys, FEDBUS_CACHE); nothing else reads it
    environ: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "WARNING"  # worker processes log at this level


def new_run_id(scenario: Scenario) -> str:
    return f"{scenario.name}-{scenario.seed}-{secrets.token_hex(3)}"[:64]


async def run_scenario(scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    """Run ``scenario`` to the end; write and return summary.json's content."""
    if not scenario.engine_spec.is_llm:
        return await _run(scenario, options, None, scenario.engine_spec)
    require_libraries(scenario.engine_spec.name)  # before anything starts: one clear line, not failed rounds
    spec = effective_spec(scenario.engine_spec, options.engine, options.environ)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    Progress(options.progress).note(f"starting engine {spec.name} ({spec.model or 'default model'}"
                                    f"{', ' + spec.base_url if spec.base_url else ''}) ...")
    await load_optimizer_library(options.out_dir / "textgrad")
    async with open_engine(spec, environ=options.environ, log_dir=options.out_dir) as engine:
        return await _run(scenario, options, engine, spec)


async def _run(scenario: Scenario, options: RunOptions, engine: ChatEngine | None,
               spec: EngineSpec) -> dict[str, Any]:
    started = time.monotonic()
    run_id = options.run_id or new_run_id(scenario)
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ensure_open_files(2 * scenario.clients.count + 256)
    events = EventLog(out / "events.jsonl")
    progress = Progress(options.progress)
    evaluator = LLMEvaluator(engine, scenario.data) if engine else make_evaluator(scenario.engine, scenario.data)
    reducer = LLMReducer(engine, events)
    if scenario.clients.optimizer is not None:  # the user's optimizer, whatever the engine
        make = user_optimizer(scenario.clients.optimizer)
    elif engine is None:
        make = make_optimizer
    else:
        make = optimizer_factory(engine, out / "textgrad", strict=scenario.clients.strict)
    with ExitStack() as stack, structlog.contextvars.bound_contextvars(run=run_id):
        if options.broker_url:
            address: BrokerAddress = parse_broker_url(options.broker_url)
            broker_info = {"kind": "external", "url": address.url()}
        else:
            config = EmbeddedBrokerConfig(max_connections=scenario.clients.count + 10_010,
                                          max_payload_bytes=max(scenario.max_message_bytes + 4096, 64 * 1024))
            embedded = stack.enter_context(EmbeddedBroker(config, workdir=out / "broker"))
            address = embedded.address
            broker_info = {"kind": "embedded-rumqttd", "url": address.url(), "config": str(embedded.config_path)}
        stack.callback(events.close)
        events.record("run-started", run=run_id, scenario=scenario.name, seed=scenario.seed, engine=scenario.engine,
                      broker=broker_info["url"])
        progress.header(run_id, scenario.engine, broker_info["url"], scenario.clients.count, scenario.rounds)
        log.info("run started", scenario=scenario.name, engine=scenario.engine, broker=broker_info["url"])

        async def on_round(result: RoundResult) -> dict[str, Any]:
            extra: dict[str, Any] = prompt_record(result)
            if isinstance(evaluator, LLMEvaluator):
                evaluation = await evaluator.evaluate(result.prompt, "val")
                extra |= {"val_accuracy": evaluation.accuracy, "val": evaluation.record()}
                counted = await count_tokens(engine, result.prompt)
                if counted is not None:
                    extra["global_prompt_tokens"] = counted  # by the engine's own tokenizer
            else:
                extra["val_accuracy"] = await evaluator.accuracy(result.prompt, "val", result.round)
            if result.round in reducer.by_round:
                extra["aggregation"] = reducer.by_round.pop(result.round)
            progress.round(round_record(result, extra))
            log.info("round closed", round=result.round, status=result.status, accepted=len(result.accepted),
                     rejected=len(result.rejected), prompt_chars=len(result.prompt),
                     val_accuracy=extra["val_accuracy"])
            return extra

        core = make_core(scenario, run_id)
        t0 = asyncio.get_running_loop().time()
        async with asyncio.TaskGroup() as group:
            node = AggregatorNode(core, broker=address, events=events, on_round=on_round,
                                  max_message_bytes=scenario.max_message_bytes, time_scale=scenario.time_scale,
                                  started_at=t0, reducer=reducer)
            node_task = group.create_task(node.run(), name=f"aggregator[{run_id}]")
            members = [(cid, i, grp.name) for i, (cid, grp) in enumerate(scenario.members())]
            workers = auto_workers(len(members)) if options.workers is None else options.workers
            if engine is not None or (scenario.clients.optimizer and not is_reference(scenario.clients.optimizer)):
                workers = 0  # LLM clients share the run's engine (and its concurrency limit) in this process
            pool = WorkerPool(stack, out / "workers") if workers else None
            client_tasks = []
            if pool is None:
                groups = {grp.name: grp for grp in scenario.groups()}
                client_tasks = [
                    group.create_task(
                        run_guarded(ClientConfig(run=run_id, client=cid, broker=address, shard=i,
                                                 max_message_bytes=scenario.max_message_bytes, seed=scenario.seed,
                                                 group=groups[name], step_delay_s=scenario.clients.step_latency_s,
                                                 time_scale=scenario.time_scale, started_at=t0, boot="0"),
                                    events, make),
                        name=f"client[{run_id}].{cid}")
                    for cid, i, name in members
                ]
            else:
                pool.start(run_id=run_id, broker_url=address.url(redact=False), scenario=scenario,
                           members=members, workers=workers, loop_t0=t0, log_t0=events.started,
                           log_level=options.log_level)
                events.record("workers-started", workers=len(pool.processes), clients=len(members))
            outcome = await node_task
            if client_tasks:
                _done, pending = await asyncio.wait(client_tasks, timeout=CLIENT_EXIT_GRACE_S)
                for task in pending:
                    task.cancel()
        if pool is not None:
            await asyncio.to_thread(pool.finish, CLIENT_EXIT_GRACE_S)
            for part in pool.parts:
                events.absorb(part)
                part.unlink(missing_ok=True)
            events.sort_by_time()
        final_extra: dict[str, Any] = {}
        if isinstance(evaluator, LLMEvaluator):
            initial_eval = await evaluator.evaluate(scenario.initial_prompt, "test")
            final_eval = await evaluator.evaluate(core.prompt, "test")
            initial_acc, final_acc = initial_eval.accuracy, final_eval.accuracy
            final_extra = {"test": final_eval.record(), "initial_test": initial_eval.record()}
        else:
            initial_acc = await evaluator.accuracy(scenario.initial_prompt, "test", 0)
            final_acc = await evaluator.accuracy(core.prompt, "test", scenario.rounds + 1)
    summary = build_summary(
        run_id=run_id, scenario=scenario, scenario_file=options.scenario_file, broker=broker_info, outcome=outcome,
        events=events, final={"version": core.version, "prompt": core.prompt, "prompt_chars": len(core.prompt),
                              "test_accuracy": final_acc, "initial_test_accuracy": initial_acc, **final_extra},
        wall_s=time.monotonic() - started)
    summary["client_processes"] = len(pool.processes) if pool is not None else 0
    if engine is not None:
        summary["local_steps"] = local_step_totals(out / "events.jsonl")
        summary["llm"] = {"engine": spec.name, "model": engine.model, "base_url": spec.base_url or None,
                          "sampling": {"max_tokens": spec.max_tokens, "temperature": spec.temperature,
                                       "seed": spec.seed},
                          "cache": spec.cache, **asdict(engine.statistics())}
        summary["totals"]["tokens_all_uses"] = summary["llm"]["prompt_tokens"] + summary["llm"]["completion_tokens"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    progress.footer(summary, str(out))
    log.info("run finished", status=summary["status"], reason=summary["reason"], wall_s=summary["totals"]["wall_s"])
    return summary
