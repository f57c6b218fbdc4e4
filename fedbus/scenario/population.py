"""The scenario's clients as a census: any client's id, group and shard by index, without listing them all.

A *virtual* population (``clients.population``) runs in the simulator only: a client exists once the aggregator
selects it; until then it costs nothing but its group's availability model, evaluated on demand. 'auto' makes a
simulated population of :data:`VIRTUAL_FROM` clients or more virtual, when nothing in the scenario needs every
client to run from the start (:func:`virtual_obstacles`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fedbus.protocol.ids import MAX_ID_CHARS
from fedbus.scenario.conditions import ClientGroup
from fedbus.scenario.model import POPULATIONS, Scenario

__all__ = ["POPULATIONS", "VIRTUAL_FROM", "Roll", "for_simulation", "roll", "virtual_obstacles"]
VIRTUAL_FROM = 10_000
_MEMO = 4096


@dataclass(frozen=True, slots=True)
class Roll:
    """The clients of ``groups`` in shard order: group by group, ``{name}-{i}`` with ``i`` zero-padded to the
    width of the group's largest index (the ids :meth:`Scenario.members` lists)."""

    groups: tuple[ClientGroup, ...]
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _by_name: dict[str, int] = field(init=False, repr=False, compare=False)
    # the last ids looked up (a message's signer is looked up several times on its way): at most _MEMO of them
    _looked_up: dict[str, int | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts, total = [], 0
        for group in self.groups:
            starts.append(total)
            total += group.count
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_by_name", {g.name: i for i, g in enumerate(self.groups)})
        object.__setattr__(self, "_looked_up", {})

    @property
    def size(self) -> int:
        return (self._starts[-1] + self.groups[-1].count) if self.groups else 0

    def member(self, index: int) -> tuple[str, ClientGroup]:
        """Client ``index``'s id and group."""
        if not 0 <= index < self.size:
            raise IndexError(f"client index {index} outside 0..{self.size - 1}")
        at = bisect.bisect_right(self._starts, index) - 1
        group = self.groups[at]
        return f"{group.name}-{index - self._starts[at]:0{len(str(group.count - 1))}d}", group

    def client(self, index: int) -> str:
        return self.member(index)[0]

    def index(self, client: str) -> int | None:
        """Client ``client``'s index, or None for an id outside the census."""
        looked_up = self._looked_up
        if client in looked_up:
            return looked_up[client]
        found = self._index(client)
        if len(looked_up) >= _MEMO:
            looked_up.clear()
        if len(client) <= MAX_ID_CHARS:  # an id (a longer string is none, and is not kept)
            looked_up[client] = found
        return found

    def _index(self, client: str) -> int | None:
        name, _, digits = client.rpartition("-")
        at = self._by_name.get(name)
        if at is None or not digits.isascii() or not digits.isdigit():
            return None
        group = self.groups[at]
        local = int(digits)
        if len(digits) != len(str(group.count - 1)) or local >= group.count:
            return None
        return self._starts[at] + local

    def available(self, now: float) -> Sequence[tuple[int, int]]:
        """The groups whose availability trace has them online at ``now`` (no trace: always), as index ranges."""
        return [(start, group.count) for start, group in zip(self._starts, self.groups, strict=True)
                if group.count and (not group.availability.online
                                    or any(i.contains(now) for i in group.availability.online))]

    def next_available(self, now: float) -> float | None:
        """The first start of an availability trace's interval after ``now``; None when no trace has one."""
        starts = [i.start_s for group in self.groups if group.count for i in group.availability.online
                  if i.start_s > now]
        return min(starts, default=None)


def roll(scenario: Scenario) -> Roll:
    return Roll(scenario.groups())


def virtual_obstacles(scenario: Scenario) -> list[tuple[str, str]]:
    """What keeps ``scenario``'s clients from being virtual, as (YAML path, why)."""
    out: list[tuple[str, str]] = []
    if scenario.aggregation.mode != "sync":
        out.append(("aggregation.mode", "a virtual population runs synchronous rounds only (buffered and async "
                                        "modes keep every live client busy)"))
    if scenario.clients.remote:
        out.append(("clients.remote", "a virtual population has no remote clients"))
    for g, group in enumerate(scenario.clients.groups):
        for e, event in enumerate(group.availability.events):
            if event.at_s is not None:
                out.append((f"clients.groups[{g}].availability.events[{e}].at_s",
                            "a virtual client exists only once selected: schedule its events with at_round"))
        if group.network.partitions:
            out.append((f"clients.groups[{g}].network.partitions",
                        "a virtual client exists only once selected: partitions by time need every client"))
    return out


def for_simulation(scenario: Scenario) -> Scenario:
    """``scenario`` with ``clients.population`` decided for the simulator: 'auto' becomes 'virtual' from
    :data:`VIRTUAL_FROM` clients on (when nothing stands in the way), else 'eager'."""
    chosen = scenario.clients.population
    if chosen == "auto":
        big = scenario.clients.count >= VIRTUAL_FROM
        chosen = "virtual" if big and not virtual_obstacles(scenario) else "eager"
    return replace(scenario, clients=replace(scenario.clients, population=chosen))
