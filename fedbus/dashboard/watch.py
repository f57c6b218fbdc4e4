"""``fedbus watch``: the dashboard of a run hosted elsewhere, fed by a read-only MQTT subscriber.

It subscribes to the run's topics (clean session, no Last Will) and never publishes; the page and /metrics are
the same as ``fedbus run --dashboard``'s, with what the bus cannot show listed on the page
(:data:`~fedbus.dashboard.observer.UNOBSERVABLE`). It runs until interrupted, reconnecting when the broker goes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

from fedbus.dashboard.bind import DashboardAccess
from fedbus.dashboard.observer import BusObserver
from fedbus.dashboard.state import DashboardState
from fedbus.errors import TransportError
from fedbus.logs import structlog
from fedbus.protocol import topics
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import Backoff, MqttBus, connect_retrying

log = structlog.get_logger("fedbus.watch")
RECONNECT = Backoff(first_s=0.5, max_s=10.0, give_up_s=None)


def run_filters(run: str) -> list[str]:
    """Every topic of ``run``: its two per-run topics and each per-client channel."""
    return [topics.global_topic(run), topics.aggregator_topic(run),
            *(topics.channel_filter(run, channel) for channel in topics.PER_CLIENT)]


async def watch_run(access: DashboardAccess, broker: BrokerAddress, run: str,
                    announce: Callable[[str], None]) -> None:
    """Serve the page and feed it from the bus until cancelled."""
    from fedbus.dashboard.web import DashboardWeb

    state = DashboardState(source="watch")
    web = DashboardWeb(state, access)
    observer = BusObserver(run)
    web.apply(observer.header(broker.url()))
    await web.start()
    announce(web.url)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    identifier = f"watch-{secrets.token_hex(6)}"
    try:
        while True:
            bus = await connect_retrying(lambda: MqttBus(broker, identifier, clean_session=True), RECONNECT,
                                         on_retry=lambda n, delay, why: log.warning(
                                             "broker unreachable; retrying", attempt=n, delay_s=round(delay, 1),
                                             reason=why))
            try:
                await bus.subscribe(*run_filters(run))
                web.apply({"event": "run-header", "subscribed": True})
                async for message in bus.messages():
                    for record in observer.observe(message.topic, message.payload, retained=message.retained,
                                                   now=round(loop.time() - t0, 6)):
                        web.apply(record)
            except TransportError as exc:
                log.warning("connection to the broker lost; reconnecting", reason=str(exc))
            finally:
                await bus.close()
    finally:
        await web.close()
