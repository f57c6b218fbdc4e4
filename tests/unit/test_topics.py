"""Topics are built and parsed in one module; filters match as MQTT says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.protocol import topics
from fedbus.protocol.ids import is_valid_id

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


def test_the_layout() -> None:
    assert topics.global_topic("r1") == "fedbus/v1/r1/global"
    assert topics.task_topic("r1", "c1") == "fedbus/v1/r1/task/c1"
    assert topics.update_topic("r1", "c1") == "fedbus/v1/r1/update/c1"
    assert topics.presence_topic("r1", "c1") == "fedbus/v1/r1/presence/c1"
    assert topics.metrics_topic("r1", "c1") == "fedbus/v1/r1/metrics/c1"
    assert topics.receipt_topic("r1", "c1") == "fedbus/v1/r1/receipt/c1"
    assert topics.aggregator_topic("r1") == "fedbus/v1/r1/aggregator"
    assert topics.channel_filter("r1", "update") == "fedbus/v1/r1/update/+"


@given(run=ids, client=ids, channel=st.sampled_from(topics.PER_CLIENT))
def test_per_client_topics_parse_back(run: str, client: str, channel: topics.Channel) -> None:
    topic = topics.client_topic(run, channel, client)
    assert topics.parse(topic) == topics.TopicRef(run=run, channel=channel, client=client)
    assert topics.matches(topics.channel_filter(run, channel), topic)
    assert topics.matches(f"{topics.ROOT}/{run}/#", topic)


@given(run=ids)
def test_the_global_topic_parses_back(run: str) -> None:
    assert topics.parse(topics.global_topic(run)) == topics.TopicRef(run=run, channel="global")


@given(run=ids)
def test_the_aggregators_presence_topic_parses_back(run: str) -> None:
    """fedbus/v1/{run}/aggregator is a per-run topic: no client level, and the aggregator's filters miss it."""
    topic = topics.aggregator_topic(run)
    assert topics.parse(topic) == topics.TopicRef(run=run, channel="aggregator")
    assert not any(topics.matches(topics.channel_filter(run, c), topic) for c in ("presence", "update", "metrics"))


def test_per_run_channels_take_no_client_and_per_client_ones_need_one() -> None:
    assert topics.parse("fedbus/v1/r1/aggregator/c1") is None
    assert topics.parse("fedbus/v1/r1/receipt") is None
    with pytest.raises(ValueError, match="not per-client"):
        topics.client_topic("r1", "aggregator", "c1")


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+", "-lead", ".hidden", "x" * 65, "c1\n", "sp ace", "é"])
def test_ids_that_would_break_a_topic_are_refused(bad: str) -> None:
    assert not is_valid_id(bad)
    with pytest.raises(ValueError, match="client id"):
        topics.task_topic("r1", bad)
    with pytest.raises(ValueError, match="run id"):
        topics.global_topic(bad)


@pytest.mark.parametrize("topic", [
    "fedbus/v1/r1", "fedbus/v2/r1/global", "other/v1/r1/global", "fedbus/v1/r1/global/extra",
    "fedbus/v1/r1/task", "fedbus/v1/r1/task/c1/x", "fedbus/v1/r1/gossip/c1", "fedbus/v1/r+/task/c1",
    "fedbus/v1/r1/update/c#", "", "fedbus/v1/r1/global/",
])
def test_foreign_topics_do_not_parse(topic: str) -> None:
    assert topics.parse(topic) is None


def test_a_channel_that_is_not_per_client_is_refused() -> None:
    with pytest.raises(ValueError, match="per-client"):
        topics.client_topic("r1", "global", "c1")
    with pytest.raises(ValueError, match="per-client"):
        topics.channel_filter("r1", "global")


@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    ("a/+", "a/b/c", False),
    ("a/#", "a/b/c", True),
    ("a/#", "a", True),  # MQTT 3.1.1 4.7.1.2: "sport/#" also matches "sport"
    ("#", "a/b", True),
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("+/+", "a/b", True),
])
def test_filter_matching(pattern: str, topic: str, expected: bool) -> None:
    assert topics.matches(pattern, topic) is expected
    assert topics.matches_levels(topics.filter_levels(pattern), topic.split("/")) is expected


def _as_mqtt_says(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 4.7 written another way: a regular expression per filter."""
    import re

    levels = topic_filter.split("/")
    if levels[-1] == "#":
        head = "/".join(re.escape(p) if p != "+" else "[^/]*" for p in levels[:-1])
        return re.fullmatch(f"{head}(/.*)?" if len(levels) > 1 else ".*", topic) is not None
    return re.fullmatch("/".join(re.escape(p) if p != "+" else "[^/]*" for p in levels), topic) is not None


_levels = st.lists(st.sampled_from(["a", "b", ""]), min_size=1, max_size=4)


@given(_levels.map("/".join), st.lists(st.sampled_from(["a", "b", "+", ""]), min_size=1, max_size=4),
       st.booleans())
def test_filter_matching_agrees_with_mqtt(topic: str, filter_levels: list[str], multi: bool) -> None:
    topic_filter = "/".join([*filter_levels, "#"] if multi else filter_levels)
    expected = _as_mqtt_says(topic_filter, topic)
    assert topics.matches(topic_filter, topic) is expected
    assert topics.matches_levels(topics.filter_levels(topic_filter), topic.split("/")) is expected


def test_what_a_hostile_sender_makes_long_is_refused_and_never_remembered() -> None:
    """Ids and topics are remembered once checked (a message is checked several times), but a string longer than
    any id or topic (a message's field, or an MQTT topic level, may run to ~64 KB) is refused without being
    checked or kept: a stream of distinct long strings cannot fill the memo with megabytes each."""
    from fedbus.protocol import ids

    longest = f"{topics.ROOT}/{'r' * 64}/presence/{'c' * 64}"
    assert topics.parse(longest) is not None and ids.is_valid_id("c" * 64)
    ids._valid_str_id.cache_clear()
    topics._parse.cache_clear()
    for n in range(50):
        assert not ids.is_valid_id("c" * 65 + str(n))
        assert topics.parse(f"{longest}{n}") is None
        assert topics.parse(f"{topics.ROOT}/r/update/{'x' * 10_000}{n}") is None
    assert ids._valid_str_id.cache_info().currsize == 0 and topics._parse.cache_info().currsize == 0
