"""A virtual population: the census of a scenario's clients, the core's selection from it, shards made alone."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.aggregator.membership import Roster, VirtualPopulation
from fedbus.errors import ScenarioError
from fedbus.plan import client_plan, client_plans, make_core, simulated_security
from fedbus.scenario import Scenario, scenario_from_mapping
from fedbus.scenario.conditions import Availability, ClientGroup, Interval
from fedbus.scenario.population import VIRTUAL_FROM, Roll, for_simulation, roll, virtual_obstacles
from fedbus.surrogate import task

GROUPS = {"clients": {"groups": [{"name": "phone", "count": 12},
                                 {"name": "edge-box", "count": 101}, {"name": "one", "count": 1}]}}


def make(doc: dict[str, Any]) -> Scenario:
    """A scenario from the parts of ``doc`` a test cares about; the rest from a small surrogate federation."""
    clients = {"local_steps": 1, **doc.pop("clients", {})}
    base: dict[str, Any] = {"name": "census", "seed": 7, "engine": "surrogate", "rounds": 2, "initial_prompt": "Go.",
                            "task": {"name": "surrogate-skills", "train_size": 200, "val_size": 10, "test_size": 10},
                            "clients": clients}
    task_doc = doc.pop("task", {})
    base["task"].update(task_doc)
    return scenario_from_mapping({**base, **doc})


def scenario() -> Scenario:
    return make(dict(GROUPS))


def test_the_census_names_every_client_as_the_scenario_lists_them() -> None:
    s = scenario()
    census = roll(s)
    members = s.members()
    assert census.size == len(members) == 114
    assert [census.member(i) for i in range(census.size)] == list(members)
    assert [census.index(cid) for cid, _ in members] == list(range(census.size))
    plans = client_plans(s)
    assert [client_plan(s, census, p.client) for p in plans] == list(plans)


@pytest.mark.parametrize("cid", ["phone-12", "phone-1", "phone-001", "edge-box-101", "edge-box-1x1", "edge-box-",
                                 "empty-0", "nobody-01", "one-00", "one-", "phone-٠٣", "", "-", "phone--1"])
def test_an_id_outside_the_census_has_no_index(cid: str) -> None:
    census = roll(scenario())
    assert census.index(cid) is None
    assert client_plan(scenario(), census, cid) is None
    with pytest.raises(IndexError):
        census.member(census.size)


def test_ids_looked_up_are_remembered_within_a_bound() -> None:
    """A message's signer is looked up several times on its way: the answers are remembered, the same answers, for at
    most a few thousand ids (a million-client census looked up once per client keeps none of it), and a string longer
    than any id (a hostile message's) is answered without being kept."""
    census = Roll((ClientGroup(name="a", count=1_000_000),))
    first = [census.index(f"a-{i:06d}") for i in range(6_000)]
    again = [census.index(f"a-{i:06d}") for i in range(6_000)]
    assert first == again == list(range(6_000))
    assert 0 < len(census._looked_up) <= 4096
    census._looked_up.clear()
    assert census.index("a-" + "0" * 100) is None and census.index("nobody-01") is None
    assert list(census._looked_up) == ["nobody-01"]


def test_availability_ranges_follow_each_groups_trace() -> None:
    day = Availability(online=(Interval(start_s=0.0, end_s=10.0),))
    census = Roll((ClientGroup(name="a", count=3), ClientGroup(name="b", count=4, availability=day),
                   ClientGroup(name="c", count=2)))
    assert list(census.available(5.0)) == [(0, 3), (3, 4), (7, 2)]
    assert list(census.available(10.0)) == [(0, 3), (7, 2)]


def brute_live(population: VirtualPopulation, offline: set[str], now: float) -> list[str]:
    census = population.census
    ranges = census.available(now)
    return sorted(census.client(i) for first, count in ranges for i in range(first, first + count)
                  if census.client(i) not in offline)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=1, max_size=4), traced=st.lists(st.booleans(), min_size=4,
       max_size=4), now=st.sampled_from([1.0, 20.0]), gone=st.lists(st.integers(0, 200), max_size=40),
       seed=st.integers(0, 2**32), share=st.floats(0.0, 1.0))
