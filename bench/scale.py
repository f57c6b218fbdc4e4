"""Scale: whole `fedbus run`s of 10 to 1,000 clients on three backends, and a virtual population of up to 1,000,000.

Rows (pick some with ``--only``): N in {10, 100, 1000} clients x participation fraction {0.1, 1.0} x backend
{embedded (`fedbus run`, its rumqttd), mosquitto (started here from broker-config/mosquitto.conf on a free loopback
port, persistence off, `fedbus run --broker`), simulate (`fedbus run --simulate`)}; then `--simulate` rows of a
virtual population (``clients.population: virtual``) of 10,000 / 100,000 / 1,000,000 clients, 100 per round.

The workload is the issue's comparison: engine surrogate, ``concat``, 1 local step, batch 1, a ~2 KB prompt
(``initial_prompt`` and ``max_prompt_chars`` of ``--prompt-chars``), rounds 5 for N <= 100, 3 for N = 1000, 10 for
the virtual rows; ``task.train_size`` = 2 x N. Each run is a subprocess with its own scenario file and output
folder under a temp dir (``--keep`` keeps them). Measured per run:

- wall: from starting `fedbus run` to its exit (process start, imports and broker included).
- CPU: user + system time of every process the run started (the fedbus process, its worker processes, the
  broker; mosquitto too, started here for its rows): this process makes itself a child subreaper
  (PR_SET_CHILD_SUBREAPER), so every descendant is waited for by its parent or by this process, and
  ``getrusage(RUSAGE_CHILDREN)`` before and after covers them all.
- peak memory: the largest sum of RSS over all descendants, sampled from /proc every 50 ms (a shared page counts
  once per process that maps it, which inflates a tree of many processes), and the largest sum of PSS
  (/proc/PID/smaps_rollup: each shared page divided among the processes that map it), read every 250 ms and
  whenever the RSS sum reaches a new peak.
- connect: seconds from ``run-started`` to the last client's ``connected`` in events.jsonl (real brokers).
- rounds: wall seconds from the first ``round-opened`` to ``run-finished``; over a real broker from events.jsonl
  (``t`` is the run's clock), under ``--simulate`` (where ``t`` is virtual) from when those lines appear in
  events.jsonl, which the simulator writes in batches at most 50 ms apart (tailed every 5 ms: a sub-second
  figure there is rough, to a few tens of milliseconds).
- ms/client/round: the rounds' wall divided by the participants summed over the rounds (summary.json's
  ``selected``): elapsed time per participating client per round once everyone is connected. It is wall time,
  not CPU: where the run keeps both cores busy (1,000 clients: two workers, the aggregator and the broker), the
  CPU spent per client-round is up to twice it, which the next figure shows.
- CPU ms/client/round: the CPU of every process in the tree (read from /proc, 10 ms ticks) between the moments
  the first ``round-opened`` and the ``run-finished`` lines appear in events.jsonl (tailed every 5 ms; the log is
  written in batches at most 50 ms apart), over the same participant-rounds. Not measured on Flower's side.
- virtual s and virtual/wall: the simulated time covered (summary.json ``simulated.virtual_s``) and how much
  faster than that the run went (virtual rows: ``clients.step_latency_s`` is ``--virtual-step-latency-s``).

A row that fails prints ``failed: <first line of the error>`` and the benchmark goes on. ``--vs-flower`` pairs each
embedded row with the same workload on Flower's Simulation Engine (bench/flower_workload.py, a subprocess measured
the same way), alternating the two, and prints the ratios fedbus/Flower (the median over pairs); one small run of
each side goes first, not measured, so that neither pays for the session's cold caches. ``--deployment``
measures an aggregator-only run with 10 `fedbus client --join-file` processes on loopback (and, with Flower
installed, a SuperLink with 10 SuperNodes on loopback running bench/flower_app with `flwr run`), the two
alternated as the rows are, with paired ratios of wall, CPU, RSS and PSS.

    .venv/bin/python bench/scale.py [--only PATTERN] [--repeats K] [--json FILE] [--markdown] [--vs-flower]
                                    [--deployment]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import fnmatch
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "broker-config" / "mosquitto.conf"
FLOWER_WORKLOAD = ROOT / "bench" / "flower_workload.py"
FLOWER_APP = ROOT / "bench" / "flower_app"
INSTALL_FLOWER = "pip install -e '.[bench]'   (flwr[simulation]: Flower with Ray)"
BACKENDS = ("embedded", "mosquitto", "simulate")
SIZES = (10, 100, 1000)
FRACTIONS = (0.1, 1.0)
VIRTUAL_SIZES = (10_000, 100_000, 1_000_000)
VIRTUAL_PER_ROUND = 100
VIRTUAL_ROUNDS = 10
SENTENCE = "Think step by step, check each intermediate result, and end with the line 'Answer: $VALUE'. "
GIB = 1024**3
MIB = 1024**2
PR_SET_CHILD_SUBREAPER = 36


# --------------------------------------------------------------------------------------------------------- rows
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One configuration to measure."""

    clients: int
    fraction: float
    backend: str
    rounds: int
    virtual: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}")
        if self.virtual and self.backend != "simulate":
            raise ValueError("a virtual population runs under --simulate only")

    @property
    def name(self) -> str:
        if self.virtual:
            return f"n{self.clients}-virtual-simulate"
        return f"n{self.clients}-f{self.fraction:g}-{self.backend}"

    @property
    def per_round(self) -> int:
        """Participants per round, as the aggregator picks them: ceil(fraction x live), at least one."""
        return max(1, math.ceil(self.fraction * self.clients))


def rounds_for(clients: int) -> int:
    return 5 if clients <= 100 else 3


def default_rows() -> list[Row]:
    rows = [Row(clients=n, fraction=f, backend=b, rounds=rounds_for(n))
            for n in SIZES for f in FRACTIONS for b in BACKENDS]
    rows += [Row(clients=n, fraction=VIRTUAL_PER_ROUND / n, backend="simulate", rounds=VIRTUAL_ROUNDS, virtual=True)
             for n in VIRTUAL_SIZES]
    return rows


def matches(row: Row, term: str) -> bool:
    """A bare number picks a client count; anything else is a glob over the row's name (``*`` around it implied)."""
    term = term.strip()
    if term.replace("_", "").isdigit():
        return row.clients == int(term)
    pattern = term if any(c in term for c in "*?[") else f"*{term}*"
    return fnmatch.fnmatchcase(row.name, pattern)


def select_rows(rows: Sequence[Row], patterns: Sequence[str]) -> list[Row]:
    """The rows any of ``patterns`` (each comma-separated terms, all of which must match) picks; all without any."""
    if not patterns:
        return list(rows)
    return [row for row in rows if any(all(matches(row, t) for t in p.split(",") if t.strip()) for p in patterns)]


