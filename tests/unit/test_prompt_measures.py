"""The authors' prompt-complexity measures (ubc-tea/FedTextGrad utils/prompt_complexity.py) on known texts, and
the prompt log-probabilities an engine's echo reply gives."""

from __future__ import annotations

import math
import zlib

import pytest

from fedbus.llm.openai_compat import _echoed_prompt_logprobs
from fedbus.results.prompt_measures import SURPRISAL_UNAVAILABLE, char_entropy, complexity, compression_rate, surprisal


def test_character_entropy_is_shannon_entropy_in_bits_per_character() -> None:
    assert char_entropy("aaaa") == 0.0
    assert char_entropy("abab") == 1.0
    assert char_entropy("abcd") == 2.0
    assert math.isclose(char_entropy("aab"), -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3)))
    assert char_entropy("") == 0.0


def test_compression_rate_is_zlib_bytes_over_utf8_bytes() -> None:
    text = "Count every item. " * 40
    assert compression_rate(text) == len(zlib.compress(text.encode())) / len(text.encode())
    assert compression_rate(text) < 0.1 < compression_rate("Count every item.")  # repetition compresses
    assert compression_rate("") == 0.0


def test_complexity_records_the_model_free_measures_and_no_invented_surprisal() -> None:
    record = complexity("List every item. Then count them.")
    assert record["words"] == 6 and record["tokens_est"] == math.ceil(len("List every item. Then count them.") / 4)
    assert record["surprisal"] == SURPRISAL_UNAVAILABLE


def test_surprisal_is_the_negative_log_probability_mean_max_and_sample_variance() -> None:
    figures = surprisal([-1.0, -2.0, -3.0], "m")
    assert figures == {"mean_nats": 2.0, "max_nats": 3.0, "variance": 1.0, "tokens": 3, "model": "m"}
    assert surprisal([-0.5], "m")["variance"] == 0.0


def test_an_echo_reply_gives_the_prompts_token_logprobs_without_the_first_and_the_generated_ones() -> None:
    reply = {"usage": {"prompt_tokens": 4},
             "choices": [{"logprobs": {"token_logprobs": [None, -1.5, -0.25, -2.0, -0.1]}}]}
    assert _echoed_prompt_logprobs(reply) == [-1.5, -0.25, -2.0]


@pytest.mark.parametrize("values", [[-0.1], [None, -1.0]])  # no echo (the generated token only); too few entries
def test_a_reply_that_did_not_echo_the_prompt_is_refused(values: list[float | None]) -> None:
    with pytest.raises(ValueError, match="prompt"):
        _echoed_prompt_logprobs({"usage": {"prompt_tokens": 4}, "choices": [{"logprobs": {"token_logprobs": values}}]})