def test_virtual_selection_is_a_sample_of_exactly_the_live_clients(counts: list[int], traced: list[bool], *,
                                                                   now: float, gone: list[int], seed: int,
                                                                   share: float) -> None:
    trace = Availability(online=(Interval(start_s=0.0, end_s=10.0),))
    groups = tuple(ClientGroup(name=f"g{i}", count=c, availability=trace if traced[i] else Availability())
                   for i, c in enumerate(counts))
    census = Roll(groups)
    population = VirtualPopulation(census)
    offline: set[str] = set()
    for i in gone:
        if i < census.size:
            population.left(census.client(i))
            offline.add(census.client(i))
    if gone and gone[0] < census.size:  # one of them comes back
        population.joined(census.client(gone[0]))
        offline.discard(census.client(gone[0]))
    live = brute_live(population, offline, now)
    assert population.live_count(now) == len(live)
    k = int(share * len(live))
    chosen = population.sample(random.Random(seed), k, now)
    assert chosen == sorted(set(chosen)) and len(chosen) == k
    assert set(chosen) <= set(live)
    assert chosen == population.sample(random.Random(seed), k, now)  # the same draws, the same selection
    with pytest.raises(ValueError, match="cannot select"):
        population.sample(random.Random(seed), len(live) + 1, now)


def test_virtual_selection_is_uniform() -> None:
    census = Roll((ClientGroup(name="a", count=40), ClientGroup(name="b", count=60)))
    population = VirtualPopulation(census)
    rng = random.Random(3)
    counts = Counter(c for _ in range(4000) for c in population.sample(rng, 5, 0.0))
    assert len(counts) == 100
    expected = 4000 * 5 / 100  # 200 each
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi2 < 160, chi2  # 99 degrees of freedom: p < 1e-5 above this


def test_an_outsider_is_known_but_never_selected_and_membership_counts() -> None:
    census = Roll((ClientGroup(name="a", count=5),))
    population = VirtualPopulation(census)
    population.joined("stranger")
    assert population.knows("stranger") and population.knows("a-3") and not population.knows("a-5")
    assert population.known_count() == 6 and population.live_count(0.0) == 5
    population.left("a-3")
    population.left("stranger")
    assert population.live_count(0.0) == 4
    assert "a-3" not in population.sample(random.Random(1), 4, 0.0)
    roster = Roster()
    roster.joined("x")
    roster.joined("y")
    roster.left("x")
    assert (roster.live_count(0.0), roster.known_count(), roster.knows("x"), roster.knows("z")) == (1, 2, True, False)


def test_auto_is_virtual_in_the_simulator_from_ten_thousand_clients() -> None:
    small = make({"clients": {"count": VIRTUAL_FROM - 1}})
    big = make({"clients": {"count": VIRTUAL_FROM}})
    assert small.clients.population == big.clients.population == "auto"
    assert for_simulation(small).clients.population == "eager"
    assert for_simulation(big).clients.population == "virtual"
    streaming = replace(big, aggregation=replace(big.aggregation, mode="buffered"))
    assert for_simulation(streaming).clients.population == "eager"  # auto: virtual only where it can be
    eager = replace(big, clients=replace(big.clients, population="eager"))
    assert for_simulation(eager).clients.population == "eager"


def test_a_virtual_population_that_cannot_be_is_refused_at_its_yaml_path() -> None:
    doc = {"aggregation": {"mode": "async"},
           "clients": {"population": "virtual", "remote": 1, "groups": [
               {"name": "g", "count": 3, "availability": {"events": [{"kind": "crash", "at_s": 5}]},
                "network": {"partitions": [{"start_s": 1, "end_s": 2}]}}]}}
    with pytest.raises(ScenarioError) as caught:
        make(doc)
    paths = {path for path, _ in caught.value.problems}
    assert paths == {"aggregation.mode", "clients.remote", "clients.groups[0].availability.events[0].at_s",
                     "clients.groups[0].network.partitions"}
    ok = make({"clients": {"population": "virtual", "count": 3}})
    assert virtual_obstacles(ok) == []


def test_a_virtual_core_selects_from_the_census_and_keys_are_made_when_asked() -> None:
    s = make({"participation": {"fraction": 0.001}, "clients": {"population": "virtual", "count": 50_000}})
    core = make_core(s, "run-v")
    assert core.statistics().known_clients == 50_000
    security = simulated_security(s, "run-v")
    one = security.client("client-31337")
    assert one.owner == "client-31337"
    assert security.aggregator.authorized is not None
    assert security.aggregator.authorized.get("client-31337") == one.key.public
    assert security.aggregator.authorized.get("client-50000") is None
    with pytest.raises(KeyError):
        security.client("client-50000")


