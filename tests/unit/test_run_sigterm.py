"""SIGTERM around a `fedbus run`: as Ctrl-C while there is something to interrupt (exit 130, say how to resume), and
nothing once the run completed (it exited 143 over a completed summary.json when a SIGTERM came as it closed down).

Each case runs `_run_to_end` in a child process with the run replaced by a stand-in, so that the signal lands
exactly where the case wants it (a SIGTERM the child did not handle kills it, not the test runner)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHILD = """
import asyncio, json, signal, sys
from pathlib import Path
import fedbus.runtime.run as run
from fedbus import cli

out, status, when = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

async def stand_in(scenario, options):
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint.json").write_text(json.dumps({"status": status}))
    if when == "in-teardown":  # after run_scenario's own handler is gone: as asyncio.run cancels what is left
        async def left_over():
            try:
                await asyncio.sleep(30)
            finally:
                signal.raise_signal(signal.SIGTERM)
        asyncio.get_running_loop().create_task(left_over())
        await asyncio.sleep(0)
    elif when == "while-closing":  # the run's loop turns SIGTERM into a cancellation of the run
        raise asyncio.CancelledError
    return {"status": status}

run._run_scenario = stand_in

class Options:
    out_dir = out

sys.exit(cli._run_to_end(None, Options()))
"""


@pytest.mark.parametrize(("status", "when", "code"), [
    ("completed", "in-teardown", 0),
    ("completed", "while-closing", 0),
    ("aborted", "in-teardown", 3),  # ended: --resume would refuse it, so no "continue with" line
    ("aborted", "while-closing", 3),
    ("running", "in-teardown", 130),
    ("running", "while-closing", 130),
])
def test_sigterm_interrupts_a_run_in_progress_and_leaves_a_completed_one_completed(tmp_path: Path, status: str,
                                                                                   when: str, code: int) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "run"), status, when], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert child.returncode == code, child.stderr[-2000:]
    assert ("--resume" in child.stderr) == (code == 130), child.stderr[-2000:]
    if code != 130:  # nothing interrupted, nothing to say
        assert child.stderr.strip() == "", child.stderr[-2000:]


APP = """
import asyncio, os, signal, sys
import fedbus.runtime.run as run

async def stand_in(scenario, options):
    return {"status": "completed"}

run._run_scenario = stand_in

handled = []

def on_term():
    print("app's handler", flush=True)
    handled.append(True)

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, on_term)  # the app's own
    await run.run_scenario(None, None)
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(2000):  # until the handler ran (bounded: 20 s); a process the signal killed prints nothing more
        if handled:
            break
        await asyncio.sleep(0.01)
    print("still alive", flush=True)

asyncio.run(main())
"""


def test_a_run_in_an_app_with_its_own_sigterm_handler_gives_the_app_its_handler_back() -> None:
    """The public async API in an app whose loop handles SIGTERM: the run's handler replaces the app's on the loop
    while it runs (asyncio keeps one per signal), and its removal dropped both. Putting back what the signal module
    showed (the loop's placeholder, which ignores the signal) left the app unkillable by SIGTERM; leaving the default
    killed an app that meant to handle it. After the run, the app's own handler answers SIGTERM again."""
    child = subprocess.run([sys.executable, "-c", APP], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, check=False)
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-2000:])
    assert child.stdout.splitlines() == ["app's handler", "still alive"], child.stdout


OVERLAPPING = """
import asyncio, os, signal, sys
import fedbus.runtime.run as run

async def stand_in(scenario, seconds):
    await asyncio.sleep(seconds)
    return {"status": "completed"}

run._run_scenario = stand_in
got = []

async def main():
    loop = asyncio.get_running_loop()
    if sys.argv[1] == "app":
        loop.add_signal_handler(signal.SIGTERM, lambda: got.append("app"))
    first = asyncio.create_task(run.run_scenario(None, 0.1))  # starts first, ends first
    await asyncio.sleep(0.01)
    await asyncio.gather(first, asyncio.create_task(run.run_scenario(None, 0.3)))
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(2000):  # bounded: 20 s
        if got:
            break
        await asyncio.sleep(0.01)
    print("handled" if got else "ignored", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize(("app", "code", "says"), [("app", 0, "handled\n"), ("none", -15, "")])
def test_overlapping_runs_leave_sigterm_to_what_handled_it_before_the_first(app: str, code: int, says: str) -> None:
    """Two runs on one loop, the first ending first: the second put back the first's handler (the cancel of a
    finished task) as 'what was', and SIGTERM was then ignored for good, the app's own handler lost."""
    child = subprocess.run([sys.executable, "-c", OVERLAPPING, app], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert (child.returncode, child.stdout) == (code, says), (child.returncode, child.stdout, child.stderr[-2000:])
