"""A run id is used once on a broker: a new run refuses one that left traces, and a finished run
clears the retained presence it leaves behind.

Before a run starts on an external broker (``--broker``; the embedded one starts empty), a short-lived
observer connection subscribes to the run's retained topics. A retained ``global`` means a run with
that id already ran there (finished, or interrupted and resumable with ``--resume``): the run is
refused with a clear message instead of mixing with what is left of the earlier one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from fedbus.errors import FedbusError, RemoteProtocolError, TransportError
from fedbus.protocol import codec, topics
from fedbus.protocol.messages import GlobalState, Presence
from fedbus.runtime.address import BrokerAddress
from fedbus.runtime.bus import MqttBus
from fedbus.security.signing import is_signed, unverified_payload

QUIET_S = 0.3  # retained messages arrive right after SUBACK; this long without one more ends the look
LOOK_LIMIT_S = 5.0


class RunIdInUse(FedbusError):
    """The broker still holds retained state of a run with this id."""


async def retained_of(address: BrokerAddress, filters: tuple[str, ...]) -> dict[str, bytes]:
    """The retained messages under ``filters``, read by a throwaway observer connection."""
    found: dict[str, bytes] = {}
    async with MqttBus(address, identifier=f"fedbus-observer-{secrets.token_hex(6)}", clean_session=True) as bus:
        await bus.subscribe(*filters)
        stream = bus.messages().__aiter__()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOOK_LIMIT_S
        while loop.time() < deadline:
            try:
                incoming = await asyncio.wait_for(stream.__anext__(), QUIET_S)
            except (TimeoutError, StopAsyncIteration):
                break
            if incoming.retained and incoming.payload:
                found[incoming.topic] = incoming.payload
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    return found


async def refuse_used_run_id(address: BrokerAddress, run_id: str) -> None:
    """Raise ``RunIdInUse`` if the broker holds a retained global of ``run_id``: a run with that id ran there.

    Clients marked online are not refused: remote clients may join before the aggregator starts (they wait
    for its global). A client of an earlier run whose process died is offline (its Last Will said so)."""
    found = await retained_of(address, (topics.global_topic(run_id),))
    payload = found.get(topics.global_topic(run_id))
    if payload is not None and is_signed(payload):  # protocol v2: its signer is that run's aggregator
        raise RunIdInUse(f"run id {run_id!r} was already used on {address.url()} (a signed retained global is "
                         "there): continue it with `fedbus run --resume RUN_DIR`, or choose another --run-id")
    state = _decoded(payload)
    if isinstance(state, GlobalState):
        hint = ("it finished; choose another --run-id" if state.status == "finished"
                else "it did not finish; continue it with `fedbus run --resume RUN_DIR`, or choose another --run-id")
        raise RunIdInUse(f"run id {run_id!r} was already used on {address.url()} (retained global: {state.status}, "
                         f"version {state.version}): {hint}")


class ClientIdLive(FedbusError):
    """Another process is live in the run under this client id."""


async def refuse_live_client(address: BrokerAddress, run_id: str, client: str) -> None:
    """Raise ``ClientIdLive`` if ``client`` is marked online in ``run_id``: connecting under its MQTT identifier
    would take over (and knock offline) the process that holds it."""
    topic = topics.presence_topic(run_id, client)
    message = _decoded((await retained_of(address, (topic,))).get(topic))
    if isinstance(message, Presence) and message.status == "online":
        raise ClientIdLive(f"client id {client!r} is already live in run {run_id!r}: another process holds it; "
                           "choose another --id")


async def clear_retained(address: BrokerAddress, run_id: str, clients: list[str], identifier: str) -> None:
    """After a finished run: remove the retained presence of its clients (the retained global stays,
    saying 'finished', so a late client leaves at once and the id is not reused by mistake)."""
    # as the aggregator with a clean session: the broker also drops the aggregator's persistent session
    with contextlib.suppress(TransportError):
        async with MqttBus(address, identifier=identifier, clean_session=True) as bus:
            for client in clients:
                await bus.publish(topics.presence_topic(run_id, client), b"", retain=True)


def _decoded(payload: bytes | None) -> object | None:
    if not payload:
        return None
    if is_signed(payload):  # v2: read, not verified; it only decides whether to refuse to start
        payload = unverified_payload(payload)
        if payload is None:
            return None
    try:
        return codec.decode(payload)
    except RemoteProtocolError:
        return None
