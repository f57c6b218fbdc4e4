"""The client as a sans-I/O state machine: events in, effects out.

The asyncio worker (:mod:`fedbus.runtime.client_node`) and the deterministic simulator both drive this one
object, so a client behaves the same over a real broker and in virtual time. It decides *what*
the client does under the scenario's conditions — how long its local work takes (latency and
stragglers), when it drops out of a round, hangs, crashes, leaves or comes back, and what a noisy,
hostile or stale client uploads — and leaves *how* (MQTT, clocks, the optimizer) to its driver.
Time arrives in each event (simulated seconds); randomness comes from generators seeded by
(scenario seed, client id), so a replay takes the same decisions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from fedbus.client.optimizer import LocalOutcome
from fedbus.faults import behaviour
from fedbus.protocol import topics
from fedbus.protocol.messages import (
    MAX_DETAIL_CHARS,
    MAX_REASON_CHARS,
    Failure,
    GlobalState,
    Message,
    Presence,
    Task,
    Update,
    UpdateStats,
)
from fedbus.scenario.conditions import ClientGroup, ScheduledEvent

# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    """The driver (re)connected the client to the broker."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalSeen:
    now: float
    state: GlobalState


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSeen:
    now: float
    task: Task


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkDone:
    """The optimizer finished a task (``outcome``) or failed (``error``, an exception of type ``error_type``),
    and its latency has passed."""

    now: float
    task: Task
    outcome: LocalOutcome | None
    error: str = ""
    error_type: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Alarm:
    """A time the core asked for with ``SetAlarm`` has come."""

    now: float


ClientEvent = Connected | GlobalSeen | TaskSeen | WorkDone | Alarm

# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    topic: str
    message: Message
    retain: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Optimize:
    """Run the local optimizer on ``task``; feed ``WorkDone`` no earlier than ``delay_s`` from now."""

    task: Task
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAlarm:
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """``abrupt``: drop the connection without DISCONNECT (the Last Will fires); else leave cleanly."""

    abrupt: bool
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """Something for the event log: a decision that sent nothing."""

    event: str
    detail: str = ""
    round: int | None = None


ClientEffect = Send | Optimize | SetAlarm | Disconnect | Reconnect | Stop | Note


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientProfile:
    """Who the client is and under which conditions it runs."""

    run: str
    client: str
    seed: int
    group: ClientGroup = field(default_factory=lambda: ClientGroup(name="client", count=1))
    step_latency_s: float = 0.0
    boot: str = "0"  # distinguishes message ids across process restarts


@dataclass(frozen=True, slots=True, kw_only=True)
class Carried:
    """What a core that goes to sleep keeps (a virtual population's client between the rounds it is selected
    for: :mod:`fedbus.sim.run`), a few hundred bytes: its message ids go on, a round it handled stays handled,
    and its scheduled events and a stale client's replay still hold. Its decisions, its link's fates and a noisy
    or hostile client's edits draw from generators of this wake's own (seeded by scenario seed, client id and
    ``wakes``), so a replay takes the same ones and a wake does not repeat the last one's."""

    seq: int
    done_rounds: frozenset[int]
    tasks_seen: int
    fired: frozenset[int]
    hang_until: float
    last_update: Update | None  # kept for a stale client only (it replays its first update)
    wakes: int