# ------------------------------------------------------------------------------------------------------ scenario
def initial_prompt(chars: int) -> str:
    """A prompt of exactly ``chars`` characters (bench/flower_app starts from the same text)."""
    return (SENTENCE * (chars // len(SENTENCE) + 1))[:chars]


def scenario_doc(row: Row, *, seed: int = 1, prompt_chars: int = 2048, virtual_step_latency_s: float = 60.0,
                 remote: int = 0) -> dict[str, Any]:
    """The scenario of ``row`` as a YAML mapping (``remote``: that many invited clients instead of own ones)."""
    clients: dict[str, Any] = {"count": 0 if remote else row.clients, "local_steps": 1, "batch_size": 1}
    if remote:
        clients["remote"] = remote
    if row.virtual:
        clients["population"] = "virtual"
        clients["step_latency_s"] = virtual_step_latency_s
    waiting = 600.0  # seconds (virtual under --simulate): far above what any row needs, so no round hits it
    return {
        "name": f"scale-{row.name}"[:64],
        "seed": seed,
        "engine": "surrogate",
        "rounds": row.rounds,
        "initial_prompt": initial_prompt(prompt_chars),
        "task": {"name": "surrogate-skills", "train_size": 2 * row.clients, "val_size": 20, "test_size": 20,
                 "partition": "iid"},
        "clients": clients,
        "participation": {"fraction": row.fraction, "min_clients": remote or 1, "min_updates": 1,
                          "round_deadline_s": waiting, "join_timeout_s": waiting},
        "aggregation": {"strategy": "concat", "max_prompt_chars": prompt_chars},
    }


def scenario_yaml(doc: dict[str, Any]) -> str:
    return "# generated by bench/scale.py\n" + yaml.safe_dump(doc, sort_keys=False, width=120)


# ------------------------------------------------------------------------------------------------ measurements
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One run (or the median of several): what it cost and how its rounds went; ``error`` if it failed."""

    label: str
    rounds: int = 0
    error: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_bytes: float = 0.0
    peak_pss_bytes: float = 0.0
    connect_s: float | None = None
    rounds_wall_s: float | None = None
    rounds_cpu_s: float | None = None  # every process's CPU over the same span (None where not read: Flower)
    participant_rounds: int = 0
    virtual_s: float | None = None
    load: float | None = None  # the 1-minute load average as the run started: other work on the machine
    failed_runs: int = 0  # of the repeats this median is over, how many failed (left out of it)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ms_per_client_round(self) -> float | None:
        if self.rounds_wall_s is None or self.participant_rounds <= 0:
            return None
        return 1000.0 * self.rounds_wall_s / self.participant_rounds

    @property
    def cpu_ms_per_client_round(self) -> float | None:
        if self.rounds_cpu_s is None or self.participant_rounds <= 0:
            return None
        return 1000.0 * self.rounds_cpu_s / self.participant_rounds

    @property
    def round_wall_s(self) -> float | None:
        return None if self.rounds_wall_s is None or self.rounds <= 0 else self.rounds_wall_s / self.rounds

    @property
    def speedup(self) -> float | None:
        """Simulated seconds per wall second."""
        return None if self.virtual_s is None or self.wall_s <= 0 else self.virtual_s / self.wall_s

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ms_per_client_round": self.ms_per_client_round,
                "cpu_ms_per_client_round": self.cpu_ms_per_client_round, "round_wall_s": self.round_wall_s,
                "speedup": self.speedup}


def failed(label: str, text: str) -> Measurement:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # the exception is its last line, not "Traceback (most ...)"
        lines = lines[-1:]
    return Measurement(label=label, error=lines[0] if lines else "no output")


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def combine(runs: Sequence[Measurement]) -> Measurement:
    """The median of each quantity over the runs that succeeded; the first failure if none did."""
    good = [m for m in runs if m.ok]
    if not good:
        return runs[0]
    return Measurement(
        label=good[0].label, rounds=good[0].rounds,
        wall_s=statistics.median(m.wall_s for m in good), cpu_s=statistics.median(m.cpu_s for m in good),
        peak_bytes=statistics.median(m.peak_bytes for m in good),
        peak_pss_bytes=statistics.median(m.peak_pss_bytes for m in good),
        connect_s=_median(m.connect_s for m in good), rounds_wall_s=_median(m.rounds_wall_s for m in good),
        rounds_cpu_s=_median(m.rounds_cpu_s for m in good),
        participant_rounds=round(statistics.median(m.participant_rounds for m in good)),
        virtual_s=_median(m.virtual_s for m in good), load=max((m.load or 0.0 for m in good), default=None),
        failed_runs=len(runs) - len(good))


def read_events(path: Path, wanted: frozenset[str]) -> Iterator[dict[str, Any]]:
    """The events.jsonl lines whose ``event`` is in ``wanted`` (others are not parsed: a 1,000-client log is big)."""
    if not path.exists():
        return
    keys = tuple(f'"event"{sep}"{name}"' for name in wanted for sep in (":", ": "))  # orjson's lines, json's
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if any(key in line for key in keys):
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if event.get("event") in wanted:
                        yield event


TIMING_EVENTS = frozenset({"run-started", "connected", "round-opened", "run-finished"})


def run_facts(summary: dict[str, Any], events: Iterable[dict[str, Any]], *, clock_is_wall: bool) -> dict[str, Any]:
    """From a run's summary.json and its timing events: status, participant-rounds, virtual seconds, and (when
    events.jsonl's ``t`` is wall time) seconds to connect and the rounds' wall."""
    rounds = summary.get("rounds", [])
    facts: dict[str, Any] = {
        "status": summary.get("status"), "reason": summary.get("reason"),
        "rounds_closed": len(rounds),
        "participant_rounds": sum(len(r.get("selected", ())) for r in rounds),
        "accepted": sum(len(r.get("accepted", ())) for r in rounds),
        "virtual_s": (summary.get("simulated") or {}).get("virtual_s"),
        "connect_s": None, "rounds_wall_s": None,
    }
    if not clock_is_wall:
        return facts
    started = first_open = finished = None
    last_connected: float | None = None
    for event in events:
        kind, t = event["event"], float(event["t"])
        if kind == "run-started" and started is None:
            started = t
        elif kind == "connected":
            last_connected = t if last_connected is None else max(last_connected, t)
        elif kind == "round-opened" and first_open is None:
            first_open = t
        elif kind == "run-finished":
            finished = t
    if started is not None and last_connected is not None:
        facts["connect_s"] = last_connected - started
    if first_open is not None and finished is not None:
        facts["rounds_wall_s"] = finished - first_open
    return facts


# ------------------------------------------------------------------------------------------------ process tree
Stat = tuple[int, str, int, int]  # ppid, state, RSS pages, CPU ticks (own user + system, waited-for children's)


def _proc_stat(pid: str) -> Stat | None:
    """(ppid, state, RSS pages, CPU ticks) of a process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[21]), sum(int(f) for f in fields[11:15])


def _pss_bytes(pid: int) -> int:
    """A process's proportional set size (its private pages plus its share of each shared one), 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_table() -> dict[int, Stat]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(entry)
            if stat is not None:
                table[int(entry)] = stat
    return table


def descendants(table: dict[int, Stat], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat[0], []).append(pid)
    out, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Tree:
    """This process's descendants: started under a lock, their RSS summed every ``interval`` s and their PSS every
    ``pss_interval`` s (the peaks kept), orphans reaped (this process is their subreaper), and optionally one
    events.jsonl tailed for marker events, the tree's CPU time read when the first round opens and when the run
    finishes."""

    def __init__(self, interval: float = 0.05, pss_interval: float = 0.25) -> None:
        self.me = os.getpid()
        self.interval = interval
        self.pss_interval = pss_interval
        self.lock = threading.Lock()
        self.owned: set[int] = set()  # our Popen children: subprocess waits for those
        self.peak = 0
        self.peak_pss = 0
        self.seen: list[tuple[float, str]] = []  # (perf_counter, event) of tailed events as they appeared
        self.cpu_marks: dict[str, float] = {}  # marker event -> the tree's CPU seconds when it appeared
        self._tail: Path | None = None
        self._offset = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self.lock:
            process = subprocess.Popen(list(args), **kwargs)
            self.owned.add(process.pid)
        return process

    def __enter__(self) -> Tree:
        self.peak = self.peak_pss = 0
        self.seen = []
        self.cpu_marks = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="scale[tree]", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._tail = None

    def tail(self, path: Path) -> None:
        self._tail, self._offset = path, 0

    def _loop(self) -> None:
        tick = 0
        pss_every = max(1, round(self.pss_interval / 0.005))
        while not self._stop.is_set():
            self._read_tail()
            if tick % max(1, round(self.interval / 0.005)) == 0:
                self.sample(pss=tick % pss_every == 0)
            tick += 1
            time.sleep(0.005)
        self._read_tail()
        self.sample()

    def _read_tail(self) -> None:
        path = self._tail
        if path is None:
            return
        try:
            with path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        now = time.perf_counter()
        for line in data[:end].splitlines():
            for name in (b"round-opened", b"run-finished"):
                if b'"event":"' + name + b'"' in line or b'"event": "' + name + b'"' in line:
                    self.seen.append((now, name.decode()))
                    if name == b"run-finished" or name.decode() not in self.cpu_marks:
                        self.cpu_marks[name.decode()] = self.cpu_s()

    def cpu_s(self) -> float:
        """CPU seconds spent so far by this process's descendants: the live ones' own and their waited-for
        children's (clock ticks, 10 ms apart), and those this process has waited for."""
        table = process_table()
        ticks = sum(table[pid][3] for pid in descendants(table, self.me) if pid in table)
        return ticks / os.sysconf("SC_CLK_TCK") + children_cpu_s()

    def sample(self, pss: bool = False) -> None:
        table = process_table()
        family = [pid for pid in descendants(table, self.me) if pid in table]
        rss = sum(table[pid][2] for pid in family) * os.sysconf("SC_PAGE_SIZE")
        if pss or rss >= self.peak:  # PSS (dearer to read) every pss_interval, and whenever RSS reaches a new peak
            self.peak_pss = max(self.peak_pss, sum(_pss_bytes(pid) for pid in family))
        self.peak = max(self.peak, rss)
        self.reap(table)

    def reap(self, table: dict[int, Stat]) -> None:
        """Wait for orphans reparented here that have exited (their CPU time then counts in RUSAGE_CHILDREN)."""
        with self.lock:
            for pid, (ppid, state, _, _) in table.items():
                if ppid == self.me and state == "Z" and pid not in self.owned:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)

    def settle(self, grace_s: float = 5.0) -> list[int]:
        """End what is left of the tree but our own Popen children, which their callers wait for: processes orphaned
    by a run that has ended (SIGTERM, then SIGKILL after ``grace_s``), reaped; return their pids."""
        leftovers: set[int] = set()
        deadline = time.monotonic() + grace_s
        while True:
            table = process_table()
            self.reap(table)
            alive = [pid for pid in descendants(table, self.me)
                     if pid not in self.owned and table.get(pid, (0, "Z", 0, 0))[1] != "Z"]
            if not alive:
                return sorted(leftovers)
            leftovers.update(alive)
            sig = signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.1)


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    wall_s: float
    cpu_s: float
    peak_bytes: int
    peak_pss_bytes: int
    load: float
    rounds_cpu_s: float | None = None  # the tree's CPU from the first round-opened to run-finished, if tailed
    leftovers: tuple[int, ...] = ()


