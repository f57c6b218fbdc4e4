"""The MQTT edge against real brokers: embedded rumqttd and mosquitto (each test runs on both)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fedbus.protocol import codec, topics
from fedbus.protocol.messages import DataSpec, GlobalState, Presence, Update, UpdateStats
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import Incoming, LastWill, MqttBus
from tests.rawmqtt import RawClient

STATS = UpdateStats(steps=1, accepted_steps=1, batch_acc_before=0.0, batch_acc_after=1.0, llm_calls=1,
                    tokens=1, duration_s=0.0)
DATA = DataSpec(task="surrogate-skills", seed=1, num_shards=1, train_size=1, val_size=1, test_size=1)


def an_update(run: str, client: str = "c1", prompt: str = "be careful", msg: str = "m1") -> Update:
    return Update(run=run, round=1, client=client, msg_id=msg, sent=1.0, base_version=0, prompt=prompt, stats=STATS)


async def first(bus: MqttBus, wait_s: float = 30.0) -> Incoming:
    async def take() -> Incoming:
        async for incoming in bus.messages():
            return incoming
        raise AssertionError("connection ended")
    return await asyncio.wait_for(take(), wait_s)


async def test_update_round_trip(broker: BrokerAddress, run_id: str) -> None:
    """An encoded update published by one connection arrives intact at a subscriber of the update channel."""
    async with MqttBus(broker, f"{run_id}.sub", clean_session=True) as sub, \
            MqttBus(broker, f"{run_id}.pub", clean_session=True) as pub:
        await sub.subscribe(topics.channel_filter(run_id, "update"))
        sent = an_update(run_id)
        await pub.publish(topics.update_topic(run_id, "c1"), codec.encode(sent))
        got = await first(sub)
    assert got.topic == topics.update_topic(run_id, "c1")
    assert codec.decode(got.payload) == sent


async def test_large_prompt_passes(broker: BrokerAddress, run_id: str) -> None:
    """A 200 KB prompt gets through (rumqttd's default limit of ~20 KB would reset the connection)."""
    async with MqttBus(broker, f"{run_id}.sub", clean_session=True) as sub, \
            MqttBus(broker, f"{run_id}.pub", clean_session=True) as pub:
        await sub.subscribe(topics.channel_filter(run_id, "update"))
        sent = an_update(run_id, prompt="x" * 200_000)
        await pub.publish(topics.update_topic(run_id, "c1"), codec.encode(sent))
        got = await first(sub)
    assert codec.decode(got.payload) == sent


async def test_retained_global_reaches_a_late_subscriber(broker: BrokerAddress, run_id: str) -> None:
    """The retained global state is delivered to a client that subscribes after it was published."""
    state = GlobalState(run=run_id, round=2, client="aggregator", msg_id="g1", sent=0.0, version=1, prompt="P",
                        status="running", engine="surrogate", data=DATA, rounds=3)
    async with MqttBus(broker, f"{run_id}.agg", clean_session=True) as agg:
        await agg.publish(topics.global_topic(run_id), codec.encode(state), retain=True)
    async with MqttBus(broker, f"{run_id}.late", clean_session=True) as late:
        await late.subscribe(topics.global_topic(run_id))
        got = await first(late)
    assert got.retained and codec.decode(got.payload) == state


async def test_queued_while_offline_is_delivered_on_reconnect(broker: BrokerAddress, run_id: str) -> None:
    """With a persistent session, an update sent while the receiver was offline arrives when it reconnects."""
    ident = f"{run_id}.agg"
    async with MqttBus(broker, ident, clean_session=False) as agg:
        await agg.subscribe(topics.channel_filter(run_id, "update"))
    async with MqttBus(broker, f"{run_id}.pub", clean_session=True) as pub:
        await pub.publish(topics.update_topic(run_id, "c1"), codec.encode(an_update(run_id)))
    async with MqttBus(broker, ident, clean_session=False) as agg:
        got = await first(agg)
    assert codec.decode(got.payload).msg_id == "m1"


async def test_unacknowledged_update_is_redelivered(broker: BrokerAddress, run_id: str) -> None:
    """A QoS 1 update received but never acknowledged is delivered again after the receiver reconnects."""
    ident = f"{run_id}.agg"
    raw = RawClient(broker.host, broker.port, ident, clean_session=False)
    raw.subscribe(topics.channel_filter(run_id, "update"))
    async with MqttBus(broker, f"{run_id}.pub", clean_session=True) as pub:
        await pub.publish(topics.update_topic(run_id, "c1"), codec.encode(an_update(run_id)))
    _topic, payload = await asyncio.to_thread(raw.read_publish)
    assert codec.decode(payload).msg_id == "m1"
    raw.vanish()  # no PUBACK, no DISCONNECT; the new connection takes the session over, noticed or not
    async with MqttBus(broker, ident, clean_session=False) as agg:
        got = await first(agg)
    assert codec.decode(got.payload).msg_id == "m1"


_CRASHING_CLIENT = textwrap.dedent("""
    import asyncio, sys
    from fedbus.protocol import codec, topics
    from fedbus.protocol.messages import Presence
    from fedbus.runtime.address import BrokerAddress
    from fedbus.runtime.bus import LastWill, MqttBus
    host, port, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def presence(status, msg):
        return codec.encode(Presence(run=run, round=0, client="c9", msg_id=msg, sent=0.0, status=status))
    async def main():
        will = LastWill(topic=topics.presence_topic(run, "c9"), payload=presence("offline", "will"))
        async with MqttBus(BrokerAddress(host=host, port=port), run + ".c9", will=will, keepalive=5) as bus:
            await bus.publish(topics.presence_topic(run, "c9"), presence("online", "hello"), retain=True)
            print("ready", flush=True)
            await asyncio.sleep(60)
    asyncio.run(main())
""")


async def test_last_will_fires_when_a_client_is_killed(broker: BrokerAddress, run_id: str) -> None:
    """SIGKILL a client process: the broker publishes its retained Last Will 'offline'."""
    async with MqttBus(broker, f"{run_id}.watch", clean_session=True) as watch:
        await watch.subscribe(topics.channel_filter(run_id, "presence"))
        proc = subprocess.Popen([sys.executable, "-c", _CRASHING_CLIENT, broker.host, str(broker.port), run_id],  # noqa: ASYNC220
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "ready"
            online = codec.decode((await first(watch)).payload)
            assert isinstance(online, Presence) and online.status == "online"
            os.kill(proc.pid, signal.SIGKILL)
            will = codec.decode((await first(watch)).payload)
        finally:
            proc.kill()
            proc.wait()
    assert isinstance(will, Presence) and will.status == "offline" and will.msg_id == "will"


async def test_second_connection_with_same_identity_takes_over(broker: BrokerAddress, run_id: str) -> None:
    """A client that reconnects under the same identifier replaces its stale connection and still receives."""
    ident = f"{run_id}.c1"
    async with MqttBus(broker, ident, clean_session=False) as old:
        await old.subscribe(topics.task_topic(run_id, "c1"))
        async with MqttBus(broker, ident, clean_session=False) as new, \
                MqttBus(broker, f"{run_id}.pub", clean_session=True) as pub:
            await pub.publish(topics.task_topic(run_id, "c1"), b"hello")
            got = await first(new)
    assert got.payload == b"hello"


@pytest.mark.parametrize("will", [None, LastWill(topic="fedbus/v1/x/presence/y", payload=b"{}")])
async def test_connect_to_a_closed_port_is_a_transport_error(will: LastWill | None) -> None:
    """Connecting to a port where no broker listens raises fedbus's TransportError, not aiomqtt's."""
    from fedbus.errors import TransportError
    from fedbus.runtime.broker import free_port

    with pytest.raises(TransportError):
        async with MqttBus(BrokerAddress(host="127.0.0.1", port=free_port()), "nobody", will=will):
            pass


async def test_a_connect_storm_opens_a_few_connections_at_a_time(embedded_broker: BrokerAddress, run_id: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """rumqttd listens with a backlog of 128: a process opens at most CONNECTS_IN_FLIGHT connections at once
    (beyond the backlog, SYNs are dropped and retried after 1 s), and every one of a storm still connects."""
    import aiomqtt

    from fedbus.runtime import bus as bus_module

    monkeypatch.setattr(bus_module, "CONNECTS_IN_FLIGHT", 3)
    opening = peak = 0
    enter = aiomqtt.Client.__aenter__

    async def counted(self: aiomqtt.Client) -> aiomqtt.Client:
        nonlocal opening, peak
        opening += 1
        peak = max(peak, opening)
        try:
            return await enter(self)
        finally:
            opening -= 1

    monkeypatch.setattr(aiomqtt.Client, "__aenter__", counted)
    buses = [MqttBus(embedded_broker, f"{run_id}.storm-{i}", clean_session=True) for i in range(30)]
    try:
        await asyncio.wait_for(asyncio.gather(*(b.__aenter__() for b in buses)), 60)
        assert peak == 3
    finally:
        await asyncio.gather(*(b.__aexit__(None, None, None) for b in buses), return_exceptions=True)


async def test_on_receive_hands_over_every_message_in_order_then_the_end(broker: BrokerAddress, run_id: str) -> None:
    """A bus that delivers by callback (the client driver's way): what waited first, then each message as it
    comes, in order; and once another connection takes its identity over, ``lost`` once, with a reason."""
    got: list[bytes] = []
    lost: list[str] = []
    done, ended = asyncio.Event(), asyncio.Event()
    ident = f"{run_id}.c1"
    topic = topics.task_topic(run_id, "c1")
    async with MqttBus(broker, ident, clean_session=False) as old, \
            MqttBus(broker, f"{run_id}.pub", clean_session=True) as pub:
        await old.subscribe(topic)
        await pub.publish(topic, b"0")  # it may wait in the inbox until the callback takes over: it comes first
        old.on_receive(lambda m: (got.append(m.payload), len(got) == 20 and done.set()),
                       lambda why: (lost.append(why), ended.set()))
        for n in range(1, 20):
            await pub.publish(topic, str(n).encode())
        await asyncio.wait_for(done.wait(), 30)
        assert got == [str(n).encode() for n in range(20)]
        async with MqttBus(broker, ident, clean_session=False):  # takes the session over: the old one ends
            await asyncio.wait_for(ended.wait(), 30)
    assert len(lost) == 1 and lost[0]


async def test_a_publish_waiting_for_its_puback_fails_when_the_connection_drops(broker: BrokerAddress,
                                                                               run_id: str) -> None:
    """The connection ends (a broker restart) while a publish waits for its PUBACK: the publish fails at once, so
    its sender keeps the message for the next connection, rather than waiting out the 20 s timeout (a run could
    finish meanwhile, and the update, resent late, reach nobody). A proxy between the bus and the real broker
    swallows the broker's replies, then cuts both sockets."""
    import time

    from fedbus.errors import TransportError

    swallow = asyncio.Event()
    sockets: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_broker: bool) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if not (from_broker and swallow.is_set()):
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(broker.host, broker.port)
        sockets.extend((client_w, broker_w))
        tasks.extend([asyncio.create_task(pipe(client_r, broker_w, False)),
                      asyncio.create_task(pipe(broker_r, client_w, True))])

    tasks: list[asyncio.Task[None]] = []
    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    proxied = dataclasses.replace(broker, host="127.0.0.1", port=server.sockets[0].getsockname()[1])
    async with server, MqttBus(proxied, f"{run_id}.pub", clean_session=True) as bus:
        await bus.publish(topics.update_topic(run_id, "c1"), b"acknowledged")
        swallow.set()
        waiting = asyncio.create_task(bus.publish(topics.update_topic(run_id, "c1"), b"never acknowledged"))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # its PUBACK was swallowed
        cut = time.monotonic()
        for writer in sockets:
            writer.transport.abort()
        with pytest.raises(TransportError, match="connection lost"):
            await asyncio.wait_for(waiting, 15.0)
        assert time.monotonic() - cut < 12.0  # at once, not after CONNECT_TIMEOUT_S (20 s)
        with pytest.raises(TransportError, match=r"connection lost|failed"):  # and one published after the end
            await bus.publish(topics.update_topic(run_id, "c1"), b"too late")
    for task in tasks:
        task.cancel()
