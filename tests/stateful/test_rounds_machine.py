"""The synchronous RoundAggregator as a Hypothesis state machine (rounds, over-commitment, adaptive deadline)."""

from __future__ import annotations

import math
import statistics
from collections import deque

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, run_state_machine_as_test

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import (
    Effect,
    Publish,
    Reduce,
    RoundClosed,
    RoundOpened,
    UpdateAccepted,
    UpdateRejected,
)
from fedbus.aggregator.events import ClientOffline, Event, TimerFired
from fedbus.protocol.messages import Failure, Task, Update
from tests.stateful import (
    DATA,
    INITIAL_CLIENTS,
    INITIAL_PROMPT,
    MAX_CHARS,
    RUN,
    SETTINGS_KW,
    AggregatorMachine,
    content_refusals,
)


@st.composite
def sync_configs(draw: st.DrawFn) -> AggregatorConfig:
    expected = draw(st.integers(1, 4))
    min_clients = draw(st.integers(1, expected))
    return AggregatorConfig(
        run=RUN, rounds=draw(st.integers(2, 5)), expected_clients=expected, initial_prompt=INITIAL_PROMPT,
        engine="surrogate", data=DATA, fraction=draw(st.sampled_from([0.3, 0.5, 1.0])), min_clients=min_clients,
        min_updates=draw(st.integers(1, min_clients)), round_deadline_s=10.0, join_timeout_s=30.0,
        max_prompt_chars=MAX_CHARS, overcommit=draw(st.sampled_from([0.0, 0.5, 1.0])),
        adaptive_deadline_k=draw(st.sampled_from([None, 0.5, 2.0])), adaptive_window=3, mode="sync")


