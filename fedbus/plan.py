"""A scenario turned once into what each role needs: the aggregator's config and core, the clients' plans,
and each party's protocol-v2 :class:`~fedbus.security.policy.Security`.

Pure: the MQTT runtime and the simulator both start from here, so a scenario means the same federation
to both. Keys come from a secret the caller passes (:func:`run_security`): ``fedbus run`` draws it from the
OS, the simulator derives it from the scenario's seed (:func:`simulated_security`).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedbus.errors import ScenarioError
from fedbus.protocol.ids import AGGREGATOR
from fedbus.scenario import Scenario
from fedbus.scenario.conditions import ClientGroup
from fedbus.scenario.population import Roll, roll
from fedbus.security.crypto import PrivateKey, derive
from fedbus.security.keys import KeyChain, KeyLookup, PublicKey
from fedbus.security.policy import Security

if TYPE_CHECKING:  # the aggregator's modules load where a core is made: a client worker never loads them
    from fedbus.aggregator.config import AggregatorConfig
    from fedbus.aggregator.rounds import RoundAggregator
    from fedbus.aggregator.stream import StreamAggregator


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
    from fedbus.aggregator.config import AggregatorConfig

    p = scenario.participation
    a = scenario.aggregation
    return AggregatorConfig(
        overcommit=p.overcommit, adaptive_deadline_k=p.adaptive_deadline_k, adaptive_window=p.adaptive_window,
        mode=a.mode, buffer_size=a.buffer_size, max_staleness=a.max_staleness, weighting=a.weighting,
        run=run_id, rounds=scenario.rounds, expected_clients=scenario.expected_clients,
        initial_prompt=scenario.initial_prompt, engine=scenario.engine, data=scenario.data,
        local_steps=scenario.clients.local_steps, batch_size=scenario.clients.batch_size,
        fraction=p.fraction, min_clients=p.min_clients, min_updates=p.min_updates,
        round_deadline_s=p.round_deadline_s, join_timeout_s=p.join_timeout_s,
        strategy=a.strategy, max_prompt_chars=a.max_prompt_chars,
    )


def is_virtual(scenario: Scenario) -> bool:
    """Whether the scenario's clients exist only once selected (``clients.population`` virtual: the simulator's,
    see :func:`fedbus.scenario.population.for_simulation`)."""
    return scenario.clients.population == "virtual"


def refuse_over_a_broker(scenario: Scenario) -> None:
    """``ScenarioError`` for a scenario that runs only in the simulator: a virtual population (over a broker every
    client is a connection). ``fedbus run`` asks before it starts anything; :func:`fedbus.run` as it starts."""
    if is_virtual(scenario):
        raise ScenarioError([("clients.population", "virtual runs only in the simulator (fedbus run --simulate): "
                              "over a broker every client is a connection; use eager (or auto)")])


def make_core(scenario: Scenario, run_id: str) -> RoundAggregator | StreamAggregator:
    """The aggregator core for the scenario's mode, seeded from the scenario; over a virtual population, the core
    selects from the census (:class:`~fedbus.aggregator.membership.VirtualPopulation`), not from who announced."""
    from fedbus.aggregator.membership import VirtualPopulation
    from fedbus.aggregator.rounds import RoundAggregator
    from fedbus.aggregator.stream import StreamAggregator

    config = aggregator_config(scenario, run_id)
    rng = random.Random(f"aggregator/{scenario.seed}")
    if config.mode != "sync":
        return StreamAggregator(config, rng)
    return RoundAggregator(config, rng, VirtualPopulation(roll(scenario)) if is_virtual(scenario) else None)


def _plan(scenario: Scenario, index: int, cid: str, group: ClientGroup) -> ClientPlan:
    return ClientPlan(client=cid, shard=index, group=group, seed=scenario.seed,
                      step_delay_s=scenario.clients.step_latency_s, max_message_bytes=scenario.max_message_bytes,
                      optimizer=scenario.clients.optimizer)


def client_plans(scenario: Scenario) -> tuple[ClientPlan, ...]:
    """The scenario's own clients in order; client ``i`` trains on shard ``i``."""
    return tuple(_plan(scenario, i, cid, group) for i, (cid, group) in enumerate(scenario.members()))


