"""The aggregation strategies' content rules: what each accepted prompt contributes to the aggregate text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.aggregator.strategies import carry_out, concat, concat_unique, get_strategy, merge_weighted, sentences

WORDS = st.sampled_from(["Think", "step", "by", "Check", "units", "Answer", "briefly", "count", "each", "item"])
SENTENCE = st.lists(WORDS, min_size=1, max_size=4).map(lambda ws: " ".join(ws) + ".")
PROMPT = st.lists(SENTENCE, min_size=1, max_size=4).map(" ".join)
CLIENTS = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), PROMPT), max_size=6)


@given(prompts=CLIENTS)
def test_concat_keeps_every_accepted_text_in_order(prompts: list[tuple[str, str]]) -> None:
    """Every accepted prompt is in the concat aggregate as sent, in the given order, repeats included."""
    merged = concat("Old.", prompts, 10**6)
    if not prompts:
        assert merged == "Old."
        return
    assert merged == "\n".join(p for _, p in prompts)
    position = 0
    for _, text in prompts:
        found = merged.find(text, position)
        assert found >= 0
        position = found + len(text)


@given(prompts=CLIENTS, budget=st.integers(0, 200))
def test_no_strategy_cuts_at_the_budget_the_core_does(prompts: list[tuple[str, str]], budget: int) -> None:
    """The budget changes nothing in what a strategy returns: the core cuts, and records what the cut lost."""
    assert concat("Old.", prompts, budget) == concat("Old.", prompts, 10**6)
    assert concat_unique("Old.", prompts, budget) == concat_unique("Old.", prompts, 10**6)
    assert carry_out("concat", "Old.", prompts, budget) == concat("Old.", prompts, 10**6)


def test_concat_unique_of_identical_and_blank_prompts() -> None:
    """fedbus's concat_unique: identical prompts (after stripping) once; blank ones add nothing; nothing at all keeps
    the current."""
    assert concat_unique("Old.", [("a", " Be brief. "), ("b", "Be brief."), ("c", "  ")], 100) == "Be brief."
    assert concat_unique("Old.", [("a", "One."), ("b", "Two."), ("c", "Three.")], 100) == "One.\n\nTwo.\n\nThree."
    assert concat_unique("Old.", [], 100) == "Old."


@given(current=PROMPT, updates=st.lists(st.tuples(st.sampled_from("abc"), PROMPT,
                                                   st.floats(0.0, 1.0, allow_nan=False)), max_size=4))
def test_weighted_merge_keeps_each_updates_share_of_new_sentences(
        current: str, updates: list[tuple[str, str, float]]) -> None:
    """Each update adds the first ceil(w * n) of its n new sentences; the global prompt is never rewritten."""
    merged = sentences(merge_weighted(current, updates, 10**6))
    base = sentences(current)
    assert merged[:len(base)] == base
    expected = list(base)
    for _client, prompt, weight in updates:
        novel = [s for s in dict.fromkeys(sentences(prompt)) if s not in expected]
        expected += novel[:math.ceil(weight * len(novel))]
    assert merged == expected
    assert len(set(merged[len(base):])) == len(merged) - len(base), "a sentence entered twice"


@given(prompt=PROMPT, low=st.floats(0.0, 1.0, allow_nan=False), high=st.floats(0.0, 1.0, allow_nan=False))
def test_a_lighter_update_never_adds_more(prompt: str, low: float, high: float) -> None:
    """A staler update (smaller weight) never contributes more sentences than a fresher one."""
    low, high = sorted((low, high))
    assert len(sentences(merge_weighted("Base.", [("a", prompt, low)], 10**6))) <= \
        len(sentences(merge_weighted("Base.", [("a", prompt, high)], 10**6)))


def test_weighted_merge_clamps_weights_and_leaves_the_cut_to_the_core() -> None:
    """Weights outside [0, 1] act as 0 and 1; weight 0 adds nothing; max_chars cuts nothing here."""
    assert merge_weighted("Base.", [("a", "One. Two.", 0.0)], 100) == "Base."
    assert merge_weighted("Base.", [("a", "One. Two.", 5.0)], 100) == "Base. One. Two."
    assert merge_weighted("Base.", [("a", "One. Two.", -1.0)], 100) == "Base."
    assert merge_weighted("Base.", [("a", "One. Two.", 0.5)], 100) == "Base. One."
    assert merge_weighted("Base.", [("a", "One. Two.", 1.0)], 8) == "Base. One. Two."


def test_sentences_split_on_stops_and_lines() -> None:
    """Sentences end at . ! ? followed by a space, and at line breaks; blanks vanish."""
    assert sentences("One. Two! Three? four\n\nFive.  Six") == ["One.", "Two!", "Three?", "four", "Five.", "Six"]
    assert sentences("e.g. this") == ["e.g.", "this"]
    assert sentences("   \n ") == []


def test_carry_out_picks_the_weighted_merge_only_with_weights() -> None:
    """A Reduce with weights is the weighted merge; without, the named strategy; an unknown name is a KeyError."""
    prompts = (("a", "One. Two."), ("b", "Three."))
    assert carry_out("concat", "Base.", prompts, 100) == "One. Two.\nThree."
    assert carry_out("concat", "Base.", prompts, 100, (1.0, 1.0)) == "Base. One. Two. Three."
    assert carry_out("concat", "Base.", prompts, 100, (0.5, 1.0)) == "Base. One. Three."
    with pytest.raises(LookupError, match="unknown strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="zip"):
        carry_out("concat", "Base.", prompts, 100, (1.0,))
