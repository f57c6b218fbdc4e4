"""The scenario: a federation described as frozen values. Built by :mod:`fedbus.scenario.loader`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbus.protocol.messages import DataSpec

ENGINES = ("surrogate",)
STRATEGIES = ("concat",)
TASKS = ("surrogate-skills",)
PARTITIONS = ("iid", "by-skill")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientsSpec:
    """The client population and its local work."""

    count: int
    local_steps: int = 3
    batch_size: int = 3
    id_prefix: str = "client"
    step_latency_s: float = 0.0  # simulated wall time of one local step (the surrogate answers at once)


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipationSpec:
    """Who takes part in a synchronous round, and for how long the aggregator waits."""

    fraction: float = 1.0
    min_clients: int = 1
    min_updates: int = 1
    round_deadline_s: float = 60.0
    join_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationSpec:
    """How uploaded prompts become the next global prompt."""

    strategy: str = "concat"
    max_prompt_chars: int = 20_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole federation: task and data, clients, rounds, participation and aggregation."""

    name: str
    seed: int
    engine: str
    rounds: int
    initial_prompt: str
    data: DataSpec
    clients: ClientsSpec
    participation: ParticipationSpec = field(default_factory=ParticipationSpec)
    aggregation: AggregationSpec = field(default_factory=AggregationSpec)
    max_message_bytes: int = 256 * 1024

    def client_ids(self) -> tuple[str, ...]:
        """The ids of the scenario's own clients, in shard order."""
        width = len(str(self.clients.count - 1))
        return tuple(f"{self.clients.id_prefix}-{i:0{width}d}" for i in range(self.clients.count))
