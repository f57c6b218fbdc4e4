"""The ``fedbus`` command: run, validate, broker, client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

import structlog

from fedbus import __version__
from fedbus.errors import EngineError, FedbusError, ScenarioError, TransportError

if TYPE_CHECKING:
    from fedbus.runtime.address import BrokerAddress
    from fedbus.runtime.broker import EmbeddedBrokerConfig
    from fedbus.runtime.client_node import ClientConfig, ClientReport
    from fedbus.runtime.run import RunOptions
    from fedbus.scenario import Scenario

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_ABORTED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# the broker password, for clients (with --broker mqtt[s]://USER@...) and for `fedbus broker --user NAME`;
# --password-file takes precedence. Never on the command line, where `ps` shows it to every user.
PASSWORD_ENV = "FEDBUS_BROKER_PASSWORD"
log = structlog.get_logger("fedbus.cli")


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
    run.add_argument("--seed", type=_int_within(0), help="override the scenario's seed")
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
    run.add_argument("--engine-url", metavar="URL", type=_http_url,
                     help="OpenAI-compatible server for engine openai, e.g. http://127.0.0.1:8000/v1 (vLLM), "
                          "http://127.0.0.1:11434/v1 (Ollama); default: the scenario's engine.base_url or "
                          "$FEDBUS_ENGINE_URL")
    run.add_argument("--no-cache", action="store_true", help="do not reuse cached LLM responses")
    run.add_argument("--strategy", help="override aggregation.strategy (concat, summarize, uid_summarize) "
                                        "to compare aggregators on one scenario")
    run.add_argument("--security", choices=("signed+sealed", "signed", "none"),
                     help="override the scenario's security: signed+sealed (default: every message signed, "
                          "updates sealed to the aggregator), signed, or none (protocol v1: anyone on the broker "
                          "can post as anyone; for protocol experiments and v1 clients)")
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
    validate = sub.add_parser("validate", help="check scenario files and name the YAML path of every mistake")
    validate.add_argument("scenarios", type=Path, nargs="+")

    broker = sub.add_parser("broker", help="run the embedded broker (rumqttd) in the foreground")
    broker.add_argument("--host", type=_ipv4, default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for other machines)")
    broker.add_argument("--port", type=_int_within(0, 65535), default=1883, help="0: any free port")
    broker.add_argument("--max-payload-bytes", type=_int_within(1), default=1024 * 1024)
    broker.add_argument("--password-file", type=_a_file, metavar="FILE", help="the password of --user")
    _add_broker_security_options(broker)

    client = sub.add_parser("client", help="join a running federation as one client")
    client.add_argument("--broker", type=_broker_url, required=True,
                        help=f"mqtt://[USER@]HOST:PORT, or mqtts:// for TLS; the password comes from ${PASSWORD_ENV} "
                             "or --password-file")
    _add_login_options(client)
    client.add_argument("--run", type=_an_id("run id"), required=True, help="the run id printed by `fedbus run`")
    client.add_argument("--id", type=_an_id("client id"), help="client id (default: HOSTNAME-PID)")
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
    client.add_argument("--aggregator-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="give up (exit 1) when nothing came from the aggregator for this long; it sends a "
                             "heartbeat every 5 s (default 120)")
    client.add_argument("--quiet", action="store_true", help="print only the last line")
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


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot take a run's files, found by trying (None: it can). Folders made to try are
    removed again, so that a run refused later leaves nothing behind."""
    if folder.exists() and not folder.is_dir():
        return "exists and is not a folder"
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"cannot write there: {exc.strerror or exc}"
    finally:
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
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.runtime.run import RunOptions, new_run_id
    from fedbus.scenario import load_scenario

    if args.resume is not None:
        return _cmd_resume(args)
    if args.scenario is None:
        print("fedbus run: give a scenario file (or --resume RUN_DIR)", file=sys.stderr)
        return EXIT_INVALID
    try:
        scenario = load_scenario(args.scenario, seed=args.seed)
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
    if args.simulate and args.broker:
        print("fedbus run: --simulate uses an in-memory broker in virtual time; drop --broker", file=sys.stderr)
        return EXIT_INVALID
    address, embedded = _run_broker(args, dict(os.environ))
    if args.simulate:
        from fedbus.sim.run import sim_run_id

        run_id = args.run_id or sim_run_id(scenario)
    else:
        run_id = args.run_id or new_run_id(scenario)
    out = args.out or Path("runs") / run_id
    problem = _out_problem(out, args.force)
    if problem is not None:
        print(f"fedbus run: --out {out}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if args.simulate:
        from fedbus.sim.run import simulate

        try:
            summary = simulate(scenario, out, run_id=run_id, progress=not args.quiet,
                               scenario_file=str(args.scenario))
        except EngineError as exc:
            print(f"fedbus run --simulate: {exc}", file=sys.stderr)
            return EXIT_INVALID
        return EXIT_OK if summary["status"] == "completed" else EXIT_ABORTED
    if address is not None:
        asyncio.run(_check_broker(address, f"{run_id}.check"))
    # the password travels inside this process (and to its worker processes); run.py records url() redacted
    options = RunOptions(out_dir=out, broker_url=address.url(redact=False) if address else None, run_id=run_id,
                         progress=not args.quiet,
                         scenario_file=str(args.scenario), workers=args.workers,
                         engine=EngineOverrides(base_url=args.engine_url, cache=False if args.no_cache else None),
                         environ=dict(os.environ), log_level=args.log_level, embedded_broker=embedded)
    return _run_to_end(scenario, options)


def _run_broker(args: argparse.Namespace, environ: dict[str, str]) -> tuple[BrokerAddress | None, EmbeddedBrokerConfig]:
    """``fedbus run``'s broker: the external one --broker names, logged in; or the embedded one's settings."""
    from fedbus.runtime.broker import EmbeddedBrokerConfig

    embedded_options = [flag for flag, given in (
        ("--broker-host", args.broker_host != "127.0.0.1"), ("--broker-port", args.broker_port != 0),
        ("--users", args.users), ("--user", args.user), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
        ("--tls-ca", args.tls_ca), ("--insecure", args.insecure)) if given]
    if args.broker:
        if embedded_options:
            raise _UsageError(f"{', '.join(embedded_options)} configure the embedded broker: drop them with --broker")
        return _broker_login(args.broker, args, environ), EmbeddedBrokerConfig()
    if embedded_options and args.simulate:
        raise _UsageError(f"--simulate uses an in-memory broker: drop {', '.join(embedded_options)}")
    if args.ca or (args.password_file and not args.user):
        raise _UsageError("--ca and --password-file go with --broker (or --password-file with --user)")
    return None, _broker_config(args, environ, host=args.broker_host, port=args.broker_port)


def _cmd_resume(args: argparse.Namespace) -> int:
    """``fedbus run --resume RUN_DIR``: the same run, rebuilt from its journal, carried on to the end."""
    from fedbus.runtime.checkpoint import Checkpoint
    from fedbus.runtime.engines import EngineOverrides
    from fedbus.runtime.run import RunOptions

    if args.scenario is not None or args.simulate or args.run_id or args.seed is not None or args.strategy:
        print("fedbus run --resume: the scenario, seed, run id and strategy come from RUN_DIR/checkpoint.json; "
              "drop SCENARIO, --seed, --run-id, --strategy and --simulate", file=sys.stderr)
        return EXIT_INVALID
    checkpoint = Checkpoint.open(args.resume)
    scenario = checkpoint.scenario()
    if args.broker is None and checkpoint.broker.get("kind") == "external":
        args.broker = str(checkpoint.broker["url"])  # its password redacted: from --password-file or the environment
    address, embedded = _run_broker(args, dict(os.environ))
    if address is not None:
        asyncio.run(_check_broker(address, f"{checkpoint.run_id}.check"))
    options = RunOptions(out_dir=args.resume, broker_url=address.url(redact=False) if address else None,
                         run_id=checkpoint.run_id,
                         progress=not args.quiet, scenario_file=str(checkpoint.content.get("scenario_file", "")),
                         workers=args.workers, resume=True,
                         engine=EngineOverrides(base_url=args.engine_url, cache=False if args.no_cache else None),
                         environ=dict(os.environ), log_level=args.log_level, embedded_broker=embedded)
    return _run_to_end(scenario, options)


def _run_to_end(scenario: Scenario, options: RunOptions) -> int:
    """Run; Ctrl-C or SIGTERM leave summary.json with status 'interrupted' and say how to go on."""
    from fedbus.runtime.run import run_scenario

    try:
        summary = asyncio.run(run_scenario(scenario, options))
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        print(f"fedbus run: interrupted; the rounds so far are in {options.out_dir / 'summary.json'}; "
              f"continue with: fedbus run --resume {options.out_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if summary["status"] == "completed" else EXIT_ABORTED


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C or SIGTERM, possibly wrapped by task groups."""
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
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


def _cmd_client(args: argparse.Namespace) -> int:
    from fedbus.protocol.ids import AGGREGATOR, check_id
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
    if not args.aggregator_timeout > 0:
        print("fedbus client: --aggregator-timeout must be > 0 seconds", file=sys.stderr)
        return EXIT_INVALID
    address = _broker_login(args.broker, args, dict(os.environ))
    config = ClientConfig(run=args.run, client=client_id, broker=address, shard=args.shard,
                          engine=args.engine, retry_first_connect=False, silence_timeout_s=args.aggregator_timeout)
    if args.engine is not None:
        from fedbus.llm.extras import require_libraries

        require_libraries(args.engine)  # before joining: one clear line instead of a failed round each round
    if args.engine not in (None, "surrogate"):
        problem = _folder_problem(args.log_dir)
        if problem is not None:
            print(f"fedbus client: --log-dir {args.log_dir}: {problem}", file=sys.stderr)
            return EXIT_INVALID
    asyncio.run(_check_broker(address, f"{args.run}.{client_id}.check"))
    from fedbus.runtime.identity import refuse_live_client

    asyncio.run(refuse_live_client(config.broker, args.run, client_id))
    started = time.monotonic()
    print(f"fedbus client {client_id} joining run {args.run} on {config.broker.url()}", flush=True)
    report = asyncio.run(_client_session(config, args))
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
        make = optimizer_factory(engine, args.log_dir / "textgrad", strict=args.strict)
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
                "compare": _cmd_compare}
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
