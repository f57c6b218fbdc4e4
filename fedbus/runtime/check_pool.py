"""Signature checks and unsealing off the aggregator's event loop, in batches, when deliveries pile up.

Verifying a client's Ed25519 signature and opening its sealed update cost the aggregator ~200 µs per update
(``cryptography`` holds the GIL meanwhile, so a thread does not help). A handful of clients never notice; a
thousand answering at once queue behind it. So the aggregator's driver reads its queue of deliveries through a
:class:`Prechecker`: while the queue is short, each delivery goes to the session as it is, checked inline;
once ``min_batch`` wait, they go in batches to a :class:`CheckPool` of worker processes (started on first use),
which return one :class:`~fedbus.security.checks.Checked` per delivery, and the session takes those results
instead of checking (the outcome is the same: tests/unit/test_checks.py). Order is kept: items leave the
Prechecker in the order they entered the queue, whatever checks they needed.

A pool that breaks (a worker killed) is closed and its batch checked inline: nothing is lost, a warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Generic, TypeVar

from fedbus.logs import structlog
from fedbus.runtime.worker_process import die_with_parent, exit_if_orphaned
from fedbus.security.checks import Checked, Job, Refused, check
from fedbus.security.crypto import PrivateKey
from fedbus.security.keys import PublicKey

log = structlog.get_logger("fedbus.check_pool")

T = TypeVar("T")

MIN_BATCH = 16  # deliveries waiting before they go to the pool: below it, inline is cheaper than the hop
MAX_BATCH = 256
DEPTH = 2  # batches in flight: the workers check the next while the session takes the last

# ---------------------------------------------------------------------------------------------- the workers
class _Worker:
    """A worker process's state: the aggregator's key, set once by the pool's initializer."""

    opener: PrivateKey | None = None
    sealing_required = True


def _start_worker(parent_pid: int, sign_seed: bytes, seal_secret: bytes, sealing_required: bool) -> None:
    die_with_parent()  # a run SIGKILLed takes its check workers along (they would wait on their pipe forever)
    exit_if_orphaned(parent_pid)
    _Worker.opener = PrivateKey(sign_seed, seal_secret)
    _Worker.sealing_required = sealing_required


def _check_batch(jobs: Sequence[tuple[bytes, str, bytes, bytes, bool]]) -> list[_Result]:
    """Each job as ``(wire, signer, sign key, seal key, update)``: plain tuples cross the pipe at a third of the
    cost of dataclasses. Each result as ``check``'s, flattened by :func:`_flat`."""
    opener = _Worker.opener
    assert opener is not None, "worker started without the aggregator's key"
    return [_flat(check(Job(wire, signer, PublicKey(sign=sign, seal=seal), update), opener,
                        sealing_required=_Worker.sealing_required))
            for wire, signer, sign, seal, update in jobs]


# A Checked, flat: ``(inner, opened)`` with ``inner`` None where the update's opened payload is all that is needed
# (it is what the session takes), each either bytes, None, or a ``(reason, detail)`` refusal.
_Part = bytes | tuple[str, str] | None
_Result = tuple[_Part, _Part]


def _flat(found: Checked) -> _Result:
    def part(value: bytes | Refused | None) -> _Part:
        return (value.reason, value.detail) if isinstance(value, Refused) else value

    if found.opened is not None:  # the session takes only the opened payload of an update that verified
        return None, part(found.opened)
    return part(found.inner), None


def _unflat(result: _Result) -> Checked:
    def part(value: _Part) -> bytes | Refused | None:
        return Refused(*value) if isinstance(value, tuple) else value

    inner, opened = result
    if opened is not None:
        return Checked(inner=b"", opened=part(opened))  # inner verified; its bytes are not needed again
    found = part(inner)
    assert found is not None
    return Checked(inner=found)


def _ready() -> bool:
    return _Worker.opener is not None


