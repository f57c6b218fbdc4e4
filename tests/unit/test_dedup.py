"""SeenIds: the receivers' bounded memory of message ids (fedbus/protocol/dedup.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedbus.protocol.dedup import SeenIds


def test_first_sighting_is_true_and_a_repeat_is_false() -> None:
    """An id is new the first time and a duplicate every time after, while it is remembered."""
    seen = SeenIds(10)
    assert seen.first_time("a") is True
    assert seen.first_time("a") is False
    assert seen.first_time("a") is False
    assert seen.first_time("b") is True
    assert len(seen) == 2


def test_capacity_bounds_how_many_ids_are_kept() -> None:
    """However many ids arrive, no more than ``capacity`` are remembered."""
    seen = SeenIds(3)
    for i in range(10):
        assert seen.first_time(f"m{i}") is True
        assert len(seen) == min(i + 1, 3)


def test_the_oldest_id_is_forgotten_first() -> None:
    """Past the capacity the oldest id goes; the newer ones are still recognised as duplicates."""
    seen = SeenIds(3)
    for msg_id in ("a", "b", "c", "d"):
        seen.first_time(msg_id)
    assert seen.first_time("b") is False
    assert seen.first_time("c") is False
    assert seen.first_time("d") is False
    assert seen.first_time("a") is True  # evicted, so it counts as a first sighting again


def test_an_id_seen_again_after_eviction_counts_as_new_and_is_remembered() -> None:
    """Re-seen after eviction, an id is 'first time' once, then a duplicate again."""
    seen = SeenIds(2)
    seen.first_time("a")
    seen.first_time("b")
    seen.first_time("c")  # evicts a
    assert seen.first_time("a") is True  # evicts b
    assert seen.first_time("a") is False
    assert seen.first_time("b") is True


def test_a_repeat_refreshes_an_id_so_it_is_evicted_last() -> None:
    """A duplicate moves its id to the newest end: the id evicted next is the least recently seen."""
    seen = SeenIds(2)
    seen.first_time("a")
    seen.first_time("b")
    assert seen.first_time("a") is False  # a is now the most recent
    seen.first_time("c")  # evicts b, not a
    assert seen.first_time("a") is False
    assert seen.first_time("b") is True


def test_capacity_one_remembers_only_the_last_id() -> None:
    """The smallest memory still catches back-to-back redelivery."""
    seen = SeenIds(1)
    assert seen.first_time("a") is True
    assert seen.first_time("a") is False
    assert seen.first_time("b") is True
    assert seen.first_time("a") is True
    assert len(seen) == 1


@pytest.mark.parametrize("capacity", [0, -1])
def test_a_capacity_below_one_is_refused(capacity: int) -> None:
    """A memory that cannot hold one id is a configuration mistake, refused at construction."""
    with pytest.raises(ValueError, match="capacity"):
        SeenIds(capacity)


@given(ids=st.lists(st.sampled_from([f"m{i}" for i in range(8)]), max_size=60), capacity=st.integers(1, 6))
def test_matches_a_least_recently_seen_model(ids: list[str], capacity: int) -> None:
    """For any sequence, the answers are those of an LRU set of ``capacity`` ids."""
    seen = SeenIds(capacity)
    model: list[str] = []  # oldest first
    for msg_id in ids:
        expected = msg_id not in model
        if not expected:
            model.remove(msg_id)
        model.append(msg_id)
        del model[:-capacity]
        assert seen.first_time(msg_id) is expected
        assert len(seen) == len(model)
