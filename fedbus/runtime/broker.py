"""The embedded broker: rumqttd, shipped compiled in the ``iotcore`` wheel, in a child process.

The only module that imports iotcore. fedbus writes rumqttd's TOML itself because the defaults
cost messages (../shared/FACTS.md): a ~20 KB packet limit that resets the connection, an
unbounded in-memory log, a connection delay. The child exits when its parent dies (its stdin
closes), so a SIGKILLed ``fedbus run`` leaves no broker behind.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedbus.errors import TransportError
from fedbus.runtime.address import BrokerAddress

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddedBrokerConfig:
    """The settings fedbus writes into rumqttd's TOML."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    max_connections: int = 10_010
    max_payload_bytes: int = 1 * MIB  # covers topic + payload
    max_inflight: int = 100
    segment_bytes: int = 16 * MIB
    segment_count: int = 4
    connection_timeout_ms: int = 60_000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_toml(config: EmbeddedBrokerConfig, port: int) -> str:
    """rumqttd's configuration, every setting explicit."""
    segment = max(config.segment_bytes, 2 * config.max_payload_bytes)
    return f"""# written by fedbus: rumqttd (iotcore) configuration
id = 0

[router]
id = 0
max_connections = {config.max_connections}
max_outgoing_packet_count = 200
# bounded message log: {config.segment_count} segments of {segment} bytes per filter.
# rotation drops the oldest queued messages, so keep the log well above a round's traffic.
max_segment_size = {segment}
max_segment_count = {config.segment_count}

[v4.1]
name = "fedbus-v4"
listen = "{config.host}:{port}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = {min(config.connection_timeout_ms, 65_535)}
    max_payload_size = {config.max_payload_bytes}
    max_inflight_count = {config.max_inflight}
    dynamic_filters = true
"""


class EmbeddedBroker:
    """rumqttd in a child process, configured explicitly. Use as a context manager."""

    def __init__(self, config: EmbeddedBrokerConfig = EmbeddedBrokerConfig(), workdir: Path | None = None) -> None:
        self.config = config
        self.port = config.port or free_port(config.host)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fedbus-broker-")
            workdir = Path(self._tmp.name)
        self.config_path = Path(workdir) / "rumqttd.toml"
        self._broker: object | None = None

    @property
    def address(self) -> BrokerAddress:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return BrokerAddress(host=host, port=self.port)

    @property
    def pid(self) -> int | None:
        process = getattr(self._broker, "_process", None)
        return None if process is None else int(process.pid)

    def start(self) -> EmbeddedBroker:
        """Write the TOML and start rumqttd; return once it accepts connections."""
        from iotcore import Broker  # the one import of iotcore

        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_toml(self.config, self.port), encoding="utf-8")
        broker = Broker(config_path=str(self.config_path))
        try:
            broker.start(timeout=15.0)
        except (OSError, RuntimeError) as exc:
            raise TransportError(f"embedded broker on {self.config.host}:{self.port} did not start: {exc}") from exc
        self._broker = broker
        return self

    def alive(self) -> bool:
        """Whether the broker process still runs."""
        process = getattr(self._broker, "_process", None)
        return process is not None and process.poll() is None

    def restart(self) -> None:
        """Start rumqttd again on the same port (after it died): it comes back empty, without retained
        messages or sessions; fedbus's clients and aggregator reconnect and publish their state again."""
        broker = self._broker
        self._broker = None
        if broker is not None:
            with contextlib.suppress(Exception):
                broker.stop()  # type: ignore[attr-defined]
        self.start()

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        process = getattr(self._broker, "_process", None)
        return 0 if process is None else int(process.wait())

    def stop(self) -> None:
        """Stop rumqttd and release the port. Safe to call twice."""
        broker = self._broker
        self._broker = None
        if broker is not None:
            broker.stop()  # type: ignore[attr-defined]
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
