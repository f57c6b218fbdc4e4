"""The ``fedbus`` command: run, validate, broker, client, keygen, invite, compare, sweep, report."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from fedbus import __version__
from fedbus.errors import EngineError, FedbusError, ScenarioError, TransportError

if TYPE_CHECKING:
    import subprocess

    from fedbus.runtime.address import BrokerAddress
    from fedbus.runtime.broker import EmbeddedBrokerConfig
    from fedbus.runtime.client_node import ClientConfig, ClientReport
    from fedbus.runtime.run import RunOptions
    from fedbus.scenario import Scenario
    from fedbus.security.policy import Security

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_ABORTED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
T = TypeVar("T")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# the broker password, for clients (with --broker mqtt[s]://USER@...) and for `fedbus broker --user NAME`;
# --password-file takes precedence. Never on the command line, where `ps` shows it to every user.
PASSWORD_ENV = "FEDBUS_BROKER_PASSWORD"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake told in one line (exit code 2) instead of the usage block and the line."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INVALID, f"{self.prog}: {message} (see {self.prog} --help)\n")


# argparse `type=` checks: a bad value is refused before anything starts, as "argument --seed: must be ..."


def _int_within(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {f'within [{lo}, {hi}]' if hi is not None else f'>= {lo}'}"
                                             f", got {value}")
        return value
    return check


def _an_id(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        from fedbus.protocol.ids import check_id

        try:
            return check_id(text, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return check


def _broker_url(text: str) -> str:
    from fedbus.runtime.address import parse_broker_url

    try:
        parse_broker_url(text)
    except TransportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _a_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def _add_login_options(parser: argparse.ArgumentParser) -> None:
    """A client's --ca and --password-file, which go with --broker."""
    parser.add_argument("--ca", type=_a_file, metavar="FILE",
                        help="with --broker mqtts://...: the PEM CA bundle that verifies the broker's certificate "
                             "(default: the system's CAs)")
    parser.add_argument("--password-file", type=_a_file, metavar="FILE",
                        help=f"with --broker mqtt[s]://USER@...: the broker password, first line of FILE "
                             f"(default: ${PASSWORD_ENV}); never put it in the URL, where ps shows it")


