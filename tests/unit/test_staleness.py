"""Staleness weights (fedbus/aggregator/staleness.py): the documented value of each function, and its checks."""

from __future__ import annotations

import pytest

from fedbus.aggregator.staleness import StalenessWeighting


def test_constant_weighs_every_update_one() -> None:
    """'constant': weight 1 whatever the staleness."""
    assert StalenessWeighting(kind="constant", a=3.0).weight(7) == 1.0


def test_polynomial_is_one_over_one_plus_s_to_the_a() -> None:
    """'polynomial': (1 + s) ** -a, e.g. 0.5 at s = 3 with a = 0.5."""
    assert StalenessWeighting(kind="polynomial", a=0.5).weight(3) == 0.5
    assert StalenessWeighting(kind="polynomial", a=2.0).weight(1) == 0.25


def test_hinge_is_one_up_to_b_then_falls_as_one_over_a_times_excess_plus_one() -> None:
    """'hinge': 1 while s <= b, then 1 / (a * (s - b) + 1)."""
    hinge = StalenessWeighting(kind="hinge", a=0.5, b=2.0)
    assert [hinge.weight(s) for s in (0, 2, 4, 6)] == [1.0, 1.0, 0.5, 1 / 3]


def test_an_unknown_kind_is_refused_by_name() -> None:
    """A weighting name that does not exist is a ValueError that lists the ones that do."""
    with pytest.raises(ValueError, match=r"^weighting must be one of \('constant', 'polynomial', 'hinge'\), "
                                         r"got 'linear'$"):
        StalenessWeighting(kind="linear")


@pytest.mark.parametrize(("a", "b"), [(-1.0, 0.0), (0.0, -1.0)])
def test_a_negative_parameter_is_refused(a: float, b: float) -> None:
    """Either parameter below zero is a ValueError (each on its own, not only both)."""
    with pytest.raises(ValueError, match=r"^weighting parameters a and b must be >= 0$"):
        StalenessWeighting(kind="hinge", a=a, b=b)
