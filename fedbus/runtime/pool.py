"""Many clients in one process, and the worker processes ``fedbus run`` spreads them over.

A scenario with many clients (``large-federation.yaml`` has 200) does not fit one Python process
on a small machine: every client is an asyncio task with its own MQTT connection, and the
aggregator shares the event loop. ``fedbus run --workers N`` (by default one worker per 100
clients, at most one per CPU) starts N processes of ``python -m fedbus.runtime.worker_process SPEC.json``, each
running a slice of the clients against the same broker. Each writes its events to its own JSONL
part, which ``fedbus run`` merges into events.jsonl at the end. Every process stamps ``t`` on one
clock: ``time.monotonic()`` (asyncio's clock too) is the machine's CLOCK_MONOTONIC, the same in
every process, and the spec carries the run's zero for events.jsonl (``log_t0``) and for simulated
time (``loop_t0``). A worker dies with its parent (see :mod:`fedbus.runtime.worker_process`).

Simulated time runs on the wall clock (``time_scale`` simulated seconds per second) in every
process, so a worker's event loop must never stall: the aggregator's process keeps time while a
stalled worker reads its tasks late, and its clients miss deadlines they would meet in-process
(where a stall holds up the aggregator's timers as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbus.client.optimizer import OptimizerFactory, make_optimizer, scenario_optimizer
from fedbus.errors import FedbusError
from fedbus.logs import structlog
from fedbus.plan import client_plans, run_security
from fedbus.results.eventlog import EventLog
from fedbus.runtime.address import parse_broker_url
from fedbus.runtime.client_node import ClientConfig, run_client
from fedbus.runtime.limits import ensure_open_files
from fedbus.runtime.worker_process import CLIENTS_PER_WORKER, auto_workers, release

__all__ = ["CLIENTS_PER_WORKER", "WorkerPool", "WorkerSpec", "auto_workers", "release", "run_guarded", "run_slice",
           "slices"]

if TYPE_CHECKING:
    from fedbus.scenario import Scenario

log = structlog.get_logger("fedbus.client")


async def run_guarded(config: ClientConfig, events: EventLog, make: OptimizerFactory = make_optimizer) -> None:
    """Run one client; a client that fails is recorded, and the others go on."""
    try:
        await run_client(config, events, make)
    except FedbusError as exc:
        events.record("client-failed", client=config.client, reason=str(exc))
        log.warning("client failed", client=config.client, reason=str(exc))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """What a worker process needs: the scenario, the broker, its clients, and the run's clocks."""

    run_id: str
    broker_url: str
    scenario: dict[str, Any]  # scenario_to_mapping(...)
    members: list[tuple[str, int, str]]  # (client id, shard index, group name)
    loop_t0: float  # the run's start on time.monotonic(), which is asyncio's clock
    log_t0: float  # events.jsonl's zero on time.monotonic()
    events_path: str
    parent_pid: int
    log_level: str = "WARNING"
    boot: str = "0"  # message-id token of the run's clients: '0', or 'r1', 'r2', ... in a resumed run
    secret: str = ""  # hex: the run's key secret (its clients' keys derive from it); the file is 0600
    # LLM runs: the engine this worker's TextGrad clients open (engine_to_mapping), and their textgrad log folder
    engine: dict[str, Any] | str | None = None
    textgrad_dir: str = ""

    def dump(self, path: Path) -> None:
        """Write the spec for the worker, readable by this user only: it may hold the broker password."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["members"] = [tuple(m) for m in raw["members"]]
        return cls(**raw)


def slices(members: Sequence[tuple[str, int, str]], workers: int) -> list[list[tuple[str, int, str]]]:
    """Deal the clients out round-robin, so every group is spread over every worker."""
    return [list(members[i::workers]) for i in range(workers) if members[i::workers]]


class WorkerPool:
    """The worker processes of one run; they are killed when the run's ExitStack closes."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.parts: list[Path] = []
        self.members: list[list[str]] = []  # each worker's client ids
        self.killed: set[int] = set()  # workers :meth:`finish` had to kill (they outlived the grace period)
        stack.callback(self.kill)

    def start(self, *, run_id: str, broker_url: str, scenario: Scenario, members: Sequence[tuple[str, int, str]],
              workers: int, loop_t0: float, log_t0: float, log_level: str = "WARNING", boot: str = "0",
              secret: str = "", engine: dict[str, Any] | str | None = None, textgrad_dir: str = "",
              standby: list[subprocess.Popen[bytes]] | None = None, resumed: bool = False) -> None:
        """Start the workers. Call it from the run's main thread: Linux sends the parent-death signal when the
        thread that forked a worker ends, not only when the whole process does. ``standby``: processes
        :func:`fedbus.runtime.worker_process.standby` started earlier, which take the first slices (and are
        taken off the list)."""
        from fedbus.scenario.loader import scenario_to_mapping

        self.workdir.mkdir(parents=True, exist_ok=True)
        waiting = standby if standby is not None else []
        for k, chunk in enumerate(slices(members, workers)):
            spec_path = self.workdir / f"worker-{k}.json"
            part = self.workdir / f"events-{k}.jsonl"
            if not resumed:  # a part left by a killed earlier run in this folder is not this run's
                part.unlink(missing_ok=True)
            WorkerSpec(run_id=run_id, broker_url=broker_url, scenario=scenario_to_mapping(scenario),
                       members=chunk, loop_t0=loop_t0, log_t0=log_t0, events_path=str(part),
                       parent_pid=os.getpid(), log_level=log_level, boot=boot, secret=secret, engine=engine,
                       textgrad_dir=textgrad_dir).dump(spec_path)
            self.parts.append(part)
            self.members.append([cid for cid, _shard, _group in chunk])
            self.processes.append(_hand_over(waiting.pop(0), spec_path) if waiting else _spawn(spec_path))

    def finish(self, timeout_s: float) -> list[int | None]:
        """Wait up to ``timeout_s`` for the workers to end (their clients stop when the run finishes); kill the rest."""
        deadline = time.monotonic() + timeout_s
        for k, process in enumerate(self.processes):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.killed.add(k)
                process.kill()
                process.wait()
        return [p.returncode for p in self.processes]

    def ended(self) -> list[tuple[int, int]]:
        """``(worker index, exit code)`` of each worker that has exited so far (without waiting)."""
        return [(k, code) for k, p in enumerate(self.processes) if (code := p.poll()) is not None]

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _hand_over(process: subprocess.Popen[bytes], spec_path: Path) -> subprocess.Popen[bytes]:
    """Give a standby worker its spec; a worker that died waiting is replaced by a fresh one."""
    assert process.stdin is not None
    try:
        process.stdin.write(f"{spec_path}\n".encode())
        process.stdin.close()
    except OSError:  # it is gone (killed): start one the ordinary way
        process.kill()
        process.wait()
        return _spawn(spec_path)
    return process


