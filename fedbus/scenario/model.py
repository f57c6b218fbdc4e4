"""The scenario: a federation described as frozen values. Built by :mod:`fedbus.scenario.loader`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbus.aggregator.staleness import StalenessWeighting
from fedbus.protocol.messages import DataSpec
from fedbus.scenario.conditions import ClientGroup
from fedbus.scenario.engine import EngineSpec

SURROGATE_TASKS = ("surrogate-skills",)
LLM_TASKS = ("object_counting", "multistep_arithmetic_two")  # generated in BIG-Bench Hard's format
TASKS = SURROGATE_TASKS + LLM_TASKS
PARTITIONS = ("iid", "by-skill", "dirichlet", "per-task")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientsSpec:
    """The client population and its local work."""

    count: int
    local_steps: int = 3
    batch_size: int = 3
    id_prefix: str = "client"
    step_latency_s: float = 0.0  # simulated time of one local step (the surrogate answers at once)
    groups: tuple[ClientGroup, ...] = ()  # empty: one honest group of `count` clients named id_prefix
    strict: bool = False  # TextGrad clients: keep a step only if batch accuracy rose (or is perfect)
    optimizer: str | None = None  # a registered optimizer or package.module:function; None: the engine's


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipationSpec:
    """Who takes part in a synchronous round, and for how long the aggregator waits."""

    fraction: float = 1.0
    min_clients: int = 1
    min_updates: int = 1
    round_deadline_s: float = 60.0
    join_timeout_s: float = 30.0
    overcommit: float = 0.0
    adaptive_deadline_k: float | None = None
    adaptive_window: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationSpec:
    """How uploaded prompts become the next global prompt."""

    strategy: str = "concat"
    max_prompt_chars: int = 20_000
    mode: str = "sync"
    buffer_size: int = 1
    max_staleness: int = 10
    weighting: StalenessWeighting = field(default_factory=StalenessWeighting)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole federation: task and data, clients, rounds, participation and aggregation."""

    name: str
    seed: int
    engine: str  # engine_spec.name
    rounds: int
    initial_prompt: str
    data: DataSpec
    clients: ClientsSpec
    participation: ParticipationSpec = field(default_factory=ParticipationSpec)
    aggregation: AggregationSpec = field(default_factory=AggregationSpec)
    max_message_bytes: int = 256 * 1024
    time_scale: float = 1.0  # simulated seconds per wall-clock second
    engine_spec: EngineSpec = field(default_factory=EngineSpec)

    def groups(self) -> tuple[ClientGroup, ...]:
        """The client groups; a scenario without ``clients.groups`` has one honest group."""
        if self.clients.groups:
            return self.clients.groups
        return (ClientGroup(name=self.clients.id_prefix, count=self.clients.count),)

    def members(self) -> tuple[tuple[str, ClientGroup], ...]:
        """Every client id with its group, in shard order."""
        out: list[tuple[str, ClientGroup]] = []
        for group in self.groups():
            width = len(str(group.count - 1))
            out.extend((f"{group.name}-{i:0{width}d}", group) for i in range(group.count))
        return tuple(out)

    def client_ids(self) -> tuple[str, ...]:
        """The ids of the scenario's own clients, in shard order."""
        return tuple(cid for cid, _ in self.members())
