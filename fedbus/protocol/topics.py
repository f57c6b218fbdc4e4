"""Every MQTT topic fedbus uses is built and parsed here, and nowhere else.

    fedbus/v1/{run}/global              retained GlobalState (aggregator -> all)
    fedbus/v1/{run}/aggregator          retained Presence of the aggregator; its Last Will says offline
    fedbus/v1/{run}/task/{client}       Task (aggregator -> one client)
    fedbus/v1/{run}/receipt/{client}    Receipt (aggregator -> one client): what became of its update
    fedbus/v1/{run}/update/{client}     Update or Failure (client -> aggregator), never retained
    fedbus/v1/{run}/presence/{client}   retained Presence; the Last Will says offline
    fedbus/v1/{run}/metrics/{sender}    Metrics
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from fedbus.protocol.ids import MAX_ID_CHARS, check_id, is_valid_id

ROOT = "fedbus/v1"
Channel = Literal["global", "aggregator", "task", "receipt", "update", "presence", "metrics"]
PER_RUN: tuple[Channel, ...] = ("global", "aggregator")
PER_CLIENT: tuple[Channel, ...] = ("task", "receipt", "update", "presence", "metrics")


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicRef:
    """A parsed fedbus topic."""

    run: str
    channel: Channel
    client: str | None = None


def global_topic(run: str) -> str:
    return f"{ROOT}/{check_id(run, 'run id')}/global"


def aggregator_topic(run: str) -> str:
    """Where the aggregator's retained presence (and its Last Will) lives."""
    return f"{ROOT}/{check_id(run, 'run id')}/aggregator"


# Built and parsed several times per message: the last few thousand of each are remembered (a round's worth of
# a 1,000-client run).
@functools.lru_cache(maxsize=8192)
def client_topic(run: str, channel: Channel, client: str) -> str:
    if channel not in PER_CLIENT:
        raise ValueError(f"channel {channel!r} is not per-client")
    return f"{ROOT}/{check_id(run, 'run id')}/{channel}/{check_id(client, 'client id')}"


def task_topic(run: str, client: str) -> str:
    return client_topic(run, "task", client)


def receipt_topic(run: str, client: str) -> str:
    return client_topic(run, "receipt", client)


def update_topic(run: str, client: str) -> str:
    return client_topic(run, "update", client)


def presence_topic(run: str, client: str) -> str:
    return client_topic(run, "presence", client)


def metrics_topic(run: str, client: str) -> str:
    return client_topic(run, "metrics", client)


def channel_filter(run: str, channel: Channel) -> str:
    """Subscription filter for one per-client channel of every client."""
    if channel not in PER_CLIENT:
        raise ValueError(f"channel {channel!r} is not per-client")
    return f"{ROOT}/{check_id(run, 'run id')}/{channel}/+"


_LONGEST = len(f"{ROOT}/{'r' * MAX_ID_CHARS}/presence/{'c' * MAX_ID_CHARS}")


def parse(topic: str) -> TopicRef | None:
    """Parse a fedbus topic; ``None`` for anything that is not one."""
    # no fedbus topic is longer: a long one (MQTT allows 65,535 bytes) is never parsed, nor remembered
    return None if len(topic) > _LONGEST else _parse(topic)


@functools.lru_cache(maxsize=8192)  # a topic that is no fedbus topic parses to None, remembered too
def _parse(topic: str) -> TopicRef | None:
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT or not is_valid_id(parts[2]):
        return None
    run, channel = parts[2], parts[3]
    if len(parts) == 4 and channel in PER_RUN:
        return TopicRef(run=run, channel=channel)
    if len(parts) == 5 and channel in PER_CLIENT and is_valid_id(parts[4]):
        return TopicRef(run=run, channel=channel, client=parts[4])
    return None


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with ``+`` and ``#``."""
    return matches_levels(filter_levels(topic_filter), topic.split("/"))


@functools.lru_cache(maxsize=1024)  # a broker's few wildcard filters, split once
def filter_levels(topic_filter: str) -> tuple[str, ...]:
    """``topic_filter``'s levels, for :func:`matches_levels`."""
    return tuple(topic_filter.split("/"))


def matches_levels(levels: tuple[str, ...], topic_levels: list[str]) -> bool:
    """:func:`matches` on a filter's :func:`filter_levels` and a topic's levels (``topic.split("/")``): a publish
    checked against several filters splits its topic once."""
    for i, part in enumerate(levels):
        if part == "#":
            return i == len(levels) - 1
        if i >= len(topic_levels) or (part != "+" and part != topic_levels[i]):
            return False
    return len(levels) == len(topic_levels)
