"""Hypothesis state machines for the aggregator cores, and the harness they share.

A machine owns one core, a monotonic clock and a model of what it fed in and what came out. Every
update is judged by the model before delivery (the set of reasons it may be refused for; none means it
must be accepted), and so is every failure report (the sender check it may be refused for, or
'client-failed' when it answers the client's task: a failure is never accepted); every effect is
checked as it appears (``observe``), the model is compared with the core after every step
(``@invariant``), and at teardown the recorded events are replayed into a fresh core with the same
seed. The runtime's part is played by the rules: clients come and go, updates, failure reports and
garbage arrive, timers fire, and ``Reduce`` effects are carried out with ``fedbus.aggregator.strategies``.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.effects import (
    Accepted,
    ArmTimer,
    Effect,
    Publish,
    Reduce,
    Rejection,
    RoundClosed,
    RoundResult,
    RunFinished,
    UpdateAccepted,
    UpdateRejected,
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
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.strategies import carry_out, sentences
from fedbus.aggregator.stream import StreamAggregator
from fedbus.protocol.messages import DataSpec, Failure, GlobalState, Task, Update, UpdateStats

RUN = "run-s"
OTHER_RUN = "run-x"
POOL = ("c0", "c1", "c2", "c3")  # clients that may announce themselves
STRANGERS = ("ghost", "intruder")  # clients that never do
MAX_CHARS = 80
INITIAL_PROMPT = "Answer the question."
SENTENCES = ("Think step by step.", "Check the units.", "Answer in one word.", "Quote the source.",
             "Be brief.", "List the assumptions.")
BAD_PROMPTS = ("", "   ", "\n\t", "x" * (MAX_CHARS + 1), "y " * MAX_CHARS)
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=4, train_size=8, val_size=4, test_size=4)
STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.25, batch_acc_after=0.5, llm_calls=2,
                    tokens=10, duration_s=0.5)
INITIAL_CLIENTS = st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL))
ERRORS = (("EngineError", "HTTP 500 after 2 attempts"), ("", "the engine is down"),
          ("RuntimeError", "RuntimeError: a bug"))
SETTINGS_KW: dict[str, Any] = {"max_examples": 200, "stateful_step_count": 30, "deadline": None}
Core = RoundAggregator | StreamAggregator


def expected_concat(current: str, prompts: tuple[tuple[str, str], ...]) -> str:
    """The model of concat's documented rule (TextGrad's aggregate): every prompt as sent, in client order, one per
    line, repeats kept; nothing at all keeps the current prompt. Not cut: the core cuts."""
    return "\n".join(p for _client, p in prompts) if prompts else current


def expected_weighted(current: str, prompts: tuple[tuple[str, str], ...], weights: tuple[float, ...]) -> str:
    """The model of the weighted merge: the first ceil(w * n) of each update's n new sentences, appended in order."""
    merged = sentences(current)
    for (_client, prompt), weight in zip(prompts, weights, strict=True):
        novel = [s for s in dict.fromkeys(sentences(prompt)) if s not in merged]
        merged += novel[:math.ceil(weight * len(novel))]
    return " ".join(merged)


def reduce_and_check(reduce: Reduce) -> str:
    """Carry out a Reduce as the runtime does, and check the text against the strategy's documented rule.

    Content, not just bookkeeping: every accepted prompt is in a concat aggregate, whole and in client order, and
    a weighted merge keeps each update's share of new sentences. The core then cuts at max_chars (and says so).
    """
    merged = carry_out(reduce.strategy, reduce.current_prompt, reduce.prompts, reduce.max_chars, reduce.weights)
    if reduce.weights:
        assert merged == expected_weighted(reduce.current_prompt, reduce.prompts, reduce.weights)
        return merged
    assert merged == expected_concat(reduce.current_prompt, reduce.prompts)
    position = 0
    for _client, text in reduce.prompts:  # every accepted text, in order, whole
        found = merged.find(text, position)
        assert found >= 0, f"{text!r} missing (or out of order) in the concat aggregate {merged!r}"
        position = found + len(text)
    return merged


def make_update(*, client: str, rnd: int, base: int, prompt: str, msg_id: str, run: str = RUN) -> Update:
    return Update(run=run, round=rnd, client=client, msg_id=msg_id, sent=0.0, base_version=base, prompt=prompt,
                  stats=STATS)


