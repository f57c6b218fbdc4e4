"""Staleness weights for buffered and asynchronous aggregation (FedBuff / FedAsync).

staleness ``s`` = global versions published since the update's base version. Every function is
1 at ``s = 0`` and never increases with ``s``:

- constant: 1
- polynomial: (1 + s) ** -a
- hinge: 1 while s <= b, then 1 / (a * (s - b) + 1)
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHTINGS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True, slots=True, kw_only=True)
class StalenessWeighting:
    """A weighting function by name, with its parameters."""

    kind: str = "polynomial"
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.kind!r}")
        if self.a < 0 or self.b < 0:
            raise ValueError("weighting parameters a and b must be >= 0")

    def weight(self, staleness: int) -> float:
        """The weight of an update ``staleness`` versions old, in (0, 1]."""
        s = max(0, staleness)
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + s) ** -self.a)
        return 1.0 if s <= self.b else 1.0 / (self.a * (s - self.b) + 1.0)