def _add_broker_security_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Who may log in to the embedded broker, and its TLS certificate."""
    parser.add_argument("--users", type=_a_file, metavar="FILE",
                        help="who may log in: one username:password per line (# comments); keep it chmod 600")
    parser.add_argument("--user", metavar="NAME",
                        help=f"one more user, whose password is the first line of --password-file or ${PASSWORD_ENV}")
    parser.add_argument("--tls-cert", type=_a_file, metavar="FILE",
                        help="serve TLS (mqtts://) with this PEM certificate (chain); needs --tls-key")
    parser.add_argument("--tls-key", type=_a_file, metavar="FILE", help="the certificate's unencrypted PEM key")
    parser.add_argument("--tls-ca", type=_a_file, metavar="FILE",
                        help="the CA that signed --tls-cert (rumqttd's capath); named in the hint for clients")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address without users (anyone may connect)")


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r} (DEBUG, INFO, WARNING, ERROR or CRITICAL; "
                                         "the default comes from $FEDBUS_LOG_LEVEL)")
    return level


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an IPv4 address such as 127.0.0.1 or 0.0.0.0, got {text!r}") \
            from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedbus", description="Federated textual-gradient prompt optimization over MQTT."
    )
    parser.add_argument("--version", action="version", version=f"fedbus {__version__}")
    parser.add_argument("--log-level", type=_log_level, default=os.environ.get("FEDBUS_LOG_LEVEL", "WARNING"),
                        help="log level for stderr (default WARNING, or $FEDBUS_LOG_LEVEL)")
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON log lines (default: only when stderr is not a terminal)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario: broker, aggregator and clients")
    run.add_argument("scenario", type=Path, nargs="?", help="the scenario YAML (not with --resume)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted or killed run from its folder (journal.jsonl, checkpoint.json): "
                          "same run id, same scenario; give --broker again if it needs a password")
    run.add_argument("--out", type=Path, help="output directory (default runs/RUN_ID); refused if it holds a "
                                              "finished run (a summary.json) unless --force")
    run.add_argument("--force", action="store_true", help="overwrite the finished run --out holds")
    run.add_argument("--seed", type=_int_within(0, 2**53), help="override the scenario's seed")
    run.add_argument("--data-seed", type=_int_within(0, 2**53),
                     help="override the scenario's data_seed (generates and shuffles the data; default: the seed)")
    run.add_argument("--broker", type=_broker_url,
                     help=f"external broker mqtt://[USER@]HOST:PORT, or mqtts:// for TLS (default: embedded "
                          f"rumqttd); the password comes from ${PASSWORD_ENV} or --password-file")
    _add_login_options(run)
    embedded = run.add_argument_group("the embedded broker (without --broker)")
    embedded.add_argument("--broker-host", type=_ipv4, default="127.0.0.1",
                          help="address it listens on (default 127.0.0.1; 0.0.0.0 lets `fedbus client`s on other "
                               "machines join, and needs --users/--user or --insecure)")
    embedded.add_argument("--broker-port", type=_int_within(0, 65535), default=0, help="its port (default: any free)")
    _add_broker_security_options(embedded)
    run.add_argument("--run-id", type=_an_id("run id"),
                     help="run id (default: NAME-SEED-RANDOM); clients on other machines need it")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    from fedbus.dashboard.command import add_run_options as _add_dashboard_options

    _add_dashboard_options(run)
    run.add_argument("--engine-url", metavar="URL", type=_http_url,
                     help="OpenAI-compatible server for engine openai, e.g. http://127.0.0.1:8000/v1 (vLLM), "
                          "http://127.0.0.1:11434/v1 (Ollama); default: the scenario's engine.base_url or "
                          "$FEDBUS_ENGINE_URL")
    run.add_argument("--no-cache", action="store_true", help="do not reuse cached LLM responses")
    run.add_argument("--strategy", help="override aggregation.strategy (concat, concat_unique; with an LLM engine "
                                        "summarize, uid_summarize, summarize_tagged, uid_guided; or "
                                        "package.module:function) to compare aggregators on one scenario")
    run.add_argument("--security", choices=("signed+sealed", "signed", "none"),
                     help="override the scenario's security: signed+sealed (default: every message signed, "
                          "updates sealed to the aggregator), signed, or none (protocol v1: anyone on the broker "
                          "can post as anyone; for protocol experiments and v1 clients)")
    run.add_argument("--authorized-keys", type=_a_file, metavar="FILE",
                     help="remote clients' public keys (lines '<id> fedbus-pk:...', e.g. from `fedbus keygen`'s .pub "
                          "files) that the aggregator accepts besides its own clients and those `fedbus invite` adds; "
                          "re-read when it changes")
    run.add_argument("--workers", type=_int_within(0), metavar="N",
                     help="client processes (default: one per 100 clients, at most one per CPU; 0: all clients "
                          "in the aggregator's process)")
    run.add_argument("--simulate", action="store_true",
                     help="deterministic simulation in virtual time (in-memory broker, surrogate engine): "
                          "the same scenario and seed give a byte-identical events.jsonl")

    compare = sub.add_parser("compare", help="several runs side by side (a table, or CSV for plotting)")
    compare.add_argument("summaries", type=Path, nargs="+", help="summary.json files or run directories")
    compare.add_argument("--rounds", action="store_true", help="one row per round instead of one per run")
    compare.add_argument("--csv", action="store_true", help="CSV instead of a table")
    sweep = sub.add_parser("sweep", help="run a scenario over a grid of settings × seeds, each run in its own folder; "
                                         "resumable")
    sweep.add_argument("base", type=Path, help="the base scenario YAML")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a dotted scenario path and its values (YAML scalars), e.g. clients.local_steps=1,2,4 or "
                            "aggregation.strategy=concat,summarize; repeat for more axes (every combination runs)")
    sweep.add_argument("--seeds", metavar="SEEDS", help="1..5, 1,3,7 or both (default: the base scenario's seed)")
    sweep.add_argument("--jobs", type=_int_within(1, 256), default=1, metavar="N", help="runs at a time (default 1)")
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="the sweep folder: sweep.json and cells/CELL/seed-S/ (a completed cell there is skipped)")
    sweep.add_argument("--simulate", action="store_true", help="run every cell with fedbus run --simulate")
    sweep.add_argument("--no-cache", action="store_true", help="LLM runs: pass --no-cache to every run")
    sweep.add_argument("--engine-url", metavar="URL", type=_http_url, help="LLM runs: pass --engine-url to every run")
    report = sub.add_parser("report", help="charts and an HTML page (mean ± CI over seeds) of sweeps or runs")
    report.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="sweep folders (sweep.json) or run folders")
    report.add_argument("--out", type=Path, metavar="REPORT_DIR", help="where index.html and the PNGs go "
                                                                       "(default: FIRST_DIR/report)")
    report.add_argument("--prices", type=_a_file, metavar="FILE",
                        help="YAML/JSON price table, model -> {input: P, output: P} per 1M tokens: adds a cost column")
    validate = sub.add_parser("validate", help="check scenario files and name the YAML path of every mistake")
    validate.add_argument("scenarios", type=Path, nargs="+")

    broker = sub.add_parser("broker", help="run the embedded broker (rumqttd) in the foreground")
    broker.add_argument("--host", type=_ipv4, default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for other machines)")
    broker.add_argument("--port", type=_int_within(0, 65535), default=1883, help="0: any free port")
    broker.add_argument("--max-payload-bytes", type=_int_within(1), default=1024 * 1024)
    broker.add_argument("--password-file", type=_a_file, metavar="FILE", help="the password of --user")
    _add_broker_security_options(broker)

    keygen = sub.add_parser("keygen", help="generate a key pair: FILE (private, 0600) and FILE.pub")
    keygen.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="the private key file (never overwritten)")
    keygen.add_argument("--id", type=_an_id("id"), required=True, help="whose key it is: the client id it signs as")

    invite = sub.add_parser("invite", help="authorize remote clients in a running signed run; print a join token each")
    invite.add_argument("--run-dir", type=Path, required=True, metavar="RUN_DIR", help="the run's folder (--out)")
    who = invite.add_mutually_exclusive_group(required=True)
    who.add_argument("--id", type=_an_id("client id"), help="the client to invite")
    who.add_argument("--count", type=_int_within(1, 100_000), metavar="N",
                     help="invite N clients, PREFIX-0 ... PREFIX-(N-1)")
    invite.add_argument("--prefix", type=_an_id("client id prefix"), default="remote",
                        help="with --count: the ids' prefix (default remote)")
    invite.add_argument("--broker", type=_broker_url,
                        help="mqtt[s]://HOST:PORT as the clients reach it (default: the run's broker)")
    invite.add_argument("--username", help="the clients' broker user name, put in the token")
    invite.add_argument("--password-file", type=_a_file, metavar="FILE",
                        help=f"with --username: the broker password to put in the token (default: ${PASSWORD_ENV})")
    invite.add_argument("--public", type=_a_file, metavar="FILE",
                        help="authorize this public key (a `fedbus keygen` .pub file; its id is the client's) "
                             "instead of minting one: the token then holds no private key (join with --key)")

    from fedbus.dashboard.command import add_watch_parser

    add_watch_parser(sub, _broker_url, _add_login_options)
    client = sub.add_parser("client", help="join a running federation as one client")
    client.add_argument("--join", metavar="TOKEN",
                        help="a join token from `fedbus invite`: broker, run, client id and keys in one (a secret: "
                             "prefer --join-file)")
    client.add_argument("--join-file", type=_a_file, metavar="FILE", help="the join token, read from FILE")
    client.add_argument("--key", type=_a_file, metavar="FILE",
                        help="with a token that holds no private key: this client's key file (`fedbus keygen`)")
    client.add_argument("--broker", type=_broker_url,
                        help=f"mqtt://[USER@]HOST:PORT, or mqtts:// for TLS; the password comes from ${PASSWORD_ENV} "
                             "or --password-file (with a token: overrides its broker)")
    _add_login_options(client)
    client.add_argument("--run", type=_an_id("run id"), help="the run id printed by `fedbus run` (not with a token)")
    client.add_argument("--id", type=_an_id("client id"),
                        help="client id (default: HOSTNAME-PID; with a token: the token's)")
    client.add_argument("--shard", type=_int_within(0), help="data shard index (default: a hash of the client id)")
    client.add_argument("--engine", choices=("surrogate", "openai", "local"),
                        help="surrogate (default), or the LLM this client runs TextGrad on: openai (give "
                             "--engine-url and --model) or local (the embedded model, started by this client)")
    client.add_argument("--engine-url", type=_http_url,
                        help="openai: the OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1")
    client.add_argument("--model", help="openai: the server's model name; local: a label")
    client.add_argument("--api-key-env", help="openai: the NAME of the environment variable holding the key")
    client.add_argument("--max-tokens", type=_int_within(1, 32_768), default=512,
                        help="LLM: cap on each reply (default 512)")
    client.add_argument("--threads", type=_int_within(1, 256), default=1, help="local: llama.cpp threads (default 1)")
    client.add_argument("--no-cache", action="store_true", help="LLM: do not reuse cached responses")
    client.add_argument("--strict", action="store_true", help="LLM: keep a step only on a strict improvement")
    client.add_argument("--step-on-perfect-batch", action="store_true",
                        help="LLM: step on a batch already answered all right, as the authors' code does")
    client.add_argument("--aggregator-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="give up (exit 1) when nothing came from the aggregator for this long; it sends a "
                             "heartbeat every 5 s (default 120)")
    client.add_argument("--quiet", action="store_true", help="print only the last line")
    client.add_argument("--log-dir", type=Path, default=Path("fedbus-client"),
                        help="LLM: where TextGrad's and llama.cpp's logs go (default ./fedbus-client)")
    _add_evaluate_parser(sub)
    return parser


def _add_evaluate_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    evaluate = sub.add_parser("evaluate", help="score a saved prompt on an engine (prompt transfer): accuracy on a "
                                               "task's test or validation set")
    evaluate.add_argument("prompt_file", type=_a_file, metavar="PROMPT_FILE",
                          help="a text file, a run's summary.json (its final prompt) or global_prompts.jsonl (the "
                               "last round's prompt, or --round's)")
    evaluate.add_argument("--engine-url", type=_http_url, metavar="URL",
                          help="OpenAI-compatible server (default: the scenario's evaluator engine, or "
                               "$FEDBUS_ENGINE_URL)")
    evaluate.add_argument("--model", help="the server's model name (default: the scenario's)")
    evaluate.add_argument("--api-key-env", help="the NAME of the environment variable holding the key")
    evaluate.add_argument("--max-tokens", type=_int_within(1, 32_768), help="cap on each reply (default: the "
                                                                             "scenario's, else 512)")
    evaluate.add_argument("--scenario", type=_a_file, metavar="S.yaml",
                          help="the questions (task, sizes, data seed) and engine of this scenario: a run's own")
    evaluate.add_argument("--task", help="without --scenario: a generated task (default object_counting); with it: "
                                         "one of its tasks")
    evaluate.add_argument("--seed", type=_int_within(0, 2**53), default=0, help="without --scenario: the data seed (0)")
    evaluate.add_argument("--split", choices=("test", "val"), default="test", help="test (default) or val")
    evaluate.add_argument("--round", type=_int_within(0), help="global_prompts.jsonl: this round's prompt")
    evaluate.add_argument("--grader", choices=("exact", "judge"),
                          help="exact (the Answer: line) or judge (the authors' LLM judge); default: the scenario's")
    evaluate.add_argument("--no-cache", action="store_true", help="do not reuse cached responses")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON to FILE")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from fedbus.runtime.evaluate import EvaluateRequest, evaluate_prompt, result_line

    request = EvaluateRequest(prompt_file=args.prompt_file, split=args.split, round=args.round, scenario=args.scenario,
                              task=args.task, seed=args.seed, engine_url=args.engine_url, model=args.model,
                              api_key_env=args.api_key_env, max_tokens=args.max_tokens, cache=not args.no_cache,
                              grader=args.grader)
    result = _run_async(evaluate_prompt(request, dict(os.environ)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(result_line(result), flush=True)
    return EXIT_OK


def _default_client_id() -> str:
    import socket

    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedbus.results.compare import (
        load_summaries,
        render,
        rounds_table,
        row,
        settings_columns,
        to_csv,
        with_settings,
    )

    summaries = load_summaries(args.summaries)
    settings = settings_columns(args.summaries, summaries)
    rows = [r for s, extra in zip(summaries, settings, strict=True)
            for r in with_settings(rounds_table([s]) if args.rounds else [row(s)], extra)]
    print(to_csv(rows) if args.csv else render(rows), end="\n" if not args.csv else "")
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fedbus.experiments.grid import parse_grid, parse_seeds
    from fedbus.experiments.sweep import SweepOptions, outcome_line, run_sweep

    try:
        axes = parse_grid(args.grid)
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        options = SweepOptions(base=args.base, out=args.out, axes=axes, seeds=seeds, jobs=args.jobs,
                               simulate=args.simulate, no_cache=args.no_cache, engine_url=args.engine_url,
                               log_level=args.log_level)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the runs in flight, as Ctrl-C does
        runs = run_sweep(options, say=lambda line: print(line, flush=True))
    except ScenarioError as exc:
        for line in exc.lines():
            print(f"{exc.source}: {line}" if exc.source else line, file=sys.stderr)
        return EXIT_INVALID
    line, ok = outcome_line(runs, args.out)
    print(line, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def _cmd_report(args: argparse.Namespace) -> int:
    from fedbus.experiments.plots import available
    from fedbus.experiments.report import INSTALL_HINT, ReportOptions, build_report

    if not available():
        print(f"fedbus report: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_INVALID
    first = args.dirs[0] if args.dirs[0].is_dir() else args.dirs[0].parent
    try:
        result = build_report(ReportOptions(paths=tuple(args.dirs), out=args.out or first / "report",
                                            prices=args.prices))
    except ScenarioError as exc:
        for line in exc.lines():
            print(f"{exc.source}: {line}" if exc.source else line, file=sys.stderr)
        return EXIT_INVALID
    print(f"fedbus report: {result.completed} of {result.runs} runs completed; varied: "
          f"{', '.join(result.varied) or 'nothing'}; wrote {result.index} and {len(result.images)} charts")
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
        remote = f" + {scenario.clients.remote} remote" if scenario.clients.remote else ""
        count = scenario.clients.count
        print(f"{path}: ok ({count}{remote} client{'' if count + scenario.clients.remote == 1 else 's'}, "
              f"{scenario.rounds} round{'' if scenario.rounds == 1 else 's'}, engine "
              f"{scenario.engine})")
    return status


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot take a run's files, found by trying (None: it can). Folders made to try are
    removed again, so that a run refused later leaves nothing behind."""
    if folder.exists() and not folder.is_dir():
        return "exists and is not a folder"
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    probe = folder / f".fedbus-write-test-{os.urandom(8).hex()}"  # a name no other process (nor PID) shares
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        return f"cannot write there: {exc.strerror or exc}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()
    return None