def make_failure(*, client: str, rnd: int, base: int, msg_id: str, error: tuple[str, str] = ERRORS[0],
                 run: str = RUN) -> Failure:
    return Failure(run=run, round=rnd, client=client, msg_id=msg_id, sent=0.0, base_version=base, reason=error[1],
                   error_type=error[0])


def decision(effects: list[Effect], msg_id: str) -> str | None:
    """The one decision the core made about ``msg_id``: None for accepted, else the rejection reason."""
    found: list[str | None] = [None for e in effects if isinstance(e, UpdateAccepted) and e.accepted.msg_id == msg_id]
    found += [e.rejection.reason for e in effects  # not the end of the run dropping it from the buffer it just entered
              if isinstance(e, UpdateRejected) and e.rejection.msg_id == msg_id
              and not (found and e.rejection.reason == "run-finished")]
    assert len(found) == 1, f"one decision per delivery of {msg_id}, got {found}"
    return found[0]


def content_refusals(prompt: str) -> set[str]:
    out = set()
    if len(prompt) > MAX_CHARS:
        out.add("prompt-too-long")
    if not prompt.strip():
        out.add("empty-prompt")
    return out


def observable(core: Core) -> tuple[object, ...]:
    """What a duplicate delivery must not change: version, prompt, accepted sets and counts."""
    buffered = tuple(a.msg_id for a in core.buffered) if isinstance(core, StreamAggregator) else ()
    return (core.version, core.prompt, core.phase, core.statistics().accepted, buffered,
            tuple(tuple(a.msg_id for a in r.accepted) for r in core.results))


def build_core(config: AggregatorConfig, seed: int) -> Core:
    if config.mode == "sync":
        return RoundAggregator(config, random.Random(seed))
    return StreamAggregator(config, random.Random(seed))


