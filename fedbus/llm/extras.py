"""The optional libraries an LLM engine needs, checked before anything starts.

fedbus installs without them; ``pip install 'fedbus[llm]'`` adds textgrad (the clients' local
steps on any LLM engine) and ``pip install 'fedbus[local]'`` adds xllamacpp (the embedded model).
A run or a client that needs one which is missing stops at start-up with one line saying which
and how to install it, instead of failing round after round (or with a traceback) later.

Only :func:`importlib.util.find_spec` looks here: nothing is imported, so the check is cheap and
textgrad's import-time side effects stay in :mod:`fedbus.llm.textgrad_engine`.
"""

from __future__ import annotations

import importlib.util

from fedbus.errors import EngineError

EXTRA_OF = {"textgrad": "llm", "xllamacpp": "local"}  # library -> the fedbus extra that installs it
NEEDS = {"openai": ("textgrad",), "local": ("textgrad", "xllamacpp")}  # engine -> libraries its runs need


def not_installed(library: str) -> str:
    """The one line that says ``library`` is missing and which extra installs it."""
    return f"{library} is not installed: pip install 'fedbus[{EXTRA_OF[library]}]'"


def installed(library: str) -> bool:
    """Whether ``library`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without __spec__
        return False


def require_libraries(engine: str) -> None:
    """``EngineError`` naming the first library engine ``engine`` needs that is not installed."""
    for library in NEEDS.get(engine, ()):
        if not installed(library):
            raise EngineError(not_installed(library))
