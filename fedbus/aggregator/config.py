"""What an aggregator core needs to know about the federation."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbus.aggregator.staleness import StalenessWeighting
from fedbus.protocol.messages import DataSpec

MODES = ("sync", "buffered", "async")


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatorConfig:
    """Participation, deadlines and aggregation settings (times in simulated seconds)."""

    run: str
    rounds: int  # sync: rounds; buffered/async: aggregations (global versions)
    expected_clients: int
    initial_prompt: str
    engine: str
    data: DataSpec
    local_steps: int = 3
    batch_size: int = 3
    fraction: float = 1.0
    min_clients: int = 1
    min_updates: int = 1
    round_deadline_s: float = 60.0  # sync: the round; buffered/async: one client's task
    join_timeout_s: float = 30.0
    strategy: str = "concat"
    max_prompt_chars: int = 20_000
    # sync: select ceil(target * (1 + overcommit)) clients and close at the first `target` updates
    overcommit: float = 0.0
    # sync: deadline = min(fixed, median + k * MAD of recent arrival times), once 3 arrivals are known
    adaptive_deadline_k: float | None = None
    adaptive_window: int = 20
    # buffered (FedBuff): aggregate every `buffer_size` updates; async (FedAsync): every update
    mode: str = "sync"
    buffer_size: int = 1
    max_staleness: int = 10
    weighting: StalenessWeighting = field(default_factory=StalenessWeighting)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
