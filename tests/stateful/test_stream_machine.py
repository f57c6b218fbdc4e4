"""The StreamAggregator as Hypothesis state machines: buffered (FedBuff, buffer 2-4) and async (FedAsync)."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, run_state_machine_as_test

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import (
    Effect,
    Publish,
    Reduce,
    RoundClosed,
    RunFinished,
    UpdateAccepted,
    UpdateRejected,
)
from fedbus.aggregator.events import ClientOffline, Event, FailureReceived, TimerFired, UpdateReceived
from fedbus.aggregator.staleness import StalenessWeighting
from fedbus.aggregator.stream import StreamAggregator
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

WEIGHTINGS = st.builds(StalenessWeighting, kind=st.sampled_from(["constant", "polynomial", "hinge"]),
                       a=st.sampled_from([0.5, 2.0]), b=st.sampled_from([0.0, 1.0]))


@st.composite
def stream_configs(draw: st.DrawFn, mode: str) -> AggregatorConfig:
    expected = draw(st.integers(1, 4))
    return AggregatorConfig(
        run=RUN, rounds=draw(st.integers(2, 6)), expected_clients=expected, initial_prompt=INITIAL_PROMPT,
        engine="surrogate", data=DATA, fraction=draw(st.sampled_from([0.5, 1.0])),
        min_clients=draw(st.integers(1, expected)), round_deadline_s=10.0, join_timeout_s=30.0,
        max_prompt_chars=MAX_CHARS, mode=mode, buffer_size=draw(st.integers(2, 4)) if mode == "buffered" else 1,
        max_staleness=draw(st.integers(0, 3)), weighting=draw(WEIGHTINGS))


class StreamMachine(AggregatorMachine):
    """Models each client's one open task, the buffer and the batch being reduced."""

    MODE = "buffered"

    def __init__(self) -> None:
        super().__init__()
        self.open_task: dict[str, Task] = {}
        self.in_flight: set[str] = set()  # msg_ids of the batch being reduced
        self.answered: set[tuple[str, int]] = set()  # (client, task round) accepted
        self.resting: dict[str, float] = {}  # client -> its failed task's deadline: no new task before it

    @initialize(config=st.data(), seed=st.integers(0, 2**16), clients=INITIAL_CLIENTS, prompt=st.booleans())
    def begin(self, config: st.DataObject, seed: int, clients: list[str], prompt: bool) -> None:
        self.start(config.draw(stream_configs(self.MODE)), seed, clients, prompt)

    @property
    def stream(self) -> StreamAggregator:
        assert isinstance(self.core, StreamAggregator)
        return self.core

    @property
    def k(self) -> int:
        return self.stream.config.buffer_size if self.MODE == "buffered" else 1

    # ------------------------------------------------------------------ model
    def judge(self, update: Update) -> set[str]:
        cfg = self.stream.config
        out = content_refusals(update.prompt)
        if update.client not in self.announced:
            out.add("unknown-client")
        if self.finished is not None:
            out.add("run-finished")
        task = self.open_task.get(update.client)
        if task is None or task.round != update.round:
            out.add("not-assigned")
        elif update.base_version != task.version:
            out.add("wrong-base-version")
        elif self.stream.version - update.base_version > cfg.max_staleness:
            out.add("too-stale")
        return out

    def judge_failure(self, failure: Failure) -> set[str]:
        out = set()
        if failure.client not in self.announced:
            out.add("unknown-client")
        if self.finished is not None:
            out.add("run-finished")
        task = self.open_task.get(failure.client)
        if task is None or task.round != failure.round:
            out.add("not-assigned")
        return out or {"client-failed"}

    def answerable(self) -> list[Task]:
        return [self.open_task[c] for c in sorted(self.open_task)]

    def concurrency(self) -> int:
        cfg, live = self.stream.config, len(self.live)
        return min(live, max(cfg.min_clients, math.ceil(cfg.fraction * live)))

    def on_event(self, event: Event) -> None:
        if isinstance(event, ClientOffline):
            self.open_task.pop(event.client, None)
        elif isinstance(event, UpdateReceived):
            u = event.update
            task = self.open_task.get(u.client)
            if task is not None and task.round == u.round and u.run == RUN and not self.accepted_ids[u.msg_id] \
                    and u.client in self.announced and self.finished is None:
                del self.open_task[u.client]  # answered: whatever the verdict, the task is done
        elif isinstance(event, FailureReceived):
            f = event.failure
            task = self.open_task.get(f.client)
            if task is not None and task.round == f.round and f.run == RUN and f.client in self.announced \
                    and self.finished is None:
                del self.open_task[f.client]  # answered with a failure: the slot is free, the client rests
                self.resting[f.client] = task.sent + task.deadline_s
        elif isinstance(event, TimerFired):
            for client, task in list(self.open_task.items()):
                if task.sent + task.deadline_s <= event.now:
                    del self.open_task[client]

    def on_effect(self, event: Event, effect: Effect) -> None:
        core, cfg = self.stream, self.stream.config
        if isinstance(effect, Publish) and isinstance(effect.message, Task):
            task = effect.message
            assert task.client not in self.open_task, f"{task.client} handed a task while it holds one"
            assert self.resting.get(task.client, event.now) <= event.now, \
                f"{task.client} handed a task at {event.now} while resting after a failure until {self.resting}"
            assert task.version == core.version and task.deadline_s == cfg.round_deadline_s
            self.open_task[task.client] = task
        elif isinstance(effect, UpdateAccepted):
            a = effect.accepted
            assert a.staleness == core.version - a.base_version <= cfg.max_staleness
            assert a.weight == cfg.weighting.weight(a.staleness)
            assert (a.client, a.round) not in self.answered, f"task {a.round} of {a.client} answered twice"
            self.answered.add((a.client, a.round))
        elif isinstance(effect, Reduce):
            batch = [a for m, a in self.open_accepted.items() if m not in {b.msg_id for b in core.buffered}]
            batch.sort(key=lambda a: (a.client, a.msg_id))
            assert effect.round == len(self.results) + 1 and effect.current_prompt == core.prompt
            assert effect.prompts == tuple((a.client, a.prompt) for a in batch), "the Reduce is not the batch"
            assert effect.weights == tuple(a.weight for a in batch) and len(batch) == self.k
            self.in_flight = {a.msg_id for a in batch}
        elif isinstance(effect, RoundClosed):
            result = effect.result
            assert {a.msg_id for a in result.accepted} == self.in_flight, "a result that is not the reduced batch"
            assert result.round == len(self.results), "aggregations are numbered 1, 2, ... in order"
            self.in_flight = set()
        elif isinstance(effect, UpdateRejected) and effect.rejection.reason == "client-failed":
            r = effect.rejection
            assert r.kind == "failure" and r.client not in self.open_task, "a failure that left its task open"
        elif isinstance(effect, RunFinished):
            self.open_task.clear()

    def after_event(self, event: Event, effects: list[Effect]) -> None:
        if any(isinstance(e, Publish) and isinstance(e.message, Task) for e in effects):
            assert len(self.open_task) <= self.concurrency(), "more clients working than the concurrency allows"

    def check_pending(self) -> None:
        core = self.stream
        if self.finished is not None:
            return
        buffered = {a.msg_id for a in core.buffered}
        assert len(buffered) == len(core.buffered) and buffered <= set(self.open_accepted)
        assert set(self.open_accepted) - buffered == self.in_flight
        assert bool(self.in_flight) == (self.reduce is not None)
        if self.reduce is None and core.phase == "running":
            assert len(buffered) < self.k, "a full buffer and no Reduce asked for"

    # ------------------------------------------------------------------ invariants
    @invariant()
    def staleness_is_bounded_and_weights_do_not_grow(self) -> None:
        """No accepted update is staler than max_staleness; a staler update never weighs more."""
        cfg = self.stream.config
        accepted = [a for r in self.results for a in r.accepted] + list(self.open_accepted.values())
        assert all(a.staleness <= cfg.max_staleness for a in accepted)
        by_staleness = sorted((a.staleness, -a.weight) for a in accepted)
        assert [-w for _, w in by_staleness] == sorted((-w for _, w in by_staleness), reverse=True)

    @invariant()
    def results_hold_only_answers_to_tasks(self) -> None:
        """Nothing unexpected: every aggregated update answers a task that client was given, from its version."""
        given = Counter((t.client, t.round, t.version) for t in self.tasks)
        for result in self.results:
            assert all(given[(a.client, a.round, a.base_version)] == 1 for a in result.accepted)


class BufferedMachine(StreamMachine):
    MODE = "buffered"


class AsyncMachine(StreamMachine):
    MODE = "async"


def test_buffered_aggregator_state_machine() -> None:
    """Buffered (FedBuff): no lost, unexpected or too-stale update; versions rise; replay is exact."""
    run_state_machine_as_test(BufferedMachine, settings=settings(**SETTINGS_KW))


def test_async_aggregator_state_machine() -> None:
    """Async (FedAsync): no lost, unexpected or too-stale update; versions rise; replay is exact."""
    run_state_machine_as_test(AsyncMachine, settings=settings(**SETTINGS_KW))