@contextlib.contextmanager
def measured(tree: Tree) -> Iterator[list[Cost]]:
    """Wall, CPU (every descendant's, waited for), peak summed RSS and PSS of what runs inside the block, and the
    CPU between the tailed events.jsonl's first round-opened and its run-finished."""
    tree.settle()
    out: list[Cost] = []
    load = os.getloadavg()[0]
    cpu0 = children_cpu_s()
    started = time.perf_counter()
    with tree:
        yield out
    wall = time.perf_counter() - started
    leftovers = tree.settle()
    marks = tree.cpu_marks
    window = marks["run-finished"] - marks["round-opened"] if {"round-opened", "run-finished"} <= set(marks) else None
    out.append(Cost(wall_s=wall, cpu_s=children_cpu_s() - cpu0, peak_bytes=tree.peak, peak_pss_bytes=tree.peak_pss,
                    load=load, rounds_cpu_s=window, leftovers=tuple(leftovers)))


def finish(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, str]:
    """Wait for ``process``, killing it after ``timeout``; its exit code, and a note if it timed out."""
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9, f"timed out after {timeout:g} s"
    return code, ""


# ------------------------------------------------------------------------------------------------------ brokers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start listening on {port}") from None
            time.sleep(0.05)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


@contextlib.contextmanager
def mosquitto(tree: Tree, workdir: Path) -> Iterator[str]:
    """mosquitto from the project's config on a free loopback port, persistence off; yields its URL."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto not found (bash scripts/install-mosquitto.sh)")
    port = free_port()
    text = MOSQUITTO_CONF.read_text(encoding="utf-8")
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    text = text.replace("persistence true", "persistence false")
    text = re.sub(r"^(persistence_location|autosave_interval) .*\n", "", text, flags=re.M)
    conf = workdir / "mosquitto.conf"
    conf.write_text(text, encoding="utf-8")
    with (workdir / "mosquitto.log").open("wb") as log:
        process = tree.popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, process, "mosquitto")
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -------------------------------------------------------------------------------------------------------- runs
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    workdir: Path
    seed: int = 1
    prompt_chars: int = 2048
    virtual_step_latency_s: float = 60.0
    timeout_s: float = 900.0
    workers: int | None = None
    yardstick_ms: float | None = None  # this machine's single-core speed (yardstick_ms), measured before the rows


FEDBUS = (sys.executable, "-m", "fedbus")


def run_fedbus(tree: Tree, row: Row, settings: Settings, attempt: int) -> Measurement:
    """One `fedbus run` of ``row``, measured."""
    folder = settings.workdir / f"{row.name}-{attempt}"
    folder.mkdir(parents=True)
    scenario = folder / "scenario.yaml"
    scenario.write_text(scenario_yaml(scenario_doc(row, seed=settings.seed, prompt_chars=settings.prompt_chars,
                                                   virtual_step_latency_s=settings.virtual_step_latency_s)),
                        encoding="utf-8")
    out = folder / "run"
    args = [*FEDBUS, "run", str(scenario), "--out", str(out), "--quiet"]
    if row.backend == "simulate":
        args.append("--simulate")
    if settings.workers is not None and row.backend != "simulate":
        args += ["--workers", str(settings.workers)]
    stderr_path = folder / "stderr.txt"
    code, note = 0, ""
    with measured(tree) as cost, stderr_path.open("wb") as err, contextlib.ExitStack() as broker:
        # mosquitto starts and stops inside the measurement, as the embedded broker does inside `fedbus run`
        if row.backend == "mosquitto":
            try:
                args += ["--broker", broker.enter_context(mosquitto(tree, folder))]
            except RuntimeError as exc:
                code, note = 1, str(exc)
        tree.tail(out / "events.jsonl")
        if code == 0:
            process = tree.popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
            code, note = finish(process, settings.timeout_s)
    seen = list(tree.seen)
    if code != 0:
        return failed(row.name, note or stderr_path.read_text(encoding="utf-8", errors="replace")
                      or f"fedbus run exited {code}")
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return failed(row.name, f"no summary.json: {exc}")
    simulated = row.backend == "simulate"
    facts = run_facts(summary, read_events(out / "events.jsonl", TIMING_EVENTS), clock_is_wall=not simulated)
    if facts["status"] != "completed" or facts["rounds_closed"] != row.rounds:
        return failed(row.name, f"run {facts['status']}: {facts['reason']} ({facts['rounds_closed']} rounds)")
    degraded = degradation(summary, facts)
    if degraded:
        return failed(row.name, f"run degraded: {degraded}")
    if simulated:
        facts["rounds_wall_s"] = tail_rounds_wall(seen)
    spent = cost[0]
    return Measurement(label=row.name, rounds=row.rounds, wall_s=spent.wall_s, cpu_s=spent.cpu_s,
                       peak_bytes=spent.peak_bytes, peak_pss_bytes=spent.peak_pss_bytes, load=spent.load,
                       connect_s=facts["connect_s"], rounds_wall_s=facts["rounds_wall_s"],
                       rounds_cpu_s=spent.rounds_cpu_s, participant_rounds=facts["participant_rounds"],
                       virtual_s=facts["virtual_s"])


def degradation(summary: dict[str, Any], facts: dict[str, Any]) -> str:
    """Why a completed run does not measure the workload ('' if it does): the workload has no faults, so every
    round aggregates an update from each participant and no client process dies; a run that lost clients would
    look cheaper than the one measured on the other side."""
    statuses = {r.get("status") for r in summary.get("rounds", [])}
    if statuses - {"aggregated"}:
        return f"round statuses {sorted(map(str, statuses))}"
    if facts["accepted"] != facts["participant_rounds"]:
        return f"{facts['accepted']} updates accepted of {facts['participant_rounds']} participant-rounds"
    died = summary.get("client_processes_died") or []
    if died:
        return f"{len(died)} client process(es) died"
    return ""


def tail_rounds_wall(seen: Sequence[tuple[float, str]]) -> float | None:
    """Wall seconds from the first round-opened line to the run-finished line, as they appeared."""
    opened = [t for t, name in seen if name == "round-opened"]
    finished = [t for t, name in seen if name == "run-finished"]
    return finished[-1] - opened[0] if opened and finished else None


def flower_available() -> str | None:
    """None when Flower's simulation can run here, else why not."""
    missing = [name for name in ("flwr", "ray") if importlib.util.find_spec(name) is None]
    return f"not importable: {', '.join(missing)}" if missing else None


