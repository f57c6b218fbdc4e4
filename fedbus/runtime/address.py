"""Broker addresses: ``mqtt://[user[:pass]@]host[:port]`` and ``mqtts://...[?ca=FILE]`` (TLS).

One string carries everything a connection needs, so that ``fedbus run`` can hand it to its worker
processes and keep it (password redacted) in checkpoint.json: the scheme says TLS, the ``ca`` query
parameter names the PEM bundle that verifies the broker's certificate (as libpq's ``sslrootcert`` and
MongoDB's ``tlsCAFile`` do). Without ``ca``, ``mqtts://`` trusts the system's certificate authorities.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fedbus.errors import TransportError

PORTS = {"mqtt": 1883, "mqtts": 8883}
REDACTED = "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAddress:
    """Where the MQTT broker is and how to log in. The password stays out of ``repr``."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None  # PEM bundle that verifies the broker (TLS only); None: the system's CAs

    def __post_init__(self) -> None:
        if self.ca_file is not None and not self.tls:
            raise ValueError("a CA file needs TLS (mqtts://)")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username (mqtt://USER@host)")

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def url(self, redact: bool = True) -> str:
        """The address as a URL; the password is shown as *** unless ``redact`` is False."""
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + (REDACTED if redact else quote(self.password, safe=""))
            auth += "@"
        query = f"?ca={quote(self.ca_file, safe='/')}" if self.ca_file is not None else ""
        return f"{self.scheme}://{auth}{self.host}:{self.port}{query}"

    def with_login(self, *, password: str | None = None, ca_file: str | Path | None = None) -> BrokerAddress:
        """This address with a password and/or a CA file added (from a file or the environment, not the URL).

        Raises ``TransportError`` when they conflict with what the URL already says.
        """
        address = self
        if password is not None:
            if self.username is None:
                raise TransportError(f"broker URL {self.url()}: a password needs a user name "
                                     f"({self.scheme}://USER@{self.host}:{self.port})")
            address = replace(address, password=password)
        if ca_file is not None:
            if not self.tls:
                raise TransportError(f"broker URL {self.url()}: a CA file needs TLS: use mqtts://")
            ca = str(Path(ca_file).resolve())
            if self.ca_file is not None and str(Path(self.ca_file).resolve()) != ca:
                raise TransportError(f"broker URL {self.url()}: names another CA file than {ca}")
            address = replace(address, ca_file=ca)
        return address


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt[s]://[user[:pass]@]host[:port][?ca=FILE]``; raise ``TransportError`` saying what is wrong.

    The default port is 1883 for ``mqtt://`` and 8883 for ``mqtts://``.
    """
    if "://" not in url:
        url = f"mqtt://{url}"
    parts = urlsplit(url)
    # the message never repeats a password the URL carries
    shown = url if parts.password is None else url.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    if parts.scheme not in PORTS:
        raise TransportError(f"broker URL {shown!r}: scheme must be mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise TransportError(f"broker URL {shown!r}: no host")
    try:
        port = parts.port or PORTS[parts.scheme]
    except ValueError as exc:
        raise TransportError(f"broker URL {shown!r}: {exc}") from exc
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - {"ca"})
    if unknown or any(len(values) != 1 or not values[0] for values in query.values()):
        raise TransportError(f"broker URL {shown!r}: the only query parameter is ca=FILE (once, not empty)")
    ca_file = query["ca"][0] if "ca" in query else None
    if parts.password and not parts.username:
        raise TransportError(f"broker URL {shown!r}: a password needs a user name")
    if ca_file is not None and parts.scheme != "mqtts":
        raise TransportError(f"broker URL {shown!r}: ca= needs TLS: use mqtts://")
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "mqtts",
        ca_file=ca_file,
    )


def read_secret(path: Path) -> str:
    """A password from a file: its first line, without the line ending. ``TransportError`` if none."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TransportError(f"cannot read the password file {path}: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise TransportError(f"the password file {path} is empty (its first line is the password)")
    return lines[0]
