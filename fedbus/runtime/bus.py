"""The MQTT edge: the only module that imports aiomqtt.

A ``MqttBus`` is one MQTT connection: QoS 1 everywhere, an optional Last Will, persistent or
clean session. aiomqtt's errors become :class:`fedbus.errors.TransportError` here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import aiomqtt

from fedbus.errors import TransportError
from fedbus.runtime.address import BrokerAddress

QOS = 1


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


class MqttBus:
    """One MQTT connection (aiomqtt), used with ``async with``."""

    def __init__(
        self,
        address: BrokerAddress,
        identifier: str,
        *,
        will: LastWill | None = None,
        clean_session: bool = False,
        keepalive: int = 30,
        max_incoming: int = 0,
    ) -> None:
        self.address = address
        self.identifier = identifier
        aio_will = None
        if will is not None:
            aio_will = aiomqtt.Will(topic=will.topic, payload=will.payload, qos=QOS, retain=will.retain)
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
            timeout=30,
        )

    async def __aenter__(self) -> MqttBus:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(f"cannot connect to {self.address.url()} as {self.identifier}: {exc}") from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the connection is gone either way
            await self._client.__aexit__(exc_type, exc, tb)

    async def subscribe(self, *filters: str) -> None:
        try:
            for topic_filter in filters:
                await self._client.subscribe(topic_filter, qos=QOS)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe failed for {self.identifier}: {exc}") from exc

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        try:
            await self._client.publish(topic, payload, qos=QOS, retain=retain)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {topic} failed for {self.identifier}: {exc}") from exc

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

    async def messages(self) -> AsyncIterator[Incoming]:
        """Received messages until the connection ends (then ``TransportError``)."""
        try:
            async for message in self._client.messages:
                payload = message.payload
                if isinstance(payload, str):
                    payload = payload.encode("utf-8")
                elif not isinstance(payload, (bytes, bytearray)):
                    payload = b""
                yield Incoming(topic=message.topic.value, payload=bytes(payload), retained=bool(message.retain))
        except aiomqtt.MqttError as exc:
            raise TransportError(f"connection of {self.identifier} lost: {exc}") from exc
