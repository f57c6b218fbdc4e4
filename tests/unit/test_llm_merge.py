"""The LLM aggregators' prompts and reply parsing (fedbus's tagged variants), and the sentence-overlap figure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.aggregator.llm_merge import CLOSE, OPEN, instructions, merge_request, parse_merged, sentence_overlap

PROMPTS = [("c0", "Think step by step. List every item. Answer: $VALUE"),
           ("c1", "Count only the asked category. Answer: $VALUE")]


@pytest.mark.parametrize("strategy", ["summarize_tagged", "uid_guided"])
def test_the_request_lists_every_client_prompt_and_the_tags(strategy: str) -> None:
    request = merge_request(strategy, PROMPTS, 2000)
    for _client, text in PROMPTS:
        assert text in request.prompt
    assert OPEN in request.prompt and CLOSE in request.prompt
    assert "LAST" in request.prompt or "End with" in request.prompt  # the answer format stays last


def test_uid_guidance_is_actionable_and_has_a_budget() -> None:
    request = merge_request("uid_guided", PROMPTS, 2000)
    assert "Uniform Information Density" in request.prompt
    assert "exactly once" in request.prompt and "characters" in request.prompt
    assert "Uniform Information Density" not in merge_request("summarize_tagged", PROMPTS, 2000).prompt


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(KeyError):
        merge_request("concat", PROMPTS, 2000)


def test_parsing_takes_the_text_between_the_last_tags() -> None:
    reply = f"Sure.\n{OPEN}draft{CLOSE}\nBetter:\n{OPEN}\n```List items. Answer: $VALUE```\n{CLOSE}"
    assert parse_merged(reply).prompt == "List items. Answer: $VALUE"


@pytest.mark.parametrize(("reply", "problem"), [
    ("no tags at all", "missing-tags"), (f"{OPEN} unclosed", "missing-tags"), (f"{OPEN}  {CLOSE}", "empty"),
    ("", "missing-tags")])
def test_a_reply_without_a_merged_prompt_is_an_outcome(reply: str, problem: str) -> None:
    merged = parse_merged(reply)
    assert (merged.prompt, merged.problem) == (None, problem)


def test_instructions_are_normalized_and_deduplicated() -> None:
    assert instructions("List every item. list every item!  Count them.") == ("list every item", "count them")


def test_sentence_overlap_counts_surviving_sentences() -> None:
    clients = [p for _c, p in PROMPTS]
    assert sentence_overlap(clients, " ".join(clients)) == 1.0
    assert sentence_overlap(clients, "Think step by step. Answer: $VALUE") == pytest.approx(2 / 4)
    assert sentence_overlap(clients, "Something else entirely.") == 0.0
    assert sentence_overlap([], "anything") == 1.0


def test_a_light_rewording_still_counts_as_overlap() -> None:
    assert sentence_overlap(["Count only the items in the asked category."],
                     "Count only the items of the asked category.") == 1.0


@given(st.lists(st.text(alphabet="abc .", max_size=40), max_size=4), st.text(alphabet="abc .", max_size=80))
def test_sentence_overlap_is_a_fraction(clients: list[str], merged: str) -> None:
    assert 0.0 <= sentence_overlap(clients, merged) <= 1.0


@pytest.mark.parametrize("strategy", ["summarize_tagged", "uid_guided"])
def test_the_answer_format_instruction_is_kept_word_for_word(strategy: str) -> None:
    """The answer parser reads that instruction's format, so the merge must not reword it."""
    assert "word for word" in merge_request(strategy, PROMPTS, 2000).prompt
