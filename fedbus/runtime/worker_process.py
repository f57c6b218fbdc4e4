"""A worker process of ``fedbus run --workers N``: ``python -m fedbus.runtime.worker_process SPEC.json``.

``python -m fedbus.runtime.worker_process --standby PARENT_PID`` starts one ahead of time (:func:`standby`):
it imports what a worker needs while the run is still starting its broker, then reads its spec's path from
standard input (and exits at end of input, unused).

It must die with its parent even when the parent is SIGKILLed. Linux does that once the process
asked for it (``PR_SET_PDEATHSIG``), so :func:`main` asks before anything else: before it reads its
spec, and before the imports that take a second or more on a cold bytecode cache or a loaded
machine (aiomqtt, structlog, the client); only the standard library is imported above it. A parent
that died before the request was made is caught next: the worker exits when its parent is no
longer the process that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
STANDBY = "--standby"
CLIENTS_PER_WORKER = 100


def auto_workers(clients: int, cpus: int | None = None) -> int:
    """How many worker processes ``fedbus run`` uses by default: none up to 100 clients."""
    if clients <= CLIENTS_PER_WORKER:
        return 0
    return max(1, min(cpus or os.cpu_count() or 1, -(-clients // CLIENTS_PER_WORKER)))


def release(standby: list[subprocess.Popen[bytes]]) -> None:
    """Let standby workers a run did not need go: end of input, and they exit."""
    for process in standby:
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
    for process in standby:
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    standby.clear()


def standby(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes started now, each importing what it needs and then waiting for its spec's path
    on standard input (:meth:`fedbus.runtime.pool.WorkerPool.start` hands them over). Importing takes a worker
    half a second or more; started before the run's own imports and its broker, that overlaps with them. Call
    it from the main thread (see ``WorkerPool.start``)."""
    command = [sys.executable, "-m", "fedbus.runtime.worker_process", STANDBY, str(os.getpid())]
    return [subprocess.Popen(command, stdin=subprocess.PIPE) for _ in range(count)]


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere the parent's ExitStack still kills it)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: the parent's ExitStack still kills us
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def exit_if_orphaned(parent_pid: int) -> None:
    """Exit at once if the parent died before :func:`die_with_parent` asked (we were re-parented)."""
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # first of all: a run SIGKILLed from here on takes this process along
    args = sys.argv[1:] if argv is None else argv
    waits = len(args) == 2 and args[0] == STANDBY and args[1].isdigit()
    if len(args) != 1 and not waits:
        print("usage: python -m fedbus.runtime.worker_process SPEC.json  (started by `fedbus run --workers N`)",
              file=sys.stderr)
        return 2
    if waits:
        exit_if_orphaned(int(args[1]))
    else:
        exit_if_orphaned(int(json.loads(Path(args[0]).read_text(encoding="utf-8"))["parent_pid"]))

    import asyncio

    from fedbus.logs import configure
    from fedbus.runtime.pool import WorkerSpec, run_slice

    if waits:
        line = sys.stdin.readline().strip()  # the spec's path, once the run has its broker and its clients
        if not line:
            return 0  # not needed after all
        path = Path(line)
    else:
        path = Path(args[0])
    spec = WorkerSpec.load(path)
    path.unlink()  # it may hold the broker password
    configure(spec.log_level, json_lines=True)
    asyncio.run(run_slice(spec, environ=dict(os.environ)))  # an LLM engine's key, by the name the scenario gives
    return 0


if __name__ == "__main__":
    sys.exit(main())
