"""The embedded broker: rumqttd, shipped compiled in the ``iotcore`` wheel, in a child process.

The only module that imports iotcore. fedbus writes rumqttd's TOML itself because the defaults
cost messages (../shared/FACTS.md): a ~20 KB packet limit that resets the connection, an
unbounded in-memory log, a connection delay. The child exits when its parent dies (its stdin
closes), so a SIGKILLed ``fedbus run`` leaves no broker behind.

Logins and TLS: rumqttd checks user names and passwords against a ``[v4.1.connections.auth]`` table of
its TOML (an anonymous client or a wrong password gets no session) and serves TLS from ``[v4.1.tls]``.
The TOML therefore holds the passwords in clear text: it is written with mode 0600, in a private
temporary folder (``fedbus broker``) or in the run's folder (``RUN_DIR/broker/rumqttd.toml``).
A broker that has its own clients (``fedbus run``'s aggregator and clients) gives them a random login of
their own, and, when its listener speaks TLS, a second, plain listener on loopback: they connect to the
process fedbus itself started, whatever names the certificate carries.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fedbus.errors import TransportError
from fedbus.runtime.address import BrokerAddress

MIB = 1024 * 1024
USER_NAME = re.compile(r"[^\s:\x00-\x1f\x7f]+")  # no whitespace, no ':' (the users file's separator)
OWN_LOGIN_PREFIX = "fedbus-own-"


def check_login(user: str, password: str) -> None:
    """A user name and password rumqttd's TOML and the users file can carry; ``ValueError`` saying what is
    wrong (never repeating the password)."""
    if not USER_NAME.fullmatch(user):
        raise ValueError(f"user name {user!r}: needs at least one character, and no spaces, ':' or control "
                         "characters")
    if user.startswith(OWN_LOGIN_PREFIX):
        raise ValueError(f"user name {user!r}: names starting {OWN_LOGIN_PREFIX!r} are fedbus's own")
    if not password:
        raise ValueError(f"user {user!r}: empty password")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in password):
        raise ValueError(f"user {user!r}: the password holds a control character")


def parse_users(text: str, source: str = "users file") -> tuple[tuple[str, str], ...]:
    """``username:password`` lines (blank lines and ``#`` comments skipped) as (user, password) pairs.

    The password is everything after the first ':' (it may hold ':' itself). ``ValueError`` names the line.
    """
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.partition(":")
        where = f"{source} line {number}"
        if not colon:
            raise ValueError(f"{where}: expected username:password")
        try:
            check_login(user, password)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if user in users:
            raise ValueError(f"{where}: user {user!r} appears twice")
        users[user] = password
    if not users:
        raise ValueError(f"{source}: no username:password line")
    return tuple(users.items())


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerTls:
    """The broker's certificate (PEM, the chain its clients need after it) and unencrypted private key."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # rumqttd's capath; fedbus's own clients and the printed hint use it

    def check(self) -> None:
        """Load the files as a TLS server would; ``ValueError`` saying which one is wrong and why."""
        for label, path in (("certificate", self.cert_file), ("key", self.key_file), ("CA", self.ca_file)):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS {label} {path}: no such file")
        try:  # a password callback: an encrypted key fails here instead of prompting on the terminal
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert_file, self.key_file, password=b"")
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS certificate {self.cert_file} with key {self.key_file}: {exc} (both PEM; the "
                             "key unencrypted and matching the certificate)") from None
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"TLS CA {self.ca_file}: {exc} (PEM certificates expected)") from None


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
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (name, password); (): anonymous
    tls: BrokerTls | None = None

    def __post_init__(self) -> None:
        for user, password in self.users:
            check_login(user, password)

    @property
    def loopback_only(self) -> bool:
        """Whether only this machine can reach the listener (127.0.0.0/8, ::1)."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def exposure(self) -> str | None:
        """Why this broker is open to anyone who can reach it (None: it is not): no login on a listener other
        machines can reach. ``fedbus broker`` refuses to start so unless told ``--insecure``."""
        if self.users or self.loopback_only:
            return None
        return f"listening on {self.host} (not loopback) with no users: anyone who can reach it may connect"


def _connect_host(listen_host: str) -> str:
    return "127.0.0.1" if listen_host in ("0.0.0.0", "") else listen_host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes without \\u escapes of non-ASCII are valid TOML)."""
    return json.dumps(text, ensure_ascii=False)


