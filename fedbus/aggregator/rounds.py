"""The synchronous-round aggregator: a sans-I/O state machine.

Feed it events with :meth:`RoundAggregator.handle`; it returns effects for the runtime to carry
out (publish, arm a timer, reduce prompts) and records (round opened, update accepted or rejected,
round closed, run finished). It never blocks, never reads a clock and never draws from global
randomness: time arrives in each event, randomness from the ``random.Random`` it is given.

A round: select participants among the live clients (``fraction`` of them, at least
``min_clients``, times ``1 + overcommit``), send each a task, collect updates until every selected
client that is still online has answered, the target number has arrived (over-commitment), or the
deadline passes (fixed, or adaptive: median + k MAD of recent arrival times), then reduce if at
least ``min_updates`` arrived. Every update that does not enter an aggregate is rejected with a
reason that ends up in a round result (or, after the last round, in
``RunFinished.leftover_rejections``). A participant whose local step failed answers with a failure
report instead: it counts as answered and is recorded as 'client-failed', never aggregated.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from fedbus.aggregator.base import AggregatorBase, AggregatorStatistics, failure_detail
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
from fedbus.aggregator.membership import Membership
from fedbus.errors import LocalProtocolError
from fedbus.protocol.messages import Failure, Update

__all__ = ["AggregatorConfig", "AggregatorStatistics", "RoundAggregator"]

# Rejections of a selected client's update for this round: it answered, it will not answer again.
_ANSWERED_BUT_REFUSED = frozenset({"wrong-base-version", "prompt-too-long", "empty-prompt"})


@dataclass(slots=True)
class _OpenRound:
    number: int
    version: int
    selected: frozenset[str]
    target: int
    opened_at: float
    deadline: float
    accepted: dict[str, Accepted] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # selected, answered, but the answer was rejected or a failure
    outstanding: set[str] = field(default_factory=set)  # selected, not yet answered, still online
    close_reason: str = ""


class RoundAggregator(AggregatorBase):
    """Synchronous FedTextGrad rounds as a state machine (events in, effects out)."""

    def __init__(self, config: AggregatorConfig, rng: random.Random, members: Membership | None = None) -> None:
        super().__init__(config, rng, members)
        self._current: _OpenRound | None = None
        self._arrivals: deque[float] = deque(maxlen=max(3, config.adaptive_window))

    def handle(self, event: Event) -> list[Effect]:
        """Apply one event; return the effects, in the order they must happen."""
        out: list[Effect] = []
        self._now = getattr(event, "now", self._now)  # an unknown event is refused below
        if isinstance(event, Started):
            self._start(event.now, out)
        elif isinstance(event, ClientOnline):
            self._members.joined(event.client)
            if self._phase == "waiting":
                self._maybe_open(event.now, out)
        elif isinstance(event, ClientOffline):
            self._offline(event, out)
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
            self._reduced(event, out)
        elif isinstance(event, ReduceFailed):
            self._reduce_failed(event, out)
        else:  # pragma: no cover - guarded by the type
            raise LocalProtocolError(f"unknown event {event!r}")
        return out

    def _record_rejection(self, rejection: Rejection) -> None:
        if self._current is not None and self._phase == "collecting":
            self._current.rejected.append(rejection)
        else:
            self._pending.append(rejection)

    def _start(self, now: float, out: list[Effect]) -> None:
        if self._phase != "idle":
            raise LocalProtocolError("Started twice")
        self._phase = "waiting"
        self._waiting_since = now
        out.append(self._global("waiting", now))
        self._maybe_open(now, out)
        if self._phase == "waiting":
            out.append(ArmTimer(at=now + self.config.join_timeout_s))
            self._look_again(now, out)

    def _look_again(self, now: float, out: list[Effect]) -> None:
        """Waiting for clients: a timer at the next moment clients become available unannounced (a virtual
        population's trace), if that comes before the wait's end, so that the round opens when they do."""
        change = self._members.next_change(now)
        if change is not None and change < self._waiting_since + self.config.join_timeout_s:
            out.append(ArmTimer(at=change))

    def _offline(self, event: ClientOffline, out: list[Effect]) -> None:
        self._members.left(event.client)
        current = self._current
        if self._phase == "collecting" and current is not None and event.client in current.selected:
            if event.client not in current.accepted:
                current.dropped.add(event.client)
            current.outstanding.discard(event.client)
            self._maybe_close(event.now, out)

    def _maybe_open(self, now: float, out: list[Effect]) -> None:
        if self._enough_to_start(now):
            self._open(now, out)

    def _deadline(self, now: float) -> float:
        cfg = self.config
        fixed = now + cfg.round_deadline_s
        if cfg.adaptive_deadline_k is None or len(self._arrivals) < 3:
            return fixed
        import statistics  # here: its import (decimal, fractions) costs a run that never adapts a deadline

        median = statistics.median(self._arrivals)
        mad = statistics.median(abs(a - median) for a in self._arrivals)
        return min(fixed, now + median + cfg.adaptive_deadline_k * mad + 1e-6)

    def _open(self, now: float, out: list[Effect]) -> None:
        cfg = self.config
        live = self._members.live_count(now)
        target = min(live, max(cfg.min_clients, math.ceil(cfg.fraction * live)))
        want = min(live, math.ceil(target * (1.0 + cfg.overcommit)))
        selected = self._members.sample(self._rng, want, now)
        self._round += 1
        self._began = True
        deadline = self._deadline(now)
        self._current = _OpenRound(number=self._round, version=self._version, selected=frozenset(selected),
                                   target=target, opened_at=now, deadline=deadline, outstanding=set(selected))
        self._phase = "collecting"
        self._current.rejected.extend(self._pending)
        self._pending.clear()
        out.append(RoundOpened(round=self._round, version=self._version, selected=tuple(selected),
                               live=live, opened_at=now, deadline=deadline))
        out.append(self._global("running", now))
        out += [self._task(client, self._round, now, deadline - now) for client in selected]
        out.append(ArmTimer(at=deadline))

    def _update(self, update: Update, now: float, out: list[Effect]) -> None:
        reason = self._why_not(update)
        current = self._current
        if reason is not None:
            self._reject_update(update, reason[0], reason[1], now, out)
            if reason[0] in _ANSWERED_BUT_REFUSED and current is not None:
                current.refused.add(update.client)
                current.outstanding.discard(update.client)
                self._maybe_close(now, out)
            return
        assert current is not None
        self._seen_ids.add(update.msg_id)
        accepted = Accepted(client=update.client, msg_id=update.msg_id, round=update.round,
                            base_version=update.base_version, prompt=update.prompt, stats=update.stats, at=now)
        current.accepted[update.client] = accepted
        current.dropped.discard(update.client)
        current.outstanding.discard(update.client)
        self._arrivals.append(now - current.opened_at)
        self._accepted_total += 1
        out.append(UpdateAccepted(accepted=accepted))
        self._maybe_close(now, out)

    def _failure(self, failure: Failure, now: float, out: list[Effect]) -> None:
        """A participant says its local step failed: its answer for the round, recorded, never aggregated."""
        refusal = self._sender_refusal(failure)
        if refusal is not None:
            self._reject_failure(failure, refusal[0], refusal[1], now, out)
            return
        current = self._current
        assert current is not None
        self._reject_failure(failure, "client-failed", failure_detail(failure), now, out)
        current.refused.add(failure.client)
        current.outstanding.discard(failure.client)
        self._maybe_close(now, out)

    def _sender_refusal(self, answer: Update | Failure) -> tuple[str, str] | None:
        """Whether ``answer`` may answer the open round at all: right run, known sender, this round, collecting,
        a participant that has no accepted update yet."""
        common = self._common_refusal(answer)
        if common is not None:
            return common
        current = self._current
        if answer.round > self._round:
            return "future-round", f"round {answer.round} has not started (current {self._round})"
        if answer.round < self._round or self._round == 0:
            return "stale-round", f"round {answer.round} is over (current {self._round})"
        if current is None or self._phase != "collecting":
            return "late", f"round {answer.round} stopped collecting"
        if answer.client not in current.selected:
            return "not-selected", f"not a participant of round {answer.round}"
        if answer.client in current.accepted:
            return "second-update", f"already sent {current.accepted[answer.client].msg_id} for this round"
        return None

    def _why_not(self, update: Update) -> tuple[str, str] | None:
        sender = self._sender_refusal(update)
        if sender is not None:
            return sender
        current = self._current
        assert current is not None
        if update.base_version != current.version:
            return "wrong-base-version", f"started from version {update.base_version}, task said {current.version}"
        return self._content_refusal(update)

    def _maybe_close(self, now: float, out: list[Effect]) -> None:
        current = self._current
        if current is None or self._phase != "collecting":
            return
        if not current.outstanding:
            answered = current.accepted or current.refused  # else every participant went offline
            self._close_collection(now, "all-answered" if answered else "all-gone", out)
        elif self.config.overcommit > 0 and len(current.accepted) >= current.target:
            self._close_collection(now, "target-reached", out)

    def _timer(self, now: float, out: list[Effect]) -> None:
        current = self._current
        if self._phase == "collecting" and current is not None and now >= current.deadline:
            self._close_collection(now, "deadline", out)
        elif self._phase == "waiting":
            self._maybe_open(now, out)
            if self._phase == "waiting" and now >= self._waiting_since + self.config.join_timeout_s:
                self._finish("aborted", f"fewer than {self.config.min_clients} clients online after "
                             f"{self.config.join_timeout_s:g} s", now, out)
            elif self._phase == "waiting":
                self._look_again(now, out)

    def _close_collection(self, now: float, reason: str, out: list[Effect]) -> None:
        current = self._current
        assert current is not None
        current.close_reason = reason
        if len(current.accepted) >= self.config.min_updates:
            self._phase = "reducing"
            prompts = tuple((c, current.accepted[c].prompt) for c in sorted(current.accepted))
            out.append(Reduce(round=current.number, strategy=self.config.strategy, current_prompt=self._prompt,
                              prompts=prompts, max_chars=self.config.max_prompt_chars))
        else:
            self._end_round("no-quorum", now, out)

    def _reduced(self, event: Reduced, out: list[Effect]) -> None:
        if self._phase != "reducing" or self._current is None or event.round != self._current.number:
            raise LocalProtocolError(f"Reduced for round {event.round} while {self._phase} round {self._round}")
        self._prompt = event.prompt[: self.config.max_prompt_chars]
        self._version += 1
        self._end_round("aggregated", event.now, out, aggregate_chars=len(event.prompt))

    def _reduce_failed(self, event: ReduceFailed, out: list[Effect]) -> None:
        if self._phase != "reducing" or self._current is None or event.round != self._current.number:
            raise LocalProtocolError(f"ReduceFailed for round {event.round} while {self._phase}")
        self._current.close_reason = f"reduce-failed: {event.reason}"
        self._end_round("reduce-failed", event.now, out)

    def _end_round(self, status: str, now: float, out: list[Effect], aggregate_chars: int = 0) -> None:
        current = self._current
        assert current is not None
        selected = current.selected
        result = RoundResult(
            round=current.number, status=status, version_before=current.version, version_after=self._version,
            selected=tuple(sorted(selected)),
            accepted=tuple(current.accepted[c] for c in sorted(current.accepted)),
            rejected=tuple(current.rejected), dropped=tuple(sorted(current.dropped)),
            missing=tuple(sorted(selected - current.accepted.keys() - current.dropped - current.refused)),
            opened_at=current.opened_at, closed_at=now, prompt=self._prompt, close_reason=current.close_reason,
            aggregate_chars=aggregate_chars)
        self._results.append(result)
        self._current = None
        closed = len(out)
        out.append(RoundClosed(result=result))
        if self._round >= self.config.rounds:
            if status == "aggregated":
                out.insert(closed, self._global("running", now))
            self._finish("completed", f"{self.config.rounds} rounds", now, out)
            return
        self._phase = "waiting"
        self._waiting_since = now
        self._maybe_open(now, out)
        # The new version is announced before the close. When the next round opened at once, its global carries
        # the new version and prompt, and one of the aggregated round would be replaced on the broker (it is
        # retained) before anyone needed it, after every client had received and checked it (a thousand
        # deliveries a round at 1,000 clients): then there is none.
        if status == "aggregated" and self._phase != "collecting":
            out.insert(closed, self._global("running", now))
        if self._phase == "waiting":
            out.append(ArmTimer(at=now + self.config.join_timeout_s))
            self._look_again(now, out)
