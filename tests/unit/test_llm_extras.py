"""The optional libraries of the LLM engines: found without importing them, and a clear line when missing."""

from __future__ import annotations

import sys

import pytest

from fedbus.errors import EngineError
from fedbus.llm.extras import installed, not_installed, require_libraries
from fedbus.llm.textgrad_engine import load_textgrad
from tests.conftest import needs_library


def hide(monkeypatch: pytest.MonkeyPatch, *libraries: str) -> None:
    """Make ``libraries`` look uninstalled in this process: find_spec says None, importing them fails."""
    for library in libraries:
        monkeypatch.setitem(sys.modules, library, None)


def test_the_surrogate_needs_no_optional_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """engine surrogate runs on a bare install."""
    hide(monkeypatch, "textgrad", "xllamacpp")
    require_libraries("surrogate")


def test_a_missing_library_is_one_line_naming_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """openai needs textgrad (fedbus[llm]); local needs textgrad and xllamacpp (fedbus[local])."""
    hide(monkeypatch, "textgrad", "xllamacpp")
    assert not installed("textgrad") and not installed("xllamacpp")
    with pytest.raises(EngineError) as caught:
        require_libraries("openai")
    assert str(caught.value) == "textgrad is not installed: pip install 'fedbus[llm]'"
    with pytest.raises(EngineError, match="textgrad is not installed"):
        require_libraries("local")


@needs_library("textgrad")
def test_the_local_engine_without_xllamacpp_names_the_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """With textgrad there, the local engine still needs xllamacpp."""
    hide(monkeypatch, "xllamacpp")
    require_libraries("openai")
    with pytest.raises(EngineError) as caught:
        require_libraries("local")
    assert str(caught.value) == not_installed("xllamacpp") == "xllamacpp is not installed: pip install 'fedbus[local]'"


def test_installed_does_not_import() -> None:
    """Checking costs no import (textgrad's import takes seconds and writes logs)."""
    was_imported = "textgrad" in sys.modules
    installed("textgrad")
    assert ("textgrad" in sys.modules) == was_imported


def test_a_local_step_without_textgrad_is_an_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where textgrad went missing after start-up, the step fails with the same line (a local-error), not an
    ImportError."""
    hide(monkeypatch, "textgrad")
    with pytest.raises(EngineError) as caught:
        load_textgrad()
    assert str(caught.value) == "textgrad is not installed: pip install 'fedbus[llm]'"
