"""A minimal MQTT 3.1.1 client over a plain socket, for what aiomqtt will not do on purpose:
receive a QoS 1 message and never acknowledge it, or vanish without a DISCONNECT."""

from __future__ import annotations

import socket
import struct


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


class RawClient:
    """CONNECT, SUBSCRIBE, read PUBLISH packets; never PUBACK; close without DISCONNECT."""

    def __init__(self, host: str, port: int, client_id: str, *, clean_session: bool = False) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        flags = 0x02 if clean_session else 0x00
        body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + _string(client_id)
        self.sock.sendall(bytes([0x10]) + _remaining_length(len(body)) + body)
        kind, payload = self._read()
        if kind != 0x20 or payload[1] != 0:
            raise ConnectionError(f"CONNACK refused: {payload!r}")

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _read(self) -> tuple[int, bytes]:
        header = self._read_exact(1)[0]
        multiplier, length = 1, 0
        while True:
            byte = self._read_exact(1)[0]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        return header & 0xF0, self._read_exact(length)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        body = struct.pack("!H", 1) + _string(topic_filter) + bytes([qos])
        self.sock.sendall(bytes([0x82]) + _remaining_length(len(body)) + body)
        while True:
            kind, _ = self._read()
            if kind == 0x90:
                return

    def read_publish(self) -> tuple[str, bytes]:
        """The next PUBLISH (topic, payload), deliberately left unacknowledged."""
        while True:
            kind, payload = self._read()
            if kind != 0x30:
                continue
            (tlen,) = struct.unpack("!H", payload[:2])
            topic = payload[2 : 2 + tlen].decode("utf-8")
            return topic, payload[2 + tlen + 2 :]  # QoS 1: skip the packet id

    def vanish(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a crashed process would."""
        self.sock.close()