def client_plan(scenario: Scenario, census: Roll, client: str) -> ClientPlan | None:
    """One client's plan, found in ``census`` (the scenario's :func:`~fedbus.scenario.population.roll`) in time
    independent of the population's size; None for an id outside it."""
    index = census.index(client)
    if index is None:
        return None
    cid, group = census.member(index)
    return _plan(scenario, index, cid, group)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSecurity:
    """The protocol-v2 settings of a run's own parties: the aggregator's, and each scenario client's."""

    aggregator: Security
    clients: Mapping[str, Security] = field(default_factory=dict)
    # a virtual population's: client id -> its Security, made when asked (None: an id outside the census)
    on_demand: Callable[[str], Security | None] | None = None

    def client(self, client: str) -> Security:
        """Client ``client``'s (one of the scenario's own); ``KeyError`` for another."""
        found = self.clients.get(client)
        if found is None and self.on_demand is not None:
            found = self.on_demand(client)
        if found is None:
            raise KeyError(client)
        return found


def run_security(scenario: Scenario, secret: bytes | None, *, ephemeral_seed: bytes | None = None,
                 remote: KeyLookup | None = None) -> RunSecurity:
    """Each party's :class:`Security` under the scenario's ``security`` mode, with keys derived from ``secret``
    (:func:`fedbus.security.crypto.derive`: one key pair per party, the aggregator authorizing exactly the
    scenario's clients and each client pinning the aggregator's key).

    ``secret``: 32 bytes or more; for a run over a broker, fresh from the OS (``crypto.random_bytes(32)``) and
    kept as privately as a key file (a resumed run needs the same one). ``None`` only with mode ``none``.
    ``ephemeral_seed``: the simulator's, to seal reproducibly (:class:`Security`); ``None`` over a network.
    ``remote``: the keys of clients from elsewhere (``fedbus invite``, ``--authorized-keys``) that the aggregator
    accepts too, after the scenario's own: a remote entry never stands in for one of the run's own clients."""
    mode = scenario.security
    member = _membership(scenario)
    if mode == "none":
        return RunSecurity(aggregator=Security.off(), on_demand=lambda cid: Security.off() if member(cid) else None)
    if secret is None:
        raise ValueError(f"security {mode} needs a secret to derive the run's keys from")
    aggregator_key = derive(secret, AGGREGATOR)
    # each key derived when first needed (~100 µs apiece): a worker process derives only its own clients', a
    # 1,000-client aggregator does not spend its start-up on keys it needs as its clients come, and one over a
    # virtual population of a million authorizes them all without a million keys up front
    own = DerivedKeys(secret, member)
    authorized: KeyLookup = own if remote is None else KeyChain((own, remote))

    def client(cid: str) -> Security | None:
        if not member(cid):
            return None
        return Security.for_client(cid, _derived(secret, cid), aggregator_key.public, mode=mode,
                                   ephemeral_seed=ephemeral_seed)

    return RunSecurity(
        aggregator=Security.for_aggregator(aggregator_key, authorized, mode=mode, ephemeral_seed=ephemeral_seed),
        on_demand=client,
    )


def _membership(scenario: Scenario) -> Callable[[str], bool]:
    """Whether an id is one of the scenario's own clients (a virtual population's census, looked up)."""
    if is_virtual(scenario):
        census = roll(scenario)
        return lambda cid: census.index(cid) is not None
    return frozenset(scenario.client_ids()).__contains__


@functools.lru_cache(maxsize=256)
def _derived(secret: bytes, owner: str) -> PrivateKey:
    # the last few (a round's worth of the simulator's virtual clients), so that a client and the aggregator in
    # one process derive its key once
    return derive(secret, owner)


@functools.lru_cache(maxsize=1 << 16)
def _derived_public(secret: bytes, owner: str) -> PublicKey:
    return _derived(secret, owner).public


@dataclass(frozen=True, slots=True)
class DerivedKeys:
    """The run's own clients' public keys (``member``), each derived from the run's secret when first asked."""

    secret: bytes = field(repr=False)
    member: Callable[[str], bool]

    def get(self, signer_id: str, /) -> PublicKey | None:
        return _derived_public(self.secret, signer_id) if self.member(signer_id) else None


def simulated_security(scenario: Scenario, run_id: str) -> RunSecurity:
    """The simulator's: keys and sealing derived from the scenario's seed and the run id, so that the same
    scenario and seed give the same bytes. Anyone who knows the seed knows these keys: never over a network."""
    def secret(label: str) -> bytes:
        return hashlib.sha256(f"fedbus/sim {label}\n{scenario.seed}\n{run_id}".encode()).digest()

    return run_security(scenario, secret("keys"), ephemeral_seed=secret("ephemeral"))
