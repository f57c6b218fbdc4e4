"""FedTextGrad's aggregators as the authors ran them, pinned word for word against the text quoted in issue 14
(the authors' ``utils/prompt_template.py`` and ``train_hetero_fed.py``, ubc-tea/FedTextGrad)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.aggregator.llm_merge import FORMAT_LINE, PAPER_SYSTEM, merge_inputs, merge_request, merged_prompt
from fedbus.aggregator.strategies import LLM_STRATEGIES, PAPER_LLM_STRATEGIES, carry_out, concat, concat_unique

# The authors' sentences, as the issue quotes them.
AUTHORS_SUMMARIZE = ("Merge the following list of prompts into a single, cohesive prompt while preserving all original "
                     "information. Ensure that the final instruction remains unchanged and is placed as the last "
                     "sentence. Provide only the merged prompt.")
AUTHORS_UID_SENTENCE = "Apply Uniform Information Density Principles."
AUTHORS_FORMAT = ("The last line of your response should be of the following format: 'Answer: $VALUE' where VALUE is "
                  "a numerical value.")
PROMPTS = (("c0", "Think step by step. Answer: $VALUE"), ("c1", "Count each item once.\nAnswer: $VALUE"),
           ("c2", "Think step by step. Answer: $VALUE"))


def test_summarize_sends_the_authors_template_with_the_prompts_joined_by_newlines() -> None:
    request = merge_request("summarize", PROMPTS, 10_000)
    joined = "\n".join(text for _c, text in PROMPTS)
    assert request.prompt == f"\n{AUTHORS_SUMMARIZE}\n\nList of Prompts to Merge:\n{joined}\n"
    assert request.paper and request.system == PAPER_SYSTEM == "You are a helpful, creative, and smart assistant."


def test_uid_summarize_adds_exactly_one_sentence_after_the_first() -> None:
    request = merge_request("uid_summarize", PROMPTS, 10_000)
    first, rest = AUTHORS_SUMMARIZE.split(" Ensure", 1)
    joined = "\n".join(text for _c, text in PROMPTS)
    assert request.prompt == (f"\n{first} {AUTHORS_UID_SENTENCE} Ensure{rest}\n\nList of Prompts to Merge:\n"
                              f"{joined}\n")
    assert request.system == PAPER_SYSTEM


def test_the_paper_requests_keep_every_prompt_as_sent_repeats_included() -> None:
    """No deduplication, no stripping, no tags, no length budget: the authors' merge sees what the clients sent."""
    request = merge_request("summarize", (("a", "  Be brief.  "), ("b", "  Be brief.  ")), 50)
    assert request.prompt.count("  Be brief.  ") == 2
    assert "<" not in request.prompt and "characters" not in request.prompt


def test_the_format_line_is_the_authors_and_is_appended_with_no_separator() -> None:
    assert FORMAT_LINE == AUTHORS_FORMAT
    request = merge_request("uid_summarize", PROMPTS, 10_000)
    assert merged_prompt(request, "Merged text.").prompt == "Merged text." + AUTHORS_FORMAT
    assert merged_prompt(request, "Merged.\n", format_line="Reply with a number.").prompt == (
        "Merged.\nReply with a number.")


@pytest.mark.parametrize("reply", ["", "  \n "])
def test_an_empty_reply_is_unusable_not_a_prompt_of_the_format_line_alone(reply: str) -> None:
    merged = merged_prompt(merge_request("summarize", PROMPTS, 10_000), reply)
    assert (merged.prompt, merged.problem) == (None, "empty")


def test_a_paper_reply_is_taken_as_it_came_tags_and_all() -> None:
    """The authors parse nothing: whatever the model says is the prompt (a tagged reply keeps its tags)."""
    reply = "<MERGED_PROMPT>x</MERGED_PROMPT>"
    assert merged_prompt(merge_request("summarize", PROMPTS, 10_000), reply).prompt == reply + AUTHORS_FORMAT


def test_the_paper_names_come_first_and_fedbus_variants_keep_their_own() -> None:
    assert PAPER_LLM_STRATEGIES == ("summarize", "uid_summarize")
    assert LLM_STRATEGIES == ("summarize", "uid_summarize", "summarize_tagged", "uid_guided")
    for own in ("summarize_tagged", "uid_guided"):
        assert not merge_request(own, PROMPTS, 10_000).paper


def test_concat_is_textgrads_aggregate_every_prompt_newline_joined() -> None:
    """tg.autograd.functional.aggregate: '\\n'.join of the values, repeats kept, nothing stripped, nothing cut."""
    assert concat("old", PROMPTS, 10) == "\n".join(text for _c, text in PROMPTS)
    assert carry_out("concat", "old", PROMPTS, 10) == "\n".join(text for _c, text in PROMPTS)
    assert concat("old", (), 10) == "old"


def test_concat_unique_is_fedbus_own_identical_prompts_once() -> None:
    assert concat_unique("old", PROMPTS, 10_000) == ("Think step by step. Answer: $VALUE\n\n"
                                                     "Count each item once.\nAnswer: $VALUE")
    assert concat_unique("old", (("a", "  "),), 100) == "old"


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.text(max_size=30)), max_size=8))
def test_concat_loses_no_character_of_any_client(pairs: list[tuple[str, str]]) -> None:
    """Its length is the sum of the prompts plus the separators: nobody's text is dropped or shortened."""
    merged = concat("current", pairs, 1)
    assert len(merged) == (sum(len(p) for _c, p in pairs) + len(pairs) - 1 if pairs else len("current"))
    position = 0
    for _c, text in pairs:
        found = merged.find(text, position)
        assert found >= 0
        position = found + len(text)


def test_an_llm_merge_in_buffered_or_async_mode_is_given_the_global_prompt_first() -> None:
    """Sync: the round's updates as the paper merges them; with staleness weights (buffered/async) an update
    changes a global prompt the others never saw, so the global prompt is merged too, first."""
    updates = (("c1", "Count twice."), ("c2", "List items."))
    assert merge_inputs("Global.", updates) == updates
    assert merge_inputs("Global.", updates, (1.0, 0.5)) == (("global", "Global."), *updates)
    request = merge_request("summarize", merge_inputs("Global.", updates, (1.0, 0.5)), 4000)
    assert request.prompt.endswith("List of Prompts to Merge:\nGlobal.\nCount twice.\nList items.\n")
