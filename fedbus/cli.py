"""The ``fedbus`` command: run, validate, broker, client."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from fedbus import __version__
from fedbus.errors import EngineError, FedbusError, ScenarioError, TransportError

if TYPE_CHECKING:
    from fedbus.runtime.client_node import ClientConfig, ClientReport

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_ABORTED = 0, 1, 2, 3
log = structlog.get_logger("fedbus.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedbus", description="Federated textual-gradient prompt optimization over MQTT."
    )
    parser.add_argument("--version", action="version", version=f"fedbus {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("FEDBUS_LOG_LEVEL", "WARNING"),
                        help="log level for stderr (default WARNING, or $FEDBUS_LOG_LEVEL)")
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON log lines (default: only when stderr is not a terminal)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario: broker, aggregator and clients")
    run.add_argument("scenario", type=Path)
    run.add_argument("--out", type=Path, help="output directory (default runs/RUN_ID)")
    run.add_argument("--seed", type=int, help="override the scenario's seed")
    run.add_argument("--broker", help="external broker mqtt://[user:pass@]host:port (default: embedded rumqttd)")
    run.add_argument("--run-id", help="run id (default: NAME-SEED-RANDOM); clients on other machines need it")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--engine-url", metavar="URL",
                     help="OpenAI-compatible server for engine openai, e.g. http://127.0.0.1:8000/v1 (vLLM), "
                          "http://127.0.0.1:11434/v1 (Ollama); default: the scenario's engine.base_url or "
                          "$FEDBUS_ENGINE_URL")
    run.add_argument("--no-cache", action="store_true", help="do not reuse cached LLM responses")
    run.add_argument("--strategy", help="override aggregation.strategy (concat, summarize, uid_summarize) "
                                        "to compare aggregators on one scenario")
    run.add_argument("--workers", type=int, metavar="N",
                     help="client processes (default: one per 100 clients, at most one per CPU; 0: all clients "
                          "in the aggregator's process)")
    run.add_argument("--simulate", action="store_true",
                     help="deterministic simulation in virtual time (in-memory broker, surrogate engine): "
                          "the same scenario and seed give a byte-identical events.jsonl")

    compare = sub.add_parser("compare", help="several runs side by side (a table, or CSV for plotting)")
    compare.add_argument("summaries", type=Path, nargs="+", help="summary.json files or run directories")
    compare.add_argument("--rounds", action="store_true", help="one row per round instead of one per run")
    compare.add_argument("--csv", action="store_true", help="CSV instead of a table")
    validate = sub.add_parser("validate", help="check scenario files and name the YAML path of every mistake")
    validate.add_argument("scenarios", type=Path, nargs="+")

    broker = sub.add_parser("broker", help="run the embedded broker (rumqttd) in the foreground")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    broker.add_argument("--port", type=int, default=1883)
    broker.add_argument("--max-payload-bytes", type=int, default=1024 * 1024)

    client = sub.add_parser("client", help="join a running federation as one client")
    client.add_argument("--broker", required=True, help="mqtt://[user:pass@]host:port")
    client.add_argument("--run", required=True, help="the run id printed by `fedbus run`")
    client.add_argument("--id", help="client id (default: HOSTNAME-PID)")
    client.add_argument("--shard", type=int, help="data shard index (default: a hash of the client id)")
    client.add_argument("--engine", choices=("surrogate", "openai", "local"),
                        help="surrogate (default), or the LLM this client runs TextGrad on: openai (give "
                             "--engine-url and --model) or local (the embedded model, started by this client)")
    client.add_argument("--engine-url", help="openai: the OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1")
    client.add_argument("--model", help="openai: the server's model name; local: a label")
    client.add_argument("--api-key-env", help="openai: the NAME of the environment variable holding the key")
    client.add_argument("--max-tokens", type=int, default=512, help="LLM: cap on each reply (default 512)")
    client.add_argument("--threads", type=int, default=1, help="local: llama.cpp threads (default 1)")
    client.add_argument("--no-cache", action="store_true", help="LLM: do not reuse cached responses")
    client.add_argument("--strict", action="store_true", help="LLM: keep a step only on a strict improvement")
    client.add_argument("--log-dir", type=Path, default=Path("fedbus-client"),
                        help="LLM: where TextGrad's and llama.cpp's logs go (default ./fedbus-client)")
    return parser


def _default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedbus.results.compare import load_summaries, render, rounds_table, row, to_csv

    summaries = load_summaries(args.summaries)
    rows = rounds_table(summaries) if args.rounds else [row(s) for s in summaries]
    print(to_csv(rows) if args.csv else render(rows), end="\n" if not args.csv else "")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from fedbus.scenario import load_scenario

    status = EXIT_OK
    for path in args.scenarios:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            status = EXIT_INVALID
            for line in exc.lines():
                print(f"{path}: {line}")
            continue
        print(f"{path}: ok ({scenario.clients.count} clients, {scenario.rounds} rounds, engine {scenario.engine})")
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.runtime.run import RunOptions, new_run_id, run_scenario
    from fedbus.scenario import load_scenario

    try:
        scenario = load_scenario(args.scenario, seed=args.seed)
        if args.strategy:
            from fedbus.scenario.loader import scenario_from_mapping, scenario_to_mapping

            doc = scenario_to_mapping(scenario)
            doc["aggregation"]["strategy"] = args.strategy
            scenario = scenario_from_mapping(doc, source=str(args.scenario))
    except ScenarioError as exc:
        for line in exc.lines():
            print(f"{args.scenario}: {line}", file=sys.stderr)
        return EXIT_INVALID
    if args.simulate:
        if args.broker:
            print("fedbus run: --simulate uses an in-memory broker in virtual time; drop --broker", file=sys.stderr)
            return EXIT_INVALID
        from fedbus.sim.run import sim_run_id, simulate

        run_id = args.run_id or sim_run_id(scenario)
        try:
            summary = simulate(scenario, args.out or Path("runs") / run_id, run_id=run_id, progress=not args.quiet,
                               scenario_file=str(args.scenario))
        except EngineError as exc:
            print(f"fedbus run --simulate: {exc}", file=sys.stderr)
            return EXIT_INVALID
        return EXIT_OK if summary["status"] == "completed" else EXIT_ABORTED
    run_id = args.run_id or new_run_id(scenario)
    out = args.out or Path("runs") / run_id
    options = RunOptions(out_dir=out, broker_url=args.broker, run_id=run_id, progress=not args.quiet,
                         scenario_file=str(args.scenario), workers=args.workers,
                         engine=EngineOverrides(base_url=args.engine_url, cache=False if args.no_cache else None),
                         environ=dict(os.environ), log_level=args.log_level)
    summary = asyncio.run(run_scenario(scenario, options))
    return EXIT_OK if summary["status"] == "completed" else EXIT_ABORTED


def _cmd_broker(args: argparse.Namespace) -> int:
    from fedbus.runtime.broker import EmbeddedBroker, EmbeddedBrokerConfig

    config = EmbeddedBrokerConfig(host=args.host, port=args.port, max_payload_bytes=args.max_payload_bytes)
    broker = EmbeddedBroker(config)
    # Ctrl+C (and SIGTERM) stop it even when started in the background of a script, where SIGINT is ignored
    # from birth and Python would not install its KeyboardInterrupt handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        broker.start()
        print(f"fedbus broker (embedded rumqttd) listening on {args.host}:{broker.port}; "
              f"clients use --broker mqtt://HOST:{broker.port}. Ctrl+C stops it.", flush=True)
        code = broker.wait()
        print(f"broker exited with code {code}", file=sys.stderr)
        return EXIT_FAILED if code else EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        broker.stop()


def _cmd_client(args: argparse.Namespace) -> int:
    from fedbus.protocol.ids import AGGREGATOR, check_id
    from fedbus.runtime.address import parse_broker_url
    from fedbus.runtime.client_node import ClientConfig

    client_id = args.id or _default_client_id()
    try:
        check_id(client_id, "client id")
        check_id(args.run, "run id")
        if client_id == AGGREGATOR:
            raise ValueError(f"the client id {AGGREGATOR!r} is the aggregator's; choose another")
    except ValueError as exc:
        print(f"fedbus client: {exc}", file=sys.stderr)
        return EXIT_INVALID
    config = ClientConfig(run=args.run, client=client_id, broker=parse_broker_url(args.broker), shard=args.shard,
                          engine=args.engine)
    if args.engine is not None:
        from fedbus.llm.extras import require_libraries

        require_libraries(args.engine)  # before joining: one clear line instead of a failed round each round
    started = time.monotonic()
    print(f"fedbus client {client_id} joining run {args.run} on {config.broker.url()}", flush=True)
    report = asyncio.run(_client_session(config, args))
    print(f"fedbus client {client_id}: {report.rounds_done} rounds done in {time.monotonic() - started:.1f} s; "
          f"{report.reason}", flush=True)
    return EXIT_OK


async def _client_session(config: ClientConfig, args: argparse.Namespace) -> ClientReport:
    """One client, on the surrogate or on its own LLM engine (opened here, closed when the run ends)."""
    from fedbus.runtime.client_node import run_client

    if args.engine in (None, "surrogate"):
        return await run_client(config)
    from fedbus.results.eventlog import EventLog
    from fedbus.runtime.engines import open_engine
    from fedbus.runtime.llm_run import load_optimizer_library, optimizer_factory
    from fedbus.scenario.engine import DEFAULT_LOCAL_MODEL, EngineSpec

    if args.engine == "openai" and not (args.engine_url and args.model):
        raise EngineError("--engine openai needs --engine-url and --model")
    spec = EngineSpec(name=args.engine, model=args.model or (DEFAULT_LOCAL_MODEL if args.engine == "local" else ""),
                      base_url=args.engine_url or "", api_key_env=args.api_key_env, max_tokens=args.max_tokens,
                      threads=args.threads, cache=not args.no_cache)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    await load_optimizer_library(args.log_dir / "textgrad")
    async with open_engine(spec, environ=dict(os.environ), log_dir=args.log_dir) as engine:
        make = optimizer_factory(engine, args.log_dir / "textgrad", strict=args.strict)
        return await run_client(config, EventLog(None), make)


def _first_fedbus_error(group: ExceptionGroup[Exception]) -> Exception:
    """The first FedbusError inside ``group`` (nested groups included), else the group itself."""
    found: Exception | None = group.subgroup(lambda exc: isinstance(exc, FedbusError))
    while isinstance(found, ExceptionGroup):
        found = found.exceptions[0] if found.exceptions else None
    return found if found is not None else group


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedbus`` console script."""
    from fedbus.logs import configure

    args = _parser().parse_args(argv)
    configure(args.log_level, args.log_json)
    commands = {"run": _cmd_run, "validate": _cmd_validate, "broker": _cmd_broker, "client": _cmd_client,
                "compare": _cmd_compare}
    try:
        try:
            return commands[args.command](args)
        except ExceptionGroup as group:  # a TaskGroup wraps what its tasks raised: report the first of ours
            raise _first_fedbus_error(group) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TransportError as exc:
        print(f"fedbus {args.command}: broker problem: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FedbusError as exc:
        print(f"fedbus {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
