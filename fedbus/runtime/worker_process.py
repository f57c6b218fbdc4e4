"""A worker process of ``fedbus run --workers N``: ``python -m fedbus.runtime.worker_process SPEC.json``.

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
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


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
    if len(args) != 1:
        print("usage: python -m fedbus.runtime.worker_process SPEC.json  (started by `fedbus run --workers N`)",
              file=sys.stderr)
        return 2
    path = Path(args[0])
    exit_if_orphaned(int(json.loads(path.read_text(encoding="utf-8"))["parent_pid"]))

    import asyncio

    from fedbus.logs import configure
    from fedbus.runtime.pool import WorkerSpec, run_slice

    spec = WorkerSpec.load(path)
    path.unlink()  # it may hold the broker password
    configure(spec.log_level, json_lines=True)
    asyncio.run(run_slice(spec, environ=dict(os.environ)))  # an LLM engine's key, by the name the scenario gives
    return 0


if __name__ == "__main__":
    sys.exit(main())