class ClientCore:
    """One client's decisions. ``handle`` never blocks and never reads a clock."""

    def __init__(self, profile: ClientProfile, carried: Carried | None = None) -> None:
        self.profile = profile
        p = profile
        self._wakes = 0 if carried is None else carried.wakes
        self._wake = f"/{self._wakes}" if self._wakes else ""  # in every generator's seed: each wake its own
        self._rng = random.Random(f"client/{p.seed}/{p.client}{self._wake}")
        self._behaviour: random.Random | None = None  # a noisy or hostile client's, made when first needed
        fraction = p.group.stragglers.fraction
        self.straggler = fraction > 0 and random.Random(f"straggler/{p.seed}/{p.client}").random() < fraction
        self._seq = 0
        self._state = "new"  # new | up | down | stopped
        self._hang_until = -1.0
        self._done_rounds: set[int] = set()
        self._working: Task | None = None
        self._next_task: Task | None = None  # arrived while working: started when the work is done
        self._global: GlobalState | None = None
        self._last_update: Update | None = None
        self._fired: set[int] = set()  # indices of scheduled events already triggered
        self._tasks_seen = 0
        if carried is not None:
            self._seq, self._tasks_seen, self._hang_until = carried.seq, carried.tasks_seen, carried.hang_until
            self._done_rounds, self._fired = set(carried.done_rounds), set(carried.fired)
            self._last_update = carried.last_update

    def carried(self) -> Carried:
        """What to build this core again from when it wakes (see :class:`Carried`)."""
        stale = self.profile.group.behaviour == "stale"
        return Carried(seq=self._seq, done_rounds=frozenset(self._done_rounds), tasks_seen=self._tasks_seen,
                       fired=frozenset(self._fired), hang_until=self._hang_until,
                       last_update=self._last_update if stale else None, wakes=self._wakes + 1)

    @property
    def state(self) -> str:
        return self._state

    @property
    def client(self) -> str:
        return self.profile.client

    @property
    def idle(self) -> bool:
        """Up, with no task in hand or waiting."""
        return self._state == "up" and self._working is None and self._next_task is None

    # ------------------------------------------------------------ messages it sends
    def _next_id(self) -> str:
        self._seq += 1
        return f"{self.profile.client}-{self.profile.boot}-{self._seq}"

    def presence(self, status: str, now: float) -> Presence:
        return Presence(run=self.profile.run, round=0, client=self.profile.client, msg_id=self._next_id(),
                        sent=now, status=status)  # type: ignore[arg-type]

    def will(self, now: float) -> Send:
        """The Last Will to register at connect: a retained 'offline' presence."""
        return Send(topic=topics.presence_topic(self.profile.run, self.profile.client),
                    message=self.presence("offline", now), retain=True)

    def online(self, now: float) -> Send:
        return Send(topic=topics.presence_topic(self.profile.run, self.profile.client),
                    message=self.presence("online", now), retain=True)

    # ------------------------------------------------------------ events
    def handle(self, event: ClientEvent) -> list[ClientEffect]:
        out: list[ClientEffect] = []
        if self._state == "stopped":
            return out
        if isinstance(event, Connected):
            self._connected(event.now, out)
        elif self._state != "up":
            out.append(Note(event="ignored-while-down", detail=type(event).__name__))
        elif isinstance(event, GlobalSeen):
            self._global = event.state
            if event.state.status == "finished":
                out.append(Send(topic=topics.presence_topic(self.profile.run, self.profile.client),
                                message=self.presence("offline", event.now), retain=True))
                out.append(Stop(reason="run finished"))
                self._state = "stopped"
        elif isinstance(event, TaskSeen):
            self._task(event.task, event.now, out)
        elif isinstance(event, WorkDone):
            self._work_done(event, out)
        elif isinstance(event, Alarm):
            self._alarm(event.now, out)
        return out

    def _connected(self, now: float, out: list[ClientEffect]) -> None:
        first = self._state == "new"
        self._state = "up"
        self._working = None
        self._next_task = None
        out.append(self.online(now))
        if first:
            for event in self.profile.group.availability.events:
                if event.at_s is not None:
                    out.append(SetAlarm(at=event.at_s))
            for interval in self.profile.group.availability.online:
                out += [SetAlarm(at=interval.start_s), SetAlarm(at=interval.end_s)]
            self._check_online_trace(now, out)

    def _task(self, task: Task, now: float, out: list[ClientEffect]) -> None:
        self._tasks_seen += 1
        if task.round in self._done_rounds:
            out.append(Note(event="ignored", detail="task already handled", round=task.round))
            return
        for i, event in enumerate(self.profile.group.availability.events):
            if i not in self._fired and event.at_round is not None and task.round >= event.at_round:
                self._fired.add(i)
                self._trigger(event, now, out)
                if self._state != "up" or now < self._hang_until:
                    out.append(Note(event="task-lost", detail=f"{event.kind} on round {task.round}",
                                    round=task.round))
                    return
        if now < self._hang_until:
            out.append(Note(event="hang-ignored", detail=f"hanging until {self._hang_until:g}", round=task.round))
            return
        if self._working is not None:  # one task at a time: finish (and send, late) first
            if self._next_task is not None:
                out.append(Note(event="task-superseded", detail=f"by round {task.round}",
                                round=self._next_task.round))
            self._next_task = task
            out.append(Note(event="task-queued", detail=f"still working on {self._working.round}", round=task.round))
            return
        self._start(task, now, out)

    def _start(self, task: Task, now: float, out: list[ClientEffect]) -> None:
        self._done_rounds.add(task.round)
        if self._rng.random() < self.profile.group.availability.dropout_p:
            out.append(Note(event="dropout", detail="skips this round", round=task.round))
            return
        group = self.profile.group
        delay = group.latency.sample(self._rng, self._tasks_seen - 1)
        if self.straggler:
            delay *= group.stragglers.slowdown
        delay += self.profile.step_latency_s * task.local_steps
        self._working = task
        out.append(Optimize(task=task, delay_s=delay))

    def _work_done(self, event: WorkDone, out: list[ClientEffect]) -> None:
        task = event.task
        if self._working is None or self._working.msg_id != task.msg_id:
            out.append(Note(event="work-discarded", detail="the client restarted or moved on", round=task.round))
            return
        self._working = None
        if event.now < self._hang_until:
            out.append(Note(event="work-discarded", detail="hanging", round=task.round))
            return
        if event.outcome is None:  # say so at once, or the round waits for this client until its deadline
            out.append(Note(event="local-failed", detail=event.error, round=task.round))
            out.append(Send(topic=topics.update_topic(self.profile.run, self.profile.client),
                            message=self._failure_for(task, event, event.now)))
        else:
            update = self._update_for(task, event.outcome, event.now, out)
            self._last_update = update
            out.append(Send(topic=topics.update_topic(self.profile.run, self.profile.client), message=update))
        if self._next_task is not None:
            queued, self._next_task = self._next_task, None
            self._start(queued, event.now, out)

    def _behaviour_rng(self) -> random.Random:
        if self._behaviour is None:
            p = self.profile
            self._behaviour = random.Random(f"behaviour/{p.seed}/{p.client}{self._wake}")
        return self._behaviour

    def _failure_for(self, task: Task, event: WorkDone, now: float) -> Failure:
        p = self.profile
        return Failure(run=p.run, round=task.round, client=p.client, msg_id=self._next_id(), sent=now,
                       base_version=task.version, reason=event.error[:MAX_DETAIL_CHARS],
                       error_type=event.error_type[:MAX_REASON_CHARS])

    def _update_for(self, task: Task, outcome: LocalOutcome, now: float, out: list[ClientEffect]) -> Update:
        p = self.profile
        prompt = outcome.prompt
        rnd, base = task.round, task.version
        kind = p.group.behaviour
        if kind == "noisy":
            prompt = behaviour.noisy(prompt, self._behaviour_rng(), p.group.noise)
        elif kind == "hostile":
            prompt = behaviour.hostile(prompt, self._behaviour_rng())
        elif kind == "stale" and self._last_update is not None:
            old = self._last_update  # replay its first update (round, base, prompt) under a new id
            prompt, rnd, base = old.prompt, old.round, old.base_version
        budget = task.max_prompt_chars
        if len(prompt) > budget:  # the aggregator would reject it as prompt-too-long: keep what fits
            out.append(Note(event="prompt-cut", detail=f"{len(prompt)} > {budget} characters: kept the first {budget}",
                            round=task.round))
            prompt = prompt[:budget]
        stats = UpdateStats(steps=outcome.steps, accepted_steps=outcome.accepted_steps,
                            batch_acc_before=outcome.batch_acc_before, batch_acc_after=outcome.batch_acc_after,
                            llm_calls=outcome.llm_calls, tokens=outcome.tokens,
                            duration_s=max(0.0, now - task.sent) if now >= task.sent else 0.0)
        return Update(run=p.run, round=rnd, client=p.client, msg_id=self._next_id(), sent=now,
                      base_version=base, prompt=prompt, stats=stats)

    # ------------------------------------------------------------ time
    def _alarm(self, now: float, out: list[ClientEffect]) -> None:
        for i, event in enumerate(self.profile.group.availability.events):
            if i not in self._fired and event.at_s is not None and event.at_s <= now:
                self._fired.add(i)
                self._trigger(event, now, out)
        self._check_online_trace(now, out)

    def _check_online_trace(self, now: float, out: list[ClientEffect]) -> None:
        online = self.profile.group.availability.online
        if not online or self._state != "up":
            return
        if not any(i.contains(now) for i in online):
            later = sorted(i.start_s for i in online if i.start_s > now)
            self._go_down(abrupt=False, reason="offline by availability trace", now=now, out=out,
                          back_at=later[0] if later else None)

    def _trigger(self, event: ScheduledEvent, now: float, out: list[ClientEffect]) -> None:
        if event.kind == "hang":
            self._hang_until = now + event.duration_s
            out.append(Note(event="hang", detail=f"for {event.duration_s:g} s"))
            return
        back = None if event.rejoin_after_s is None else now + event.rejoin_after_s
        self._go_down(abrupt=event.kind == "crash", reason=event.kind, now=now, out=out, back_at=back)

    def _go_down(self, *, abrupt: bool, reason: str, now: float, out: list[ClientEffect],
                 back_at: float | None) -> None:
        if self._state != "up":
            return
        if not abrupt:
            out.append(Send(topic=topics.presence_topic(self.profile.run, self.profile.client),
                            message=self.presence("offline", now), retain=True))
        self._state = "down"
        self._working = None
        self._next_task = None
        out.append(Disconnect(abrupt=abrupt, reason=reason))
        if back_at is not None:
            out.append(Reconnect(at=back_at))
        else:
            out.append(Note(event="gone", detail=f"{reason}, no rejoin"))

