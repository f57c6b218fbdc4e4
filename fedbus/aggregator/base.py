"""What every aggregator core shares: membership, message ids, the global state, rejections, the end."""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import Effect, Publish, Rejection, RoundResult, RunFinished, UpdateRejected
from fedbus.aggregator.membership import Membership, Roster
from fedbus.protocol import topics
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import MAX_DETAIL_CHARS, Failure, GlobalState, GlobalStatus, Task, Update


def failure_detail(failure: Failure) -> str:
    """What a failure report says, for its 'client-failed' rejection: the error's type (unless the reason already
    begins with it), then the client's reason."""
    kind, reason = failure.error_type, failure.reason
    text = f"{kind}: {reason}" if kind and not reason.startswith(kind) else reason
    return text[:MAX_DETAIL_CHARS]


@dataclass(frozen=True, slots=True)
class AggregatorStatistics:
    """An immutable snapshot of an aggregator's counters."""

    phase: str
    round: int
    version: int
    live_clients: int
    known_clients: int
    accepted: int
    rejected: int
    rounds_closed: int


class AggregatorBase:
    """Shared state and helpers; subclasses implement ``handle``."""

    def __init__(self, config: AggregatorConfig, rng: random.Random, members: Membership | None = None) -> None:
        self.config = config
        self._rng = rng
        self._members: Membership = Roster() if members is None else members
        self._now = 0.0  # the time of the latest event
        self._phase = "idle"
        self._round = 0
        self._version = 0
        self._prompt = config.initial_prompt
        self._seen_ids: set[str] = set()
        self._pending: list[Rejection] = []  # rejections waiting for a round result
        self._waiting_since = 0.0
        self._seq = 0
        self._accepted_total = 0
        self._rejected_total = 0
        self._results: list[RoundResult] = []
        self._began = False  # the first round (or the first task) went out

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def version(self) -> int:
        return self._version

    @property
    def prompt(self) -> str:
        return self._prompt

    @property
    def results(self) -> tuple[RoundResult, ...]:
        return tuple(self._results)

    def statistics(self) -> AggregatorStatistics:
        return AggregatorStatistics(
            phase=self._phase, round=self._round, version=self._version,
            live_clients=self._members.live_count(self._now), known_clients=self._members.known_count(),
            accepted=self._accepted_total, rejected=self._rejected_total, rounds_closed=len(self._results),
        )

    def next_id(self) -> str:
        """A fresh id for a message of the aggregator: aggregator-{run}-1, -2, ... (the session draws from it too)."""
        self._seq += 1
        return f"{AGGREGATOR}-{self.config.run}-{self._seq}"

    def _global(self, status: GlobalStatus, now: float) -> Publish:
        cfg = self.config
        message = GlobalState(run=cfg.run, round=self._round, client=AGGREGATOR, msg_id=self.next_id(),
                              sent=now, version=self._version, prompt=self._prompt, status=status,
                              engine=cfg.engine, data=cfg.data, rounds=cfg.rounds,
                              max_prompt_chars=cfg.max_prompt_chars)
        return Publish(topic=topics.global_topic(cfg.run), message=message, retain=True)

    def _task(self, client: str, round_: int, now: float, deadline_s: float) -> Publish:
        """A task for ``client``: the current prompt and version, the run's local settings and prompt budget."""
        cfg = self.config
        task = Task(run=cfg.run, round=round_, client=client, msg_id=self.next_id(), sent=now, version=self._version,
                    prompt=self._prompt, local_steps=cfg.local_steps, batch_size=cfg.batch_size, deadline_s=deadline_s,
                    max_prompt_chars=cfg.max_prompt_chars)
        return Publish(topic=topics.task_topic(cfg.run, client), message=task)

    def _record_rejection(self, rejection: Rejection) -> None:
        """Where a rejection is kept until a result carries it; subclasses may keep it in the open round."""
        self._pending.append(rejection)

    def _reject(self, rejection: Rejection, out: list[Effect]) -> None:
        self._rejected_total += 1
        self._record_rejection(rejection)
        out.append(UpdateRejected(rejection=rejection))

    def _reject_update(self, update: Update, reason: str, detail: str, now: float, out: list[Effect]) -> None:
        self._reject(Rejection(client=update.client, msg_id=update.msg_id, round=update.round, reason=reason,
                               detail=detail, at=now), out)

    def _reject_failure(self, failure: Failure, reason: str, detail: str, now: float, out: list[Effect]) -> None:
        """Record a failure report: 'client-failed' when it answers the client's task, else the check it failed."""
        self._reject(Rejection(client=failure.client, msg_id=failure.msg_id, round=failure.round, reason=reason,
                               detail=detail, at=now, kind="failure"), out)

    def _common_refusal(self, answer: Update | Failure) -> tuple[str, str] | None:
        """The checks every mode makes of an answer (an update or a failure report) before its own."""
        if answer.run != self.config.run:
            return "wrong-run", f"run {answer.run!r}"
        if answer.msg_id in self._seen_ids:
            return "duplicate", f"message {answer.msg_id} already accepted"
        if not self._members.knows(answer.client):
            return "unknown-client", "never announced itself"
        if self._phase == "finished":
            return "run-finished", "arrived after the last round"
        return None

    def _content_refusal(self, update: Update) -> tuple[str, str] | None:
        if len(update.prompt) > self.config.max_prompt_chars:
            return "prompt-too-long", f"{len(update.prompt)} > {self.config.max_prompt_chars} characters"
        if not update.prompt.strip():
            return "empty-prompt", "the prompt is blank"
        return None

    def _enough_to_start(self, now: float) -> bool:
        cfg = self.config
        live = self._members.live_count(now)
        enough = live >= cfg.min_clients
        everyone = live >= cfg.expected_clients
        timed_out = now >= self._waiting_since + cfg.join_timeout_s
        return enough and (everyone or timed_out or self._began)

    def _finish(self, status: str, reason: str, now: float, out: list[Effect]) -> None:
        self._phase = "finished"
        out.append(self._global("finished", now))
        out.append(RunFinished(status=status, reason=reason, rounds_closed=len(self._results),
                               version=self._version, prompt=self._prompt,
                               leftover_rejections=tuple(self._pending)))
        self._pending.clear()
