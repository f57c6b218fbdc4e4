"""What the runtime feeds into the aggregator core. Every event carries the time ``now``."""

from __future__ import annotations

from dataclasses import dataclass

from fedbus.protocol.messages import Failure, Update


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """The run begins."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOnline:
    """A client announced itself (retained presence 'online')."""

    client: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOffline:
    """A client went away: ``reason`` is 'will' (its Last Will fired) or 'left' (clean)."""

    client: str
    now: float
    reason: str = "left"


@dataclass(frozen=True, slots=True, kw_only=True)
class Revoked(ClientOffline):
    """The driver's: the client's key was taken out of the authorized keys (``key``, its text form, so that a
    resumed run can still check what the client sent before). Gone, as if it had left."""

    key: str = ""
    reason: str = "revoked"


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateReceived:
    """A decoded update arrived."""

    update: Update
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureReceived:
    """A decoded failure report arrived: the client could not do its task, and says so instead of updating."""

    failure: Failure
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateMalformed:
    """Bytes on an update topic that did not decode. ``client`` comes from the topic, if any."""

    client: str | None
    reason: str
    detail: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    """A timer armed with ``ArmTimer`` expired."""

    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Reduced:
    """The runtime carried out a ``Reduce`` effect: ``prompt`` is the aggregate."""

    round: int
    prompt: str
    now: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ReduceFailed:
    """The runtime could not carry out a ``Reduce`` effect (e.g. an LLM aggregator failed)."""

    round: int
    reason: str
    now: float


Event = (Started | ClientOnline | ClientOffline | UpdateReceived | FailureReceived | UpdateMalformed | TimerFired
         | Reduced | ReduceFailed)
