"""Broker addresses: ``mqtt://[user:pass@]host:port``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from fedbus.errors import TransportError


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAddress:
    """Where the MQTT broker is and how to log in."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    def url(self, redact: bool = True) -> str:
        """The address as a URL; the password is shown as *** unless ``redact`` is False."""
        auth = ""
        if self.username is not None:
            secret = "***" if redact else (self.password or "")
            auth = f"{self.username}:{secret}@" if self.password is not None else f"{self.username}@"
        return f"mqtt://{auth}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse ``mqtt://[user:pass@]host[:port]``; raise ``TransportError`` saying what is wrong."""
    if "://" not in url:
        url = f"mqtt://{url}"
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise TransportError(f"broker URL {url!r}: scheme must be mqtt:// (TLS is not supported yet)")
    if not parts.hostname:
        raise TransportError(f"broker URL {url!r}: no host")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise TransportError(f"broker URL {url!r}: {exc}") from exc
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
