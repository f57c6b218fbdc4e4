"""The aggregation strategies' content rules: what each accepted prompt contributes to the aggregate text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.aggregator.strategies import carry_out, concat, get_strategy, merge_weighted, sentences

WORDS = st.sampled_from(["Think", "step", "by", "Check", "units", "Answer", "briefly", "count", "each", "item"])
SENTENCE = st.lists(WORDS, min_size=1, max_size=4).map(lambda ws: " ".join(ws) + ".")
PROMPT = st.lists(SENTENCE, min_size=1, max_size=4).map(" ".join)
CLIENTS = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), PROMPT), max_size=6)


@given(prompts=CLIENTS)
def test_concat_keeps_every_accepted_text_in_order(prompts: list[tuple[str, str]]) -> None:
    """Every accepted prompt is in the concat aggregate, in the given order, each distinct text once."""
    merged = concat("Old.", prompts, 10**6)
    distinct = list(dict.fromkeys(p.strip() for _, p in prompts))
    if not distinct:
        assert merged == "Old."
        return
    assert merged == "\n\n".join(distinct)
    position = 0
    for text in distinct:
        found = merged.find(text, position)
        assert found >= 0
        position = found + len(text)


@given(prompts=CLIENTS, budget=st.integers(0, 200))
def test_concat_is_cut_at_the_budget(prompts: list[tuple[str, str]], budget: int) -> None:
    """A small budget cuts the same text a large one gives, never reorders or drops from the middle."""
    assert concat("Old.", prompts, budget) == concat("Old.", prompts, 10**6)[:budget]


def test_concat_of_identical_and_blank_prompts() -> None:
    """Identical prompts (after stripping) enter once; blank ones add nothing; nothing at all keeps the current."""
    assert concat("Old.", [("a", " Be brief. "), ("b", "Be brief."), ("c", "  ")], 100) == "Be brief."
    assert concat("Old.", [("a", "One."), ("b", "Two."), ("c", "Three.")], 100) == "One.\n\nTwo.\n\nThree."
    assert concat("Old.", [], 100) == "Old."


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


def test_weighted_merge_clamps_weights_and_cuts() -> None:
    """Weights outside [0, 1] act as 0 and 1; the text is cut at max_chars; weight 0 adds nothing."""
    assert merge_weighted("Base.", [("a", "One. Two.", 0.0)], 100) == "Base."
    assert merge_weighted("Base.", [("a", "One. Two.", 5.0)], 100) == "Base. One. Two."
    assert merge_weighted("Base.", [("a", "One. Two.", -1.0)], 100) == "Base."
    assert merge_weighted("Base.", [("a", "One. Two.", 0.5)], 100) == "Base. One."
    assert merge_weighted("Base.", [("a", "One. Two.", 1.0)], 8) == "Base. On"


def test_sentences_split_on_stops_and_lines() -> None:
    """Sentences end at . ! ? followed by a space, and at line breaks; blanks vanish."""
    assert sentences("One. Two! Three? four\n\nFive.  Six") == ["One.", "Two!", "Three?", "four", "Five.", "Six"]
    assert sentences("e.g. this") == ["e.g.", "this"]
    assert sentences("   \n ") == []


def test_carry_out_picks_the_weighted_merge_only_with_weights() -> None:
    """A Reduce with weights is the weighted merge; without, the named strategy; an unknown name is a KeyError."""
    prompts = (("a", "One. Two."), ("b", "Three."))
    assert carry_out("concat", "Base.", prompts, 100) == "One. Two.\n\nThree."
    assert carry_out("concat", "Base.", prompts, 100, (1.0, 1.0)) == "Base. One. Two. Three."
    assert carry_out("concat", "Base.", prompts, 100, (0.5, 1.0)) == "Base. One. Three."
    with pytest.raises(LookupError, match="unknown strategy 'nope'"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="zip"):
        carry_out("concat", "Base.", prompts, 100, (1.0,))
