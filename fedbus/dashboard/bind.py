"""Where the dashboard listens, and whether it may: ``[HOST:]PORT`` and the broker's authentication rule.

The broker refuses a listener other machines can reach unless it has users (``--users``/``--user``) or is told
``--insecure``. The dashboard follows it: on loopback it is open; beyond loopback it needs logins (then the
page asks for one of the broker's users, HTTP Basic) or ``--insecure``. Pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardAddress:
    """A listener: host and port (0: any free one)."""

    host: str = DEFAULT_HOST
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not within 0..65535")
        if not self.host:
            raise ValueError("empty host")

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def url(self, port: int | None = None) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port if port is None else port}/"


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardAccess:
    """Who may read the page: anyone who reaches it (``logins`` empty) or one of ``logins`` (user -> password)."""

    address: DashboardAddress
    logins: dict[str, str] = field(default_factory=dict, repr=False)  # passwords: never in a repr or a log


def parse_address(text: str) -> DashboardAddress:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT``; ``ValueError`` with what is wrong."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text.strip()
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected [HOST:]PORT such as 8765 or 127.0.0.1:8765, got {text!r}") from None
    return DashboardAddress(host=host, port=port)


def access_for(address: DashboardAddress, logins: dict[str, str], *, insecure: bool) -> DashboardAccess:
    """The dashboard's access under the broker's rule; ``ValueError`` (the reason) when it must not start.

    ``logins``: the run's broker users (user -> password). On loopback nobody is asked to log in.
    """
    if address.loopback:
        return DashboardAccess(address=address)
    if logins:
        return DashboardAccess(address=address, logins=dict(logins))
    if insecure:
        return DashboardAccess(address=address)
    raise ValueError(f"refusing to serve the dashboard on {address.host} (not loopback): this run's broker has no "
                     "users, so the page would be open to anyone who reaches it; give --users FILE (or --user NAME: "
                     "the page then asks for one of those logins), or --insecure, or listen on 127.0.0.1")
