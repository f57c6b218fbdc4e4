"""The LLM merge request and reply parsing (fedbus/aggregator/llm_merge.py), pinned where bench/mutation.py
found details no test held: the request's exact layout and length budget, the closing tag that ends a
reply, and the similarity bound of the sentence-overlap figure."""

from __future__ import annotations

import pytest

from fedbus.aggregator.llm_merge import CLOSE, OPEN, SYSTEM, merge_request, parse_merged, sentence_overlap


def test_the_request_numbers_prompts_from_one_and_separates_them_by_a_blank_line() -> None:
    """The user message lists '<PROMPT 1>', '<PROMPT 2>', ... blocks one blank line apart, after their count."""
    request = merge_request("summarize_tagged", [("a", " Be brief. "), ("b", "Check units.")], 1000)
    assert request.system == SYSTEM
    assert request.prompt.startswith("Below are 2 system prompts")
    assert "\n\n<PROMPT 1>\nBe brief.\n</PROMPT 1>\n\n<PROMPT 2>\nCheck units.\n</PROMPT 2>\n\n" in request.prompt


@pytest.mark.parametrize(("longest", "max_chars", "budget"), [(150, 1000, 300), (150, 250, 250), (10, 1000, 200)])
def test_the_uid_budget_is_twice_the_longest_prompt_within_max_chars_and_at_least_200(
        longest: int, max_chars: int, budget: int) -> None:
    """uid_guided asks to stay within max(200, min(max_chars, 2 x the longest prompt)) characters."""
    request = merge_request("uid_guided", [("a", "x" * longest), ("b", "y")], max_chars)
    assert f"Stay within {budget} characters." in request.prompt


def test_a_request_without_prompts_is_still_well_formed() -> None:
    """No prompts at all: a request for 0 prompts with the minimum budget, not an exception."""
    request = merge_request("uid_guided", [], 1000)
    assert request.prompt.startswith("Below are 0 system prompts") and "Stay within 200 characters." in request.prompt


def test_an_unknown_strategy_names_the_known_ones() -> None:
    """A strategy that is not an LLM one is a KeyError listing the four LLM strategies."""
    with pytest.raises(KeyError, match=r"'fancy' is not an LLM strategy; known: summarize, uid_summarize, "
                                       r"summarize_tagged, uid_guided"):
        merge_request("fancy", [("a", "x")], 100)


def test_the_merged_text_ends_at_the_first_closing_tag_after_the_last_opening_tag() -> None:
    """Text after the first closing tag (even another closing tag) is not part of the merged prompt."""
    assert parse_merged(f"{OPEN}Be brief.{CLOSE} and then {CLOSE}").prompt == "Be brief."


def test_markdown_fences_are_stripped_but_the_text_is_not() -> None:
    """Backticks around the merged prompt go; letters at its ends (even an X) stay."""
    assert parse_merged(f"{OPEN}`Xenon is X`{CLOSE}").prompt == "Xenon is X"


def test_one_shared_word_is_not_a_retained_instruction() -> None:
    """Overlap needs word overlap (Jaccard) of at least the threshold: one word in common of six is not."""
    assert sentence_overlap(["Alpha beta gamma delta epsilon."], "Alpha zeta.") == 0.0


def test_word_overlap_exactly_at_the_threshold_counts_as_retained() -> None:
    """Jaccard similarity equal to the threshold (3 shared of 5 words = 0.6) counts as kept."""
    assert sentence_overlap(["Alpha beta gamma delta."], "Alpha beta gamma epsilon.", threshold=0.6) == 1.0
