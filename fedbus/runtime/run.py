"""``fedbus run``: broker, aggregator and the scenario's clients in one process, then summary.json."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbus.aggregator.base import AggregatorBase
from fedbus.aggregator.effects import RoundResult
from fedbus.aggregator.session import NodeOutcome
from fedbus.aggregator.strategies import BUILT_IN_STRATEGIES
from fedbus.client.optimizer import OptimizerFactory, scenario_optimizer
from fedbus.errors import FedbusError
from fedbus.llm.extras import require_libraries
from fedbus.llm.roles import Engines
from fedbus.logs import structlog
from fedbus.plan import RunSecurity, client_plans, make_core, refuse_over_a_broker, run_security
from fedbus.plugins import is_reference
from fedbus.results.eventlog import EventLog
from fedbus.results.progress import Progress
from fedbus.results.prompt_log import best_by_validation, write_prompt_log
from fedbus.results.summary import build_summary, context_window, prompt_record, round_record
from fedbus.runtime.address import BrokerAddress, parse_broker_url
from fedbus.runtime.aggregator_node import AggregatorNode
from fedbus.runtime.broker import EmbeddedBroker, EmbeddedBrokerConfig
from fedbus.runtime.checkpoint import Checkpoint, core_known
from fedbus.runtime.client_node import ClientConfig
from fedbus.runtime.engines import EngineOverrides, effective_spec, open_engines, worker_engine_spec
from fedbus.runtime.graded_scoring import llm_scoring
from fedbus.runtime.identity import clear_retained, refuse_used_run_id
from fedbus.runtime.journal import JOURNAL, Journal, read_journal, write_atomically
from fedbus.runtime.limits import ensure_open_files
from fedbus.runtime.llm_run import LLMReducer, llm_counts, llm_summary, load_optimizer_library, optimizer_factory
from fedbus.runtime.pool import WorkerPool, auto_workers, run_guarded
from fedbus.runtime.retention import RetentionJudge
from fedbus.runtime.run_keys import (
    RELOAD_S,
    KeyLedger,
    RemoteKeys,
    authorized_path,
    first_keys,
    revoked_keys,
    run_secret,
    write_aggregator_key,
)
from fedbus.runtime.scoring import Scoring, SurrogateScoring
from fedbus.scenario import Scenario
from fedbus.scenario.engine import EngineSpec, engine_to_mapping
from fedbus.security.keys import PublicKey

if TYPE_CHECKING:
    from fedbus.dashboard.live import RunObserver

log = structlog.get_logger("fedbus.run")
CLIENT_EXIT_GRACE_S = 10.0
WORKER_WATCH_S = 0.5  # how often the run looks whether a worker process died
# summary.json's final test accuracies when the run stopped early (measuring costs LLM calls)
UNMEASURED = {"test_accuracy": None, "initial_test_accuracy": None,
              "note": "not measured: the run stopped early"}
BROKER_CHECK_S = 0.5  # how often fedbus run checks that its embedded broker still runs
CLIENT_COUNT_S = 0.25  # how often the progress display looks at the aggregator's count of clients


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a scenario."""

    out_dir: Path
    broker_url: str | None = None
    run_id: str | None = None
    progress: bool = True
    footer: bool = True  # with progress False: still the one line saying how the run ended (False: the library's)
    scenario_file: str = ""
    workers: int | None = None  # client processes; None: auto_workers(clients), 0: clients run in this process
    engine: EngineOverrides = field(default_factory=EngineOverrides)
    # the environment the CLI read (FEDBUS_ENGINE_URL and friends, API keys, FEDBUS_CACHE); nothing else reads it
    environ: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "WARNING"  # worker processes log at this level
    resume: bool = False  # out_dir is an earlier run's folder: rebuild its aggregator from journal.jsonl
    # the embedded broker's listener, users and TLS (its sizes come from the scenario); unused with broker_url
    embedded_broker: EmbeddedBrokerConfig = field(default_factory=EmbeddedBrokerConfig)
    # remote clients' public keys (authorized-keys format) the aggregator accepts besides its own clients and those
    # `fedbus invite` added to RUN_DIR/keys/authorized_keys; re-read when it changes
    authorized_keys: Path | None = None
    observer: RunObserver | None = None  # the dashboard (fedbus run --dashboard): told the header, rounds, summary
    # worker processes started ahead (fedbus.runtime.worker_process.standby), importing while the run starts: the
    # worker pool takes them; whoever started them lets the rest go (worker_process.release)
    standby: list[subprocess.Popen[bytes]] = field(default_factory=list)


