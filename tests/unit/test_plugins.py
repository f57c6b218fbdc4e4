"""Plugin points: strategies by registered name or `package.module:function`, refused otherwise with a reason."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from fedbus.aggregator import strategies
from fedbus.aggregator.strategies import carry_out, get_strategy, register_strategy
from fedbus.errors import ScenarioError
from fedbus.plugins import PluginError, is_reference, lookup
from fedbus.scenario import scenario_from_mapping

DOC = {"name": "plug", "rounds": 1, "clients": {"count": 2}, "task": {"name": "surrogate-skills"}}


def longest(current: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> str:
    """A user's strategy: keep the longest prompt."""
    return max((p for _, p in prompts), key=len, default=current)


def not_a_string(current: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> int:
    return 7


@pytest.fixture
def registered() -> Iterator[None]:
    register_strategy("longest", longest)
    yield
    strategies.STRATEGIES.pop("longest", None)


def test_a_registered_strategy_is_carried_out_and_cut(registered: None) -> None:
    """A registered name resolves to the function; carry_out applies it (the core, not carry_out, cuts)."""
    prompts = (("a", "short"), ("b", "much longer text"))
    assert get_strategy("longest") is longest
    assert carry_out("longest", "old", prompts, 100) == "much longer text"
    assert carry_out("longest", "old", prompts, 4) == "much longer text"


def test_a_reference_resolves_without_registering() -> None:
    """`package.module:function` imports the module and returns the function."""
    assert get_strategy("tests.unit.test_plugins:longest") is longest
    assert carry_out("tests.unit.test_plugins:longest", "old", (("a", "xy"), ("b", "xyz")), 100) == "xyz"


@pytest.mark.parametrize(("name", "message"), [
    ("average", "unknown strategy 'average': registered are concat"),
    ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
    ("tests.unit.test_plugins:missing", "has no callable 'missing'"),
    ("tests.unit.test_plugins:DOC", "has no callable 'DOC'"),
])
def test_unknown_names_are_refused_with_a_reason(name: str, message: str) -> None:
    """An unknown name, an unimportable module or a missing function is a PluginError that says which."""
    with pytest.raises(PluginError, match=message):
        get_strategy(name)


def test_a_strategy_that_returns_no_text_fails_the_reduce() -> None:
    """A strategy returning something other than text is an error, not a global prompt."""
    with pytest.raises(TypeError, match="returned int"):
        carry_out("tests.unit.test_plugins:not_a_string", "old", (("a", "x"),), 100)


@pytest.mark.parametrize("name", ["summarize", "uid_summarize", "pkg.mod:fn", ""])
def test_reserved_names_cannot_be_registered(name: str) -> None:
    """The LLM merges, reference-shaped and empty names are not registrable."""
    with pytest.raises(ValueError, match="cannot be registered"):
        register_strategy(name, longest)


def test_reference_shape() -> None:
    """Only `dotted.module:identifier` is a reference."""
    assert is_reference("a.b_c.d:fn") and is_reference("mod:Fn2")
    assert not any(is_reference(n) for n in ("mod", "mod:", ":fn", "a b:fn", "mod:fn:x", "mod.fn"))
    with pytest.raises(PluginError):
        lookup("nothing", {}, "optimizer")


def test_the_scenario_accepts_registered_names_and_references(registered: None) -> None:
    """aggregation.strategy takes a registered name or an importable reference."""
    for name in ("longest", "tests.unit.test_plugins:longest", "concat"):
        scenario = scenario_from_mapping({**DOC, "aggregation": {"strategy": name}})
        assert scenario.aggregation.strategy == name


def test_the_scenario_refuses_an_unknown_strategy_at_its_yaml_path() -> None:
    """An unknown strategy is a ScenarioError at aggregation.strategy that names what exists."""
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping({**DOC, "aggregation": {"strategy": "tests.unit.test_plugins:missing"}})
    [(path, message)] = caught.value.problems
    assert path == "aggregation.strategy" and "has no callable 'missing'" in message


def test_a_module_that_fails_to_import_is_refused_at_its_yaml_path() -> None:
    """Any exception while importing a plugin's module is a ScenarioError at aggregation.strategy, not a crash."""
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping({**DOC, "aggregation": {"strategy": "tests.unit.plugin_that_fails:merge"}})
    [(path, message)] = caught.value.problems
    assert path == "aggregation.strategy" and "RuntimeError: this module is broken" in message


def test_worker_processes_get_only_plugins_they_can_import(registered: None) -> None:
    """A plugin registered by name lives in this process: such a run keeps its clients in-process."""
    from fedbus.runtime.run import _reaches_workers

    def scenario(strategy: str, optimizer: str | None = None) -> object:
        clients = {"count": 2, **({"optimizer": optimizer} if optimizer else {})}
        return scenario_from_mapping({**DOC, "clients": clients, "aggregation": {"strategy": strategy}})

    assert _reaches_workers(scenario("concat"))  # type: ignore[arg-type]
    assert _reaches_workers(scenario("tests.unit.test_plugins:longest"))  # type: ignore[arg-type]
    assert not _reaches_workers(scenario("longest"))  # type: ignore[arg-type]
