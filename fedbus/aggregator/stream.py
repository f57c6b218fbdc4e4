"""Buffered (FedBuff) and fully asynchronous (FedAsync) aggregation: a sans-I/O state machine.

There are no rounds to wait for. Every live client (up to ``fraction`` of them, at least
``min_clients``) always holds one task: the global prompt at some version. When its update
arrives, its *staleness* is the number of versions published since that base version; an update
more than ``max_staleness`` versions old is rejected ('too-stale'); any other is accepted with the
weight ``weighting.weight(staleness)`` and the client gets a new task at once.

- buffered: accepted updates wait in a buffer; every ``buffer_size`` of them are merged into the
  global prompt together (one new version). The merge sees them sorted by (client, message id), so
  the order in which they arrived does not change the aggregate.
- async: every accepted update is merged on its own (``buffer_size`` 1).

A staleness weight applies to text through :func:`fedbus.aggregator.strategies.merge_weighted`: the
weight decides how many of the update's new sentences enter the global prompt.

Each aggregation is reported as a ``RoundResult`` whose ``round`` numbers the aggregations
(1, 2, ..., a failed one included) and whose ``version_after`` is the new global version; its
``selected`` lists the clients handed a task since the previous aggregation. A task not answered
within ``round_deadline_s`` counts as missing and the client gets a fresh one. A client whose local
step failed answers with a failure report: recorded as 'client-failed', it frees the task's slot for
another idle client at once, and the client itself gets a new task no earlier than the failed task's
deadline (so a client whose engine is down does not spin through tasks).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from fedbus.aggregator.base import AggregatorBase, failure_detail
from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import (
    Accepted,
    ArmTimer,
    Effect,
    Reduce,
    Rejection,
    RoundClosed,
    RoundOpened,
    RoundResult,
    UpdateAccepted,
)
from fedbus.aggregator.events import (
    ClientOffline,
    ClientOnline,
    Event,
    FailureReceived,
    Reduced,
    ReduceFailed,
    Started,
    TimerFired,
    UpdateMalformed,
    UpdateReceived,
)
from fedbus.aggregator.membership import Roster
from fedbus.errors import LocalProtocolError
from fedbus.protocol.messages import Failure, Update


@dataclass(frozen=True, slots=True)
class _Assignment:
    task_round: int  # the Task's round field: a per-run dispatch counter
    version: int
    due: float


class StreamAggregator(AggregatorBase):
    """FedBuff / FedAsync for text prompts, as events in and effects out."""

    def __init__(self, config: AggregatorConfig, rng: random.Random) -> None:
        if config.mode not in ("buffered", "async"):
            raise LocalProtocolError(f"StreamAggregator runs buffered or async, not {config.mode!r}")
        self._roster = Roster()  # a stream keeps every live client busy: it needs them listed
        super().__init__(config, rng, self._roster)
        self._k = 1 if config.mode == "async" else max(1, config.buffer_size)
        self._assigned: dict[str, _Assignment] = {}
        self._resting: dict[str, float] = {}  # client -> when it may have a task again (it reported a failure)
        self._buffer: list[Accepted] = []
        self._reducing: tuple[Accepted, ...] = ()
        self._dispatches = 0
        self._aggregations = 0  # results reported so far (aggregated or failed): numbers them 1, 2, ...
        self._since_selected: set[str] = set()
        self._since_dropped: set[str] = set()
        self._since_missing: set[str] = set()
        self._since_rejected: list[Rejection] = []
        self._window_opened = 0.0
        self._started_at = 0.0

    # ------------------------------------------------------------------ events
    def handle(self, event: Event) -> list[Effect]:
        """Apply one event; return the effects, in the order they must happen."""
        out: list[Effect] = []
        self._now = getattr(event, "now", self._now)  # an unknown event is refused below
        if isinstance(event, Started):
            if self._phase != "idle":
                raise LocalProtocolError("Started twice")
            self._phase = "waiting"
            self._waiting_since = self._started_at = event.now
            out.append(self._global("waiting", event.now))
            self._maybe_begin(event.now, out)
            if self._phase == "waiting":
                out.append(ArmTimer(at=event.now + self.config.join_timeout_s))
        elif isinstance(event, ClientOnline):
            self._roster.joined(event.client)
            if self._phase == "waiting":
                self._maybe_begin(event.now, out)
            elif self._phase == "running":
                self._fill(event.now, out)
        elif isinstance(event, ClientOffline):
            self._roster.left(event.client)
            if self._assigned.pop(event.client, None) is not None:
                self._since_dropped.add(event.client)
            if self._phase == "running":
                self._fill(event.now, out)
                self._pause_if_empty(event.now, out)
        elif isinstance(event, UpdateReceived):
            self._update(event.update, event.now, out)
        elif isinstance(event, FailureReceived):
            self._failure(event.failure, event.now, out)
        elif isinstance(event, UpdateMalformed):
            self._reject(Rejection(client=event.client, msg_id=None, round=None,
                                   reason=f"malformed:{event.reason}", detail=event.detail, at=event.now), out)
        elif isinstance(event, TimerFired):
            self._timer(event.now, out)
        elif isinstance(event, Reduced):
            self._reduced(event.round, event.prompt, "aggregated", event.now, out)
        elif isinstance(event, ReduceFailed):
            self._reduced(event.round, None, "reduce-failed", event.now, out)
        else:  # pragma: no cover - guarded by the type
            raise LocalProtocolError(f"unknown event {event!r}")
        return out

    @property
    def buffered(self) -> tuple[Accepted, ...]:
        """Accepted updates waiting for the next aggregation."""
        return tuple(self._buffer)

    def _record_rejection(self, rejection: Rejection) -> None:
        if self._phase == "finished":
            self._pending.append(rejection)
        else:
            self._since_rejected.append(rejection)

    # ------------------------------------------------------------------ dispatch
    def _concurrency(self) -> int:
        live = len(self._roster.live)
        return min(live, max(self.config.min_clients, math.ceil(self.config.fraction * live)))

    def _maybe_begin(self, now: float, out: list[Effect]) -> None:
        if self._enough_to_start(now):
            self._began = True
            self._phase = "running"
            self._window_opened = now
            out.append(self._global("running", now))
            self._fill(now, out)
            self._maybe_reduce(now, out)  # a buffer that filled up while paused

    def _fill(self, now: float, out: list[Effect]) -> None:
        """Hand tasks to idle live clients (not resting after a failure) until ``concurrency`` clients are working."""
        idle = sorted(c for c in self._roster.live - self._assigned.keys() if self._resting.get(c, now) <= now)
        free = self._concurrency() - len(self._assigned)
        if free <= 0 or not idle:
            return
        chosen = sorted(self._rng.sample(idle, min(free, len(idle))))
        for client in chosen:
            self._dispatch(client, now, out)
        out.append(RoundOpened(round=self._dispatches, version=self._version, selected=tuple(chosen),
                               live=len(self._roster.live), opened_at=now, deadline=now + self.config.round_deadline_s))

    def _dispatch(self, client: str, now: float, out: list[Effect]) -> None:
        cfg = self.config
        self._dispatches += 1
        due = now + cfg.round_deadline_s
        self._assigned[client] = _Assignment(task_round=self._dispatches, version=self._version, due=due)
        self._since_selected.add(client)
        out.append(self._task(client, self._dispatches, now, cfg.round_deadline_s))
        out.append(ArmTimer(at=due))

    # ------------------------------------------------------------------ updates
    def _update(self, update: Update, now: float, out: list[Effect]) -> None:
        common = refusal = self._common_refusal(update)
        assignment = self._assigned.get(update.client)
        if refusal is None:
            if assignment is None or update.round != assignment.task_round:
                refusal = ("not-assigned", f"no open task {update.round} for {update.client}")
            elif update.base_version != assignment.version:
                refusal = ("wrong-base-version",
                           f"started from version {update.base_version}, task said {assignment.version}")
            elif self._version - update.base_version > self.config.max_staleness:
                refusal = ("too-stale", f"staleness {self._version - update.base_version} > "
                           f"max_staleness {self.config.max_staleness}")
            else:
                refusal = self._content_refusal(update)
        if refusal is not None:
            self._reject_update(update, refusal[0], refusal[1], now, out)
            answered = common is None and assignment is not None and update.round == assignment.task_round
            if answered and self._phase == "running":
                del self._assigned[update.client]  # it answered; hand it a fresh task
                self._fill(now, out)
            return
        staleness = self._version - update.base_version
        accepted = Accepted(client=update.client, msg_id=update.msg_id, round=update.round,
                            base_version=update.base_version, prompt=update.prompt, stats=update.stats, at=now,
                            staleness=staleness, weight=self.config.weighting.weight(staleness))
        self._seen_ids.add(update.msg_id)
        self._accepted_total += 1
        self._buffer.append(accepted)
        del self._assigned[update.client]
        out.append(UpdateAccepted(accepted=accepted))
        self._maybe_reduce(now, out)
        if self._phase == "running":
            self._fill(now, out)

    def _failure(self, failure: Failure, now: float, out: list[Effect]) -> None:
        """A client says its local step failed: its answer to its open task, recorded, never aggregated."""
        refusal = self._common_refusal(failure)
        assignment = self._assigned.get(failure.client)
        if refusal is None and (assignment is None or failure.round != assignment.task_round):
            refusal = ("not-assigned", f"no open task {failure.round} for {failure.client}")
        if refusal is not None:
            self._reject_failure(failure, refusal[0], refusal[1], now, out)
            return
        assert assignment is not None
        self._reject_failure(failure, "client-failed", failure_detail(failure), now, out)
        del self._assigned[failure.client]
        self._resting[failure.client] = assignment.due  # the task's timer wakes it: see _timer
        self._fill(now, out)

    def _maybe_reduce(self, now: float, out: list[Effect]) -> None:
        if self._reducing or len(self._buffer) < self._k or self._phase != "running":
            return
        batch = sorted(self._buffer[: self._k], key=lambda a: (a.client, a.msg_id))
        del self._buffer[: self._k]
        self._reducing = tuple(batch)
        out.append(Reduce(round=self._aggregations + 1, strategy=self.config.strategy, current_prompt=self._prompt,
                          prompts=tuple((a.client, a.prompt) for a in batch), max_chars=self.config.max_prompt_chars,
                          weights=tuple(a.weight for a in batch)))

    def _reduced(self, round_: int, prompt: str | None, status: str, now: float, out: list[Effect]) -> None:
        if self._phase == "finished" and not self._reducing:
            return  # the run ended while this batch was out; _finish already accounted for it
        if not self._reducing or round_ != self._aggregations + 1:
            raise LocalProtocolError(f"reduce result for {round_} while {'reducing' if self._reducing else 'idle'}")
        batch, self._reducing = self._reducing, ()
        self._aggregations += 1
        before = self._version
        if prompt is not None:
            self._prompt = prompt[: self.config.max_prompt_chars]
            self._version += 1
        result = RoundResult(
            round=round_, status=status, version_before=before, version_after=self._version,
            selected=tuple(sorted(self._since_selected)), accepted=batch, rejected=tuple(self._since_rejected),
            dropped=tuple(sorted(self._since_dropped)), missing=tuple(sorted(self._since_missing)),
            opened_at=self._window_opened, closed_at=now, prompt=self._prompt,
            close_reason=f"{len(batch)} buffered" if status == "aggregated" else "reduce-failed",
            aggregate_chars=len(prompt) if prompt is not None else 0)
        self._results.append(result)
        self._since_selected, self._since_dropped, self._since_missing = set(), set(), set()
        self._since_rejected = []
        self._window_opened = now
        if prompt is not None:
            out.append(self._global("running", now))
        out.append(RoundClosed(result=result))
        if len(self._results) >= self.config.rounds:
            self._finish("completed", f"{self.config.rounds} aggregations", now, out)
            return
        self._maybe_reduce(now, out)

    def _finish(self, status: str, reason: str, now: float, out: list[Effect]) -> None:
        """End the run, turning every update not in a result into a leftover rejection: rejected as any update is
        (a ``rejected`` record and a receipt, after the ``accepted`` one that took it into the buffer), so that
        events.jsonl, the client and summary.json's ``rejected_after_last_round`` tell the same story."""
        self._pending.extend(self._since_rejected)
        self._since_rejected = []
        left = [(a, "being aggregated when the run ended") for a in self._reducing]
        left += [(a, "buffered when the run ended") for a in self._buffer]
        self._reducing, self._buffer = (), []
        self._phase = "finished"  # where _record_rejection keeps them: the leftovers, not a next result
        for a, detail in left:
            self._reject(Rejection(client=a.client, msg_id=a.msg_id, round=a.round, reason="run-finished",
                                   detail=detail, at=now), out)
        super()._finish(status, reason, now, out)

    # ------------------------------------------------------------------ time
    def _timer(self, now: float, out: list[Effect]) -> None:
        if self._phase == "waiting":
            self._maybe_begin(now, out)
            if self._phase == "waiting" and now >= self._waiting_since + self.config.join_timeout_s:
                self._finish("aborted", f"fewer than {self.config.min_clients} clients online after "
                             f"{self.config.join_timeout_s:g} s", now, out)
            return
        if self._phase != "running":
            return
        overdue = sorted(c for c, a in self._assigned.items() if a.due <= now)
        for client in overdue:
            del self._assigned[client]
            self._since_missing.add(client)
        rested = [c for c, until in self._resting.items() if until <= now]
        for client in rested:
            del self._resting[client]
        if overdue or rested:
            self._fill(now, out)
        self._pause_if_empty(now, out)

    def _pause_if_empty(self, now: float, out: list[Effect]) -> None:
        """With fewer than min_clients live and nobody working, wait for clients (or give up after the timeout)."""
        if self._phase == "running" and len(self._roster.live) < self.config.min_clients and not self._assigned:
            self._phase = "waiting"
            self._waiting_since = now
            out.append(ArmTimer(at=now + self.config.join_timeout_s))
