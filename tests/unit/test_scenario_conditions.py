"""Scenario conditions (groups, modes, participation): generated scenarios round-trip; mistakes name their path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.errors import ScenarioError
from fedbus.scenario import scenario_from_mapping, scenario_to_mapping

names = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)
seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
probability = st.floats(min_value=0.0, max_value=1.0)

latencies = st.one_of(
    st.builds(lambda v: {"kind": "constant", "value_s": v}, seconds),
    st.builds(lambda lo, w: {"kind": "uniform", "low_s": lo, "high_s": lo + w}, seconds, seconds),
    st.builds(lambda m, s: {"kind": "normal", "mean_s": m, "std_s": s}, seconds, seconds),
    st.builds(lambda m, s: {"kind": "lognormal", "median_s": m, "sigma": s}, seconds, st.floats(0, 3)),
    st.builds(lambda v: {"kind": "trace", "values_s": v}, st.lists(seconds, min_size=1, max_size=5)),
)
events = st.one_of(
    st.builds(lambda at, back: {"kind": "crash", "at_s": at, "rejoin_after_s": back}, seconds, seconds),
    st.builds(lambda r: {"kind": "crash", "at_round": r}, st.integers(1, 50)),
    st.builds(lambda at, d: {"kind": "hang", "at_s": at, "duration_s": d + 1}, seconds, seconds),
    st.builds(lambda r, back: {"kind": "leave", "at_round": r, "rejoin_after_s": back}, st.integers(1, 9), seconds),
)
intervals = st.builds(lambda a, w: {"start_s": a, "end_s": a + w + 0.5}, seconds, seconds)


@st.composite
def groups(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        out.append({
            "name": name, "count": draw(st.integers(1, 20)), "latency": draw(latencies),
            "stragglers": {"fraction": draw(probability), "slowdown": draw(st.floats(1, 20))},
            "availability": {"dropout_p": draw(probability), "events": draw(st.lists(events, max_size=3)),
                             "online": draw(st.lists(intervals, max_size=2))},
            "behaviour": draw(st.sampled_from(["honest", "noisy", "hostile", "stale"])),
            "noise": draw(probability),
            "network": {"delay_s": draw(seconds), "jitter_s": draw(seconds), "loss": draw(st.floats(0, 0.9)),
                        "duplicate": draw(probability), "reorder": draw(probability),
                        "partitions": draw(st.lists(intervals, max_size=2))},
        })
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(["sync", "buffered", "async"]))
    aggregation: dict[str, Any] = {"mode": mode, "max_staleness": draw(st.integers(0, 20)),
                                   "weighting": {"kind": draw(st.sampled_from(["constant", "polynomial", "hinge"])),
                                                 "a": draw(st.floats(0, 3)), "b": draw(st.floats(0, 10))}}
    if mode == "buffered":
        aggregation["buffer_size"] = draw(st.integers(1, 10))
    participation: dict[str, Any] = {"fraction": draw(st.floats(0.01, 1.0)), "min_clients": 1, "min_updates": 1}
    if mode == "sync":
        participation["overcommit"] = draw(st.floats(0, 2))
        if draw(st.booleans()):
            participation["adaptive_deadline"] = {"k": draw(st.floats(0, 10)), "window": draw(st.integers(3, 50))}
    return {"name": draw(names), "seed": draw(st.integers(0, 2**31)), "rounds": draw(st.integers(1, 50)),
            "time_scale": draw(st.floats(0.01, 1000)), "task": {"train_size": draw(st.integers(1, 500))},
            "clients": {"groups": draw(groups())}, "participation": participation, "aggregation": aggregation}


@given(doc=scenarios())
@settings(max_examples=150)
def test_generated_scenarios_round_trip(doc: dict[str, Any]) -> None:
    """Any valid generated scenario loads, and its plain-data form loads back to an equal scenario."""
    scenario = scenario_from_mapping(doc)
    assert scenario_from_mapping(scenario_to_mapping(scenario)) == scenario
    assert len(scenario.client_ids()) == sum(g["count"] for g in doc["clients"]["groups"])
    assert len(set(scenario.client_ids())) == len(scenario.client_ids())


# (path to poke, a wrong value, the path the error must name)
MISTAKES = [
    (("time_scale",), 0, "time_scale"),
    (("clients", "groups", 0, "count"), 0, "clients.groups[0].count"),
    (("clients", "groups", 0, "latency", "kind"), "gamma", "clients.groups[0].latency.kind"),
    (("clients", "groups", 0, "stragglers", "slowdown"), 0.5, "clients.groups[0].stragglers.slowdown"),
    (("clients", "groups", 0, "availability", "dropout_p"), 1.5, "clients.groups[0].availability.dropout_p"),
    (("clients", "groups", 0, "behaviour"), "evil", "clients.groups[0].behaviour"),
    (("clients", "groups", 0, "network", "loss"), 1.0, "clients.groups[0].network.loss"),
    (("clients", "groups", 0, "network", "partitions"), [{"start_s": 5, "end_s": 1}],
     "clients.groups[0].network.partitions[0].end_s"),
    (("clients", "groups", 0, "availability", "events"), [{"kind": "crash"}],
     "clients.groups[0].availability.events[0]"),
    (("aggregation", "mode"), "gossip", "aggregation.mode"),
    (("aggregation", "weighting", "kind"), "exp", "aggregation.weighting.kind"),
    (("participation", "adaptive_deadline", "window"), 1, "participation.adaptive_deadline.window"),
]


@pytest.mark.parametrize(("where", "value", "path"), MISTAKES)
@given(doc=scenarios())
@settings(max_examples=10)
def test_a_wrong_value_is_reported_at_its_path(doc: dict[str, Any], where: tuple[Any, ...], value: Any,
                                                path: str) -> None:
    """Putting a wrong value anywhere in a valid scenario raises ScenarioError naming that YAML path."""
    bad = copy.deepcopy(doc)
    node: Any = bad
    for key in where[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[where[-1]] = value
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(bad)
    assert path in [p for p, _ in caught.value.problems], caught.value.lines()


def test_duplicate_group_names_are_refused() -> None:
    """Two groups with one name would give two clients one id: refused with the second group's path."""
    doc = {"name": "x", "rounds": 1, "task": {}, "clients": {"groups": [{"name": "a", "count": 1},
                                                                        {"name": "a", "count": 2}]}}
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(doc)
    assert "clients.groups[1].name" in [p for p, _ in caught.value.problems]


def test_count_must_match_the_groups() -> None:
    """clients.count, when given beside groups, must equal their sum."""
    doc = {"name": "x", "rounds": 1, "task": {}, "clients": {"count": 5, "groups": [{"name": "a", "count": 2}]}}
    with pytest.raises(ScenarioError, match=r"clients\.count"):
        scenario_from_mapping(doc)
