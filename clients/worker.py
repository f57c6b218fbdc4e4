"""The client worker: joins a federation over MQTT and answers tasks with optimized prompts.

The same coroutine runs inside ``fedbus run`` (one asyncio task per client, each with its own
MQTT connection) and alone in ``fedbus client`` on another machine.

Life of a client: connect with a persistent session and a retained Last Will 'offline';
subscribe to the global state and its own task topic; announce 'online' (retained); for each
task, optimize locally from the task's prompt and publish an update; leave cleanly (retained
'offline') when the global state says the run finished.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from clients.optimizer import LocalOptimizer, make_optimizer
from fedbus.errors import EngineError, RemoteProtocolError
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.messages import DataSpec, GlobalState, Presence, Task, Update, UpdateStats
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import LastWill, MqttBus
from fedbus.runtime.eventlog import EventLog

log = structlog.get_logger("fedbus.client")
OptimizerFactory = Callable[[str, DataSpec, str, "int | None"], LocalOptimizer]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """One client: who it is, where the broker is, which shard of the data is its own."""

    run: str
    client: str
    broker: BrokerAddress
    shard: int | None = None
    engine: str | None = None  # None: the engine the federation announces
    max_message_bytes: int = codec.DEFAULT_MAX_BYTES
    step_delay_s: float = 0.0  # simulated extra wall time per local step (scenario clients.step_latency_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientReport:
    """How a client's session ended."""

    client: str
    rounds_done: int
    reason: str


class _Sender:
    """Builds this client's messages with unique ids (a random boot token + a counter)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._boot = secrets.token_hex(4)
        self._seq = 0

    def next_id(self) -> str:
        self._seq += 1
        return f"{self.config.client}-{self._boot}-{self._seq}"

    def presence(self, status: str, engine: str) -> Presence:
        return Presence(run=self.config.run, round=0, client=self.config.client, msg_id=self.next_id(),
                        sent=time.time(), status=status, engine=engine)  # type: ignore[arg-type]


async def run_client(
    config: ClientConfig,
    events: EventLog | None = None,
    make: OptimizerFactory = make_optimizer,
) -> ClientReport:
    """Take part in run ``config.run`` until it finishes; return how it ended."""
    events = events or EventLog(None)
    sender = _Sender(config)
    limits = codec.Limits(max_bytes=config.max_message_bytes)
    cid = config.client
    engine_label = config.engine or ""
    will = LastWill(topic=topics.presence_topic(config.run, cid),
                    payload=codec.encode(sender.presence("offline", engine_label)))
    seen = SeenIds(10_000)
    optimizer: LocalOptimizer | None = None
    last_global: GlobalState | None = None
    done_rounds: set[int] = set()
    with structlog.contextvars.bound_contextvars(client=cid, run=config.run):
        async with MqttBus(config.broker, identifier=f"{config.run}.{cid}", will=will) as bus:
            await bus.subscribe(topics.global_topic(config.run), topics.task_topic(config.run, cid))
            online = sender.presence("online", engine_label)
            await bus.publish(topics.presence_topic(config.run, cid), codec.encode(online), retain=True)
            events.record("sent", kind="presence", client=cid, status="online", id=online.msg_id)
            log.debug("client online")
            reason = "connection closed"
            async for incoming in bus.messages():
                try:
                    message = codec.decode(incoming.payload, limits)
                except RemoteProtocolError as exc:
                    events.record("dropped", client=cid, topic=incoming.topic, reason=str(exc))
                    log.warning("dropped malformed message", topic=incoming.topic, reason=str(exc))
                    continue
                if not seen.first_time(message.msg_id):
                    events.record("duplicate-delivery", client=cid, id=message.msg_id)
                    continue
                if isinstance(message, GlobalState) and message.run == config.run:
                    last_global = message
                    if message.status == "finished":
                        reason = "run finished"
                        break
                elif isinstance(message, Task) and message.client == cid and message.run == config.run:
                    if message.round in done_rounds:
                        events.record("ignored", client=cid, kind="task", round=message.round, reason="already done")
                        continue
                    if last_global is None:
                        events.record("ignored", client=cid, kind="task", round=message.round,
                                      reason="task before global state")
                        log.warning("task arrived before the global state; ignoring", round=message.round)
                        continue
                    if optimizer is None:
                        optimizer = make(config.engine or last_global.engine, last_global.data, cid, config.shard)
                    update = await _work(optimizer, message, sender, events, config.step_delay_s)
                    if update is not None:
                        await bus.publish(topics.update_topic(config.run, cid), codec.encode(update))
                        events.record("sent", kind="update", client=cid, round=update.round, id=update.msg_id,
                                      prompt_chars=len(update.prompt))
                    done_rounds.add(message.round)
            bye = sender.presence("offline", engine_label)
            await bus.publish(topics.presence_topic(config.run, cid), codec.encode(bye), retain=True)
            events.record("sent", kind="presence", client=cid, status="offline", id=bye.msg_id)
    return ClientReport(client=cid, rounds_done=len(done_rounds), reason=reason)


async def _work(
    optimizer: LocalOptimizer, task: Task, sender: _Sender, events: EventLog, step_delay_s: float
) -> Update | None:
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(round=task.round):
        events.record("received", kind="task", client=task.client, round=task.round, id=task.msg_id)
        try:
            outcome = await optimizer.optimize(task.prompt, round=task.round, steps=task.local_steps,
                                               batch_size=task.batch_size)
        except EngineError as exc:
            events.record("local-failed", client=task.client, round=task.round, reason=str(exc))
            log.warning("local optimization failed", reason=str(exc))
            return None
        await asyncio.sleep(step_delay_s * outcome.steps)
        stats = UpdateStats(steps=outcome.steps, accepted_steps=outcome.accepted_steps,
                            batch_acc_before=outcome.batch_acc_before, batch_acc_after=outcome.batch_acc_after,
                            llm_calls=outcome.llm_calls, tokens=outcome.tokens,
                            duration_s=max(0.0, time.monotonic() - started))
        return Update(run=task.run, round=task.round, client=task.client, msg_id=sender.next_id(),
                      sent=time.time(), base_version=task.version, prompt=outcome.prompt, stats=stats)
