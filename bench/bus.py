"""Update throughput: fedbus's own update path against bare aiomqtt, on the same broker in the same run.

For each broker (the embedded rumqttd via iotcore, and a mosquitto started here from
broker-config/mosquitto.conf on a free loopback port, without persistence), the measurements below
alternate ``--repeat`` times and the median of each is reported:

- bare: one aiomqtt publisher and one aiomqtt subscriber, QoS 1, random payloads of a fixed size.
- fedbus: prebuilt ``Update`` messages, each from a distinct client, of the same encoded size;
  ``codec.encode`` + ``MqttBus.publish`` to each client's update topic; another ``MqttBus``
  subscribed to the run's update filter decodes, deduplicates (``SeenIds``) and feeds each update
  to a real ``RoundAggregator`` whose round 1 is open for all clients. The bench checks that the
  core accepted every update.
- signed+sealed: the same updates on protocol v2 (docs/SECURITY.md), each client with a key of its own:
  ``codec.encode``, then the client's ``Security.wrap`` (``seal_body`` to the aggregator's X25519 key,
  ``sign`` with the client's Ed25519 key) on send; on receive, the aggregator's checks (``verify``
  against its authorized keys, the topic's client as the signer, and ``open_body``) done ahead on its
  check pool (fedbus/runtime/check_pool.py: worker processes, in batches, as ``fedbus run`` does once
  deliveries pile up; started before the clock), then ``codec.decode``, deduplication on (signer, id)
  and the core. The v1 message is the same 2 KB as above; on the wire it grows by the sealing and the
  frame (printed).
- signed+sealed, sent prebuilt: the same, with every frame sealed and signed before the clock starts: the
  aggregator's side alone, as in a federation, where each client seals and signs on its own machine.

All publish in windows of 100 (``asyncio.gather``). Throughput = messages / seconds from the first
publish to the last receive. The targets: fedbus >= 0.80 x bare, signed+sealed >= 0.70 x bare. First, without
a broker, the aggregator event loop's CPU per signed+sealed update, checked inline and checked ahead. Every
measurement has its own topics, run id, keys and clean-session connections. The bare baseline imports
aiomqtt directly on purpose.

    .venv/bin/python bench/bus.py [--messages 5000 | --quick] [--repeat 3] [--brokers embedded,mosquitto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiomqtt

from fedbus.aggregator.effects import Publish, UpdateAccepted
from fedbus.aggregator.events import ClientOnline, Started, UpdateReceived
from fedbus.aggregator.rounds import AggregatorConfig, RoundAggregator
from fedbus.protocol import codec, topics
from fedbus.protocol.dedup import SeenIds
from fedbus.protocol.ids import AGGREGATOR
from fedbus.protocol.messages import DataSpec, Task, Update, UpdateStats
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.broker import EmbeddedBroker, free_port
from fedbus.runtime.bus import MqttBus
from fedbus.runtime.check_pool import CheckPool, Prechecker
from fedbus.runtime.limits import ensure_open_files
from fedbus.security.checks import Checked, Job, Refused
from fedbus.security.crypto import derive, random_bytes
from fedbus.security.keys import AuthorizedKeys
from fedbus.security.policy import Security

PAYLOAD_BYTES = 2048
WINDOW = 100
TARGET = 0.80
SECURE_TARGET = 0.70  # the target for the signed+sealed path
MOSQUITTO_CONF = Path(__file__).resolve().parent.parent / "broker-config" / "mosquitto.conf"


@contextlib.contextmanager
def embedded_broker() -> Iterator[BrokerAddress]:
    with EmbeddedBroker() as broker:
        yield broker.address


@contextlib.contextmanager
def mosquitto_broker(binary: str) -> Iterator[BrokerAddress]:
    """mosquitto from the project's config, moved to a free loopback port, persistence off."""
    port = free_port()
    text = MOSQUITTO_CONF.read_text(encoding="utf-8")
    text = text.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
    text = text.replace("persistence true", "persistence false")
    text = re.sub(r"^(persistence_location|autosave_interval) .*\n", "", text, flags=re.M)
    with tempfile.TemporaryDirectory(prefix="fedbus-bench-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(text, encoding="utf-8")
        with (Path(tmp) / "mosquitto.log").open("w") as log:
            process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mosquitto did not start; see {tmp}/mosquitto.log") from None
                    time.sleep(0.05)
            yield BrokerAddress(host="127.0.0.1", port=port)
        finally:
            process.terminate()
            process.wait(timeout=10)


async def pipelined(sends: list[Callable[[], Awaitable[None]]]) -> None:
    for start in range(0, len(sends), WINDOW):
        await asyncio.gather(*(send() for send in sends[start : start + WINDOW]))


async def measure_bare(address: BrokerAddress, n: int) -> float:
    """Messages per second through bare aiomqtt."""
    tag = uuid.uuid4().hex[:8]
    topic = f"bench/{tag}/bare"
    rng = random.Random(tag)
    payloads = [rng.randbytes(PAYLOAD_BYTES) for _ in range(n)]
    host, port = address.host, address.port
    async with (
        aiomqtt.Client(host, port, identifier=f"bench-{tag}-sub", clean_session=True) as sub,
        aiomqtt.Client(host, port, identifier=f"bench-{tag}-pub", clean_session=True) as pub,
    ):
        await sub.subscribe(topic, qos=1)

        async def receive() -> float:
            count = 0
            async for _ in sub.messages:
                count += 1
                if count == n:
                    break
            return time.perf_counter()

        started = time.perf_counter()
        receiver = asyncio.create_task(receive())
        await pipelined([functools.partial(pub.publish, topic, p, qos=1) for p in payloads])
        finished = await asyncio.wait_for(receiver, timeout=max(60.0, n / 100))
    return n / (finished - started)


def open_round(run: str, clients: list[str]) -> tuple[RoundAggregator, list[Task]]:
    """A real aggregator core with round 1 open for ``clients``, and the tasks it sent them."""
    config = AggregatorConfig(
        run=run, rounds=1, expected_clients=len(clients), min_clients=1, initial_prompt="Answer the question.",
        engine="surrogate", data=DataSpec(task="arith", seed=0, num_shards=1, train_size=1, val_size=1, test_size=1),
        round_deadline_s=1e9, max_prompt_chars=10_000)
    core = RoundAggregator(config, random.Random(0))
    effects = core.handle(Started(now=0.0))
    for client in clients:
        effects += core.handle(ClientOnline(client=client, now=0.0))
    tasks = [e.message for e in effects if isinstance(e, Publish) and isinstance(e.message, Task)]
    return core, tasks


def build_updates(tasks: list[Task]) -> list[Update]:
    """One update per task, with a prompt sized so that each encoded update has PAYLOAD_BYTES."""
    stats = UpdateStats(steps=3, accepted_steps=2, batch_acc_before=0.5, batch_acc_after=0.75,
                        llm_calls=9, tokens=4000, duration_s=1.5)

    def update(task: Task, prompt: str) -> Update:
        return Update(run=task.run, round=task.round, client=task.client, msg_id=f"{task.client}-r{task.round}",
                      sent=0.0, base_version=task.version, prompt=prompt, stats=stats)

    rng = random.Random(0)
    overhead = len(codec.encode(update(tasks[0], "")))
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz    ") for _ in range(PAYLOAD_BYTES - overhead))
    return [update(task, text) for task in tasks]


@dataclasses.dataclass(frozen=True, slots=True)
class Parties:
    """Protocol-v2 settings of one measurement: the aggregator's (authorizing every client) and each client's."""

    aggregator: Security
    clients: dict[str, Security]


def make_parties(clients: list[str]) -> Parties:
    """A key pair for the aggregator and each client, derived from a fresh secret, as ``fedbus run`` does."""
    secret = random_bytes(32)
    aggregator_key = derive(secret, AGGREGATOR)
    own = {client: derive(secret, client) for client in clients}
    authorized = AuthorizedKeys(tuple((client, key.public) for client, key in own.items()))
    return Parties(aggregator=Security.for_aggregator(aggregator_key, authorized),
                   clients={client: Security.for_client(client, key, aggregator_key.public)
                            for client, key in own.items()})


PATHS = ("fedbus", "signed+sealed", "signed+sealed, sent prebuilt")


async def measure_fedbus(address: BrokerAddress, n: int, path: str = "fedbus") -> tuple[float, int, int]:
    """Messages per second through fedbus's update path (one of PATHS), how many updates the core accepted, and
    the size of the last payload on the wire."""
    secure, prebuilt = path != "fedbus", path.endswith("prebuilt")
    run = f"bench-{uuid.uuid4().hex[:8]}"
    clients = [f"client-{i:05d}" for i in range(1, n + 1)]
    core, tasks = open_round(run, clients)
    if len(tasks) != n or any(t.version != 0 or t.round != 1 for t in tasks):
        raise RuntimeError(f"round 1 did not open for all {n} clients ({len(tasks)} tasks)")
    updates = build_updates(tasks)
    parties = make_parties(clients) if secure else None  # outside the timed window, like the round's opening
    seen = SeenIds()
    async with check_pool(parties) as pool:
        return await _measure(address, n, run, updates, core, parties=parties, prebuilt=prebuilt, pool=pool,
                              seen=seen)


@contextlib.asynccontextmanager
async def check_pool(parties: Parties | None) -> AsyncIterator[CheckPool | None]:
    """The aggregator's check pool for a signed path, up before the clock starts, as in a run that has been going
    for a while (a run starts it the first time deliveries pile up)."""
    if parties is None or parties.aggregator.key is None:
        yield None
        return
    pool = CheckPool(parties.aggregator.key, sealing_required=True)
    try:
        if not await pool.warm_up():
            raise RuntimeError("the check pool did not start")
        yield pool
    finally:
        pool.close()


async def _measure(address: BrokerAddress, n: int, run: str, updates: list[Update], core: RoundAggregator, *,
                   parties: Parties | None, prebuilt: bool, pool: CheckPool | None, seen: SeenIds,
                   ) -> tuple[float, int, int]:
    accepted = 0
    wire_bytes = 0
    async with (
        MqttBus(address, f"{run}.aggregator", clean_session=True) as inbox,
        MqttBus(address, f"{run}.clients", clean_session=True) as outbox,
    ):
        await inbox.subscribe(topics.channel_filter(run, "update"))

        def unwrap(topic: str, wire: bytes, checked: Checked | None) -> tuple[str, bytes]:
            """(the sender, the v1 payload): the topic's client and the payload itself on v1; on v2 the verified
            signer (which must be the topic's client) and the payload with its body opened: checked ahead on the
            check pool when deliveries pile up (``checked``), as the aggregator does, else here."""
            ref = topics.parse(topic)
            sender = ref.client if ref is not None and ref.client is not None else ""
            if parties is None:
                return sender, wire
            aggregator = parties.aggregator
            if checked is None:
                return sender, aggregator.open_sealed(aggregator.authenticate(wire, signer=sender))
            if isinstance(checked.opened, Refused) or checked.opened is None:
                raise RuntimeError(f"an update failed its checks: {checked}")
            return sender, checked.opened

        def job_of(item: tuple[str, bytes]) -> Job | None:
            if parties is None or parties.aggregator.authorized is None:
                return None
            ref = topics.parse(item[0])
            signer = ref.client if ref is not None and ref.client is not None else ""
            return Job(wire=item[1], signer=signer, key=parties.aggregator.authorized.get(signer), update=True)

        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        checks = Prechecker(queue, pool, job_of)

        async def read() -> None:
            async for incoming in inbox.messages():
                queue.put_nowait((incoming.topic, incoming.payload))

        async def receive() -> float:
            nonlocal accepted
            count = 0
            while count < n:
                (topic, payload), checked = await checks.get()
                sender, payload = unwrap(topic, payload, checked)
                message = codec.decode(payload)
                key = f"{sender}/{message.msg_id}" if parties is not None else message.msg_id
                if not seen.first_time(key) or not isinstance(message, Update) or message.client != sender:
                    continue
                for effect in core.handle(UpdateReceived(update=message, now=time.perf_counter() - started)):
                    accepted += isinstance(effect, UpdateAccepted)
                count += 1
            return time.perf_counter()

        def wire(u: Update) -> bytes:
            nonlocal wire_bytes
            payload = codec.encode(u)
            if parties is not None:
                payload = parties.clients[u.client].wrap(payload, sealed=True)
            wire_bytes = len(payload)
            return payload

        def sender(u: Update) -> Callable[[], Awaitable[None]]:
            topic = topics.update_topic(run, u.client)
            if prebuilt:
                payload = wire(u)
                return lambda: outbox.publish(topic, payload)
            return lambda: outbox.publish(topic, wire(u))

        sends = [sender(u) for u in updates]  # prebuilt frames are sealed and signed here, before the clock
        reader = asyncio.create_task(read())
        started = time.perf_counter()
        receiver = asyncio.create_task(receive())
        await pipelined(sends)  # the others encode (seal, sign) inside the timed window
        finished = await asyncio.wait_for(receiver, timeout=max(60.0, n / 100))
        reader.cancel()
    return n / (finished - started), accepted, wire_bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One path's medians on one broker, against the bare runs it was paired with."""

    path: str
    rate: float  # median msg/s
    ratio: float  # median of the paired ratios path/bare
    target: float
    wire_bytes: int


async def bench_broker(address: BrokerAddress, n: int, repeat: int) -> tuple[float, list[Row]]:
    bare: list[float] = []
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    sizes: dict[str, int] = {}
    for i in range(repeat):
        bare.append(await measure_bare(address, n))
        line = f"  run {i + 1}: bare {bare[-1]:7.0f} msg/s"
        for path, found in rates.items():
            rate, accepted, sizes[path] = await measure_fedbus(address, n, path)
            found.append(rate)
            note = "" if accepted == n else f"   !!! ONLY {accepted} of {n} UPDATES ACCEPTED BY THE CORE !!!"
            line += f"   {path} {rate:7.0f} msg/s (core accepted {accepted}/{n}){note}"
        print(line, flush=True)
    # Each fedbus run is paired with the bare run of the same repetition: the median of the paired ratios is
    # steadier than a ratio of medians when the machine's speed drifts during the benchmark.
    rows = [Row(path=path, rate=statistics.median(found),
                ratio=statistics.median(f / b for f, b in zip(found, bare, strict=True)),
                target=TARGET if path == "fedbus" else SECURE_TARGET, wire_bytes=sizes[path])
            for path, found in rates.items()]
    return statistics.median(bare), rows


async def loop_cost(n: int) -> tuple[float, float, float]:
    """The aggregator event loop's CPU per signed+sealed update, no broker: ``n`` deliveries queued as they
    arrive, each taken with its checks and decoded, (a) checked inline, (b) checked ahead on the check pool; and
    (c) v1's decode alone, for scale. Microseconds of this process's CPU per update (the pool's workers are
    other processes)."""
    run = f"bench-{uuid.uuid4().hex[:8]}"
    clients = [f"client-{i:05d}" for i in range(1, n + 1)]
    _, tasks = open_round(run, clients)
    updates = build_updates(tasks)
    parties = make_parties(clients)
    aggregator = parties.aggregator
    frames = [(topics.update_topic(run, u.client), parties.clients[u.client].wrap(codec.encode(u), sealed=True))
              for u in updates]

    def job_of(item: tuple[str, bytes]) -> Job:
        signer = item[0].rsplit("/", 1)[1]
        return Job(wire=item[1], signer=signer, key=aggregator.authorized.get(signer),  # type: ignore[union-attr]
                   update=True)

    async def cost(pool: CheckPool | None) -> float:
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        checks = Prechecker(queue, pool, job_of)

        async def arrive() -> None:
            for frame in frames:
                queue.put_nowait(frame)
                await asyncio.sleep(0)

        started = time.process_time()
        feeder = asyncio.create_task(arrive())
        for _ in frames:
            (topic, wire), checked = await checks.get()
            if checked is None:
                payload = aggregator.open_sealed(aggregator.authenticate(wire, signer=topic.rsplit("/", 1)[1]))
            else:
                assert isinstance(checked.opened, bytes), checked
                payload = checked.opened
            codec.decode(payload)
        await feeder
        return (time.process_time() - started) / n * 1e6

    inline = await cost(None)
    async with check_pool(parties) as pool:
        ahead = await cost(pool)
    plain = [codec.encode(u) for u in updates]
    started = time.process_time()
    for payload in plain:
        codec.decode(payload)
    return inline, ahead, (time.process_time() - started) / n * 1e6


async def main_async(brokers: list[str], n: int, repeat: int) -> None:
    inline, ahead, plain = await loop_cost(n)
    print(f"aggregator event loop, CPU per signed+sealed update ({n} updates, no broker): checked inline "
          f"{inline:.0f} us, checked ahead on the check pool {ahead:.0f} us ({ahead / inline:.2f}x); "
          f"a v1 update's decode alone {plain:.0f} us", flush=True)
    print(f"{n} messages x {PAYLOAD_BYTES} B (v1 encoding), QoS 1, windows of {WINDOW}, median of {repeat}",
          flush=True)
    table = ["| broker | path | wire bytes | msg/s (median) | ratio to bare (median of paired runs) | target |",
             "|---|---|---|---|---|---|"]
    for name in brokers:
        if name == "embedded":
            broker = embedded_broker()
        elif name == "mosquitto":
            binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
            if not binary:
                print("mosquitto: binary not found, skipped (install Debian's mosquitto package)")
                continue
            broker = mosquitto_broker(binary)
        else:
            raise SystemExit(f"unknown broker {name!r}: use embedded, mosquitto")
        with broker as address:
            print(f"{name} at {address.host}:{address.port}", flush=True)
            bare, rows = await bench_broker(address, n, repeat)
        table.append(f"| {name} | bare aiomqtt | {PAYLOAD_BYTES} | {bare:.0f} | 1 | |")
        for row in rows:
            verdict = "met" if row.ratio >= row.target else "NOT met"
            print(f"{name}: bare {bare:.0f} msg/s, {row.path} {row.rate:.0f} msg/s (medians); ratio {row.path}/bare "
                  f"{row.ratio:.3f} (median of paired runs), target >= {row.target:.2f}: {verdict}", flush=True)
            table.append(f"| {name} | {row.path} | {row.wire_bytes} | {row.rate:.0f} | {row.ratio:.3f} | "
                         f">= {row.target:.2f}: {verdict} |")
        print(flush=True)
    print("\n".join(table), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per measurement (default 5000)")
    parser.add_argument("--quick", action="store_true", help="1000 messages per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="measurements of each kind per broker (default 5)")
    parser.add_argument("--brokers", default="embedded,mosquitto", help="comma-separated: embedded,mosquitto")
    args = parser.parse_args()
    n = 1000 if args.quick else args.messages
    ensure_open_files(1024)
    # aiomqtt warns "There are N pending publish calls." for every publish past 10 in flight: pipelining
    # on purpose here, and printing ~90 lines per window would be timed too.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    asyncio.run(main_async([b.strip() for b in args.brokers.split(",") if b.strip()], n, max(1, args.repeat)))


if __name__ == "__main__":
    main()
