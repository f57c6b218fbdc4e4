"""The aggregator's check pool (fedbus/runtime/check_pool.py) with real worker processes: items come out in the
order they went in, each with the result an inline check gives; the pool starts only when deliveries pile up;
a pool that dies under a batch leaves that batch to be checked inline and loses nothing; a caller that gives up
waiting loses nothing either."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedbus.runtime.check_pool import CheckPool, Prechecker
from fedbus.security.checks import Checked, Job, check
from tests.unit.test_checks import wires
from tests.unit.test_session_security import aggregator_session, keys


def items(n: int) -> list[tuple[str, bytes] | str]:
    """``n`` deliveries cycling through every sort, with a timer-like item (a str: nothing to check) every 7th."""
    pool = wires()
    return [f"timer-{i}" if i % 7 == 6 else pool[i % len(pool)] for i in range(n)]


def job_of() -> Callable[[Any], Job | None]:
    session = aggregator_session()
    return lambda item: None if isinstance(item, str) else session.job(*item)


def inline(item: Any) -> Checked | None:
    job = job_of()(item)
    return None if job is None else check(job, keys().aggregator.key, sealing_required=True)  # type: ignore[arg-type]


def new_pool() -> CheckPool:
    key = keys().aggregator.key
    assert key is not None
    return CheckPool(key, sealing_required=True, workers=1)


async def drain(checks: Prechecker[Any], n: int) -> list[tuple[Any, Checked | None]]:
    return [await asyncio.wait_for(checks.get(), 60) for _ in range(n)]


async def test_items_come_out_in_order_with_the_checks_an_inline_check_gives() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pool = new_pool()
    try:
        assert await pool.warm_up()
        checks = Prechecker(queue, pool, job_of())
        sent = items(300)
        for item in sent[:150]:
            queue.put_nowait(item)
        got = await drain(checks, 100)
        for item in sent[150:]:  # more arrive while batches are in flight
            queue.put_nowait(item)
        got += await drain(checks, 200)
        assert [item for item, _ in got] == sent and checks.empty()
        assert pool.batches >= 2 and pool.checked == sum(inline(i) is not None for i in sent)
        for item, found in got:
            assert found == inline(item) or (found is not None and found.opened is not None
                                              and found.opened == inline(item).opened)  # type: ignore[union-attr]
    finally:
        pool.close()


async def test_the_pool_starts_only_when_deliveries_pile_up() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pool = new_pool()
    try:
        checks = Prechecker(queue, pool, job_of(), min_batch=16)
        for item in items(10):  # a trickle, taken one by one: checked inline, no process started
            queue.put_nowait(item)
            assert (await checks.get())[1] is None
        assert not pool.ready and pool.batches == 0
        sent: list[Any] = []
        got: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while pool.batches == 0:  # piles of 40 until the pool, started by the first, takes one
            assert loop.time() < deadline, "the pool never took a batch"
            pile = items(40)
            sent += pile
            for item in pile:
                queue.put_nowait(item)
            got += await drain(checks, len(pile))
            await asyncio.sleep(0.01)
        assert [item for item, _ in got] == sent
        assert pool.ready and any(found is not None for _, found in got)
    finally:
        pool.close()


async def test_a_pool_killed_under_a_batch_leaves_it_to_be_checked_inline() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pool = new_pool()
    try:
        assert await pool.warm_up()
        checks = Prechecker(queue, pool, job_of(), max_batch=20)
        sent = items(200)
        for item in sent:
            queue.put_nowait(item)
        first = await checks.get()
        assert first[1] is not None or first[0] == sent[0]
        for pid in list(pool._executor._processes):  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
        got = [first, *await drain(checks, 199)]
        assert [item for item, _ in got] == sent  # nothing lost, nothing twice, in order
        assert pool.broken and not pool.ready
        assert any(found is None and inline(item) is not None for item, found in got)  # the rest: inline
    finally:
        pool.close()


async def test_giving_up_on_a_get_loses_nothing() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pool = new_pool()
    try:
        assert await pool.warm_up()
        checks = Prechecker(queue, pool, job_of())
        sent = items(120)
        for item in sent:
            queue.put_nowait(item)
        got: list[Any] = []
        timeouts = 0
        while len(got) < len(sent):
            try:
                got.append(await asyncio.wait_for(checks.get(), 0.0005))
            except TimeoutError:
                timeouts += 1
                assert timeouts < 100_000
        assert [item for item, _ in got] == sent and checks.empty()
    finally:
        pool.close()


OWNER = """
import asyncio, sys
from fedbus.runtime.check_pool import CheckPool
from fedbus.security.crypto import generate

async def main():
    pool = CheckPool(generate(), sealing_required=True, workers=1)
    assert await pool.warm_up()
    print("workers:", *pool._executor._processes, flush=True)
    await asyncio.sleep(600)

if __name__ == "__main__":
    asyncio.run(main())
"""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # dead, not yet reaped
    except FileNotFoundError:
        return True


def test_the_workers_die_with_the_process_that_owns_them(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER, encoding="utf-8")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = ""
        while not line.startswith("workers:"):  # unconfigured structlog writes its lines to stdout too
            line = owner.stdout.readline()
            assert line, "the owner exited before starting its pool"
        workers = [int(pid) for pid in line.split()[1:]]
        assert workers and not any(gone(pid) for pid in workers)
    finally:
        owner.kill()
        owner.wait(timeout=60)
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "a check worker outlived the SIGKILLed process that owned it"
        time.sleep(0.05)
