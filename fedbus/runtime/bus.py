"""The MQTT edge: the only module that imports aiomqtt.

A ``MqttBus`` is one MQTT connection: QoS 1 everywhere, an optional Last Will, persistent or
clean session. aiomqtt's errors become :class:`fedbus.errors.TransportError` here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS, error_string

from fedbus.errors import TransportError
from fedbus.logs import structlog
from fedbus.runtime.address import BrokerAddress

log = structlog.get_logger("fedbus.bus")
QOS = 1
PROBE_ROOT = "fedbus/probe"  # fedbus/probe/{username}/{random}: a reconnected connection's message to itself
PROBE_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 20  # CONNECT to CONNACK, and each SUBSCRIBE/PUBLISH acknowledgement
# Connections a process opens at once. rumqttd listens with a backlog of 128 (Rust's default): a storm of
# connects beyond it has SYNs dropped, each retried by the kernel after 1 s, 3 s, ... (measured: 1,000 clients
# from two processes took 5.5 s to connect, in bursts of ~100 a second). Under the backlog they take ~1 s.
CONNECTS_IN_FLIGHT = 48  # per process: two worker processes stay under the backlog
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _connect_gate() -> asyncio.Semaphore:
    """This event loop's limit on connections being opened (TCP connect to CONNACK)."""
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    return gate
REFUSED = ("the broker closed the connection before accepting it (a wrong user name or password, no login "
           "where the broker requires one, or a broker going down)")


