"""The marks conftest adds by name still name tests (a renamed test would silently lose its mark)."""

from __future__ import annotations

import importlib

import pytest

from tests.conftest import SLOW_TESTS


@pytest.mark.parametrize(("module", "test"), sorted(SLOW_TESTS))
def test_every_slow_entry_names_a_test(module: str, test: str) -> None:
    """Each (module, test) in conftest's SLOW_TESTS is a test function of that module."""
    function = test.split("[", 1)[0]
    assert callable(getattr(importlib.import_module(module), function, None)), f"{module} has no {function}"
