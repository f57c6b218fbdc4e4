"""A user's plugin module that fails while importing (tests/unit/test_plugins.py names it in a scenario)."""

raise RuntimeError("this module is broken")
