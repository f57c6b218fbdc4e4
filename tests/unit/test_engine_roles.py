"""Engines per role: ``engine.roles`` and ``top_p`` in the scenario, each role's engine and its own counts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from fedbus.errors import EngineError, ScenarioError
from fedbus.llm import Completion, EngineStatistics, Sampling, ScriptedEngine
from fedbus.llm.cache import cache_key
from fedbus.llm.roles import ROLES, Engines, RoleEngine
from fedbus.scenario.engine import EngineSpec, RoleSpec, engine_to_mapping, read_engine
from fedbus.scenario.loader import scenario_from_mapping
from fedbus.scenario.reader import Reader

BASE: dict[str, Any] = {"name": "openai", "model": "small", "base_url": "http://127.0.0.1:8000/v1", "max_tokens": 256}


def read(value: Any) -> tuple[EngineSpec, list[tuple[str, str]]]:
    r = Reader()
    return read_engine(r, value), r.problems


def scenario(engine: Any, **clients: Any) -> dict[str, Any]:
    return {"name": "roles", "rounds": 1, "engine": engine, "task": {"name": "object_counting"},
            "clients": {"count": 2, **clients}}


def test_a_role_overrides_only_what_it_names() -> None:
    """Unnamed settings and unnamed roles are the base engine's."""
    spec, problems = read({**BASE, "top_p": 0.9, "roles": {
        "backward": {"model": "big", "base_url": "https://api.example.com/v1", "api_key_env": "KEY",
                     "max_tokens": 2000},
        "aggregator": {"max_tokens": 1500, "temperature": 0.7, "top_p": 0.5}}})
    assert problems == []
    backward, aggregator, forward = spec.for_role("backward"), spec.for_role("aggregator"), spec.for_role("forward")
    assert (backward.model, backward.base_url, backward.api_key_env, backward.max_tokens, backward.top_p) == (
        "big", "https://api.example.com/v1", "KEY", 2000, 0.9)
    assert (aggregator.model, aggregator.max_tokens, aggregator.temperature, aggregator.top_p) == (
        "small", 1500, 0.7, 0.5)
    assert forward == spec.for_role("judge") == EngineSpec(**{**BASE, "top_p": 0.9})  # no roles: the base engine
    assert spec.role("optimizer") == RoleSpec()


def test_roles_round_trip_through_the_mapping() -> None:
    spec, _ = read({**BASE, "top_p": 0.8, "roles": {"judge": {"model": "judge-model"}, "forward": {"top_p": 0.95}}})
    again, problems = read(engine_to_mapping(spec))
    assert problems == [] and again == spec
    assert engine_to_mapping(read({**BASE})[0]) == BASE  # no roles key where there are none