@pytest.mark.parametrize("partition", ["iid", "by-skill"])
def test_shards_of_a_large_federation_are_generated_alone(partition: str) -> None:
    spec = make({"task": {"train_size": 25_003, "partition": partition},
                 "clients": {"count": task.PER_SHARD_FROM}}).data
    assert task.per_shard(spec)
    dataset = task.generate(spec)
    assert dataset.train == () and len(dataset.val) == spec.val_size
    shards = [task.shard(spec, dataset, i) for i in (0, 1, 2, 3, spec.num_shards - 1)]
    assert [len(s) for s in shards] == [3, 3, 3, 3, 2]  # 25,003 over 10,000: the first 5,003 get one more
    assert shards[0] == task.shard(spec, dataset, 0)  # the same seed, the same examples
    assert len({e.uid for s in shards for e in s}) == sum(len(s) for s in shards)
    if partition == "by-skill":
        for i, s in zip((0, 1, 2, 3), shards, strict=False):
            favoured = {task.SKILL_NAMES[i % 8], task.SKILL_NAMES[(i + 1) % 8]}
            assert all(e.skills & favoured for e in s)
    small = replace(spec, num_shards=task.PER_SHARD_FROM - 1)
    assert not task.per_shard(small) and len(task.generate(small).train) == spec.train_size


def _traced() -> Scenario:
    """Day clients online at [0, 25) and from 1000 on, night ones at [30, 44): between rounds 1 and 2 no client
    announces anything, the night group simply becomes available at 30."""
    def group(name: str, online: list[dict[str, float]]) -> dict[str, Any]:
        return {"name": name, "count": 4, "latency": {"kind": "constant", "value_s": 10},
                "availability": {"online": online}}

    return make({"rounds": 3, "clients": {"groups": [
                    group("day", [{"start_s": 0, "end_s": 25}, {"start_s": 1000, "end_s": 100_000}]),
                    group("night", [{"start_s": 30, "end_s": 44}])]},
                 "participation": {"fraction": 1.0, "min_clients": 2, "min_updates": 1, "round_deadline_s": 40,
                                   "join_timeout_s": 20},
                 "aggregation": {"strategy": "concat", "max_prompt_chars": 12_000}})


def test_the_census_says_when_clients_become_available_next() -> None:
    census = roll(_traced())
    assert census.next_available(0.0) == 30.0
    assert census.next_available(29.999) == 30.0
    assert census.next_available(30.0) == 1000.0  # strictly after now
    assert census.next_available(1000.0) is None
    assert roll(scenario()).next_available(0.0) is None  # no trace: always available, nothing to wait for
    assert VirtualPopulation(census).next_change(12.0) == 30.0
    assert Roster().next_change(12.0) is None  # clients over a broker say when they come


def test_a_waiting_virtual_core_looks_again_when_a_trace_brings_clients() -> None:
    from fedbus.aggregator.effects import ArmTimer, RoundClosed, RoundOpened
    from fedbus.aggregator.events import ClientOffline, Started, TimerFired

    s = replace(_traced(), clients=replace(_traced().clients, population="virtual"))
    core = make_core(s, "run-t")
    assert [e.at for e in core.handle(Started(now=0.0)) if isinstance(e, ArmTimer)] == [20.0]  # 30: after the wait
    first = [e for e in core.handle(TimerFired(now=20.0)) if isinstance(e, RoundOpened)]
    assert first[0].selected == ("day-0", "day-1", "day-2", "day-3")
    effects = [e for c in first[0].selected for e in core.handle(ClientOffline(client=c, now=25.0))]
    assert [e.result.status for e in effects if isinstance(e, RoundClosed)] == ["no-quorum"]
    # nobody is live and nobody will say so: the core looks again when the trace brings the night group
    assert sorted(e.at for e in effects if isinstance(e, ArmTimer)) == [30.0, 45.0]
    opened = [e for e in core.handle(TimerFired(now=30.0)) if isinstance(e, RoundOpened)]
    assert len(opened) == 1 and opened[0].selected == ("night-0", "night-1", "night-2", "night-3")


@pytest.mark.parametrize("population", ["virtual", "eager"])
def test_clients_a_trace_brings_between_rounds_open_the_next_round_in_either_population(population: str,
                                                                                     tmp_path: Any) -> None:
    from fedbus import simulate

    s = _traced()
    summary = simulate(replace(s, clients=replace(s.clients, population=population)), tmp_path, progress=False)
    assert summary["status"] == "completed", summary.get("finish_reason")
    statuses = [r["status"] for r in summary["rounds"]]
    assert statuses[1] == "aggregated"  # the night group's round, opened when it came: the run does not abort
    assert all(c.startswith("night-") for c in summary["rounds"][1]["selected"])
