"""A scenario turned once into what each role needs: the aggregator's config and core, the clients' plans.

Pure: the MQTT runtime and the simulator both start from here, so a scenario means the same federation
to both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedbus.aggregator.config import AggregatorConfig
from fedbus.aggregator.rounds import RoundAggregator
from fedbus.aggregator.stream import StreamAggregator
from fedbus.scenario import Scenario
from fedbus.scenario.conditions import ClientGroup


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientPlan:
    """One of the scenario's own clients: who it is, its data shard, and the conditions it runs under."""

    client: str
    shard: int
    group: ClientGroup
    seed: int
    step_delay_s: float
    max_message_bytes: int
    optimizer: str | None = None  # the scenario's clients.optimizer; None: the engine's


def aggregator_config(scenario: Scenario, run_id: str) -> AggregatorConfig:
    """The aggregator core's settings for ``scenario`` under run id ``run_id``."""
    p = scenario.participation
    a = scenario.aggregation
    return AggregatorConfig(
        overcommit=p.overcommit, adaptive_deadline_k=p.adaptive_deadline_k, adaptive_window=p.adaptive_window,
        mode=a.mode, buffer_size=a.buffer_size, max_staleness=a.max_staleness, weighting=a.weighting,
        run=run_id, rounds=scenario.rounds, expected_clients=scenario.clients.count,
        initial_prompt=scenario.initial_prompt, engine=scenario.engine, data=scenario.data,
        local_steps=scenario.clients.local_steps, batch_size=scenario.clients.batch_size,
        fraction=p.fraction, min_clients=p.min_clients, min_updates=p.min_updates,
        round_deadline_s=p.round_deadline_s, join_timeout_s=p.join_timeout_s,
        strategy=a.strategy, max_prompt_chars=a.max_prompt_chars,
    )


def make_core(scenario: Scenario, run_id: str) -> RoundAggregator | StreamAggregator:
    """The aggregator core for the scenario's mode, seeded from the scenario."""
    config = aggregator_config(scenario, run_id)
    rng = random.Random(f"aggregator/{scenario.seed}")
    return RoundAggregator(config, rng) if config.mode == "sync" else StreamAggregator(config, rng)


def client_plans(scenario: Scenario) -> tuple[ClientPlan, ...]:
    """The scenario's own clients in order; client ``i`` trains on shard ``i``."""
    return tuple(ClientPlan(client=cid, shard=i, group=group, seed=scenario.seed,
                            step_delay_s=scenario.clients.step_latency_s,
                            max_message_bytes=scenario.max_message_bytes, optimizer=scenario.clients.optimizer)
                 for i, (cid, group) in enumerate(scenario.members()))