def _spawn(spec_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fedbus.runtime.worker_process", str(spec_path)],
                            stdin=subprocess.DEVNULL)


async def run_slice(spec: WorkerSpec, environ: Mapping[str, str] | None = None) -> None:
    """A worker process's clients, each guarded, until the run finishes; its events go to its own part."""
    from fedbus.scenario.loader import scenario_from_mapping

    scenario = scenario_from_mapping(spec.scenario)
    if spec.engine is not None and scenario.clients.optimizer is None:
        await _run_llm_slice(spec, scenario, environ or {})
        return
    await _run_clients(spec, scenario, scenario_optimizer(scenario.clients.optimizer))


async def _run_llm_slice(spec: WorkerSpec, scenario: Scenario, environ: Mapping[str, str]) -> None:
    """TextGrad clients on the worker's own engines (the run's server, the run's response cache); what they cost
    goes to the event log as ``worker-llm`` for the run's totals."""
    from fedbus.runtime.engines import open_engines
    from fedbus.runtime.llm_run import load_optimizer_library, optimizer_factory
    from fedbus.scenario.engine import read_engine
    from fedbus.scenario.reader import Reader

    engine_spec = read_engine(Reader(), spec.engine)
    log_dir = Path(spec.textgrad_dir)
    await load_optimizer_library(log_dir)
    from fedbus.runtime.llm_run import llm_counts

    async with open_engines(engine_spec, environ=environ, log_dir=log_dir) as engines:
        make = optimizer_factory(engines, log_dir, strict=scenario.clients.strict,
                                 step_on_perfect_batch=scenario.clients.step_on_perfect_batch,
                                 grader=scenario.grader, validation_revert=scenario.clients.validation_revert)
        await _run_clients(spec, scenario, make, counts=lambda: llm_counts(engines))


WORKER_LLM_S = 5.0  # how often an LLM worker writes what its engines counted so far (a killed one loses at most this)


async def _count_llm(events: EventLog, spec: WorkerSpec, counts: Callable[[], dict[str, Any]]) -> None:
    """Every WORKER_LLM_S: a ``worker-llm`` line with this worker's totals so far, for the run's summary, which
    takes each worker's last (a worker killed with its run, which is then resumed, left its count until then)."""
    while True:
        await asyncio.sleep(WORKER_LLM_S)
        events.record("worker-llm", worker=spec.members[0][0], boot=spec.boot, **counts())


async def _run_clients(spec: WorkerSpec, scenario: Scenario, make: OptimizerFactory,
                       counts: Callable[[], dict[str, Any]] | None = None) -> None:
    plans = {plan.client: plan for plan in client_plans(scenario)}
    security = run_security(scenario, bytes.fromhex(spec.secret) if spec.secret else None)
    broker = parse_broker_url(spec.broker_url)
    # appended to: a resumed run's worker goes on after the part a killed run left unmerged (its own clock)
    events = EventLog(Path(spec.events_path), clock=lambda: time.monotonic() - spec.log_t0, append=True)
    ensure_open_files(len(spec.members) + 256)
    counting = asyncio.create_task(_count_llm(events, spec, counts)) if counts is not None else None
    try:
        async with asyncio.TaskGroup() as group:
            for cid, _shard, _group in spec.members:
                config = ClientConfig.for_plan(plans[cid], run=spec.run_id, broker=broker,
                                               time_scale=scenario.time_scale, started_at=spec.loop_t0,
                                               boot=spec.boot, security=security.client(cid))
                group.create_task(run_guarded(config, events, make), name=f"client[{spec.run_id}].{cid}")
    finally:
        if counting is not None and counts is not None:
            counting.cancel()
            events.record("worker-llm", worker=spec.members[0][0], boot=spec.boot, **counts())
        events.close()
