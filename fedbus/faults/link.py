"""Per-message fates on one client's link: delivered (after a delay), lost, duplicated, held back.

A ``LinkFaults`` draws from its own ``random.Random``, seeded by (scenario seed, client, direction),
so the n-th message on a link meets the same fate in every replay, whichever runtime carries it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from fedbus.scenario.conditions import Network

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fate:
    """What the link does with one message."""

    copies: int  # 0: lost; 1: delivered; 2+: duplicated
    delay_s: float  # simulated seconds before it leaves
    held: bool  # reordered: it waits and goes out after the next message

    @property
    def lost(self) -> bool:
        return self.copies == 0


PERFECT = Fate(copies=1, delay_s=0.0, held=False)


class LinkFaults:
    """The fates of successive messages on one link, and whether the link is partitioned at a time."""

    def __init__(self, network: Network, seed: int, client: str, direction: str, wake: int = 0) -> None:
        self.network = network
        # ``wake``: a sleeping virtual client woken for the wake-th time draws fates of its own, not its first ones
        self._seed = f"link/{seed}/{client}/{direction}" + (f"/{wake}" if wake else "")
        self._rng: random.Random | None = None  # made at the first fate a fault could change (~10 µs, ~2.5 KB)
        self.sent = 0
        self.lost = 0
        self.duplicated = 0
        self.held = 0

    def next_fate(self) -> Fate:
        """The fate of the next message on this link."""
        net = self.network
        self.sent += 1
        if net.is_perfect:
            return PERFECT
        rng = self._rng
        if rng is None:
            rng = self._rng = random.Random(self._seed)
        # Draw every number every time, so one setting never shifts the others' sequence.
        u_loss, u_dup, u_reorder, u_jitter = rng.random(), rng.random(), rng.random(), rng.random()
        if u_loss < net.loss:
            self.lost += 1
            return Fate(copies=0, delay_s=0.0, held=False)
        copies = 2 if u_dup < net.duplicate else 1
        self.duplicated += copies - 1
        held = u_reorder < net.reorder
        self.held += held
        delay = max(0.0, net.delay_s + (2.0 * u_jitter - 1.0) * net.jitter_s)
        return Fate(copies=copies, delay_s=delay, held=held)

    def partitioned(self, now: float) -> bool:
        """True while simulated time ``now`` is inside one of the link's partitions."""
        return any(p.contains(now) for p in self.network.partitions)

    def partition_end(self, now: float) -> float | None:
        """When the partition covering ``now`` heals, or None if there is none."""
        ends = [p.end_s for p in self.network.partitions if p.contains(now)]
        return max(ends) if ends else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Route(Generic[T]):
    """What to send now (or after ``delay_s``) for one message: ``(item, copies)`` pairs, in order.

    ``lost``: nothing goes out. ``held``: nothing goes out now; the item leaves after the next one.
    """

    deliveries: tuple[tuple[T, int], ...] = ()
    delay_s: float = 0.0
    lost: bool = False
    held: bool = False


class LinkQueue(Generic[T]):
    """One direction of a client's link: applies the fault plan to successive items, keeping held ones.

    The asyncio worker and the simulator both route through it, so a scenario's faults act the same
    way over a real broker and in virtual time.
    """

    def __init__(self, faults: LinkFaults, held: Sequence[T] = ()) -> None:
        # held: what the link held back when the client went to sleep (a virtual population's), still waiting
        self.faults = faults
        self._held: list[T] = list(held)

    @property
    def holding(self) -> bool:
        """Whether an item waits for the next one to go out (reordered)."""
        return bool(self._held)

    @property
    def held(self) -> tuple[T, ...]:
        """The items waiting for the next one, oldest first."""
        return tuple(self._held)

    def route(self, item: T) -> Route[T]:
        fate = self.faults.next_fate()
        if fate.lost:
            return Route(lost=True)
        if fate.held:
            self._held.append(item)
            return Route(held=True)
        released, self._held = self._held, []
        return Route(deliveries=((item, fate.copies), *((r, 1) for r in released)), delay_s=fate.delay_s)
