"""Realistic federation conditions as frozen values: speed, availability, behaviour, network faults.

Every duration is in *simulated* seconds; the scenario's ``time_scale`` says how many simulated
seconds pass per wall-clock second.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

LATENCY_KINDS = ("constant", "uniform", "normal", "lognormal", "trace")
EVENT_KINDS = ("crash", "hang", "leave")
BEHAVIOURS = ("honest", "noisy", "hostile", "stale")


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """How long one round of local work takes (simulated seconds), as a distribution.

    constant: ``value_s``; uniform: ``low_s``..``high_s``; normal: ``mean_s``, ``std_s`` (clamped at 0);
    lognormal: ``median_s``, ``sigma``; trace: per-client durations, cycled (``values_s``).
    """

    kind: str = "constant"
    value_s: float = 0.0
    low_s: float = 0.0
    high_s: float = 0.0
    mean_s: float = 0.0
    std_s: float = 0.0
    median_s: float = 0.0
    sigma: float = 0.0
    values_s: tuple[float, ...] = ()

    def sample(self, rng: random.Random, index: int = 0) -> float:
        """One draw; ``index`` picks the entry of a trace (a client's n-th round)."""
        if self.kind == "constant":
            return self.value_s
        if self.kind == "uniform":
            return rng.uniform(self.low_s, self.high_s)
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.mean_s, self.std_s))
        if self.kind == "lognormal":
            return self.median_s * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        if self.kind == "trace":
            return self.values_s[index % len(self.values_s)] if self.values_s else 0.0
        raise ValueError(f"unknown latency kind {self.kind!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stragglers:
    """A share of a group's clients is ``slowdown`` times slower than the latency says."""

    fraction: float = 0.0
    slowdown: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledEvent:
    """A scripted failure: at simulated time ``at_s`` or on receiving round ``at_round``'s task.

    crash: the connection dies without DISCONNECT (the Last Will fires); hang: the client stops
    answering for ``duration_s`` but keeps its connection; leave: clean disconnect. After
    ``rejoin_after_s`` (crash, leave) the client comes back.
    """

    kind: str
    at_s: float | None = None
    at_round: int | None = None
    duration_s: float = 0.0
    rejoin_after_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """A time interval in simulated seconds: [start_s, end_s)."""

    start_s: float
    end_s: float

    def contains(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Availability:
    """When a client is there: per-round dropout, scripted events, an online trace."""

    dropout_p: float = 0.0
    events: tuple[ScheduledEvent, ...] = ()
    online: tuple[Interval, ...] = ()  # empty: always online (FedScale-style traces otherwise)


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """Faults on a client's link, injected at its bus adapter (the broker and protocol stay real)."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    partitions: tuple[Interval, ...] = ()

    @property
    def is_perfect(self) -> bool:
        return not (self.delay_s or self.jitter_s or self.loss or self.duplicate or self.reorder or self.partitions)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientGroup:
    """Clients that share speed, availability, behaviour and network."""

    name: str
    count: int
    latency: Latency = field(default_factory=Latency)
    stragglers: Stragglers = field(default_factory=Stragglers)
    availability: Availability = field(default_factory=Availability)
    behaviour: str = "honest"
    noise: float = 0.3  # noisy: probability that each sentence is edited
    network: Network = field(default_factory=Network)