def default_workers() -> int:
    """One per CPU beyond the aggregator's own, at least one, at most four."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


class CheckPool:
    """Worker processes that check batches of deliveries with the aggregator's key.

    Started with ``spawn`` (the aggregator's process runs threads: the embedded broker's, paho's), lazily: the
    first :meth:`submit` starts it, and batches are checked inline until it answers (:attr:`ready`)."""

    def __init__(self, opener: PrivateKey, *, sealing_required: bool, workers: int | None = None) -> None:
        self._opener = opener
        self._sealing_required = sealing_required
        self.workers = default_workers() if workers is None else workers
        self._executor: ProcessPoolExecutor | None = None
        self._warm: asyncio.Future[bool] | None = None
        self.broken = False
        self.batches = 0
        self.checked = 0

    @property
    def ready(self) -> bool:
        """The workers are up and answer (started, warmed, not broken)."""
        warm = self._warm
        return (not self.broken and warm is not None and warm.done() and not warm.cancelled()
                and warm.exception() is None)

    def start(self) -> None:
        """Start the workers in the background (no-op if started or broken)."""
        if self._executor is not None or self.broken:
            return
        key = self._opener
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
            initargs=(os.getpid(), key.sign_seed, key.seal_secret, self._sealing_required))
        self._warm = asyncio.get_running_loop().run_in_executor(self._executor, _ready)
        self._warm.add_done_callback(self._warmed)
        log.info("check pool starting", workers=self.workers)

    async def warm_up(self) -> bool:
        """Start the workers and wait until they answer; whether they do."""
        self.start()
        if self._warm is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._warm)
        return self.ready

    def _warmed(self, future: asyncio.Future[bool]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._break(repr(future.exception()) if not future.cancelled() else "cancelled")

    def _break(self, reason: str) -> None:
        if not self.broken:
            self.broken = True
            log.warning("check pool broken; checking inline from now on", reason=reason)
            self.close()

    def submit(self, jobs: Sequence[Job]) -> asyncio.Future[list[_Result]] | None:
        """The checks of ``jobs`` on a worker; None when the pool is not ready (check them inline)."""
        if not self.ready or self._executor is None:
            return None
        self.batches += 1
        self.checked += len(jobs)
        flat = [(job.wire, job.signer, job.key.sign, job.key.seal, job.update) for job in jobs if job.key is not None]
        if len(flat) != len(jobs):
            raise ValueError("every job needs the signer's key")
        try:
            return asyncio.get_running_loop().run_in_executor(self._executor, _check_batch, flat)
        except (BrokenProcessPool, RuntimeError) as exc:
            self._break(repr(exc))
            return None

    async def results(self, future: asyncio.Future[list[_Result]]) -> list[Checked] | None:
        """A batch's results; None if the pool broke under it (check the batch inline)."""
        try:
            return [_unflat(result) for result in await asyncio.shield(future)]
        except asyncio.CancelledError:
            if future.cancelled():  # the pool was closed under it, not this task cancelled
                return None
            raise
        except Exception as exc:  # BrokenProcessPool (a worker died), or anything a worker raised
            self._break(repr(exc))
            return None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class Prechecker(Generic[T]):
    """Items of an asyncio queue, in order, each with its checks done ahead where that paid (else ``None``).

    ``job_of`` says what to check for an item (None: nothing costly, e.g. a timer event or protocol v1)."""

    def __init__(self, queue: asyncio.Queue[T], pool: CheckPool | None, job_of: Callable[[T], Job | None], *,
                 min_batch: int = MIN_BATCH, max_batch: int = MAX_BATCH, depth: int = DEPTH) -> None:
        self._queue = queue
        self._pool = pool
        self._job_of = job_of
        self._min_batch = min_batch
        self._max_batch = max_batch
        self._depth = depth
        self._ready: deque[tuple[T, Checked | None]] = deque()
        self._inflight: deque[tuple[list[T], list[int], list[Job], asyncio.Future[list[_Result]] | None]] = deque()
        self._costly = False  # the last item taken had costly checks: only then is the pool worth starting

    def empty(self) -> bool:
        """Nothing waits: no item ready, in flight or queued."""
        return not self._ready and not self._inflight and self._queue.empty()

    def _fill(self) -> None:
        pool = self._pool
        if pool is None or pool.broken:
            return
        # The pool starts the first time min_batch deliveries wait behind one with costly checks (a signed frame;
        # paired frames are cheaper checked here than sent away); once up, whatever waits goes to it (batches grow
        # by themselves while the last one is being checked)
        while len(self._inflight) < self._depth and self._queue.qsize() >= (1 if pool.ready else self._min_batch):
            if not pool.ready:
                if not self._costly:
                    return
                pool.start()
                return
            self._submit([])

    def _submit(self, items: list[T]) -> None:
        """Send ``items``, and what waits in the queue behind them (up to a batch), to the pool."""
        assert self._pool is not None
        items += [self._queue.get_nowait() for _ in range(min(self._max_batch - len(items), self._queue.qsize()))]
        jobs: list[Job] = []
        where: list[int] = []
        for i, item in enumerate(items):
            job = self._job_of(item)
            if job is not None:
                jobs.append(job)
                where.append(i)
        self._inflight.append((items, where, jobs, self._pool.submit(jobs) if jobs else None))

    async def get(self) -> tuple[T, Checked | None]:
        """The next item and its checks (None: the session checks it itself). Cancel-safe: a batch in flight
        stays queued for the next call."""
        self._fill()  # on every call: what arrived meanwhile goes to the workers while the session takes the rest
        while not self._ready:
            if self._inflight:
                items, where, jobs, future = self._inflight[0]
                found: list[Checked] | None = None
                if future is not None and self._pool is not None:
                    found = await self._pool.results(future)
                self._inflight.popleft()
                results: list[Checked | None] = [None] * len(items)
                if found is not None:  # each with the key it was checked with: the session checks it is still so
                    for i, asked, result in zip(where, jobs, found, strict=True):
                        results[i] = dataclasses.replace(result, key=asked.key)
                self._ready.extend(zip(items, results, strict=True))
                self._fill()
                continue
            item = await self._queue.get()
            job = self._job_of(item)
            self._costly = job is not None
            if self._pool is None or not self._pool.ready or job is None:
                return item, None
            self._submit([item])  # through the pool too once it is up, with whatever arrived beside it
        return self._ready.popleft()