class RoundMachine(AggregatorMachine):
    """Models the open round: its number, version, participants, who answered and who left."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[int, RoundOpened] = {}
        self.round_no = 0
        self.collecting = False
        self.gone: set[str] = set()  # participants that went offline since the round opened
        self.answered: dict[int, set[str]] = {}  # participants whose update was accepted, per round
        self.overdue: RoundOpened | None = None  # the round a TimerFired found collecting past its deadline
        self.refused: dict[int, set[str]] = {}  # participants whose answer was rejected (they will not answer again)
        self.opened_at: dict[int, float] = {}
        self.arrivals: deque[float] = deque()  # recent arrival times (since a round opened) of accepted updates

    def expected_deadline(self, now: float) -> float:
        """The documented rule: now + round_deadline_s, or min(that, now + median + k * MAD + 1e-6) of the
        last max(3, adaptive_window) arrival times once three are known."""
        cfg = self.config
        assert cfg is not None
        fixed = now + cfg.round_deadline_s
        recent = list(self.arrivals)[-max(3, cfg.adaptive_window):]
        if cfg.adaptive_deadline_k is None or len(recent) < 3:
            return fixed
        median = statistics.median(recent)
        mad = statistics.median(abs(a - median) for a in recent)
        return min(fixed, now + median + cfg.adaptive_deadline_k * mad + 1e-6)

    @initialize(config=sync_configs(), seed=st.integers(0, 2**16), clients=INITIAL_CLIENTS, prompt=st.booleans())
    def begin(self, config: AggregatorConfig, seed: int, clients: list[str], prompt: bool) -> None:
        self.start(config, seed, clients, prompt)

    # ------------------------------------------------------------------ model
    def judge_sender(self, client: str, rnd: int) -> set[str]:
        """Why an answer (update or failure report) from ``client`` for round ``rnd`` may not answer the round."""
        out = set()
        if client not in self.announced:
            out.add("unknown-client")
        if self.finished is not None:
            out.add("run-finished")
        current = self.opened.get(self.round_no)
        if rnd > self.round_no:
            out.add("future-round")
            return out
        if current is None:  # no round opened yet: round numbers start at 1
            out.add("stale-round")
            return out
        if rnd < self.round_no:
            out.add("stale-round")
        elif not self.collecting:
            out |= {"late", "stale-round"}
        else:
            if client not in current.selected:
                out.add("not-selected")
            if client in self.answered[self.round_no]:
                out.add("second-update")
        return out

    def judge(self, update: Update) -> set[str]:
        out = content_refusals(update.prompt) | self.judge_sender(update.client, update.round)
        current = self.opened.get(self.round_no)
        answering = update.round == self.round_no and self.collecting and current is not None
        if answering and current is not None and update.base_version != current.version:
            out.add("wrong-base-version")
        return out

    def judge_failure(self, failure: Failure) -> set[str]:
        return self.judge_sender(failure.client, failure.round) or {"client-failed"}

    def answerable(self) -> list[Task]:
        answered = self.answered.get(self.round_no, set())
        return [t for t in self.tasks if t.round == self.round_no and t.client not in answered]

    def target(self, live: int) -> int:
        cfg = self.config
        assert cfg is not None
        return min(live, max(cfg.min_clients, math.ceil(cfg.fraction * live)))

    def on_event(self, event: Event) -> None:
        if isinstance(event, ClientOffline) and self.collecting and event.client in self.opened[self.round_no].selected:
            self.gone.add(event.client)
        self.overdue = None
        if isinstance(event, TimerFired) and self.collecting and event.now >= self.opened[self.round_no].deadline:
            self.overdue = self.opened[self.round_no]

    def on_effect(self, event: Event, effect: Effect) -> None:
        core, cfg = self.core, self.config
        assert core is not None and cfg is not None
        if isinstance(effect, RoundOpened):
            assert not self.collecting and effect.round == self.round_no + 1
            assert self.round_no == 0 or self.closed_rounds[self.round_no] == 1, "a round opened before the last closed"
            assert set(effect.selected) <= self.live and effect.live == len(self.live)
            want = min(effect.live, math.ceil(self.target(effect.live) * (1 + cfg.overcommit)))
            assert len(effect.selected) == want >= 1
            assert effect.version == core.version and effect.deadline > event.now and effect.opened_at == event.now
            assert effect.deadline == self.expected_deadline(event.now), "the deadline is not the documented formula"
            self.round_no, self.collecting, self.gone = effect.round, True, set()
            self.opened[effect.round] = effect
            self.opened_at[effect.round] = event.now
            self.answered[effect.round] = set()
            self.refused[effect.round] = set()
        elif isinstance(effect, Publish) and isinstance(effect.message, Task):
            task, current = effect.message, self.opened[self.round_no]
            assert task.round == self.round_no and task.client in current.selected
            assert task.version == current.version
            assert task.deadline_s == current.deadline - self.opened_at[self.round_no]
        elif isinstance(effect, UpdateAccepted):
            a = effect.accepted
            current = self.opened[self.round_no]
            assert self.collecting and a.round == self.round_no and a.client in current.selected
            assert a.base_version == current.version and a.client not in self.answered[a.round]
            self.answered[a.round].add(a.client)
            self.arrivals.append(event.now - self.opened_at[a.round])
        elif isinstance(effect, UpdateRejected) and effect.rejection.reason == "client-failed":
            r = effect.rejection
            current = self.opened[self.round_no]
            assert self.collecting and r.round == self.round_no and r.client in current.selected
            assert r.client not in self.answered[self.round_no], "a failure recorded for a client already answered"
            self.refused[self.round_no].add(r.client or "")
        elif isinstance(effect, UpdateRejected) and self.refused_participant(effect):
            self.refused[self.round_no].add(effect.rejection.client or "")
        elif isinstance(effect, Reduce):
            assert self.collecting and effect.round == self.round_no and effect.weights == ()
            assert effect.strategy == cfg.strategy and effect.current_prompt == core.prompt
            assert effect.prompts == tuple(sorted((a.client, a.prompt) for a in self.open_accepted.values()))
            assert len(effect.prompts) >= cfg.min_updates
            self.collecting = False
        elif isinstance(effect, RoundClosed):
            result, opened = effect.result, self.opened[self.round_no]
            assert result.round == self.round_no and result.selected == tuple(sorted(opened.selected))
            assert all(a.client in opened.selected and a.base_version == opened.version for a in result.accepted)
            assert (result.status == "no-quorum") == (len(result.accepted) < cfg.min_updates)
            self.collecting = False

    def refused_participant(self, effect: UpdateRejected) -> bool:
        """A participant of the open round answered it and the answer was refused (bad base or content)."""
        r = effect.rejection
        update = self.updates.get(r.msg_id or "")
        if update is None or not self.collecting or self.finished is not None or self.accepted_ids[update.msg_id]:
            return False
        current = self.opened[self.round_no]
        return (update.run == RUN and update.round == self.round_no and update.client in current.selected
                and update.client not in self.answered[self.round_no] and update.client in self.announced)

    def after_event(self, event: Event, effects: list[Effect]) -> None:
        overdue = self.overdue
        if overdue is not None:
            ended = [e for e in effects if isinstance(e, Reduce) and e.round == overdue.round]
            ended += [e for e in effects if isinstance(e, RoundClosed) and e.result.round == overdue.round]
            assert ended, f"round {overdue.round} still collecting at {event.now} >= deadline {overdue.deadline}"

    def check_pending(self) -> None:
        core = self.core
        assert core is not None
        assert self.collecting == (core.phase == "collecting"), (self.collecting, core.phase)
        assert core.statistics().round == self.round_no
        if self.open_accepted:
            assert core.phase in ("collecting", "reducing")
            assert {(a.round, a.client) for a in self.open_accepted.values()} <= \
                {(self.round_no, c) for c in self.answered[self.round_no]}
        if self.reduce is not None:
            assert core.phase == "reducing"
            assert self.reduce.prompts == tuple(sorted((a.client, a.prompt) for a in self.open_accepted.values()))

    # ------------------------------------------------------------------ invariants
    @invariant()
    def a_round_nobody_can_answer_is_not_collecting(self) -> None:
        """Liveness: once every participant answered (refused answers included) or went offline the round
        stops collecting."""
        if self.collecting:
            opened = self.opened[self.round_no]
            done = self.gone | self.answered[self.round_no] | self.refused[self.round_no]
            assert not set(opened.selected) <= done, f"round {self.round_no}: all answered or left, still collecting"

    @invariant()
    def over_commitment_closes_at_the_target(self) -> None:
        """With over-commitment, the round stops collecting once `target` updates are in."""
        cfg = self.config
        if self.collecting and cfg is not None and cfg.overcommit > 0:
            opened = self.opened[self.round_no]
            assert len(self.answered[self.round_no]) < self.target(opened.live)

    @invariant()
    def results_hold_only_selected_clients(self) -> None:
        """Nothing unexpected: a round's aggregate holds only that round's participants, from its version."""
        for result in self.results:
            opened = self.opened[result.round]
            assert all(a.round == result.round and a.client in opened.selected for a in result.accepted)
            assert len({a.client for a in result.accepted}) == len(result.accepted), "two updates of one client"


def test_round_aggregator_state_machine() -> None:
    """Sync rounds: no lost or unexpected update, deadlines and departures close rounds, replay is exact."""
    run_state_machine_as_test(RoundMachine, settings=settings(**SETTINGS_KW))
