"""Receiver-side deduplication by message id.

rumqttd redelivers unacknowledged QoS 1 messages without the DUP flag, and overlapping
subscriptions deliver a message twice (../shared/FACTS.md), so every receiver remembers
the ids it has seen. Bounded: the oldest ids are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict


class SeenIds:
    """A bounded set of recently seen message ids."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, msg_id: str) -> bool:
        """Record ``msg_id``; True if it had not been seen (within the capacity)."""
        if msg_id in self._ids:
            self._ids.move_to_end(msg_id)
            return False
        self._ids[msg_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)
