"""Who the aggregator may select: the clients that announced themselves, or a virtual population.

:class:`Roster` is what a federation over a broker has: the clients that said they are online, kept in sets.
:class:`VirtualPopulation` is the simulator's population of any size (a million clients): a client that has
not been instantiated costs nothing but its availability model (:class:`Census`), evaluated on demand; the
clients that did announce something (the ones selected before) are tracked by what they said. Selecting
``k`` clients costs O(k) draws, counting the live ones O(groups + clients that went offline).

Pure and deterministic: randomness comes from the ``random.Random`` the core passes in.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Protocol


class Membership(Protocol):
    """What the aggregator core asks of its population."""

    def joined(self, client: str) -> None:
        """``client`` said it is online."""

    def left(self, client: str) -> None:
        """``client`` went offline (its presence, or its Last Will)."""

    def knows(self, client: str) -> bool:
        """Whether ``client`` belongs to the federation (an update from another is 'unknown-client')."""

    def live_count(self, now: float) -> int:
        """How many clients are online at ``now``."""

    def known_count(self) -> int:
        """How many clients belong to the federation."""

    def sample(self, rng: random.Random, k: int, now: float) -> list[str]:
        """``k`` distinct live clients drawn uniformly (``k`` <= :meth:`live_count`), sorted."""

    def next_change(self, now: float) -> float | None:
        """The first time after ``now`` at which clients become available without announcing it (a virtual
        population's availability trace): a core waiting for clients looks again then. None: only what clients
        announce changes who is live."""


class Roster:
    """The clients that announced themselves: a federation over a broker (and an eager simulation)."""

    def __init__(self) -> None:
        self.live: set[str] = set()
        self.known: set[str] = set()

    def joined(self, client: str) -> None:
        self.known.add(client)
        self.live.add(client)

    def left(self, client: str) -> None:
        self.live.discard(client)

    def knows(self, client: str) -> bool:
        return client in self.known

    def live_count(self, now: float) -> int:
        return len(self.live)

    def known_count(self) -> int:
        return len(self.known)

    def sample(self, rng: random.Random, k: int, now: float) -> list[str]:
        return sorted(rng.sample(sorted(self.live), k))

    def next_change(self, now: float) -> float | None:
        return None  # a client that comes online says so


class Census(Protocol):
    """A population described, not listed: client ``i``'s id, the index of an id, and who is available when."""

    @property
    def size(self) -> int: ...

    def client(self, index: int) -> str:
        """Client ``index``'s id (0 <= index < size)."""

    def index(self, client: str) -> int | None:
        """The index of ``client``; None for an id outside the population."""

    def available(self, now: float) -> Sequence[tuple[int, int]]:
        """The ranges ``(first index, count)`` of clients that are available at ``now``, in index order."""

    def next_available(self, now: float) -> float | None:
        """The first time after ``now`` at which clients not available at ``now`` may be; None: never."""


class VirtualPopulation:
    """A census of clients that exist only once selected.

    A client is live when its availability model says so at ``now`` and it has not said that it went offline
    since it last said it was online. A client that announces itself keeps its place in the census."""

    def __init__(self, census: Census) -> None:
        self.census = census
        self._offline: set[str] = set()  # census clients whose last word was 'offline'
        self._outsiders: set[str] = set()  # announced, outside the census: known, never selected

    def joined(self, client: str) -> None:
        self._offline.discard(client)
        if self.census.index(client) is None:
            self._outsiders.add(client)

    def left(self, client: str) -> None:
        if self.census.index(client) is not None:
            self._offline.add(client)

    def knows(self, client: str) -> bool:
        return client in self._outsiders or self.census.index(client) is not None

    def known_count(self) -> int:
        return self.census.size + len(self._outsiders)

    def next_change(self, now: float) -> float | None:
        return self.census.next_available(now)

    def _available(self, index: int, ranges: Sequence[tuple[int, int]]) -> bool:
        at = bisect.bisect_right(ranges, (index, float("inf"))) - 1
        return at >= 0 and ranges[at][0] <= index < ranges[at][0] + ranges[at][1]

    def live_count(self, now: float) -> int:
        ranges = self.census.available(now)
        gone = 0
        for client in self._offline:
            index = self.census.index(client)
            if index is not None and self._available(index, ranges):
                gone += 1
        return sum(count for _, count in ranges) - gone

    def sample(self, rng: random.Random, k: int, now: float) -> list[str]:
        ranges = list(self.census.available(now))
        live = self.live_count(now)
        if not 0 <= k <= live:
            raise ValueError(f"cannot select {k} of {live} live clients")
        if 2 * k > live:  # most of them: list the live ones (the selection itself is this large)
            everyone = [c for first, count in ranges for i in range(first, first + count)
                        if (c := self.census.client(i)) not in self._offline]
            return sorted(rng.sample(everyone, k))
        ends = []  # cumulative counts, to map a draw among the available to a census index
        total = 0
        for _, count in ranges:
            total += count
            ends.append(total)
        chosen: set[str] = set()
        while len(chosen) < k:  # rejection: at most half the draws miss, so O(k) expected
            draw = rng.randrange(total)
            at = bisect.bisect_right(ends, draw)
            first, _ = ranges[at]
            client = self.census.client(first + draw - (ends[at - 1] if at else 0))
            if client not in self._offline:
                chosen.add(client)
        return sorted(chosen)