def _listener(index: int, name: str, listen: str, config: EmbeddedBrokerConfig, *,
              logins: tuple[tuple[str, str], ...], tls: BrokerTls | None) -> str:
    text = f"""
[v4.{index}]
name = "{name}"
listen = "{listen}"
next_connection_delay_ms = 0
    [v4.{index}.connections]
    connection_timeout_ms = {min(config.connection_timeout_ms, 65_535)}
    max_payload_size = {config.max_payload_bytes}
    max_inflight_count = {config.max_inflight}
    dynamic_filters = true
"""
    if logins:
        text += f"    [v4.{index}.connections.auth]  # user = password: who may log in\n"
        text += "".join(f"    {_toml_string(user)} = {_toml_string(password)}\n" for user, password in logins)
    if tls is not None:
        text += f"    [v4.{index}.tls]\n"
        if tls.ca_file is not None:
            text += f"    capath = {_toml_string(str(tls.ca_file))}\n"
        text += f"    certpath = {_toml_string(str(tls.cert_file))}\n"
        text += f"    keypath = {_toml_string(str(tls.key_file))}\n"
    return text


def render_toml(config: EmbeddedBrokerConfig, port: int, *, own_login: tuple[str, str] | None = None,
                own_port: int | None = None) -> str:
    """rumqttd's configuration, every setting explicit.

    ``own_login`` is added to the users; ``own_port`` adds a plain loopback listener for fedbus's own clients
    (only that login may use it when the broker has users).
    """
    segment = max(config.segment_bytes, 2 * config.max_payload_bytes)
    logins = (*config.users, *([own_login] if own_login and config.users else []))
    text = f"""# written by fedbus: rumqttd (iotcore) configuration
# it holds the broker's passwords when it has users: keep it private (fedbus writes it with mode 0600)
id = 0

[router]
id = 0
max_connections = {config.max_connections}
max_outgoing_packet_count = 200
# bounded message log: {config.segment_count} segments of {segment} bytes per filter.
# rotation drops the oldest queued messages, so keep the log well above a round's traffic.
max_segment_size = {segment}
max_segment_count = {config.segment_count}
"""
    text += _listener(1, "fedbus-v4", f"{config.host}:{port}", config, logins=logins, tls=config.tls)
    if own_port is not None:
        own = (own_login,) if own_login and config.users else ()
        text += _listener(2, "fedbus-v4-own", f"127.0.0.1:{own_port}", config, logins=own, tls=None)
    return text


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only (mode 0600, also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(text)


class EmbeddedBroker:
    """rumqttd in a child process, configured explicitly. Use as a context manager.

    ``own_clients``: this process's aggregator and clients connect to it through :attr:`address` (with a
    random login of their own when the broker has users, and over a plain loopback listener when its
    listener speaks TLS). ``fedbus broker``, which has no clients of its own, passes False.
    """

    def __init__(self, config: EmbeddedBrokerConfig = EmbeddedBrokerConfig(), workdir: Path | None = None, *,
                 own_clients: bool = True) -> None:
        self.config = config
        self.port = config.port or free_port(config.host)
        self._own_login: tuple[str, str] | None = None
        self._own_port: int | None = None
        if own_clients and config.users:
            self._own_login = (OWN_LOGIN_PREFIX + secrets.token_hex(4), secrets.token_urlsafe(24))
        if own_clients and config.tls is not None:
            self._own_port = free_port("127.0.0.1")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fedbus-broker-")
            workdir = Path(self._tmp.name)
        self.config_path = Path(workdir) / "rumqttd.toml"
        self._broker: object | None = None

    @property
    def address(self) -> BrokerAddress:
        """Where this process's own clients connect, logged in (the password stays out of ``url()``)."""
        user, password = self._own_login or (None, None)
        if self._own_port is not None:
            return BrokerAddress(host="127.0.0.1", port=self._own_port, username=user, password=password)
        return BrokerAddress(host=_connect_host(self.config.host), port=self.port, username=user, password=password)

    @property
    def public_address(self) -> BrokerAddress:
        """Where other clients connect (mqtts:// when the listener speaks TLS), without a login."""
        tls = self.config.tls
        return BrokerAddress(host=_connect_host(self.config.host), port=self.port, tls=tls is not None,
                             ca_file=str(tls.ca_file) if tls is not None and tls.ca_file is not None else None)

    @property
    def pid(self) -> int | None:
        process = getattr(self._broker, "_process", None)
        return None if process is None else int(process.pid)

    def start(self) -> EmbeddedBroker:
        """Write the TOML and start rumqttd; return once it accepts connections."""
        from iotcore import Broker  # the one import of iotcore

        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.config_path,
                      render_toml(self.config, self.port, own_login=self._own_login, own_port=self._own_port))
        broker = Broker(config_path=str(self.config_path))
        try:
            broker.start(timeout=15.0)
        except (OSError, RuntimeError) as exc:
            raise TransportError(f"embedded broker on {self.config.host}:{self.port} did not start: {exc}"
                                 f"{' (is the TLS certificate one rumqttd can read?)' if self.config.tls else ''}"
                                 ) from exc
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
