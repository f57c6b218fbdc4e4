"""The dashboard's command-line glue: ``fedbus run --dashboard`` and ``fedbus watch``."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedbus.dashboard.bind import DashboardAccess, DashboardAddress, access_for, parse_address

if TYPE_CHECKING:
    from fedbus.runtime.address import BrokerAddress
    from fedbus.runtime.run import RunOptions
    from fedbus.scenario import Scenario

DASHBOARD_HELP = ("serve a live page of the run (rounds, clients, prompts; /metrics for Prometheus) on [HOST:]PORT "
                  "(host default 127.0.0.1, port 0: any free one); beyond loopback it needs broker users "
                  "(the page then asks for one) or --insecure")


def dashboard_address(text: str) -> DashboardAddress:
    """argparse type of ``--dashboard``."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def linger_seconds(text: str) -> float:
    """argparse type of ``--dashboard-linger``: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dashboard", type=dashboard_address, metavar="[HOST:]PORT", help=DASHBOARD_HELP)
    parser.add_argument("--dashboard-linger", type=linger_seconds, default=0.0, metavar="SECONDS",
                        help="keep the dashboard up this long after the run ends (default 0; Ctrl-C ends it)")


def run_access(address: DashboardAddress, broker: BrokerAddress | None, embedded_users: tuple[tuple[str, str], ...],
               *, insecure: bool) -> DashboardAccess:
    """The broker's rule for ``fedbus run``'s dashboard: its logins are the run's broker users (the embedded
    broker's ``--users``/``--user``, or the login of ``--broker``). ``ValueError`` when it must not start."""
    if broker is not None:
        logins = {broker.username: broker.password} if broker.username and broker.password else {}
    else:
        logins = dict(embedded_users)
    return access_for(address, logins, insecure=insecure)


def run_with_dashboard(access: DashboardAccess, options: RunOptions, scenario: Scenario, linger_s: float,
                       run_to_end: Callable[[Scenario, RunOptions], int], *, interrupted_code: int) -> int:
    """Start the dashboard, print its URL, run, keep it up ``linger_s`` after the run (not after Ctrl-C), stop it."""
    from fedbus.dashboard.live import RunDashboard

    dashboard = RunDashboard(access)
    url = dashboard.start()
    login = " (log in with one of the broker's users)" if access.logins else ""
    print(f"dashboard: {url}{login}", flush=True)
    try:
        code = run_to_end(scenario, dataclasses.replace(options, observer=dashboard))
        if code != interrupted_code:
            dashboard.linger(linger_s, lambda text: print(text, flush=True))
        return code
    finally:
        dashboard.stop()


def add_watch_parser(sub: Any, broker_url: Callable[[str], str],
                     add_login_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """``fedbus watch``: its options (the broker's login options are the client's)."""
    watch = sub.add_parser("watch", help="the dashboard of a run hosted elsewhere, read from the bus (read-only)")
    watch.add_argument("--broker", type=broker_url, required=True,
                       help="the run's broker, mqtt[s]://[USER@]HOST:PORT (an observer's login where it needs one)")
    watch.add_argument("--run", required=True, metavar="ID", help="the run id `fedbus run` printed")
    watch.add_argument("--dashboard", type=dashboard_address, default=DashboardAddress(port=0),
                       metavar="[HOST:]PORT", help="where the page listens (default 127.0.0.1, any free port)")
    watch.add_argument("--insecure", action="store_true",
                       help="serve the page beyond loopback without a login (the broker URL names none)")
    add_login_options(watch)


def cmd_watch(args: argparse.Namespace, broker: BrokerAddress) -> int:
    """Serve the page until Ctrl-C. ``ValueError`` when the address breaks the broker's rule."""
    import asyncio
    import contextlib

    from fedbus.dashboard.watch import watch_run
    from fedbus.protocol.ids import check_id

    check_id(args.run, "run id")
    access = run_access(args.dashboard, broker, (), insecure=args.insecure)
    login = " (log in with your broker login)" if access.logins else ""

    def announce(url: str) -> None:
        print(f"watching run {args.run} on {broker.url()} (read-only); dashboard: {url}{login}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch_run(access, broker, args.run, announce))
    return 0