def _out_problem(out: Path, force: bool) -> str | None:
    """Why ``fedbus run`` must not write into ``out`` (None: it may)."""
    if out.is_dir() and (out / "summary.json").exists() and not force:
        return "holds a finished run; pass --force to overwrite, or choose another --out"
    return _folder_problem(out)


async def _check_broker(address: BrokerAddress, identifier: str) -> None:
    """Connect once and leave: an unreachable broker or a refused login is one TransportError before anything
    starts (not a failure per client and then the aggregator's)."""
    from fedbus.runtime.bus import MqttBus

    async with MqttBus(address, identifier, clean_session=True):
        pass


class _UsageError(Exception):
    """A command line that cannot work: one line on stderr, exit code 2."""


def _broker_login(url: str, args: argparse.Namespace, environ: dict[str, str]) -> BrokerAddress:
    """``--broker URL`` with its password (--password-file, else $FEDBUS_BROKER_PASSWORD) and ``--ca``.

    A password in the URL still works, with a warning: every user of the machine sees it in ``ps``. A URL
    whose password is redacted (checkpoint.json's, for ``--resume``) needs the password from those sources.
    """
    from fedbus.runtime.address import REDACTED, parse_broker_url, read_secret

    address = parse_broker_url(url)
    in_url = address.password is not None and address.password != REDACTED
    if in_url and args.password_file is not None:
        raise _UsageError("the password is in --broker and in --password-file: give it once, in the file")
    if in_url:
        print(f"fedbus {args.command}: warning: a password in --broker is visible to every user of this machine "
              f"(ps); use --password-file or ${PASSWORD_ENV}", file=sys.stderr)
    password = None
    if not in_url and address.username is not None:
        try:
            password = read_secret(args.password_file) if args.password_file else environ.get(PASSWORD_ENV)
        except TransportError as exc:
            raise _UsageError(str(exc)) from None
        if password is None and address.password == REDACTED:
            raise _UsageError(f"the run used {address.url()}: give its password again with --password-file or "
                              f"${PASSWORD_ENV}")
    elif args.password_file is not None:
        raise _UsageError(f"--password-file needs a user name in --broker: {address.scheme}://USER@HOST:PORT")
    try:
        return address.with_login(password=password, ca_file=args.ca or address.ca_file)
    except TransportError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from fedbus.scenario import load_scenario

    if args.resume is not None:
        return _cmd_resume(args)
    if args.scenario is None:
        print("fedbus run: give a scenario file (or --resume RUN_DIR)", file=sys.stderr)
        return EXIT_INVALID
    try:
        scenario = load_scenario(args.scenario, seed=args.seed, data_seed=args.data_seed)
        if args.strategy or args.security:
            from fedbus.scenario.loader import scenario_from_mapping, scenario_to_mapping

            doc = scenario_to_mapping(scenario)
            if args.strategy:
                doc["aggregation"]["strategy"] = args.strategy
            if args.security:
                doc["security"] = args.security
            scenario = scenario_from_mapping(doc, source=str(args.scenario))
    except ScenarioError as exc:
        for line in exc.lines():
            print(f"{args.scenario}: {line}", file=sys.stderr)
        return EXIT_INVALID
    if args.simulate and args.dashboard is not None:
        print("fedbus run: --dashboard shows a run over a broker as it goes; --simulate has none", file=sys.stderr)
        return EXIT_INVALID
    if args.simulate and args.broker:
        print("fedbus run: --simulate uses an in-memory broker in virtual time; drop --broker", file=sys.stderr)
        return EXIT_INVALID
    if args.simulate and (scenario.clients.count == 0 or args.authorized_keys or scenario.clients.remote):
        print("fedbus run: --simulate has no remote clients: it needs clients.count >= 1, no clients.remote and no "
              "--authorized-keys", file=sys.stderr)
        return EXIT_INVALID
    if not args.simulate:
        from fedbus.plan import refuse_over_a_broker

        try:
            refuse_over_a_broker(scenario)
        except ScenarioError as exc:
            for line in exc.lines():
                print(f"{args.scenario}: {line}", file=sys.stderr)
            return EXIT_INVALID
    _check_authorized_keys(args.authorized_keys, scenario)
    if args.simulate:  # no broker: its modules (ssl, sockets) are not even imported
        _check_no_broker_options(args)
        from fedbus.sim.run import sim_run_id

        return _simulate(args, scenario, args.run_id or sim_run_id(scenario))
    address, embedded = _run_broker(args, dict(os.environ))
    from fedbus.runtime import worker_process

    # worker processes import while this one imports the run and starts the broker (they wait for their spec)
    standby = worker_process.standby(worker_process.auto_workers(scenario.clients.count)
                                     if args.workers is None else args.workers)
    try:
        return _run_over_broker(args, scenario, address, embedded, standby)
    finally:
        worker_process.release(standby)