@pytest.mark.parametrize(("roles", "path"), [
    ({"judge": {"max_tokens": 0}}, "engine.roles.judge.max_tokens"),
    ({"judge": {"max_tokens": "many"}}, "engine.roles.judge.max_tokens"),
    ({"optimizer": {"top_p": 1.5}}, "engine.roles.optimizer.top_p"),
    ({"forward": {"temperature": 3}}, "engine.roles.forward.temperature"),
    ({"evaluator": {"base_url": "ftp://x"}}, "engine.roles.evaluator.base_url"),
    ({"evaluator": {"seed": 3}}, "engine.roles.evaluator.seed"),
    ({"jury": {"model": "x"}}, "engine.roles.jury"),
    ({"backward": "big"}, "engine.roles.backward"),
    (["backward"], "engine.roles"),
])
def test_a_malformed_role_is_named_at_its_yaml_path(roles: Any, path: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(scenario({**BASE, "roles": roles}))
    assert path in [where for where, _ in caught.value.problems], caught.value.problems


def test_top_p_is_checked_at_its_path() -> None:
    _, problems = read({**BASE, "top_p": 0})
    assert [where for where, _ in problems] == ["engine.top_p"]


def test_roles_need_an_llm_engine_and_a_local_engine_serves_one_model() -> None:
    _, problems = read({"name": "surrogate", "roles": {"judge": {"max_tokens": 9}}})
    assert [where for where, _ in problems] == ["engine.roles"]
    _, problems = read({"name": "local", "roles": {"judge": {"model": "other"}}})
    assert [where for where, _ in problems] == ["engine.roles.judge.model"]
    spec, problems = read({"name": "local", "roles": {"judge": {"model": "other", "base_url": "http://h:1/v1"}}})
    assert problems == [] and spec.for_role("judge").name == "openai" and spec.for_role("forward").name == "local"


def test_top_p_is_part_of_the_cache_key_only_when_set() -> None:
    """A changed top_p misses the cache; entries written before top_p existed keep their keys."""
    def key(sampling: Sampling) -> str:
        return cache_key(identity="http://h/v1", model="m", sampling=sampling, system=None, prompt="p")
    unset, nine, five = key(Sampling()), key(Sampling(top_p=0.9)), key(Sampling(top_p=0.5))
    assert len({unset, nine, five}) == 3
    before_top_p = {"v": 1, "engine": "http://h/v1", "model": "m", "max_tokens": 512, "temperature": 0.0,
                    "seed": None, "system": None, "prompt": "p"}  # the key's document before top_p existed
    canonical = json.dumps(before_top_p, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert unset == hashlib.sha256(canonical.encode()).hexdigest()
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)


def test_step_on_perfect_batch_is_a_clients_setting() -> None:
    assert not scenario_from_mapping(scenario(BASE)).clients.step_on_perfect_batch  # today's behaviour by default
    assert scenario_from_mapping(scenario(BASE, step_on_perfect_batch=True)).clients.step_on_perfect_batch
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(scenario(BASE, step_on_perfect_batch="yes"))
    assert [where for where, _ in caught.value.problems] == ["clients.step_on_perfect_batch"]


class _Cut:
    """An engine whose replies are all cut at max_tokens, one retry each, answered from a cache every other call."""

    name, model, identity, sampling = "fake", "cut-model", "fake", Sampling()

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        self.calls += 1
        if prompt == "fail":
            raise EngineError("scripted failure")
        return Completion(text="cut", prompt_tokens=10, completion_tokens=5, cached=self.calls % 2 == 0,
                          finish_reason="length")

    def statistics(self) -> EngineStatistics:
        return EngineStatistics(calls=self.calls, retries=self.calls, usage_estimated=1)


async def test_each_role_counts_its_own_calls_tokens_and_truncations() -> None:
    shared, judge = _Cut(), ScriptedEngine(lambda prompt, system: "fine", model="judge-model")
    engines = Engines({**dict.fromkeys(ROLES, shared), "judge": judge})
    for _ in range(3):
        await engines.forward.complete("q")
    await engines.aggregator.complete("merge")
    await engines.judge.complete("is it right?")
    with pytest.raises(EngineError):
        await engines.backward.complete("fail")
    by_role = engines.by_role()
    forward = by_role["forward"]
    assert (forward["calls"], forward["cached_calls"], forward["truncated"]) == (3, 1, 3)
    assert by_role["forward"]["prompt_tokens"] == 20  # the cached reply cost the server nothing
    assert (by_role["backward"]["calls"], by_role["backward"]["failures"]) == (1, 1)
    assert (by_role["judge"]["model"], by_role["judge"]["truncated"], by_role["evaluator"]["calls"]) == (
        "judge-model", 0, 0)
    total = engines.statistics()
    assert (total.calls, total.cached_calls, total.failures, total.truncated) == (6, 2, 1, 4)
    assert total.retries == shared.calls  # an engine shared by five roles counts its retries once
    assert total.usage_estimated == 1 + 1  # the shared engine's and the scripted judge's one reply


def test_one_engine_serves_every_role_by_default() -> None:
    engine = ScriptedEngine(["x"])
    engines = Engines.single(engine)
    assert all(engines[role].inner is engine for role in ROLES)
    assert isinstance(engines.optimizer, RoleEngine) and engines.model == "scripted"
    with pytest.raises(ValueError, match="judge"):
        Engines(dict.fromkeys(ROLES[:-1], engine))


def test_worker_processes_reach_the_runs_engine_with_the_concurrency_shared_out() -> None:
    """A local engine names the run's embedded server, for the worker to reach rather than start (one model in
    memory); the concurrency is split over the workers, rounded up; an openai engine keeps its server."""
    from fedbus.llm.engine import ScriptedEngine
    from fedbus.llm.roles import Engines
    from fedbus.runtime.engines import worker_engine_spec
    from fedbus.scenario.engine import EngineSpec

    local = Engines(dict.fromkeys(("forward", "backward", "optimizer", "aggregator", "evaluator", "judge"),
                                  ScriptedEngine([], model="qwen-local")), local_url="http://127.0.0.1:4321/v1")
    spec = worker_engine_spec(EngineSpec(name="local", concurrency=3, max_tokens=160), local, 2)
    assert (spec.name, spec.model, spec.base_url, spec.concurrency, spec.max_tokens) == (
        "local", "qwen-local", "http://127.0.0.1:4321/v1", 2, 160)
    remote = EngineSpec(name="openai", model="m", base_url="http://gpu:8000/v1", concurrency=8)
    assert worker_engine_spec(remote, Engines.single(ScriptedEngine([])), 3) == EngineSpec(
        name="openai", model="m", base_url="http://gpu:8000/v1", concurrency=3)