def flower_env(home: Path | None = None) -> dict[str, str]:
    # Flower's processes start each other by name (the SuperLink its `flower-superexec`): the interpreter's
    # scripts folder goes first on PATH, so that `.venv/bin/python bench/scale.py` works without activating
    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
           "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def run_flower(tree: Tree, row: Row, settings: Settings, attempt: int) -> Measurement:
    """The same workload on Flower's Simulation Engine (bench/flower_workload.py), measured."""
    label = f"{row.name}/flower"
    folder = settings.workdir / f"{row.name}-flower-{attempt}"
    folder.mkdir(parents=True)
    args = [sys.executable, str(FLOWER_WORKLOAD), "--clients", str(row.clients), "--rounds", str(row.rounds),
            "--fraction", repr(row.fraction), "--max-prompt-chars", str(settings.prompt_chars),
            "--seed", str(settings.seed)]
    with measured(tree) as cost, (folder / "stdout.txt").open("wb") as out, \
            (folder / "stderr.txt").open("wb") as err:
        process = tree.popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=folder, env=flower_env())
        code, note = finish(process, settings.timeout_s)
    stdout = (folder / "stdout.txt").read_text(encoding="utf-8", errors="replace")
    if code != 0:
        errors = (folder / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        last = [line for line in errors.splitlines() if line.strip()][-1:] or [f"exited {code}"]
        return failed(label, note or last[0])
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return failed(label, f"no JSON on stdout: {stdout[-200:]!r}")
    spent = cost[0]
    return Measurement(label=label, rounds=row.rounds, wall_s=spent.wall_s, cpu_s=spent.cpu_s,
                       peak_bytes=spent.peak_bytes, peak_pss_bytes=spent.peak_pss_bytes, load=spent.load,
                       connect_s=result["startup_s"],
                       rounds_wall_s=result["rounds_wall_s"], participant_rounds=result["participants"] * row.rounds)


# ------------------------------------------------------------------------------------------------- deployment
def token_file(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path


def wait_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_fedbus_deployment(tree: Tree, settings: Settings, clients: int = 10, rounds: int = 5,
                          attempt: int = 0) -> Measurement:
    """An aggregator-only `fedbus run` (its embedded broker on loopback) and ``clients`` `fedbus client --join-file`
    processes with tokens from `fedbus invite`: all of them measured together."""
    row = Row(clients=clients, fraction=1.0, backend="embedded", rounds=rounds)
    label = f"deployment-n{clients}/fedbus"
    folder = settings.workdir / f"deployment-fedbus-{attempt}"
    folder.mkdir(parents=True)
    scenario = folder / "scenario.yaml"
    scenario.write_text(scenario_yaml(scenario_doc(row, seed=settings.seed, prompt_chars=settings.prompt_chars,
                                                   remote=clients)), encoding="utf-8")
    out = folder / "run"
    run_id = f"scale-deploy-{os.getpid()}-{attempt}"
    problems: list[str] = []
    with measured(tree) as cost, (folder / "stderr.txt").open("wb") as err:
        tree.tail(out / "events.jsonl")
        aggregator = tree.popen([*FEDBUS, "run", str(scenario), "--out", str(out), "--run-id", run_id, "--quiet"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        started: list[subprocess.Popen[bytes]] = []
        if not wait_file(out / "keys" / "aggregator.pub", aggregator):
            problems.append("the aggregator did not start")
        else:
            invite = subprocess.run([*FEDBUS, "invite", "--run-dir", str(out), "--count", str(clients)],
                                    capture_output=True, text=True, cwd=ROOT, check=False)
            tokens = invite.stdout.split()
            if invite.returncode != 0 or len(tokens) != clients:
                problems.append(f"fedbus invite: {invite.stderr.strip() or invite.returncode}")
            for i, token in enumerate(tokens):
                started.append(tree.popen([*FEDBUS, "client", "--quiet", "--join-file",
                                           str(token_file(folder / f"{i}.token", token))],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT))
        for name, process in [("fedbus run", aggregator), *(("fedbus client", p) for p in started)]:
            code, note = finish(process, settings.timeout_s)
            if code != 0:
                problems.append(note or f"{name} exited {code}")
    if problems:
        text = (folder / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        return failed(label, f"{problems[0]}: {text.strip().splitlines()[:1]}")
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return failed(label, f"no summary.json: {exc}")
    facts = run_facts(summary, read_events(out / "events.jsonl", TIMING_EVENTS), clock_is_wall=True)
    if facts["status"] != "completed" or facts["accepted"] != clients * rounds:
        return failed(label, f"run {facts['status']}: {facts['reason']}, {facts['accepted']} updates accepted")
    spent = cost[0]
    return Measurement(label=label, rounds=rounds, wall_s=spent.wall_s, cpu_s=spent.cpu_s,
                       peak_bytes=spent.peak_bytes, peak_pss_bytes=spent.peak_pss_bytes, load=spent.load,
                       connect_s=facts["connect_s"], rounds_wall_s=facts["rounds_wall_s"],
                       rounds_cpu_s=spent.rounds_cpu_s, participant_rounds=facts["participant_rounds"])


def run_flower_deployment(tree: Tree, settings: Settings, clients: int = 10, rounds: int = 5,
                          attempt: int = 0) -> Measurement:
    """A SuperLink and ``clients`` SuperNodes on loopback (insecure), bench/flower_app submitted with `flwr run`
    and followed with ``--stream`` to its end: all of them measured together."""
    label = f"deployment-n{clients}/flower"
    why = flower_available()
    if why is not None:
        return failed(label, f"not measured: Flower {why}; {INSTALL_FLOWER}")
    binaries = {name: shutil.which(name, path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
                for name in ("flower-superlink", "flower-supernode", "flwr")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        return failed(label, f"not measured: {', '.join(missing)} not found")
    folder = settings.workdir / f"deployment-flower-{attempt}"
    home = folder / "flwr-home"
    home.mkdir(parents=True)
    port = free_port()  # Flower 1.42: one HTTP Runtime API (Fleet, Control, ServerAppIo) on --host/--port
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8")
    env = flower_env(home)

    def log(name: str) -> Any:
        return (folder / f"{name}.log").open("wb")

    config = f"clients={clients} rounds={rounds} fraction=1.0 max-prompt-chars={settings.prompt_chars} " \
             f"seed={settings.seed}"
    problem = ""
    with measured(tree) as cost, contextlib.ExitStack() as files:
        # the app's only dependency is flwr, installed here: no `uv sync` (it would reach for PyPI)
        link = tree.popen([str(binaries["flower-superlink"]), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                           "--disable-runtime-dependency-installation"],
                          stdout=files.enter_context(log("superlink")), stderr=subprocess.STDOUT, cwd=folder, env=env)
        nodes: list[subprocess.Popen[bytes]] = []
        try:
            wait_port(port, link, "flower-superlink", timeout=60)
            for i in range(clients):
                nodes.append(tree.popen(
                    [str(binaries["flower-supernode"]), "--insecure", "--superlink", f"127.0.0.1:{port}",
                     "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions={clients}"],
                    stdout=files.enter_context(log(f"supernode-{i}")), stderr=subprocess.STDOUT, cwd=folder, env=env))
            submit = tree.popen([str(binaries["flwr"]), "run", str(FLOWER_APP), "bench", "--stream",
                                 "--run-config", config],
                                stdout=files.enter_context(log("flwr-run")), stderr=subprocess.STDOUT, cwd=folder,
                                env=env)
            code, note = finish(submit, settings.timeout_s)
            if code != 0:
                problem = note or f"flwr run exited {code}"
        except RuntimeError as exc:
            problem = str(exc)
        finally:
            for process in (*nodes, link):
                process.terminate()
            for process in (*nodes, link):
                finish(process, 20)
    submitted = folder / "flwr-run.log"
    text = submitted.read_text(encoding="utf-8", errors="replace") if submitted.exists() else ""
    if problem and not text.strip():  # the SuperLink never came up: its log says why
        text = (folder / "superlink.log").read_text(encoding="utf-8", errors="replace")
    spans = [float(x) for x in re.findall(r"fedbus-bench round \d+ took ([0-9.]+) s", text)]
    if not problem and len(spans) != rounds:
        problem = f"{len(spans)} of {rounds} rounds reported in flwr-run.log"
    if problem:
        tail = [line for line in text.splitlines() if line.strip()][-1:]
        return failed(label, f"not measured: {problem} ({tail[0] if tail else 'no output'}; logs in {folder})")
    spent = cost[0]
    return Measurement(label=label, rounds=rounds, wall_s=spent.wall_s, cpu_s=spent.cpu_s,
                       peak_bytes=spent.peak_bytes, peak_pss_bytes=spent.peak_pss_bytes, load=spent.load,
                       rounds_wall_s=sum(spans), participant_rounds=clients * rounds)


# ----------------------------------------------------------------------------------------------------- targets
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One of the issue's targets beside what was measured; ``met`` None: not measured in this run."""

    what: str
    goal: str
    measured: str
    met: bool | None
    rows: tuple[str, ...] = ()  # the rows it is judged on

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else "met" if self.met else "NOT met"


TARGET_ROW = "n1000-f1-embedded"
VIRTUAL_1M = "n1000000-virtual-simulate"
DEPLOYMENT_ROWS = ("deployment-n10/fedbus", "deployment-n10/flower")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ratios:
    """fedbus / the other side, each the median over pairs of runs (None: no pair measured it)."""

    wall: float | None = None
    cpu: float | None = None
    rss: float | None = None
    pss: float | None = None


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def check_targets(results: dict[str, Measurement], ratios: dict[str, tuple[float, float]],
                  deployment: Ratios | None = None) -> list[Target]:
    """The issue's targets, each against the row that measures it (missing or failed rows: not measured)."""
    return [replace_unmeasured(t, results) for t in _check_targets(results, ratios, deployment or Ratios())]


def replace_unmeasured(target: Target, results: dict[str, Measurement]) -> Target:
    """A target whose row ran and failed is not met (a failure is no excuse); one whose row did not run here stays
    'not measured'."""
    if target.met is not None:
        return target
    failures = [f"{name}: {m.error}" for name in target.rows if (m := results.get(name)) is not None and not m.ok]
    if not failures:
        return target
    return dataclasses.replace(target, measured=f"failed ({failures[0]})", met=False)


def _check_targets(results: dict[str, Measurement], ratios: dict[str, tuple[float, float]],
                   deployment: Ratios) -> list[Target]:
    out: list[Target] = []
    big_row, million_row = (TARGET_ROW,), (VIRTUAL_1M,)
    virtual_rows = tuple(f"n{n}-virtual-simulate" for n in VIRTUAL_SIZES)
    big = results.get(TARGET_ROW)
    big = big if big is not None and big.ok else None
    pair = ratios.get(TARGET_ROW)
    what = "1,000 clients x 3 rounds, fraction 1.0, embedded"
    out.append(Target(what=what, goal="wall <= 0.25 x Flower", measured=_fmt(pair and pair[0], 3, "x"),
                      met=None if pair is None else pair[0] <= 0.25, rows=big_row))
    out.append(Target(what=what, goal="CPU <= 0.5 x Flower", measured=_fmt(pair and pair[1], 3, "x"),
                      met=None if pair is None else pair[1] <= 0.5, rows=big_row))
    # judged as the issue measured it (a round's wall time over its clients); the CPU the processes spent over
    # the same span, with both cores busy up to twice that, is shown beside it
    per = big.ms_per_client_round if big else None
    cpu = big.cpu_ms_per_client_round if big else None
    out.append(Target(what=what, goal="<= 1 ms (wall) per client per round after connect",
                      measured=_fmt(per, 2, " ms") + (f" (CPU {cpu:.2f} ms, every process)" if cpu is not None else ""),
                      met=None if per is None else per <= 1.0, rows=big_row))
    connect = big.connect_s if big else None
    out.append(Target(what=what, goal="1,000 connections up in <= 3 s", measured=_fmt(connect, 2, " s"),
                      met=None if connect is None else connect <= 3.0, rows=big_row))
    million = results.get(VIRTUAL_1M)
    million = million if million is not None and million.ok else None
    what = "--simulate, 1,000,000 clients, 100/round, 10 rounds"
    out.append(Target(what=what, goal="wall <= 60 s", measured=_fmt(million.wall_s if million else None, 1, " s"),
                      met=None if million is None else million.wall_s <= 60.0, rows=million_row))
    out.append(Target(what=what, goal="peak memory <= 2 GiB",
                      measured=_fmt(million.peak_bytes / GIB if million else None, 2, " GiB"),
                      met=None if million is None else million.peak_bytes <= 2 * GIB, rows=million_row))
    speed = million.speedup if million else None
    out.append(Target(what=what, goal=">= 1000 x faster than simulated time", measured=_fmt(speed, 0, "x"),
                      met=None if speed is None else speed >= 1000.0, rows=million_row))
    virtual = [results.get(f"n{n}-virtual-simulate") for n in VIRTUAL_SIZES]
    per_round = [m.round_wall_s for m in virtual if m is not None and m.ok and m.round_wall_s]
    spread = max(per_round) / min(per_round) if len(per_round) == len(VIRTUAL_SIZES) else None
    out.append(Target(what="--simulate, virtual 10k / 100k / 1M", goal="per-round wall within 1.5x of each other",
                      measured=_fmt(spread, 2, "x") + (" (" + " / ".join(f"{v:.3f}" for v in per_round) + " s)"
                                                       if spread is not None else ""),
                      met=None if spread is None else spread <= 1.5, rows=virtual_rows))
    what = "10 client processes x 5 rounds (deployment)"
    out.append(Target(what=what, goal="wall <= 0.05 x Flower Deployment Engine", measured=_fmt(deployment.wall, 3, "x"),
                      met=None if deployment.wall is None else deployment.wall <= 0.05, rows=DEPLOYMENT_ROWS))
    rss = f" (RSS summed: {_fmt(deployment.rss, 3, 'x')})" if deployment.rss is not None else ""
    out.append(Target(what=what, goal="memory <= 0.15 x Flower Deployment Engine (peak PSS summed)",
                      measured=_fmt(deployment.pss, 3, "x") + rss,
                      met=None if deployment.pss is None else deployment.pss <= 0.15, rows=DEPLOYMENT_ROWS))
    return out


# ------------------------------------------------------------------------------------------------------ tables
COLUMNS = ("row", "wall s", "CPU s", "peak RSS MiB", "peak PSS MiB", "connect s", "rounds s", "ms/client/round",
           "CPU ms/client/round", "virtual s", "virtual/wall", "load")


def cells(m: Measurement) -> list[str]:
    if not m.ok:
        return [m.label, f"failed: {m.error}"]
    label = m.label + (f" ({m.failed_runs} of the runs failed)" if m.failed_runs else "")
    return [label, _fmt(m.wall_s), _fmt(m.cpu_s), _fmt(m.peak_bytes / MIB, 0),
            _fmt(m.peak_pss_bytes / MIB if m.peak_pss_bytes else None, 0), _fmt(m.connect_s), _fmt(m.rounds_wall_s),
            _fmt(m.ms_per_client_round, 3), _fmt(m.cpu_ms_per_client_round, 3), _fmt(m.virtual_s),
            _fmt(m.speedup, 1, "x"), _fmt(m.load, 1)]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell, the first ``left`` flush left and the others (numbers) right; a row
    with fewer cells (a failure) runs on after its first."""
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *full, strict=True)]
    lines = []
    for r in [list(header), *rows]:
        if len(r) == len(header):
            lines.append("  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        else:
            lines.append("  ".join([str(r[0]).ljust(widths[0]), *map(str, r[1:])]))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        padded = list(r) + [""] * (len(header) - len(r))
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in padded) + " |")
    return "\n".join(lines)


RATIO_COLUMNS = ("row", "fedbus wall s", "Flower wall s", "wall ratio", "fedbus CPU s", "Flower CPU s", "CPU ratio")


def ratio_cells(name: str, ours: Measurement, theirs: Measurement, pair: tuple[float, float] | None) -> list[str]:
    if not theirs.ok:
        return [name, f"Flower failed: {theirs.error}"]
    if not ours.ok or pair is None:
        return [name, f"fedbus failed: {ours.error}"]
    return [name, _fmt(ours.wall_s), _fmt(theirs.wall_s), _fmt(pair[0], 3, "x"), _fmt(ours.cpu_s),
            _fmt(theirs.cpu_s), _fmt(pair[1], 3, "x")]


def paired_ratios(ours: Sequence[Measurement], theirs: Sequence[Measurement]) -> tuple[float, float] | None:
    """Median over pairs (each fedbus run against the Flower run just after it) of fedbus/Flower wall and CPU."""
    wall, cpu = paired(ours, theirs, "wall_s"), paired(ours, theirs, "cpu_s")
    return None if wall is None or cpu is None else (wall, cpu)


def paired(ours: Sequence[Measurement], theirs: Sequence[Measurement], field: str) -> float | None:
    """Median over pairs of runs (both succeeded, both measured ``field``) of fedbus/Flower ``field``."""
    values = [(getattr(a, field), getattr(b, field)) for a, b in zip(ours, theirs, strict=False) if a.ok and b.ok]
    ratios = [x / y for x, y in values if x and y and y > 0]
    return statistics.median(ratios) if ratios else None


def paired_all(ours: Sequence[Measurement], theirs: Sequence[Measurement]) -> Ratios:
    return Ratios(wall=paired(ours, theirs, "wall_s"), cpu=paired(ours, theirs, "cpu_s"),
                  rss=paired(ours, theirs, "peak_bytes"), pss=paired(ours, theirs, "peak_pss_bytes"))


TARGET_COLUMNS = ("what", "target", "measured", "verdict")


def target_cells(t: Target) -> list[str]:
    return [t.what, t.goal, t.measured, t.verdict]


def yardstick_ms(repeats: int = 5) -> float:
    """The best of ``repeats`` timings, in ms, of a fixed pure-Python loop (dictionary, string and integer work) on
    one core. The absolute figures (ms per client per round, seconds to connect, virtual/wall) scale with a machine's
    single-core speed, and machines of one kind differ: on two of them on 2026-12-03 the same 1,000-client round cost
    0.83 and 2.4 ms per client. The paired Flower ratios hold better across them."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        counts: dict[int, int] = {}
        for i in range(200_000):
            counts[i & 1023] = counts.get(i & 1023, 0) + i * 3
        "".join(str(i) for i in range(50_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def machine() -> dict[str, str]:
    model = ""
    details: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name in ("model name", "cpu family", "model", "cpu mhz") and name not in details:
                details[name] = value.strip()
            if name == "processor" and details:
                break  # the first processor's lines are enough
        model = details.get("model name", "")
        if "cpu family" in details:  # e.g. AMD EPYC: the name alone does not tell a generation
            model += f", family {details['cpu family']} model {details.get('model', '?')}"
        if "cpu mhz" in details:
            model += f", {float(details['cpu mhz']):.0f} MHz"
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f"{kib / 1024**2:.0f} GiB"
    return {"cpus": str(os.cpu_count()), "cpu_model": model or platform.processor() or "unknown", "memory": memory,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.date.today().isoformat()}


# -------------------------------------------------------------------------------------------------------- main
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    rows: list[Measurement]
    flower: dict[str, tuple[Measurement, tuple[float, float] | None]]
    deployment: list[tuple[Measurement, Measurement | None]]
    targets: list[Target]
    deployment_ratios: Ratios | None = None


def print_report(report: Report, settings: Settings, markdown: bool) -> None:
    table = text_table if not markdown else markdown_table
    host = machine()
    speed = "" if settings.yardstick_ms is None else f", single-core yardstick {settings.yardstick_ms:.1f} ms"
    lead = "\n" if markdown else ""
    print(f"{lead}Measured on {host['date']}: {host['cpus']} CPUs ({host['cpu_model']}{speed}), "
          f"{host['memory']}, Python {host['python']}, {host['platform']}; surrogate, concat, 1 local step, batch 1, "
          f"{settings.prompt_chars}-char prompt, signed+sealed.\n")
    lines = []
    for m in report.rows:
        lines.append(cells(m))
        if m.label in report.flower:  # Flower's run of the same row just below it
            lines.append(cells(report.flower[m.label][0]))
    if lines:
        print(table(COLUMNS, lines), flush=True)
    by_label = {m.label: m for m in report.rows}
    if report.flower:
        print()
        print(table(RATIO_COLUMNS, [ratio_cells(name, by_label[name], theirs, pair)
                                    for name, (theirs, pair) in report.flower.items()]))
    if report.deployment:
        print()
        lines = []
        for ours, theirs in report.deployment:
            lines.append(cells(ours))
            if theirs is not None:
                lines.append(cells(theirs))
        r = report.deployment_ratios
        if r is not None and r.wall is not None:
            lines.append(["deployment fedbus/Flower, median of pairs", f"wall {_fmt(r.wall, 3, 'x')}",
                          f"CPU {_fmt(r.cpu, 3, 'x')}", f"RSS {_fmt(r.rss, 3, 'x')}", f"PSS {_fmt(r.pss, 3, 'x')}"])
        print(table(COLUMNS, lines))
    print()
    print(table(TARGET_COLUMNS, [target_cells(t) for t in report.targets], len(TARGET_COLUMNS)), flush=True)


def measure(rows: Sequence[Row], settings: Settings, repeats: int, vs_flower: bool, deployment: bool) -> Report:
    tree = Tree()
    results: list[Measurement] = []
    flower: dict[str, tuple[Measurement, tuple[float, float] | None]] = {}
    ratios: dict[str, tuple[float, float]] = {}
    if vs_flower and any(row.backend == "embedded" for row in rows):
        warm_up(tree, settings)
    for row in rows:
        print(f"{row.name}: {row.clients} clients, fraction {row.fraction:g} ({row.per_round}/round), {row.rounds} "
              f"rounds ...", flush=True)
        ours: list[Measurement] = []
        theirs: list[Measurement] = []
        for attempt in range(repeats):
            ours.append(run_fedbus(tree, row, settings, attempt))
            print(f"  fedbus: {_brief(ours[-1])}", flush=True)
            if vs_flower and row.backend == "embedded":
                theirs.append(run_flower(tree, row, settings, attempt))
                print(f"  Flower: {_brief(theirs[-1])}", flush=True)
        results.append(combine(ours))
        if theirs:
            pair = paired_ratios(ours, theirs)
            flower[row.name] = (combine(theirs), pair)
            if pair is not None:
                ratios[row.name] = pair
    deployed: list[tuple[Measurement, Measurement | None]] = []
    deployment_ratios = None
    if deployment:
        print("deployment: aggregator-only run, 10 `fedbus client` processes on loopback, 5 rounds ...", flush=True)
        ours, theirs = [], []
        for attempt in range(repeats):  # alternated, as the rows are: a slow spell hits both sides
            ours.append(run_fedbus_deployment(tree, settings, attempt=attempt))
            print(f"  fedbus: {_brief(ours[-1])}", flush=True)
            theirs.append(run_flower_deployment(tree, settings, attempt=attempt))
            print(f"  Flower: {_brief(theirs[-1])}", flush=True)
        mine, other = combine(ours), combine(theirs)
        deployed.append((mine, other))
        deployment_ratios = paired_all(ours, theirs)
        results.append(mine)
        if flower_available() is None:  # else Flower's side is 'not measured', not a failure to count
            results.append(other)
    by_label = {m.label: m for m in results}
    return Report(rows=[m for m in results if m.label not in DEPLOYMENT_ROWS], flower=flower, deployment=deployed,
                  targets=check_targets(by_label, ratios, deployment_ratios), deployment_ratios=deployment_ratios)


def warm_up(tree: Tree, settings: Settings) -> None:
    """One small run of each side, not measured, before the paired rows: the first run of a session otherwise
    pays for cold caches (files, bytecode, Ray's first start) on whichever side runs first."""
    row = Row(clients=10, fraction=1.0, backend="embedded", rounds=1)
    print("warm-up (not measured): 10 clients, 1 round, fedbus and Flower ...", flush=True)
    for side, run in (("fedbus", run_fedbus), ("Flower", run_flower)):
        m = run(tree, row, dataclasses.replace(settings, workdir=settings.workdir / "warm-up"), 0)
        if not m.ok:
            print(f"  {side} warm-up failed: {m.error}", flush=True)


def _brief(m: Measurement) -> str:
    if not m.ok:
        return f"failed: {m.error}"
    return (f"wall {m.wall_s:.2f} s, CPU {m.cpu_s:.2f} s, peak RSS {m.peak_bytes / MIB:.0f} MiB, "
            f"PSS {m.peak_pss_bytes / MIB:.0f} MiB (load {m.load or 0:.1f} before)")


def to_json(report: Report, settings: Settings, repeats: int) -> dict[str, Any]:
    return {"machine": {**machine(), "yardstick_ms": settings.yardstick_ms}, "repeats": repeats,
            "settings": {"seed": settings.seed, "prompt_chars": settings.prompt_chars,
                         "virtual_step_latency_s": settings.virtual_step_latency_s, "workers": settings.workers},
            "rows": [m.as_dict() for m in report.rows],
            "flower": {name: {"flower": m.as_dict(), "wall_ratio": pair and pair[0], "cpu_ratio": pair and pair[1]}
                       for name, (m, pair) in report.flower.items()},
            "deployment": [{"fedbus": a.as_dict(), "flower": b.as_dict() if b else None} for a, b in report.deployment],
            "deployment_ratios": dataclasses.asdict(report.deployment_ratios) if report.deployment_ratios else None,
            "targets": [{**dataclasses.asdict(t), "verdict": t.verdict} for t in report.targets]}


def warm_bytecode() -> None:
    """Compile fedbus's modules to bytecode once, before anything is measured: an installed package has its
    bytecode (pip compiles it, as it did Flower's), but a checkout run with PYTHONDONTWRITEBYTECODE set (this
    machine kind sets it) would compile every module in every process of every run, and be measured for it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "fedbus")], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="rows to run: a client count (10), or a glob over row names (n1000-f1-embedded, "
                             "'*simulate', virtual); commas: all must match; repeat --only for either")
    parser.add_argument("--list", action="store_true", help="print the row names and exit")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the median is reported (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--markdown", action="store_true", help="print README-ready tables with the machine")
    parser.add_argument("--vs-flower", action="store_true",
                        help="pair each embedded row with Flower's Simulation Engine on the same workload")
    parser.add_argument("--deployment", action="store_true",
                        help="also: an aggregator-only run with 10 `fedbus client` processes (and Flower's "
                             "Deployment Engine, when installed)")
    parser.add_argument("--prompt-chars", type=int, default=2048, help="initial prompt and max_prompt_chars")
    parser.add_argument("--virtual-step-latency-s", type=float, default=60.0,
                        help="simulated seconds of a virtual client's local step (default 60)")
    parser.add_argument("--workers", type=int, help="fedbus run --workers (default: fedbus's own choice)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per run (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders (printed)")
    args = parser.parse_args(argv)
    rows = select_rows(default_rows(), args.only)
    if args.list:
        print("\n".join(row.name for row in rows))
        return 0
    if args.vs_flower and (why := flower_available()) is not None:
        print(f"--vs-flower needs Flower's simulation engine, which is {why} here. Install it with\n"
              f"    {INSTALL_FLOWER}", file=sys.stderr)
        return 2
    if not rows and not args.deployment:
        print(f"--only {' '.join(args.only)}: no row matches (see --list)", file=sys.stderr)
        return 2
    if not become_subreaper():
        print("warning: could not become a child subreaper; CPU of orphaned processes is not counted",
              file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(65536, hard)) if hard != resource.RLIM_INFINITY
                                                    else 65536, hard))
    warm_bytecode()
    speed = yardstick_ms()
    print(f"single-core yardstick: {speed:.1f} ms (a fixed pure-Python loop, best of 5; lower is faster: the absolute "
          "figures scale with it, the paired ratios far less)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="fedbus-scale-"))
    settings = Settings(workdir=workdir, seed=args.seed, prompt_chars=args.prompt_chars,
                        virtual_step_latency_s=args.virtual_step_latency_s, timeout_s=args.timeout_s,
                        workers=args.workers, yardstick_ms=speed)
    try:
        report = measure(rows, settings, max(1, args.repeats), args.vs_flower, args.deployment)
    finally:
        if args.keep:
            print(f"runs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_report(report, settings, args.markdown)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report, settings, max(1, args.repeats)), indent=2) + "\n",
                             encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