class AggregatorMachine(RuleBasedStateMachine):
    """Rules and invariants every core shares; subclasses build the core and model its mode."""

    def __init__(self) -> None:
        super().__init__()
        self.core: Core | None = None
        self.config: AggregatorConfig | None = None
        self.seed = 0
        self.prompt_reduce = False
        self.now = 0.0
        self.log: list[tuple[Event, list[Effect]]] = []
        self.live: set[str] = set()
        self.announced: set[str] = set()
        self.armed: list[float] = []
        self.msg_seq = 0
        # updates: what went in, and what became of each msg_id
        self.updates: dict[str, Update] = {}
        self.failures: dict[str, Failure] = {}  # failure reports: answers that are recorded, never aggregated
        self.deliveries: Counter[str] = Counter()
        self.accepted_ids: Counter[str] = Counter()
        self.rejected_ids: Counter[str] = Counter()
        self.rejections: list[Rejection] = []
        self.open_accepted: dict[str, Accepted] = {}  # accepted, not yet in a result
        self.in_results: Counter[str] = Counter()
        self.dropped_at_finish: Counter[str] = Counter()  # buffered at the last aggregation: leftover rejections
        self.finish_drops: list[Rejection] = []  # their rejections
        self.results: list[RoundResult] = []
        self.closed_rounds: Counter[int] = Counter()
        self.tasks: list[Task] = []
        self.reduce: Reduce | None = None
        self.finished: RunFinished | None = None
        self.last_global: GlobalState | None = None
        self.prompt_of_version: dict[int, str] = {0: INITIAL_PROMPT}

    # ------------------------------------------------------------------ set-up, subclass hooks
    def build(self) -> Core:
        assert self.config is not None
        return build_core(self.config, self.seed)

    def start(self, config: AggregatorConfig, seed: int, clients: list[str], prompt_reduce: bool) -> None:
        """Start the core with ``clients`` online; ``prompt_reduce``: answer each Reduce at once."""
        self.config, self.seed, self.prompt_reduce = config, seed, prompt_reduce
        self.core = self.build()
        self.feed(Started(now=self.now))
        for client in clients:
            self.feed(ClientOnline(client=client, now=self.now))

    def judge(self, update: Update) -> set[str]:
        """The reasons ``update`` may be refused for right now; empty: it must be accepted."""
        raise NotImplementedError

    def judge_failure(self, failure: Failure) -> set[str]:
        """The reasons ``failure`` may be refused for right now; {'client-failed'}: it answers the client's task."""
        raise NotImplementedError

    def answerable(self) -> list[Task]:
        """Tasks the model thinks a client may still answer."""
        raise NotImplementedError

    def check_pending(self) -> None:
        """``open_accepted`` is what the core shows as pending (open round, buffer, Reduce in flight)."""
        raise NotImplementedError

    def on_event(self, event: Event) -> None:
        """Update the model before the core sees ``event``."""

    def on_effect(self, event: Event, effect: Effect) -> None:
        """Mode-specific checks of one effect, after the shared ones."""

    def after_event(self, event: Event, effects: list[Effect]) -> None:
        """Mode-specific checks of a whole step."""

    # ------------------------------------------------------------------ feeding and observing
    def feed(self, event: Event) -> list[Effect]:
        assert self.core is not None
        if isinstance(event, ClientOnline):
            self.announced.add(event.client)
            self.live.add(event.client)
        elif isinstance(event, ClientOffline):
            self.live.discard(event.client)
        self.on_event(event)
        effects = self.core.handle(event)
        self.log.append((event, effects))
        finished_before = self.finished is not None
        for effect in effects:
            if finished_before:
                assert isinstance(effect, UpdateRejected), f"after RunFinished the core emitted {effect}"
            self.observe(event, effect)
            self.on_effect(event, effect)
        assert sum(isinstance(e, Reduce) for e in effects) <= 1
        self.after_event(event, effects)
        if self.prompt_reduce and self.reduce is not None and self.finished is None:
            self.reduce_completes()
        return effects

    def observe(self, event: Event, effect: Effect) -> None:
        core = self.core
        assert core is not None
        if isinstance(effect, Publish):
            message = effect.message
            if isinstance(message, GlobalState):
                self.observe_global(message)
            elif isinstance(message, Task):
                assert message.client in self.live, f"task for {message.client}, who is not online"
                assert message.version <= core.version, "a task's base version is ahead of the global version"
                assert message.prompt == self.prompt_of_version[message.version]
                self.tasks.append(message)
        elif isinstance(effect, ArmTimer):
            assert effect.at >= event.now, f"timer armed in the past: {effect.at} < {event.now}"
            self.armed.append(effect.at)
        elif isinstance(effect, Reduce):
            assert self.reduce is None, "a second Reduce while one is in flight"
            assert effect.max_chars == MAX_CHARS
            assert [c for c, _ in effect.prompts] == sorted(c for c, _ in effect.prompts)
            self.reduce = effect
        elif isinstance(effect, UpdateAccepted):
            a = effect.accepted
            assert a.client in self.announced, f"accepted an update from {a.client}, who never came online"
            self.accepted_ids[a.msg_id] += 1
            self.open_accepted[a.msg_id] = a
        elif isinstance(effect, UpdateRejected):
            r = effect.rejection
            assert r.reason, "a rejection without a reason"
            if r.reason == "run-finished" and r.msg_id in self.open_accepted:  # the end drops a buffered update,
                self.open_accepted.pop(r.msg_id)  # saying so (a record and a receipt), before RunFinished
                self.dropped_at_finish[r.msg_id] += 1
                self.finish_drops.append(r)
                return
            self.rejections.append(r)
            if r.msg_id is not None:
                self.rejected_ids[r.msg_id] += 1
        elif isinstance(effect, RoundClosed):
            self.observe_closed(effect.result)
        elif isinstance(effect, RunFinished):
            self.observe_finished(effect)

    def observe_global(self, message: GlobalState) -> None:
        last = self.last_global
        if last is not None:
            assert message.version >= last.version, "the global version went backwards"
            if message.prompt != last.prompt:
                assert message.version > last.version, "a new global prompt without a new version"
        known = self.prompt_of_version.setdefault(message.version, message.prompt)
        assert known == message.prompt, f"two prompts for version {message.version}"
        self.last_global = message

    def observe_closed(self, result: RoundResult) -> None:
        assert not self.closed_rounds[result.round], f"round {result.round} closed twice"
        self.closed_rounds[result.round] += 1
        self.results.append(result)
        for a in result.accepted:
            assert self.open_accepted.pop(a.msg_id, None) == a, f"{a.msg_id} in a result but not open"
            self.in_results[a.msg_id] += 1
        bump = 1 if result.status == "aggregated" else 0
        assert result.version_after == result.version_before + bump
        if self.reduce is not None and self.reduce.round == result.round:
            self.reduce = None

    def observe_finished(self, finished: RunFinished) -> None:
        self.finished = finished
        reported = Counter(r for result in self.results for r in result.rejected)
        reported.update(finished.leftover_rejections)
        emitted = Counter(self.rejections) + Counter(self.finish_drops)
        assert not emitted - reported, f"rejections never reported: {list(emitted - reported)}"
        # the buffered updates the end dropped were rejected as any update is (they used to be only in the leftovers)
        assert not reported - emitted, f"rejections never emitted: {list(reported - emitted)}"

    # ------------------------------------------------------------------ delivering updates
    def fresh_id(self, client: str) -> str:
        self.msg_seq += 1
        return f"{client}-m{self.msg_seq}"

    def deliver(self, update: Update) -> str | None:
        """Feed ``update``; check the decision against the model's judgement; return the reason (None: accepted)."""
        allowed = self.judge(update)
        if self.accepted_ids[update.msg_id]:
            allowed = {"duplicate"}
        elif update.run != RUN:
            allowed = {"wrong-run"}
        self.deliveries[update.msg_id] += 1
        self.updates.setdefault(update.msg_id, update)
        reason = decision(self.feed(UpdateReceived(update=update, now=self.now)), update.msg_id)
        if allowed:
            assert reason in allowed, f"{update} refused as {reason!r}, expected one of {sorted(allowed)}"
        else:
            assert reason is None, f"{update} refused as {reason!r}, but nothing is wrong with it"
        return reason

    def deliver_failure(self, failure: Failure) -> str:
        """Feed a failure report; check it is recorded once, as the model judged, and never accepted."""
        allowed = {"wrong-run"} if failure.run != RUN else self.judge_failure(failure)
        self.deliveries[failure.msg_id] += 1
        self.failures.setdefault(failure.msg_id, failure)
        effects = self.feed(FailureReceived(failure=failure, now=self.now))
        reason = decision(effects, failure.msg_id)
        assert reason is not None, f"{failure} was accepted like an update"
        assert reason in allowed, f"{failure} recorded as {reason!r}, expected one of {sorted(allowed)}"
        [rejection] = [e.rejection for e in effects
                       if isinstance(e, UpdateRejected) and e.rejection.msg_id == failure.msg_id]
        assert (rejection.kind, rejection.client, rejection.round) == ("failure", failure.client, failure.round)
        if reason == "client-failed":
            assert failure.reason in rejection.detail and failure.error_type in rejection.detail
        return reason

    def fail(self, task: Task, error: tuple[str, str], **changes: Any) -> Failure:
        fields: dict[str, Any] = {"client": task.client, "rnd": task.round, "base": task.version, "error": error}
        fields.update(changes)
        return make_failure(msg_id=self.fresh_id(str(fields["client"])), **fields)

    def reply(self, task: Task, prompt: str, **changes: Any) -> Update:
        fields: dict[str, Any] = {"client": task.client, "rnd": task.round, "base": task.version, "prompt": prompt}
        fields.update(changes)
        return make_update(msg_id=self.fresh_id(str(fields["client"])), **fields)

    def pick(self, tasks: list[Task], index: int) -> Task:
        return tasks[index % len(tasks)]

    # ------------------------------------------------------------------ rules: membership
    @precondition(lambda self: self.finished is None)
    @rule(client=st.sampled_from(POOL))
    def client_comes_online(self, client: str) -> None:
        """Join, rejoin after a crash, or a repeated (retained) presence."""
        self.feed(ClientOnline(client=client, now=self.now))

    @precondition(lambda self: self.finished is None)
    @rule(client=st.sampled_from(POOL + STRANGERS[:1]), reason=st.sampled_from(["will", "left"]))
    def client_goes_offline(self, client: str, reason: str) -> None:
        self.feed(ClientOffline(client=client, now=self.now, reason=reason))

    # ------------------------------------------------------------------ rules: updates
    @precondition(lambda self: self.answerable())
    @rule(index=st.integers(0, 7), prompt=st.sampled_from(SENTENCES), extra=st.sampled_from(SENTENCES))
    def client_answers_its_task(self, index: int, prompt: str, extra: str) -> None:
        task = self.pick(self.answerable(), index)
        self.deliver(self.reply(task, f"{prompt} {extra} {task.client} says so."))

    @precondition(lambda self: self.answerable())
    @rule(prompt=st.sampled_from(SENTENCES), reverse=st.booleans())
    def every_working_client_answers(self, prompt: str, reverse: bool) -> None:
        """All the tasks the model thinks open are answered, in one order or the other."""
        for task in sorted(self.answerable(), key=lambda t: t.client, reverse=reverse):
            if task in self.answerable():
                self.deliver(self.reply(task, f"{prompt} {task.client} agrees."))

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15), offset=st.sampled_from([-2, -1, 0, 1, 3]))
    def client_answers_another_round(self, index: int, offset: int) -> None:
        """An old task answered late (offset 0), or a round number that is past or still to come."""
        task = self.pick(self.tasks, index)
        self.deliver(self.reply(task, f"Late words from {task.client}.", rnd=max(0, task.round + offset)))

    @precondition(lambda self: self.accepted_ids)
    @rule(index=st.integers(0, 15))
    def client_sends_a_second_update(self, index: int) -> None:
        """A second update (new msg_id) for a task the client already answered."""
        first = self.updates[sorted(self.accepted_ids)[index % len(self.accepted_ids)]]
        reason = self.deliver(make_update(client=first.client, rnd=first.round, base=first.base_version,
                                          prompt="Another idea.", msg_id=self.fresh_id(first.client)))
        assert reason is not None, "a second update for an answered task was accepted"

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15), client=st.sampled_from(STRANGERS))
    def stranger_sends_an_update(self, index: int, client: str) -> None:
        task = self.pick(self.answerable() or self.tasks, index)
        reason = self.deliver(self.reply(task, "Trust me.", client=client))
        assert reason == "unknown-client"

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15))
    def update_for_another_run(self, index: int) -> None:
        task = self.pick(self.answerable() or self.tasks, index)
        assert self.deliver(self.reply(task, "Wrong run.", run=OTHER_RUN)) == "wrong-run"

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15), delta=st.sampled_from([-1, 1, 2]))
    def update_from_a_wrong_base_version(self, index: int, delta: int) -> None:
        task = self.pick(self.answerable() or self.tasks, index)
        base = task.version + delta if task.version + delta >= 0 else task.version + 1
        assert self.deliver(self.reply(task, "Wrong base.", base=base)) is not None

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15), prompt=st.sampled_from(BAD_PROMPTS))
    def update_with_a_bad_prompt(self, index: int, prompt: str) -> None:
        """An empty, blank or overlong prompt."""
        task = self.pick(self.answerable() or self.tasks, index)
        assert self.deliver(self.reply(task, prompt)) is not None

    @precondition(lambda self: self.updates)
    @rule(index=st.integers(0, 31))
    def update_delivered_again(self, index: int) -> None:
        """The bus delivers an update a second time (same msg_id)."""
        self.deliver(self.updates[sorted(self.updates)[index % len(self.updates)]])

    # ------------------------------------------------------------------ rules: failure reports
    @precondition(lambda self: self.answerable())
    @rule(index=st.integers(0, 7), error=st.sampled_from(ERRORS))
    def client_reports_a_failure(self, index: int, error: tuple[str, str]) -> None:
        """A working client's optimizer failed: it says so instead of sending an update."""
        self.deliver_failure(self.fail(self.pick(self.answerable(), index), error))

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15), offset=st.sampled_from([-2, -1, 0, 1, 3]), base=st.sampled_from([0, 1, 5]))
    def client_reports_a_failure_for_another_task(self, index: int, offset: int, base: int) -> None:
        """A failure for an old task (offset 0), a round past or to come, from any base version."""
        task = self.pick(self.tasks, index)
        self.deliver_failure(self.fail(task, ERRORS[1], rnd=max(0, task.round + offset), base=base))

    @precondition(lambda self: self.tasks)
    @rule(index=st.integers(0, 15), client=st.sampled_from((*STRANGERS, None)))
    def failure_from_a_stranger_or_another_run(self, index: int, client: str | None) -> None:
        """A stranger's failure is unknown-client; one naming another run is wrong-run."""
        task = self.pick(self.answerable() or self.tasks, index)
        if client is None:
            assert self.deliver_failure(self.fail(task, ERRORS[0], run=OTHER_RUN)) == "wrong-run"
        else:
            assert self.deliver_failure(self.fail(task, ERRORS[0], client=client)) == "unknown-client"

    @precondition(lambda self: self.failures)
    @rule(index=st.integers(0, 31))
    def failure_delivered_again(self, index: int) -> None:
        """The bus delivers a failure report a second time (same msg_id): recorded again, never aggregated."""
        self.deliver_failure(self.failures[sorted(self.failures)[index % len(self.failures)]])

    @precondition(lambda self: self.tasks or self.finished is not None)
    @rule(client=st.sampled_from((*POOL, None)), reason=st.sampled_from(["not-json", "too-big", "wrong-kind"]))
    def malformed_update(self, client: str | None, reason: str) -> None:
        effects = self.feed(UpdateMalformed(client=client, reason=reason, detail="bytes", now=self.now))
        rejected = [e.rejection for e in effects if isinstance(e, UpdateRejected)]
        assert [(r.reason, r.client, r.msg_id) for r in rejected] == [(f"malformed:{reason}", client, None)]

    @precondition(lambda self: self.updates or self.answerable())
    @rule(index=st.integers(0, 31), fresh=st.booleans())
    def twice_is_like_once(self, index: int, fresh: bool) -> None:
        """Idempotence: a core fed an update twice looks like a clone fed it once."""
        core = self.core
        assert core is not None
        tasks = self.answerable()
        if fresh and tasks:
            update = self.reply(self.pick(tasks, index), "Twice told. Once heard.")
        else:
            update = self.updates[sorted(self.updates)[index % len(self.updates)]] if self.updates else \
                self.reply(self.pick(tasks, index), "Twice told.")
        clone = copy.deepcopy(core)
        clone.handle(UpdateReceived(update=update, now=self.now))
        prompt_reduce, self.prompt_reduce = self.prompt_reduce, False  # the clone gets no Reduced either
        first = self.deliver(update)
        second = self.deliver(update)
        self.prompt_reduce = prompt_reduce
        if first is None:
            assert second == "duplicate"
        assert observable(core) == observable(clone)
        if prompt_reduce and self.reduce is not None and self.finished is None:
            self.reduce_completes()

    # ------------------------------------------------------------------ rules: time and reduce results
    def fire(self) -> None:
        self.armed = [at for at in self.armed if at > self.now]
        self.feed(TimerFired(now=self.now))

    @precondition(lambda self: self.finished is None)
    @rule(dt=st.sampled_from([0.5, 2.0, 6.0, 11.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.fire()

    @precondition(lambda self: self.armed and self.finished is None)
    @rule()
    def next_timer_fires(self) -> None:
        self.now = max(self.now, min(self.armed))
        self.fire()

    @precondition(lambda self: self.reduce is not None and self.finished is None)
    @rule()
    def reduce_completes(self) -> None:
        reduce = self.reduce
        assert reduce is not None
        merged = reduce_and_check(reduce)
        self.feed(Reduced(round=reduce.round, prompt=merged, now=self.now))
        closed = self.core.results[-1] if self.core is not None and self.core.results else None
        if closed is not None and closed.round == reduce.round and closed.status == "aggregated":
            # the core keeps the first max_chars of the aggregate and says how much it cut: no silent loss
            assert closed.prompt == merged[:reduce.max_chars]
            assert (closed.aggregate_chars, closed.cut_chars) == (len(merged), max(0, len(merged) - reduce.max_chars))

    @precondition(lambda self: self.reduce is not None and self.finished is None)
    @rule()
    def reduce_fails(self) -> None:
        reduce = self.reduce
        assert reduce is not None
        self.feed(ReduceFailed(round=reduce.round, reason="llm down", now=self.now))

    # ------------------------------------------------------------------ invariants
    @invariant()
    def no_update_is_lost(self) -> None:
        """Every delivery is in exactly one aggregate (closed or pending) or rejected with a reason."""
        if self.core is None:
            return
        for msg_id, n in self.deliveries.items():
            aggregates = self.in_results[msg_id] + (msg_id in self.open_accepted) + self.dropped_at_finish[msg_id]
            assert aggregates == self.accepted_ids[msg_id] <= 1, msg_id
            assert aggregates + self.rejected_ids[msg_id] == n, f"{msg_id}: delivered {n}, accounted {aggregates}"
        if self.finished is not None:
            assert not self.open_accepted, f"the run ended with accepted updates in no result: {self.open_accepted}"
        self.check_pending()
        stats = self.core.statistics()
        assert stats.accepted == sum(self.accepted_ids.values())
        assert stats.rejected == len(self.rejections) + sum(self.dropped_at_finish.values())
        assert stats.rounds_closed == len(self.results) and stats.version == self.core.version

    @invariant()
    def nothing_unexpected_in_an_aggregate(self) -> None:
        """Aggregates only hold updates from clients that announced themselves."""
        for result in self.results:
            assert {a.client for a in result.accepted} <= self.announced

    def teardown(self) -> None:
        """Determinism: the recorded events, replayed into a fresh core with the same seed, give the same effects."""
        if self.core is None:
            return
        replay = self.build()
        for event, effects in self.log:
            assert replay.handle(event) == effects, f"replay differs at {event}"
