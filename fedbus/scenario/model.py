"""The scenario: a federation described as frozen values. Built by :mod:`fedbus.scenario.loader`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedbus.aggregator.config import MODES
from fedbus.aggregator.llm_merge import FORMAT_LINE
from fedbus.aggregator.staleness import StalenessWeighting
from fedbus.aggregator.strategies import LLM_STRATEGIES, get_strategy
from fedbus.client.optimizer import get_optimizer
from fedbus.plugins import PluginError
from fedbus.protocol.messages import DataSpec
from fedbus.scenario.conditions import ClientGroup
from fedbus.scenario.engine import EngineSpec
from fedbus.scenario.reader import at_least, one_of, setting, valid_id, within
from fedbus.security.policy import DEFAULT_SECURITY, SECURITY_MODES

SURROGATE_TASKS = ("surrogate-skills",)
# generated in BIG-Bench Hard's format, generated GSM8K-style word problems (not GSM8K), and GSM8K (task.source only)
LLM_TASKS = ("object_counting", "multistep_arithmetic_two", "word_problems", "gsm8k")
TASKS = SURROGATE_TASKS + LLM_TASKS
PARTITIONS = ("iid", "by-skill", "dirichlet", "per-task")
POPULATIONS = ("auto", "eager", "virtual")  # fedbus.scenario.population


def known_strategy(name: object) -> str | None:
    """A registered strategy, an LLM merge, or an importable ``package.module:function``."""
    if not isinstance(name, str):
        return f"must be a strategy name, got {name!r}"
    if name in LLM_STRATEGIES:
        return None
    try:
        get_strategy(name)
    except PluginError as exc:
        return str(exc)
    return None


def known_optimizer(name: object) -> str | None:
    """A registered optimizer or an importable ``package.module:function``."""
    try:
        get_optimizer(str(name))
    except PluginError as exc:
        return str(exc)
    return None


# Each field a scenario file can set is declared once, here: its type, its default and its check (a
# `setting`). The loader reads every declared field of a section from these declarations; the fields
# without one (nested or derived: groups, adaptive_deadline, weighting) it reads by hand.


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientsSpec:
    """The client population and its local work."""

    count: int  # read by hand: it may be the sum of the groups' counts; 0: remote clients only (needs `remote`)
    # clients that join from elsewhere (`fedbus client --join`, tokens from `fedbus invite`) and that the run expects
    # besides its own: the aggregator waits for count + remote (up to join_timeout_s), the data is cut in as many shards
    remote: int = setting(0, check=at_least(0))
    local_steps: int = setting(3, check=at_least(1))
    batch_size: int = setting(3, check=at_least(1))
    id_prefix: str = setting("client", check=valid_id)
    # simulated time of one local step (the surrogate answers at once)
    step_latency_s: float = setting(0.0, check=at_least(0.0))
    groups: tuple[ClientGroup, ...] = ()  # empty: one honest group of `count` clients named id_prefix
    # TextGrad clients: keep a step only if batch accuracy rose (or is perfect)
    strict: bool = setting(False)
    # TextGrad clients: step on a batch already answered all right (the authors' code does); false: skip the step
    # ("perfect-batch"), saving 3B+1 LLM calls for a batch of B
    step_on_perfect_batch: bool = setting(False)
    # TextGrad clients: a kept step is also scored on the validation set and reverted if it scores lower there
    validation_revert: bool = setting(False)
    # a registered optimizer or package.module:function; None: the engine's
    optimizer: str | None = setting(None, check=known_optimizer)
    # eager: every client runs from the start; virtual (--simulate only): a client exists once selected;
    # auto: virtual in --simulate from 10,000 clients on, where the scenario allows it
    population: str = setting("auto", check=one_of(POPULATIONS))


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipationSpec:
    """Who takes part in a synchronous round, and for how long the aggregator waits."""

    fraction: float = setting(1.0, check=lambda v: within(0.0, 1.0)(v) or (None if v > 0 else "must be > 0"))
    min_clients: int = setting(1, check=at_least(1))
    min_updates: int = setting(1, check=at_least(1))
    round_deadline_s: float = setting(60.0, check=at_least(0.001))  # sync: per round; buffered/async: per task
    join_timeout_s: float = setting(30.0, check=at_least(0.001))  # 0 would give up before anyone joined
    overcommit: float = setting(0.0, check=within(0.0, 10.0))  # sync: select this much more, close at target
    adaptive_deadline_k: float | None = None  # read by hand from adaptive_deadline: {k, window}
    adaptive_window: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationSpec:
    """How uploaded prompts become the next global prompt."""

    strategy: str = setting("concat", check=known_strategy)
    max_prompt_chars: int = setting(20_000, check=at_least(100))
    mode: str = setting("sync", check=one_of(MODES))
    buffer_size: int = 1  # read by hand: its default depends on the mode
    max_staleness: int = setting(10, check=at_least(0))
    weighting: StalenessWeighting = field(default_factory=StalenessWeighting)  # read by hand: a nested mapping
    # summarize / uid_summarize: the answer-format instruction appended to the merged prompt (the authors' line)
    format_line: str = setting(FORMAT_LINE, check=lambda v: None if v.strip() else "must not be blank")
    # the engine's context window in tokens, for the context-overflow record (default: the local engine's slot)
    context_tokens: int | None = setting(None, check=at_least(1))
    # LLM runs: the judge role asks, per instruction a client added, whether its content survived in the global prompt
    judge_retention: bool = setting(False)


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
    grader: str = "exact"  # task.grader (read by hand): exact, or judge (the authors' LLM judge, engine role judge)
    # protocol v2 (docs/SECURITY.md): signed+sealed (every message signed, updates sealed to the aggregator),
    # signed (bodies in clear), or none (protocol v1: anyone on the broker can post as anyone)
    security: str = setting(DEFAULT_SECURITY, check=one_of(SECURITY_MODES))

    @property
    def expected_clients(self) -> int:
        """How many clients the run expects: its own and the remote ones (``clients.remote``)."""
        return self.clients.count + self.clients.remote

    def groups(self) -> tuple[ClientGroup, ...]:
        """The client groups; a scenario without ``clients.groups`` has one honest group (none with count 0)."""
        if self.clients.groups:
            return self.clients.groups
        if self.clients.count == 0:
            return ()
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