@dataclass(frozen=True, slots=True, kw_only=True)
class LastWill:
    """What the broker publishes for us if our connection dies without a clean disconnect."""

    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    """One received MQTT message."""

    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How a dropped connection is retried: exponential backoff with jitter, up to ``give_up_s`` in all.

    Attempt ``n`` waits between half and all of ``min(max_s, first_s * 2**n)`` seconds (the jitter
    spreads a thousand clients' reconnections after a broker restart instead of landing them at once).
    """

    first_s: float = 0.1
    max_s: float = 5.0
    give_up_s: float | None = 300.0  # None: never give up (the caller bounds it)

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.max_s):
            raise ValueError("backoff: need 0 < first_s <= max_s")
        if self.give_up_s is not None and self.give_up_s < 0:
            raise ValueError("backoff: give_up_s must be >= 0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        cap = min(self.max_s, self.first_s * 2 ** min(attempt, 30))
        return float(cap / 2 + rng.uniform(0, cap / 2))


async def connect_retrying(
    make: Callable[[], MqttBus],
    backoff: Backoff,
    *,
    on_retry: Callable[[int, float, str], None] | None = None,
    rng: random.Random | None = None,
) -> MqttBus:
    """A connected bus from ``make()``, retrying a failed connect per ``backoff``; ``TransportError`` past it.

    ``on_retry(attempt, delay_s, reason)`` is told of every failed attempt before the wait.
    """
    rng = rng or random.Random()
    loop = asyncio.get_running_loop()
    started = loop.time()
    attempt = 0
    while True:
        bus = make()
        try:
            return await bus.__aenter__()
        except TransportError as exc:
            waited = loop.time() - started
            if backoff.give_up_s is not None and waited >= backoff.give_up_s:
                raise TransportError(f"{exc} (gave up after {waited:.0f} s of reconnection attempts)") from exc
            delay = backoff.delay(attempt, rng)
            if on_retry is not None:
                on_retry(attempt + 1, delay, str(exc))
            attempt += 1
            await asyncio.sleep(delay)


class MqttBus:
    """One MQTT connection (aiomqtt), used with ``async with`` (or entered by :func:`connect_retrying`)."""

    def __init__(
        self,
        address: BrokerAddress,
        identifier: str,
        *,
        will: LastWill | None = None,
        clean_session: bool = False,
        keepalive: int = 30,
        max_incoming: int = 0,
        max_in_flight: int | None = None,
    ) -> None:
        self.address = address
        self.identifier = identifier
        aio_will = None
        if will is not None:
            aio_will = aiomqtt.Will(topic=will.topic, payload=will.payload, qos=QOS, retain=will.retain)
        # mqtts://: verify the broker's certificate and name against ca_file (None: the system's CAs)
        tls = aiomqtt.TLSParameters(ca_certs=address.ca_file) if address.tls else None
        self._client = aiomqtt.Client(
            hostname=address.host,
            port=address.port,
            username=address.username,
            password=address.password,
            identifier=identifier,
            clean_session=clean_session,
            will=aio_will,
            keepalive=keepalive,
            max_queued_incoming_messages=max_incoming,
            # paho sends at most this many QoS 1 publishes before their PUBACKs (its own default: 20)
            max_inflight_messages=max_in_flight,
            timeout=CONNECT_TIMEOUT_S,
            tls_params=tls,
        )
        self._fail_fast_when_refused()
        self._write_soon()
        # what paho receives goes straight here, the end of the connection as None (see _receive_directly)
        self._inbox: asyncio.Queue[Incoming | None] = asyncio.Queue()
        self._max_incoming = max_incoming  # 0: no bound
        self._deliver: Callable[[Incoming], None] | None = None  # on_receive's: then no inbox
        self._lost: Callable[[str], None] | None = None
        self._early: list[Incoming] = []  # received while verifying, before the driver reads
        self._acks: dict[int, asyncio.Future[None]] = {}  # publishes awaiting their PUBACK, by message id
        self._receive_directly()

    def _receive_directly(self) -> None:
        """Take paho's messages and acknowledgements without aiomqtt's per-message machinery.

        aiomqtt hands each message over through its own queue and an iterator that starts a task and an
        ``asyncio.wait`` per message, and each publish waits on an event under ``wait_for`` after counting every
        pending call; paho matches each message against per-topic callbacks nobody registered. Measured on a
        1,000-client run, that was a sixth of a worker's time. Here a message becomes an :class:`Incoming` in
        ``_inbox`` as paho parses it, and a PUBACK resolves its publish's future; aiomqtt still connects,
        subscribes and notices the connection ending (which puts None in the inbox, after what came before).
        """
        client = self._client
        paho = client._client
        inbox = self._inbox
        acks = self._acks
        aiomqtt_on_publish = paho.on_publish

        def on_message(_client: Any, _userdata: Any, message: Any) -> None:
            incoming = Incoming(topic=message.topic, payload=bytes(message.payload), retained=bool(message.retain))
            deliver = self._deliver
            if deliver is not None:
                if not incoming.topic.startswith(PROBE_ROOT):
                    deliver(incoming)
                return
            if self._max_incoming and inbox.qsize() >= self._max_incoming:
                log.warning("incoming queue full; message dropped", client=self.identifier, topic=message.topic)
                return
            inbox.put_nowait(incoming)

        def on_publish(paho_client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            waiting = acks.pop(mid, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
            elif aiomqtt_on_publish is not None:
                aiomqtt_on_publish(paho_client, userdata, mid, reason_code, properties)  # type: ignore[call-arg]

        paho.on_message = on_message
        paho.on_publish = on_publish
        paho._on_message_filtered = _NO_FILTERS  # type: ignore[assignment]  # no per-topic callbacks to match

    def _watch_end(self) -> None:
        """Once connected: when aiomqtt sees the connection end, the inbox says so after what came before."""
        inbox = self._inbox

        def ended(_future: asyncio.Future[None]) -> None:
            inbox.put_nowait(None)
            # a publish waiting for its PUBACK will get none on this connection: it fails now, so that its sender
            # keeps the message for the next connection at once, not after CONNECT_TIMEOUT_S (by then a run may
            # have finished, and the resent update would reach nobody)
            for waiting in list(self._acks.values()):
                if not waiting.done():
                    waiting.set_exception(TransportError(f"connection lost: {self._why_ended()}"))
            if self._deliver is not None and self._lost is not None:
                self._deliver = None
                self._lost(self._why_ended())

        self._client._disconnected.add_done_callback(ended)

    def _fail_fast_when_refused(self) -> None:
        """End a connection attempt at once when the broker closes the socket before its CONNACK.

        rumqttd answers an anonymous client (where it wants a login) or a wrong password that way, with
        no CONNACK to say why (measured: the socket closes within milliseconds); aiomqtt ignores a
        disconnection before the CONNACK and would wait out ``CONNECT_TIMEOUT_S``, then say only
        "Operation timed out".
        """
        client = self._client
        paho = client._client
        on_disconnect = paho.on_disconnect

        def refused(*args: Any, **kwargs: Any) -> None:
            connected = client._connected
            if client._lock.locked() and not connected.done():  # in __aenter__, waiting for the CONNACK
                connected.set_exception(aiomqtt.MqttError(REFUSED))
            if on_disconnect is not None:
                on_disconnect(*args, **kwargs)

        paho.on_disconnect = refused

    def _write_soon(self) -> None:
        """Write what paho queues (a PUBLISH, a PUBACK) at the event loop's next turn, all of it at once.

        aiomqtt asks the loop to watch the socket for writability whenever paho has something to send, through
        ``call_soon_threadsafe`` (it may be called from the thread that connects): per packet, a write to the
        loop's wake-up pipe, an extra turn of the loop, and adding then removing the writer. On the loop's own
        thread a socket with room takes the bytes at once, so the write is made at the next turn, for every
        packet queued until then, and the socket is watched only when it is full (measured: a third of a
        1,000-client worker's MQTT time went to that dance). From another thread, aiomqtt's way stands.
        """
        client = self._client
        paho = client._client
        loop = client._loop
        thread = threading.get_ident()
        aiomqtt_register = paho.on_socket_register_write

        def failed(exc: Exception) -> None:  # as aiomqtt's own writer does: the connection is gone
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)

        def write_now(sock: Any) -> None:
            try:
                paho.loop_write()
            except Exception as exc:  # a broken pipe: the connection is gone
                failed(exc)
                return
            if paho.want_write() and sock.fileno() > -1:  # the socket is full: write the rest when it has room
                loop.add_writer(sock.fileno(), write_when_ready)

        def write_when_ready() -> None:
            try:
                paho.loop_write()  # unregisters the writer (aiomqtt's callback) once all is written
            except Exception as exc:
                failed(exc)

        def register(paho_client: Any, userdata: Any, sock: Any) -> None:
            if threading.get_ident() != thread and aiomqtt_register is not None:
                aiomqtt_register(paho_client, userdata, sock)
                return
            loop.call_soon(write_now, sock)

        paho.on_socket_register_write = register

    async def __aenter__(self) -> MqttBus:
        try:
            async with _connect_gate():
                await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            self._release_socket()
            raise TransportError(f"cannot connect to {self.address.url()}: {exc}") from exc
        self._watch_end()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the connection is gone either way
            await self._client.__aexit__(exc_type, exc, tb)
        disconnected = self._client._disconnected
        if disconnected.done() and not disconnected.cancelled():
            disconnected.exception()  # seen: aiomqtt returns early on a dropped connection and leaves it unread
        self._release_socket()

    def _release_socket(self) -> None:
        """Close paho's socket and take it off the event loop now, if the connection left it open.

        When a read fails (the broker died: 'Broken pipe'), aiomqtt marks the client disconnected but
        paho keeps its socket, still registered with the event loop, until the client is collected.
        Its file descriptor number can meanwhile go to a new connection of this process, whose reader
        the old one's late clean-up then removes: measured as a reconnected aggregator that received
        nothing until its keep-alive, 30 s later. Closing it here, while the number is still its own,
        rules that out.
        """
        paho = self._client._client
        with contextlib.suppress(Exception):
            paho._sock_close()

    async def close(self) -> None:
        """Disconnect cleanly if still connected (for a bus entered by :func:`connect_retrying`)."""
        await self.__aexit__(None, None, None)

    async def subscribe(self, *filters: str, verify: bool = False) -> None:
        """Subscribe to ``filters``. ``verify``: then check that the broker delivers to this connection
        (a message to itself must come back within ``PROBE_TIMEOUT_S``), else ``TransportError``.

        Reconnections verify: right after a restart, rumqttd sometimes accepts a connection and its
        subscriptions but forwards it nothing until the client's next keep-alive ping, 30 s later
        (measured: 1 in 8 restarts with 5 connections; the aggregator then waited out whole rounds).
        """
        # a fresh random topic under the login, never the identifier: that one must stay secret
        probe = f"{PROBE_ROOT}/{self.address.username or 'anonymous'}/{secrets.token_hex(8)}"
        wanted = (*filters, probe) if verify else filters
        try:  # one SUBSCRIBE for all: one round trip to the broker per connection, not one per filter
            if wanted:
                await self._client.subscribe([(topic_filter, QOS) for topic_filter in wanted])
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe failed: {exc}") from exc
        if verify:
            await self._probe(probe)

    async def _probe(self, topic: str) -> None:
        nonce = secrets.token_bytes(8)
        await self.publish(topic, nonce)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_TIMEOUT_S
        try:
            while True:
                message = await asyncio.wait_for(self._inbox.get(), max(0.0, deadline - loop.time()))
                if message is None:
                    raise TransportError(f"connection lost: {self._why_ended()}")
                if message.topic == topic:
                    if message.payload == nonce:
                        return
                    continue  # an earlier connection's probe
                self._early.append(message)
        except TimeoutError:
            raise TransportError("connected, but the broker delivered nothing within "
                                 f"{PROBE_TIMEOUT_S:g} s (self-probe lost)") from None

    def _why_ended(self) -> str:
        ended = self._client._disconnected
        why = ended.exception() if ended.done() and not ended.cancelled() else None
        return str(why) if why is not None else "the connection ended"

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK (``TransportError`` after ``CONNECT_TIMEOUT_S``)."""
        info = self._client._client.publish(topic, payload, qos=QOS, retain=retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise TransportError(f"publish to {topic} failed: {error_string(info.rc)}")
        if info.is_published():
            return
        if self._client._disconnected.done():  # it ended before this publish was sent: no PUBACK will come
            raise TransportError(f"publish to {topic} failed: connection lost: {self._why_ended()}")
        loop = asyncio.get_running_loop()
        acknowledged = self._acks[info.mid] = loop.create_future()
        timer = loop.call_later(CONNECT_TIMEOUT_S, _expire, acknowledged)
        try:
            await acknowledged
        except TimeoutError:
            raise TransportError(f"publish to {topic} failed: not acknowledged within {CONNECT_TIMEOUT_S} s") from None
        finally:
            timer.cancel()
            self._acks.pop(info.mid, None)

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crash would: the broker fires our Last Will."""
        paho = self._client._client
        sock = paho.socket()
        if sock is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            sock.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        disconnected = self._client._disconnected
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(disconnected), 5.0)

    def on_receive(self, deliver: Callable[[Incoming], None] | None, lost: Callable[[str], None] | None = None) -> None:
        """Hand each message to ``deliver`` as it arrives (on the event loop, in order), instead of through
        :meth:`messages`; ``lost(reason)`` once the connection ends. What arrived before goes first. ``None``:
        back to :meth:`messages` (what arrives then waits there)."""
        self._deliver, self._lost = deliver, lost
        if deliver is None:
            return
        pending = [*self._early, *self._drain()]
        self._early.clear()
        ended = None in pending
        for message in pending:
            if message is not None and not message.topic.startswith(PROBE_ROOT):
                deliver(message)
        if ended:
            self._deliver = None
            if lost is not None:
                lost(self._why_ended())

    def _drain(self) -> list[Incoming | None]:
        out = []
        while self._inbox.qsize():
            out.append(self._inbox.get_nowait())
        return out

    async def messages(self) -> AsyncIterator[Incoming]:
        """Received messages until the connection ends (then ``TransportError``)."""
        while self._early:
            yield self._early.pop(0)
        inbox = self._inbox
        while True:
            message = inbox.get_nowait() if inbox.qsize() else await inbox.get()
            if message is None:
                inbox.put_nowait(None)  # a second reader ends too
                raise TransportError(f"connection lost: {self._why_ended()}")
            if message.topic.startswith(PROBE_ROOT):
                continue
            yield message


class _NoFilters:
    """paho's per-topic message callbacks, when there are none."""

    def iter_match(self, _topic: str) -> tuple[()]:
        return ()


_NO_FILTERS = _NoFilters()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