def _simulate(args: argparse.Namespace, scenario: Scenario, run_id: str) -> int:
    out = args.out or Path("runs") / run_id
    problem = _out_problem(out, args.force)
    if problem is not None:
        print(f"fedbus run: --out {out}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    from fedbus.sim.run import simulate

    try:
        with _sigterm_interrupts():
            summary = simulate(scenario, out, run_id=run_id, progress=not args.quiet,
                               scenario_file=str(args.scenario))
    except EngineError as exc:
        print(f"fedbus run --simulate: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt as exc:
        written = getattr(exc, "path", None)  # a SimulationInterrupted: the summary it wrote (not a stale one)
        where = f"; the rounds so far are in {written}; " if written is not None else " before its first round; "
        print(f"fedbus run --simulate: interrupted{where}run it again to finish it (a simulation is not resumed: "
              "the same scenario and seed give the same run)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if summary["status"] == "completed" else EXIT_ABORTED


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM as Ctrl-C while the (synchronous) simulator runs: it then writes its summary as interrupted."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run_over_broker(args: argparse.Namespace, scenario: Scenario, address: BrokerAddress | None,
                     embedded: EmbeddedBrokerConfig, standby: list[subprocess.Popen[bytes]]) -> int:
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.runtime.run import RunOptions, new_run_id

    run_id = args.run_id or new_run_id(scenario)
    out = args.out or Path("runs") / run_id
    problem = _out_problem(out, args.force)
    if problem is not None:
        print(f"fedbus run: --out {out}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if address is not None:
        _run_async(_check_broker(address, f"{run_id}.check"))
    # the password travels inside this process (and to its worker processes); run.py records url() redacted
    options = RunOptions(out_dir=out, broker_url=address.url(redact=False) if address else None, run_id=run_id,
                         progress=not args.quiet,
                         scenario_file=str(args.scenario), workers=args.workers,
                         engine=EngineOverrides(base_url=args.engine_url, cache=False if args.no_cache else None),
                         environ=dict(os.environ), log_level=args.log_level, embedded_broker=embedded,
                         authorized_keys=args.authorized_keys, standby=standby)
    return _run_with_dashboard(args, scenario, options, address, embedded)


def _check_authorized_keys(path: Path | None, scenario: Scenario) -> None:
    """``--authorized-keys FILE`` loads, and names none of the scenario's own clients (``_UsageError`` if not)."""
    if path is None:
        return
    from fedbus.runtime.run_keys import RemoteKeys
    from fedbus.security.errors import KeyFileError

    if scenario.security == "none":
        raise _UsageError("--authorized-keys: this run is not signed (security none): drop it, or sign the run")
    try:
        RemoteKeys([path], scenario.client_ids())
    except KeyFileError as exc:
        raise _UsageError(f"--authorized-keys {exc}") from None


def _run_broker(args: argparse.Namespace, environ: dict[str, str]) -> tuple[BrokerAddress | None, EmbeddedBrokerConfig]:
    """``fedbus run``'s broker: the external one --broker names, logged in; or the embedded one's settings."""
    from fedbus.runtime.broker import EmbeddedBrokerConfig

    embedded_options = _embedded_options(args)
    if args.broker:
        if embedded_options:
            raise _UsageError(f"{', '.join(embedded_options)} configure the embedded broker: drop them with --broker")
        return _broker_login(args.broker, args, environ), EmbeddedBrokerConfig()
    _check_no_broker_options(args)
    return None, _broker_config(args, environ, host=args.broker_host, port=args.broker_port)


def _embedded_options(args: argparse.Namespace) -> list[str]:
    return [flag for flag, given in (
        ("--broker-host", args.broker_host != "127.0.0.1"), ("--broker-port", args.broker_port != 0),
        ("--users", args.users), ("--user", args.user), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
        ("--tls-ca", args.tls_ca), ("--insecure", args.insecure)) if given]


def _check_no_broker_options(args: argparse.Namespace) -> None:
    """Without --broker: no option of an external broker, and none of the embedded one's under --simulate."""
    embedded_options = _embedded_options(args)
    if embedded_options and args.simulate:
        raise _UsageError(f"--simulate uses an in-memory broker: drop {', '.join(embedded_options)}")
    if args.ca or (args.password_file and not args.user):
        raise _UsageError("--ca and --password-file go with --broker (or --password-file with --user)")


def _cmd_resume(args: argparse.Namespace) -> int:
    """``fedbus run --resume RUN_DIR``: the same run, rebuilt from its journal, carried on to the end."""
    from fedbus.runtime.checkpoint import Checkpoint
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.runtime.run import RunOptions

    if (args.scenario is not None or args.simulate or args.run_id or args.seed is not None or args.strategy
            or args.security or args.data_seed is not None):
        print("fedbus run --resume: the scenario, seed, run id and strategy come from RUN_DIR/checkpoint.json; "
              "drop SCENARIO, --seed, --data-seed, --run-id, --strategy, --security and --simulate", file=sys.stderr)
        return EXIT_INVALID
    from fedbus.runtime.journal import ResumeError

    try:
        checkpoint = Checkpoint.open(args.resume)
        scenario = checkpoint.scenario()
    except ResumeError as exc:  # a folder that is not a run to resume: a bad option, said before anything starts
        print(f"fedbus run {exc}", file=sys.stderr)
        return EXIT_INVALID
    _check_authorized_keys(args.authorized_keys, scenario)
    if args.broker is None and checkpoint.broker.get("kind") == "external":
        args.broker = str(checkpoint.broker["url"])  # its password redacted: from --password-file or the environment
    address, embedded = _run_broker(args, dict(os.environ))
    if address is not None:
        _run_async(_check_broker(address, f"{checkpoint.run_id}.check"))
    options = RunOptions(out_dir=args.resume, broker_url=address.url(redact=False) if address else None,
                         run_id=checkpoint.run_id,
                         progress=not args.quiet, scenario_file=str(checkpoint.content.get("scenario_file", "")),
                         workers=args.workers, resume=True,
                         engine=EngineOverrides(base_url=args.engine_url, cache=False if args.no_cache else None),
                         environ=dict(os.environ), log_level=args.log_level, embedded_broker=embedded,
                         authorized_keys=args.authorized_keys)
    return _run_with_dashboard(args, scenario, options, address, embedded)


def _run_with_dashboard(args: argparse.Namespace, scenario: Scenario, options: RunOptions,
                        address: BrokerAddress | None, embedded: EmbeddedBrokerConfig) -> int:
    """Run to the end, with the live page of --dashboard when asked (fedbus/dashboard/)."""
    if args.dashboard is None:
        return _run_to_end(scenario, options)
    from fedbus.dashboard.command import run_access, run_with_dashboard

    try:
        access = run_access(args.dashboard, address, embedded.users, insecure=args.insecure)
    except ValueError as exc:
        raise _UsageError(f"--dashboard: {exc}") from None
    with _RunEnd(options.out_dir):  # and while the page lingers and closes: a run that ended is not interrupted
        return run_with_dashboard(access, options, scenario, args.dashboard_linger, _run_to_end,
                                  interrupted_code=EXIT_INTERRUPTED)


def _run_to_end(scenario: Scenario, options: RunOptions) -> int:
    """Run; Ctrl-C or SIGTERM leave summary.json with status 'interrupted' and say how to go on."""
    from fedbus.runtime.run import run_scenario

    with _RunEnd(options.out_dir) as end:
        try:
            summary = _run_async(run_scenario(scenario, options))
        except BaseException as exc:
            if not _interrupted(exc):
                raise
            ended = end.status()
            if ended is not None:  # cancelled as it closed down: what it did stands
                return EXIT_OK if ended == "completed" else EXIT_ABORTED
            print(f"fedbus run: interrupted; the rounds so far are in {options.out_dir / 'summary.json'}; "
                  f"continue with: fedbus run --resume {options.out_dir}", file=sys.stderr)
            return EXIT_INTERRUPTED
    return EXIT_OK if summary["status"] == "completed" else EXIT_ABORTED


class _RunEnd:
    """While in effect, SIGTERM outside the run's own event loop (as it starts, after its loop, while its page closes)
    is Ctrl-C unless the run already ended (completed or aborted, neither of which ``--resume`` takes): then there
    is nothing left to interrupt (a completed run exited 143 when a SIGTERM came as it closed down)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.since = time.time() - 1  # coarse file clocks: an earlier run's checkpoint is older than a second anyway
        self.previous: Any = None

    def status(self) -> str | None:
        """'completed' or 'aborted' once the run's checkpoint.json, written since this began (not an earlier run's
        in the same folder), says it ended so; else None."""
        import json

        path = self.out_dir / "checkpoint.json"
        try:
            if path.stat().st_mtime < self.since:
                return None
            status = json.loads(path.read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            return None
        return status if status in ("completed", "aborted") else None

    def _terminated(self, signum: int, frame: object) -> None:
        if self.status() is None:
            raise KeyboardInterrupt

    def __enter__(self) -> _RunEnd:
        try:
            self.previous = signal.signal(signal.SIGTERM, self._terminated)
        except ValueError:  # not the main thread: SIGTERM stays as it is
            self.previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:  # None: not set here, or set outside Python (left as it is now)
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self.previous)


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, importing asyncio only here: `fedbus run --simulate`, `validate` and the like never load it
    (a few hundredths of a second of every such command's start)."""
    import asyncio

    return asyncio.run(coroutine)


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM, possibly wrapped by task groups."""
    from asyncio import CancelledError

    if isinstance(exc, KeyboardInterrupt | CancelledError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(inner) for inner in exc.exceptions)
    return False


def _broker_config(args: argparse.Namespace, environ: dict[str, str], *, host: str, port: int,
                   max_payload_bytes: int = 1024 * 1024) -> EmbeddedBrokerConfig:
    """The embedded broker's listener, users and TLS from the options; ``_UsageError`` for a wrong one, and a
    refusal to listen beyond loopback with no users unless ``--insecure``."""
    from fedbus.runtime.address import read_secret
    from fedbus.runtime.broker import BrokerTls, EmbeddedBrokerConfig, check_login, parse_users

    users: list[tuple[str, str]] = []
    try:
        if args.users is not None:
            _warn_if_others_can_read(args.users, args.command)
            users += parse_users(args.users.read_text(encoding="utf-8"), source=f"--users {args.users}")
        if args.user is not None:
            if args.password_file is not None:
                password = read_secret(args.password_file)
            elif environ.get(PASSWORD_ENV):
                password = environ[PASSWORD_ENV]
            else:
                raise _UsageError(f"--user {args.user}: its password comes from --password-file or ${PASSWORD_ENV}")
            check_login(args.user, password)
            if args.user in dict(users):
                raise _UsageError(f"--user {args.user}: already in --users")
            users.append((args.user, password))
        elif args.password_file is not None:
            raise _UsageError("--password-file goes with --user NAME")
        tls = None
        if (args.tls_cert is None) != (args.tls_key is None):
            raise _UsageError("TLS needs both --tls-cert and --tls-key")
        if args.tls_cert is not None:
            tls = BrokerTls(cert_file=args.tls_cert.resolve(), key_file=args.tls_key.resolve(),
                            ca_file=args.tls_ca.resolve() if args.tls_ca is not None else None)
            tls.check()
        elif args.tls_ca is not None:
            raise _UsageError("--tls-ca goes with --tls-cert and --tls-key")
        config = EmbeddedBrokerConfig(host=host, port=port, max_payload_bytes=max_payload_bytes, users=tuple(users),
                                      tls=tls)
    except (ValueError, TransportError) as exc:
        raise _UsageError(str(exc)) from None
    exposure = config.exposure()
    if exposure is not None and not args.insecure:
        raise _UsageError(f"refusing to start: {exposure}; give --users FILE (or --user NAME), or --insecure to "
                          "run it open anyway")
    if exposure is not None:
        print(f"fedbus {args.command}: warning: --insecure: {exposure}", file=sys.stderr)
    elif users and tls is None and not config.loopback_only:
        print(f"fedbus {args.command}: warning: listening on {host} without TLS: passwords cross the network in "
              "clear text (add --tls-cert and --tls-key)", file=sys.stderr)
    return config


def _warn_if_others_can_read(path: Path, command: str) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            print(f"fedbus {command}: warning: {path} holds passwords and other users may read it (chmod 600 {path})",
                  file=sys.stderr)


def _cmd_broker(args: argparse.Namespace) -> int:
    from fedbus.runtime.broker import EmbeddedBroker

    config = _broker_config(args, dict(os.environ), host=args.host, port=args.port,
                            max_payload_bytes=args.max_payload_bytes)
    try:
        broker = EmbeddedBroker(config, own_clients=False)
    except OSError as exc:  # --port 0 on an address of no interface here: picking a free port fails
        raise TransportError(f"cannot listen on {args.host}: {exc.strerror or exc}") from exc
    # Ctrl+C (and SIGTERM) stop it even when started in the background of a script, where SIGINT is ignored
    # from birth and Python would not install its KeyboardInterrupt handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        broker.start()
        public = broker.public_address
        login = "USER@" if config.users else ""
        ca = f" --ca {public.ca_file}" if public.ca_file else ""
        users = f"{len(config.users)} user{'s' if len(config.users) > 1 else ''}" if config.users else "anonymous"
        print(f"fedbus broker (embedded rumqttd) listening on {args.host}:{broker.port} "
              f"({'TLS' if config.tls else 'no TLS'}, {users}); clients use --broker "
              f"{public.scheme}://{login}HOST:{broker.port}{ca}"
              f"{f' with ${PASSWORD_ENV} or --password-file' if config.users else ''}. Ctrl+C stops it.", flush=True)
        code = broker.wait()
        print(f"broker exited with code {code}", file=sys.stderr)
        return EXIT_FAILED if code else EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        broker.stop()


def _cmd_keygen(args: argparse.Namespace) -> int:
    from fedbus.security.keyfiles import keygen, public_path
    from fedbus.security.keys import fingerprint

    identity = keygen(args.out, args.id)
    print(f"wrote {args.out} (private key, mode 0600: keep it secret) and {public_path(args.out)}: "
          f"{identity.owner} {fingerprint(identity.public)}")
    return EXIT_OK


def _cmd_invite(args: argparse.Namespace) -> int:
    """Authorize remote clients in a running signed run (RUN_DIR/keys/authorized_keys, which its aggregator
    re-reads) and print one join token each on stdout."""
    from fedbus.protocol.ids import check_id
    from fedbus.runtime.address import read_secret
    from fedbus.runtime.run_keys import invite, read_run
    from fedbus.security.keyfiles import load_public
    from fedbus.security.keys import fingerprint

    if args.count is not None:
        width = len(str(args.count - 1))
        ids = [f"{args.prefix}-{i:0{width}d}" for i in range(args.count)]
    else:
        ids = [args.id]
    try:
        for cid in ids:
            check_id(cid, "client id")
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    password = None
    if args.username is not None:
        password = read_secret(args.password_file) if args.password_file else os.environ.get(PASSWORD_ENV)
    elif args.password_file is not None:
        raise _UsageError("--password-file goes with --username")
    public = None
    if args.public is not None:
        if args.count is not None:
            raise _UsageError("--public is one client's key: give --id, not --count")
        peer = load_public(args.public)
        if peer.owner != args.id:
            raise _UsageError(f"--public {args.public} is the key of {peer.owner!r}, not of {args.id!r}")
        public = peer.key
    info = read_run(args.run_dir)
    tokens = invite(args.run_dir, ids, broker=args.broker, username=args.username, password=password, public=public)
    for token in tokens:
        print(token, flush=True)
    where = args.broker or info.broker_url
    host = urlsplit(where).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        print(f"fedbus invite: note: the tokens name {where}, which only this machine reaches; give --broker "
              "mqtt://HOST:PORT for clients elsewhere", file=sys.stderr)
    secret = "no private key (the client joins with --key)" if public is not None else (
        "that client's private key: hand it over like a password, where the broker operator cannot see it")
    print(f"fedbus invite: {len(ids)} client{'s' if len(ids) > 1 else ''} authorized in run {info.run_id} "
          f"(aggregator {fingerprint(info.aggregator)}); each token holds {secret}", file=sys.stderr)
    return EXIT_OK


def _joining(args: argparse.Namespace) -> tuple[str, str, BrokerAddress, Security] | None:
    """With ``--join``/``--join-file``: the token's run, client id, broker (logged in) and the client's protocol-v2
    settings (its key, the aggregator's pinned); None without a token. ``_UsageError`` for what does not fit."""
    from dataclasses import replace

    from fedbus.runtime.address import parse_broker_url, read_secret
    from fedbus.security.crypto import PrivateKey
    from fedbus.security.errors import KeyFileError, TokenError
    from fedbus.security.keyfiles import load_private
    from fedbus.security.policy import Security
    from fedbus.security.token import decode_token

    if args.join is None and args.join_file is None:
        if args.key is not None:
            raise _UsageError("--key goes with a join token (--join or --join-file)")
        return None
    if args.join is not None and args.join_file is not None:
        raise _UsageError("give the token once: --join or --join-file")
    try:
        text = args.join if args.join is not None else args.join_file.read_text(encoding="utf-8")
        token = decode_token(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"--join-file {args.join_file}: {exc}") from None
    except TokenError as exc:
        raise _UsageError(str(exc)) from None
    for flag, given, held in (("--run", args.run, token.run), ("--id", args.id, token.client)):
        if given is not None and given != held:
            raise _UsageError(f"{flag} {given}: the token is for {held}")
    if args.join is not None and (token.client_key is not None or token.password is not None):
        print("fedbus client: warning: the token in --join holds secrets that every user of this machine sees (ps); "
              "use --join-file", file=sys.stderr)
    if token.client_key is not None:
        if args.key is not None:
            raise _UsageError("the token holds this client's key: drop --key")
        key = PrivateKey(token.client_key[:32], token.client_key[32:])
    elif args.key is not None:
        try:
            identity = load_private(args.key)
        except KeyFileError as exc:
            raise _UsageError(f"--key {exc}") from None
        if identity.owner != token.client:
            raise _UsageError(f"--key {args.key} is the key of {identity.owner!r}, the token is for {token.client!r}")
        key = identity.key
    else:
        raise _UsageError("the token holds no private key: give --key FILE, the key whose .pub was invited")
    if args.broker is not None:
        address = _broker_login(args.broker, args, dict(os.environ))
    else:
        address = parse_broker_url(token.broker)
        password = token.password
        if token.username is not None:
            address = replace(address, username=token.username)
            if args.password_file is not None:
                password = read_secret(args.password_file)
        elif args.password_file is not None:
            raise _UsageError("--password-file: the token names no broker user")
        try:
            address = address.with_login(password=password, ca_file=args.ca)
        except TransportError as exc:
            raise _UsageError(str(exc)) from None
    return token.run, token.client, address, Security.for_client(token.client, key, token.aggregator_key)


def _cmd_watch(args: argparse.Namespace) -> int:
    """``fedbus watch``: the dashboard of a run hosted elsewhere (fedbus/dashboard/watch.py)."""
    from fedbus.dashboard.command import cmd_watch

    address = _broker_login(args.broker, args, dict(os.environ))
    try:
        return cmd_watch(args, address)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_client(args: argparse.Namespace) -> int:
    from fedbus.protocol.ids import AGGREGATOR, check_id
    from fedbus.runtime.client_node import ClientConfig
    from fedbus.security.keys import fingerprint

    joining = _joining(args)
    if joining is None and (args.broker is None or args.run is None):
        raise _UsageError("give a join token (--join TOKEN or --join-file FILE, from `fedbus invite`), or --broker and "
                          "--run for a run that is not signed")
    run_id, client_id = (joining[0], joining[1]) if joining else (args.run, args.id or _default_client_id())
    try:
        check_id(client_id, "client id")
        check_id(run_id, "run id")
        if client_id == AGGREGATOR:
            raise ValueError(f"the client id {AGGREGATOR!r} is the aggregator's; choose another")
    except ValueError as exc:
        print(f"fedbus client: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not args.aggregator_timeout > 0:
        print("fedbus client: --aggregator-timeout must be > 0 seconds", file=sys.stderr)
        return EXIT_INVALID
    address = joining[2] if joining else _broker_login(args.broker, args, dict(os.environ))
    security = joining[3] if joining else None
    config = ClientConfig(run=run_id, client=client_id, broker=address, shard=args.shard,
                          engine=args.engine, retry_first_connect=False, silence_timeout_s=args.aggregator_timeout,
                          security=security)
    if args.engine is not None:
        from fedbus.llm.extras import require_libraries

        require_libraries(args.engine)  # before joining: one clear line instead of a failed round each round
    if args.engine not in (None, "surrogate"):
        problem = _folder_problem(args.log_dir)
        if problem is not None:
            print(f"fedbus client: --log-dir {args.log_dir}: {problem}", file=sys.stderr)
            return EXIT_INVALID
    _run_async(_check_broker(address, f"{run_id}.{client_id}.check"))
    from fedbus.runtime.identity import refuse_live_client

    _run_async(refuse_live_client(config.broker, run_id, client_id))
    started = time.monotonic()
    pinned = (f" (signed+sealed; aggregator {fingerprint(security.aggregator_key)})"
              if security is not None and security.aggregator_key is not None else "")
    if not args.quiet:
        print(f"fedbus client {client_id} joining run {run_id} on {config.broker.url()}{pinned}", flush=True)
    report = _run_async(_client_session(config, args))
    line = (f"fedbus client {client_id}: {report.rounds_done} rounds done in {time.monotonic() - started:.1f} s; "
            f"{report.reason}")
    if not report.ok:
        print(line, file=sys.stderr, flush=True)
        return EXIT_FAILED
    print(line, flush=True)
    return EXIT_OK


async def _client_session(config: ClientConfig, args: argparse.Namespace) -> ClientReport:
    """One client, on the surrogate or on its own LLM engine (opened here, closed when the run ends)."""
    from fedbus.results.eventlog import EventLog
    from fedbus.results.narration import Narrator
    from fedbus.runtime.client_node import run_client

    events: EventLog = EventLog(None) if args.quiet else Narrator(prefix="")
    if args.engine in (None, "surrogate"):
        return await run_client(config, events)
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
        make = optimizer_factory(engine, args.log_dir / "textgrad", strict=args.strict,
                                 step_on_perfect_batch=args.step_on_perfect_batch)
        return await run_client(config, events, make)


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
                "compare": _cmd_compare, "keygen": _cmd_keygen, "invite": _cmd_invite, "sweep": _cmd_sweep,
                "report": _cmd_report, "evaluate": _cmd_evaluate, "watch": _cmd_watch}
    try:
        try:
            return commands[args.command](args)
        except ExceptionGroup as group:  # a TaskGroup wraps what its tasks raised: report the first of ours
            raise _first_fedbus_error(group) from None
    except _UsageError as exc:
        print(f"fedbus {args.command}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TransportError as exc:
        print(f"fedbus {args.command}: broker problem: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FedbusError as exc:
        print(f"fedbus {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
