"""fedbus/results/jsonfile.py: summary.json and the other indented files keep json.dumps(indent=2)'s layout."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fedbus.results.jsonfile import pretty_json

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25)


@given(document=st.dictionaries(st.text(max_size=8), _values, max_size=6))
def test_the_text_reads_back_and_has_json_dumps_layout(document: dict[str, object]) -> None:
    text = pretty_json(document)
    assert json.loads(text) == document
    reference = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    # the same lines, numbers aside (orjson writes 1e-05 as 0.00001: the same float)
    assert len(text.splitlines()) == len(reference.splitlines())
    if not any(isinstance(v, float) for v in _leaves(document)):
        assert text == reference


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def test_big_integers_and_non_finite_numbers() -> None:
    assert json.loads(pretty_json({"n": 2**80})) == {"n": 2**80}
    assert json.loads(pretty_json({"loss": float("nan"), "x": [float("inf")]})) == {"loss": None, "x": [None]}
    assert pretty_json({1: "a"}) == '{\n  "1": "a"\n}\n'


def test_half_a_surrogate_pair_is_written_as_its_escape() -> None:
    """summary.json is written as UTF-8, which cannot hold half a surrogate pair: pretty_json writes JSON's escape
    of it, which reads back as the same string; other text stays as it is."""
    text = pretty_json({"id": "x\ud800", "prompt": "caf\u00e9 \U0001F600", "n": 2**70})
    assert text.encode("utf-8") and "\\ud800" in text and "caf\u00e9 \U0001F600" in text
    assert json.loads(text) == {"id": "x\ud800", "prompt": "caf\u00e9 \U0001F600", "n": 2**70}