def new_run_id(scenario: Scenario) -> str:
    return f"{scenario.name}-{scenario.seed}-{secrets.token_hex(3)}"[:64]


async def run_scenario(scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    """Run ``scenario`` to the end; write and return summary.json's content.

    SIGTERM (like Ctrl-C) stops the run with an ``interrupted`` summary.json that ``--resume`` continues.
    """
    task = asyncio.current_task()
    handling = _SigtermRuns.of(asyncio.get_running_loop()) if task is not None else None
    if handling is not None and task is not None:
        handling.enter(task)
    try:
        return await _run_scenario(scenario, options)
    finally:
        if handling is not None and task is not None:
            handling.leave(task)


class _SigtermRuns:
    """One SIGTERM handler per event loop, for every run in progress on it: it cancels each of them. The first run
    to start puts it in place of what handled SIGTERM (an app's own handler on the loop, or the signal module's);
    the last to end puts that back. (asyncio keeps one handler per signal and loop: a run that put its own in and
    took it out again dropped an app's handler, or left a finished run's in place when runs overlapped.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: set[asyncio.Task[Any]] = set()
        self.app: tuple[Callable[..., object], tuple[Any, ...]] | None = None
        self.before: Any = None
        self.installed = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _SigtermRuns:
        found = _SIGTERM_RUNS.get(loop)
        if found is None:
            found = _SIGTERM_RUNS[loop] = cls(loop)
        return found

    def enter(self, task: asyncio.Task[Any]) -> None:
        if not self.tasks:
            self.before = signal.getsignal(signal.SIGTERM)
            self.app = _loop_handler(self.loop, signal.SIGTERM)
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                self.loop.add_signal_handler(signal.SIGTERM, self._cancel_runs)
                self.installed = True
        self.tasks.add(task)

    def _cancel_runs(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def leave(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if self.tasks or not self.installed:
            return
        self.installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            self.loop.remove_signal_handler(signal.SIGTERM)  # which leaves the default (die at once), not what was
            if self.app is not None:  # the app's handler, which ours replaced on the loop, back in its place
                self.loop.add_signal_handler(signal.SIGTERM, self.app[0], *self.app[1])
            # what was: unless it was the loop's own placeholder (putting it back would leave SIGTERM ignored)
            elif self.before is not None and getattr(self.before, "__module__", "") != "asyncio.unix_events":
                signal.signal(signal.SIGTERM, self.before)
        self.app = self.before = None


_SIGTERM_RUNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SigtermRuns] = weakref.WeakKeyDictionary()


def _loop_handler(loop: asyncio.AbstractEventLoop,
                  signum: int) -> tuple[Callable[..., object], tuple[Any, ...]] | None:
    """The callback and arguments ``loop.add_signal_handler`` gave ``signum`` on this loop, or None. asyncio has no
    public way to read them: its Unix loop keeps each as a Handle in ``_signal_handlers`` (read here, nowhere else)."""
    handle = getattr(loop, "_signal_handlers", {}).get(signum)
    if not isinstance(handle, asyncio.Handle) or handle.cancelled():
        return None
    callback = getattr(handle, "_callback", None)
    return None if callback is None else (callback, tuple(getattr(handle, "_args", ()) or ()))


async def _run_scenario(scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    refuse_over_a_broker(scenario)  # before anything starts
    if not scenario.engine_spec.is_llm:
        return await _run(scenario, options, None, scenario.engine_spec)
    require_libraries(scenario.engine_spec.name)  # before anything starts: one clear line, not failed rounds
    spec = effective_spec(scenario.engine_spec, options.engine, options.environ)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    Progress(options.progress).note(f"starting engine {spec.name} ({spec.model or 'default model'}"
                                    f"{', ' + spec.base_url if spec.base_url else ''}) ...")
    await load_optimizer_library(options.out_dir / "textgrad")
    async with open_engines(spec, environ=options.environ, log_dir=options.out_dir) as engines:
        return await _run(scenario, options, engines, spec)


async def _run(scenario: Scenario, options: RunOptions, engine: Engines | None,
               spec: EngineSpec) -> dict[str, Any]:
    started = time.monotonic()
    out = options.out_dir
    checkpoint = Checkpoint.open(out) if options.resume else None
    run_id = checkpoint.run_id if checkpoint else (options.run_id or new_run_id(scenario))
    out.mkdir(parents=True, exist_ok=True)
    ensure_open_files(2 * scenario.expected_clients + 256)
    events = EventLog(out / "events.jsonl", append=checkpoint is not None)
    progress = Progress(options.progress, footer=options.footer)
    reducer = LLMReducer(None if engine is None else engine.aggregator, events, scenario.aggregation.format_line)
    window = context_window(scenario)
    scoring: Scoring = (llm_scoring(engine, scenario.data, reducer, scenario.grader) if engine is not None
                        else SurrogateScoring(scenario.engine, scenario.data))
    retention = (RetentionJudge(engine.judge, scenario.initial_prompt)
                 if engine is not None and scenario.aggregation.judge_retention else None)

    with ExitStack() as stack, structlog.contextvars.bound_contextvars(run=run_id):
        address, broker_info, embedded = _open_broker(stack, scenario, options, out)
        if embedded is None and checkpoint is None:
            await refuse_used_run_id(address, run_id)
        stack.callback(events.close)
        if checkpoint is None:
            checkpoint = Checkpoint.new(out, run_id=run_id, scenario=scenario, scenario_file=options.scenario_file,
                                        broker=broker_info)
            events.record("run-started", run=run_id, scenario=scenario.name, seed=scenario.seed,
                          engine=scenario.engine, broker=broker_info["url"])
        else:
            checkpoint.resumed(broker_info)
            events.record("run-resumed", run=run_id, resume=len(checkpoint.resumes), broker=broker_info["url"])
        progress.header(run_id, scenario.engine, broker_info["url"], scenario.expected_clients, scenario.rounds,
                        security=scenario.security)
        log.info("run started", scenario=scenario.name, engine=scenario.engine, broker=broker_info["url"],
                 resume=len(checkpoint.resumes))
        core = make_core(scenario, run_id)
        if options.observer is not None:
            options.observer.run_started(_header(scenario, run_id, broker_info), out / "events.jsonl", core.statistics)
        secret = None if scenario.security == "none" else run_secret(out, resume=bool(checkpoint.resumes))
        security, remote = _run_security(scenario, secret, options, events, fresh=not checkpoint.resumes)
        boot = f"r{len(checkpoint.resumes)}" if checkpoint.resumes else "0"  # this session's token
        t0 = asyncio.get_running_loop().time()
        journal = Journal(out / JOURNAL)
        node: AggregatorNode | None = None

        async def on_round(result: RoundResult) -> dict[str, Any]:
            extra: dict[str, Any] = {**prompt_record(result, window), **await scoring.round_extra(result)}
            if "surprisal" in extra:  # the engine scored the prompt's tokens
                extra["complexity"] = {**extra["complexity"], "surprisal": extra.pop("surprisal")}
            if retention is not None and (judged := await retention(result)) is not None:
                extra["instruction_retention"] = judged
            progress.round(round_record(result, extra))
            if options.observer is not None:
                options.observer.round_closed(round_record(result, extra), result.prompt)
            log.info("round closed", round=result.round, status=result.status, accepted=len(result.accepted),
                     rejected=len(result.rejected), prompt_chars=len(result.prompt),
                     val_accuracy=extra["val_accuracy"])
            checkpoint.round_closed(result, journal_lines=journal.lines + (node.replayed_lines if node else 0))
            if engine is not None:  # what this session's engines counted so far, for a resumed run's totals
                events.record("llm-counters", boot=boot, **llm_counts(engine))
            return extra

        node = AggregatorNode(core, broker=address, events=events, on_round=on_round,
                              max_message_bytes=scenario.max_message_bytes, time_scale=scenario.time_scale,
                              started_at=t0, reducer=reducer, journal=journal,
                              boot=boot,
                              security=security.aggregator, identifier=checkpoint.mqtt_identifier)
        gone: tuple[tuple[str, PublicKey], ...] = ()
        journaled: dict[str, PublicKey] = {}
        if checkpoint.resumes:
            lines = read_journal(out / JOURNAL)
            if remote is not None:  # what a client revoked later sent before still checks with its key, on replay
                remote.replaying = revoked_keys(lines)
                remote.recorded = first_keys(lines)
            replayed = node.resume(lines, None if remote is None else remote.revoked_now,
                                   None if remote is None else remote.record)
            if remote is not None:
                journaled = dict(remote.recorded)
                gone = remote.end_replay()
            # a journal that finished but a checkpoint that did not (Checkpoint.open refuses an ended one): the
            # run stopped between its last round and its summary; it ends now (scoring, prompt log, summary)
            if engine is not None:
                reducer.recall(out / "events.jsonl", {result.round for result, _extra in node.outcome.rounds})
            if retention is not None:
                retention.remember([result for result, _extra in node.outcome.rounds])
            progress.note(f"resumed {run_id} from {replayed.lines} journal entries: "
                          f"{len(node.outcome.rounds)} rounds closed, global version {core.version}")
        if remote is not None:  # each remote key in the journal as it is first read, before what it signs
            ledger = KeyLedger(journal, journaled)
            remote.on_keys = ledger
            ledger(remote.entries())
            node.on_revoked = lambda client: ledger.revoked(client, remote.entries())
            if gone:  # their lines were removed while the run was down: revoked now, as a live removal would be
                node.revoke(gone, while_down=True)

        def summarize(outcome: NodeOutcome, final: dict[str, Any]) -> dict[str, Any]:
            if engine is not None:
                events.record("llm-counters", boot=boot, **llm_counts(engine))
            summary = build_summary(
                run_id=run_id, scenario=scenario, scenario_file=options.scenario_file, broker=broker_info,
                outcome=outcome, events=events, wall_s=time.monotonic() - started,
                final={"version": core.version, "prompt": core.prompt, "prompt_chars": len(core.prompt), **final})
            summary["client_processes"] = clients.processes
            summary["client_processes_died"] = clients.failed_workers
            summary["resumes"] = checkpoint.resumes
            if engine is not None:
                summary |= llm_summary(spec, engine, out / "events.jsonl", boot)
                summary["totals"]["tokens_all_uses"] = (summary["llm"]["prompt_tokens"]
                                                        + summary["llm"]["completion_tokens"])
            return summary

        clients = _Clients(stack, scenario, options, run_id=run_id, address=address, events=events, t0=t0,
                           make=_optimizer_factory(scenario, engine, out),
                           boot=boot, secret=secret,
                           security=security, llm=None if engine is None else (spec, engine))
        try:
            async with asyncio.TaskGroup() as group:
                if embedded is not None:
                    group.create_task(_supervise(embedded, events), name=f"broker[{run_id}]")
                node_task = group.create_task(node.run(), name=f"aggregator[{run_id}]")
                group.create_task(_count_clients(core, progress, scenario.clients.count), name=f"clients[{run_id}]")
                if remote is not None:
                    remote.on_revoke = node.revoke
                    group.create_task(_watch_keys(core, remote), name=f"keys[{run_id}]")
                await _until_listening(node, node_task)
                clients.start(group, in_process=not _reaches_workers(scenario))
                outcome = await node_task
                await clients.wait_in_process()
                raise _Done()
        except* _Done:
            pass
        except* asyncio.CancelledError:  # SIGINT / SIGTERM: keep what the rounds so far showed
            clients.stop_workers()
            write_prompt_log(out, scenario.initial_prompt, node.outcome.rounds)
            _write_partial(summarize(node.outcome, UNMEASURED), "interrupted", "interrupted", out=out,
                           checkpoint=checkpoint, progress=progress)
            raise
        except* FedbusError as group:  # e.g. the broker stayed away past the reconnection limit
            why: BaseException = group
            while isinstance(why, BaseExceptionGroup):
                why = why.exceptions[0]
            clients.stop_workers()
            write_prompt_log(out, scenario.initial_prompt, node.outcome.rounds)
            _write_partial(summarize(node.outcome, UNMEASURED), "failed", str(why), out=out,
                           checkpoint=checkpoint, progress=progress)
            raise
        await clients.finish_workers()
        final = await scoring.final(scenario.initial_prompt, core.prompt, scenario.rounds,
                                    best_by_validation(outcome.rounds))
        write_prompt_log(out, scenario.initial_prompt, outcome.rounds)
        if embedded is None:
            await clear_retained(address, run_id, list(core_known(core)), checkpoint.mqtt_identifier)
        summary = summarize(outcome, final)
        _write_summary(out, summary)
        if options.observer is not None:
            options.observer.run_ended(summary)
        checkpoint.ended(summary["status"])
    progress.footer(summary, str(out))
    log.info("run finished", status=summary["status"], reason=summary["reason"], wall_s=summary["totals"]["wall_s"])
    return summary


async def _until_listening(node: AggregatorNode, node_task: asyncio.Task[NodeOutcome]) -> None:
    """Wait until the aggregator subscribed (or its task ended): the run's own clients start then. Their retained
    presences, published earlier, would reach it only as the retained messages its subscribe gets, and rumqttd
    hands back at most 100 of those: with 150 clients in this process 50 were never seen (the rest of the run
    selected from 100)."""
    listening = asyncio.ensure_future(node.listening.wait())
    try:
        await asyncio.wait({listening, node_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listening.cancel()


def _header(scenario: Scenario, run_id: str, broker: dict[str, str]) -> dict[str, Any]:
    """What the dashboard's header shows."""
    return {"run": run_id, "scenario": scenario.name, "seed": scenario.seed, "engine": scenario.engine,
            "broker": broker["url"], "security": scenario.security, "mode": scenario.aggregation.mode,
            "rounds": scenario.rounds, "clients": scenario.expected_clients, "time_scale": scenario.time_scale,
            "initial_prompt": scenario.initial_prompt}


class _Done(Exception):
    """Leaves the task group once the aggregator finished (the broker's supervisor runs until then)."""


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    write_atomically(out / "summary.json", summary)


def _write_partial(summary: dict[str, Any], status: str, why: str, *, out: Path, checkpoint: Checkpoint,
                   progress: Progress) -> None:
    """summary.json for a run that stopped early: the rounds so far, and how to go on."""
    summary["status"] = status
    summary["reason"] = (f"{why} after {summary['totals']['rounds_closed']} closed rounds; "
                         f"continue with: fedbus run --resume {out}")
    _write_summary(out, summary)
    checkpoint.ended(status)
    progress.footer(summary, str(out))


async def _count_clients(core: AggregatorBase, progress: Progress, own: int) -> None:
    """Show the aggregator's count of clients as it changes (remote clients joining, clients leaving) while the
    run goes; once it finished, clients leaving is the end, not news."""
    while core.phase != "finished":
        await asyncio.sleep(CLIENT_COUNT_S)
        if core.phase == "finished":
            return
        stats = core.statistics()
        progress.clients(stats.live_clients, stats.known_clients, own)


async def _watch_keys(core: AggregatorBase, remote: RemoteKeys) -> None:
    """While the run goes on: a line taken out of an authorized-keys file revokes its client within seconds,
    even one that sends nothing more (the files are otherwise looked at when a message comes in)."""
    while core.phase != "finished":
        await asyncio.sleep(RELOAD_S)
        remote.check()


async def _supervise(broker: EmbeddedBroker, events: EventLog) -> None:
    """Restart the embedded broker on the same port if it dies; the clients and the aggregator reconnect."""
    events.record("broker-started", pid=broker.pid, port=broker.port)
    while True:
        await asyncio.sleep(BROKER_CHECK_S)
        if broker.alive():
            continue
        log.warning("the embedded broker died; restarting it on the same port", port=broker.port)
        events.record("broker-died", pid=broker.pid)
        await asyncio.to_thread(broker.restart)
        events.record("broker-started", pid=broker.pid, port=broker.port)


def _open_broker(stack: ExitStack, scenario: Scenario, options: RunOptions,
                 out: Path) -> tuple[BrokerAddress, dict[str, str], EmbeddedBroker | None]:
    """The broker the run uses: the one ``broker_url`` names, or an embedded rumqttd sized for the scenario.

    The embedded one gives this run's aggregator and clients a login of their own (``address``); the URL
    recorded and shown is where other clients connect (``public_address``), without any password.
    """
    if options.broker_url:
        address = parse_broker_url(options.broker_url)
        return address, {"kind": "external", "url": address.url()}, None
    config = replace(options.embedded_broker, max_connections=scenario.expected_clients + 10_010,
                     max_payload_bytes=max(scenario.max_message_bytes + 4096, 64 * 1024))
    embedded = stack.enter_context(EmbeddedBroker(config, workdir=out / "broker"))
    return embedded.address, {"kind": "embedded-rumqttd", "url": embedded.public_address.url(),
                              "config": str(embedded.config_path)}, embedded


def _run_security(scenario: Scenario, secret: bytes | None, options: RunOptions, events: EventLog, *,
                  fresh: bool) -> tuple[RunSecurity, RemoteKeys | None]:
    """Every party's keys; the aggregator also accepts the remote clients of RUN_DIR/keys/authorized_keys
    (``fedbus invite``) and ``--authorized-keys``, re-read as they change, and its public key goes to
    RUN_DIR/keys/aggregator.pub for the invitations. A ``fresh`` run (not resumed) forgets the invitations of an
    earlier run in the same folder (``--force``): they pinned that run's aggregator key."""
    if secret is None:
        return run_security(scenario, None), None
    invited = authorized_path(options.out_dir)
    if fresh:
        invited.unlink(missing_ok=True)
    files = [invited, *([options.authorized_keys] if options.authorized_keys else [])]

    def changed(path: str, count: int) -> None:
        events.record("authorized-keys-read", path=path, clients=count)
        log.info("authorized keys read", path=path, clients=count)

    remote = RemoteKeys(files, scenario.client_ids(), on_change=changed)
    security = run_security(scenario, secret, remote=remote)
    if security.aggregator.key is not None:
        write_aggregator_key(options.out_dir, security.aggregator.key.public)
    return security, remote


def _optimizer_factory(scenario: Scenario, engine: Engines | None, out: Path) -> OptimizerFactory:
    if scenario.clients.optimizer is not None or engine is None:  # the user's optimizer wins over the engine's
        return scenario_optimizer(scenario.clients.optimizer)
    return optimizer_factory(engine, out / "textgrad", strict=scenario.clients.strict,
                             step_on_perfect_batch=scenario.clients.step_on_perfect_batch, grader=scenario.grader,
                             validation_revert=scenario.clients.validation_revert)


def _reaches_workers(scenario: Scenario) -> bool:
    """Whether worker processes can load this scenario: a plugin registered by name lives in this process only."""
    optimizer, strategy = scenario.clients.optimizer, scenario.aggregation.strategy
    return ((optimizer is None or is_reference(optimizer))
            and (strategy in BUILT_IN_STRATEGIES or is_reference(strategy)))


class _Clients:
    """The scenario's own clients: asyncio tasks in this process, or worker processes above 100 clients."""

    def __init__(self, stack: ExitStack, scenario: Scenario, options: RunOptions, *, run_id: str,
                 address: BrokerAddress, events: EventLog, t0: float, make: OptimizerFactory,
                 boot: str = "0", secret: bytes | None = None, security: RunSecurity | None = None,
                 llm: tuple[EngineSpec, Engines] | None = None) -> None:
        self.stack, self.scenario, self.options, self.run_id = stack, scenario, options, run_id
        self.llm = llm  # an LLM run: the engine and the open engines, for worker processes to reach the same ones
        self.address, self.events, self.t0, self.make, self.boot = address, events, t0, make, boot
        self.secret = secret or b""
        self.security = security or run_security(scenario, secret)
        self.tasks: list[asyncio.Task[None]] = []
        self.pool: WorkerPool | None = None
        self.failed_workers: list[dict[str, Any]] = []  # workers that died before the run let them go, as said
        self._said: set[int] = set()

    @property
    def processes(self) -> int:
        return len(self.pool.processes) if self.pool is not None else 0

    def start(self, group: asyncio.TaskGroup, *, in_process: bool) -> None:
        """``in_process``: the clients stay in this process (a plugin registered by name lives here only). In an
        LLM run, clients in worker processes open their own engines on the run's server, the concurrency shared
        out; in this process they share the run's engines."""
        s, options = self.scenario, self.options
        members = [(p.client, p.shard, p.group.name) for p in client_plans(s)]
        workers = auto_workers(len(members)) if options.workers is None else options.workers
        if workers and not in_process:
            self.pool = WorkerPool(self.stack, options.out_dir / "workers")
            engine = (None if self.llm is None
                      else engine_to_mapping(worker_engine_spec(*self.llm, min(workers, len(members)))))
            self.pool.start(run_id=self.run_id, broker_url=self.address.url(redact=False), scenario=s,
                            members=members, workers=workers, loop_t0=self.t0, log_t0=self.events.started,
                            log_level=options.log_level, boot=self.boot, secret=self.secret.hex(), engine=engine,
                            textgrad_dir=str(options.out_dir / "textgrad"), standby=options.standby,
                            resumed=self.boot != "0")
            self.events.record("workers-started", workers=len(self.pool.processes), clients=len(members))
            group.create_task(self._watch_workers(), name=f"workers[{self.run_id}]")
            return
        for plan in client_plans(s):
            config = ClientConfig.for_plan(plan, run=self.run_id, broker=self.address, time_scale=s.time_scale,
                                           started_at=self.t0, boot=self.boot,
                                           security=self.security.client(plan.client))
            self.tasks.append(group.create_task(run_guarded(config, self.events, self.make),
                                                name=f"client[{self.run_id}].{plan.client}"))

    async def wait_in_process(self) -> None:
        """After the run finished: give in-process clients a grace period to leave, then stop them."""
        if self.tasks:
            _done, pending = await asyncio.wait(self.tasks, timeout=CLIENT_EXIT_GRACE_S)
            for task in pending:
                task.cancel()

    async def _watch_workers(self) -> None:
        """While the run goes on: a worker process that exits has taken its clients with it (killed, out of
        memory, a bug): say so at once (``worker-died``), since the aggregator sees only clients gone offline."""
        while True:
            await asyncio.sleep(WORKER_WATCH_S)
            self._say_died(during_run=True)

    def _say_died(self, *, during_run: bool) -> None:
        pool = self.pool
        if pool is None:
            return
        for k, code in pool.ended():
            if k in self._said or code == 0 or k in pool.killed:
                continue  # exit 0: its clients ended (the run finished); killed by finish(): let go after the grace
            self._said.add(k)
            hosted = pool.members[k]
            failure = {"worker": k, "exit_code": code, "clients": len(hosted), "first_client": hosted[0],
                       "last_client": hosted[-1], "during_run": during_run}
            self.failed_workers.append(failure)
            self.events.record("worker-died", **failure,
                               note="its clients are gone; event lines it had not yet written (its last ~50 ms) "
                                    "are lost")
            log.warning("worker process died", **failure)

    def stop_workers(self) -> None:
        """The run stopped early (interrupted, failed): stop the workers and merge what they logged, so that
        events.jsonl and the summary's counts hold their clients' events (a resumed run goes on from them)."""
        if self.pool is None:
            return
        self.pool.kill()
        self._merge_parts()

    def _merge_parts(self) -> None:
        assert self.pool is not None
        if self.options.observer is not None:  # the page reads the parts (and the run's own log) to their end first
            self.events.flush()
            self.options.observer.catch_up()
        self.events.merge(self.pool.parts)  # one new file: the dashboard's tail sees it replaced, not rewritten
        for part in self.pool.parts:
            part.unlink(missing_ok=True)

    async def finish_workers(self) -> None:
        """Wait for the worker processes and merge their event-log parts into events.jsonl, in time order."""
        if self.pool is None:
            return
        await asyncio.to_thread(self.pool.finish, CLIENT_EXIT_GRACE_S)
        self._say_died(during_run=False)
        self._merge_parts()
