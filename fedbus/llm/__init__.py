"""LLM engines: the ``ChatEngine`` protocol and its implementations.

- ``engine``: the pure part (``Sampling``, ``Completion``, ``EngineStatistics``, ``ChatEngine``,
  ``ScriptedEngine``, ``estimate_tokens``);
- ``openai_compat``: ``OpenAIEngine`` for any OpenAI-compatible server (the aiohttp adapter);
- ``cache``: ``ResponseCache`` on disk and ``CachedEngine`` in front of any engine;
- ``roles``: ``Engines``, the engine of each role (forward, backward, optimizer, aggregator, evaluator, judge),
  counted per role; ``judge``: the authors' LLM judge of answers (pure).

The engine and cache classes are imported on first use, so importing ``fedbus.llm`` (or the pure
``fedbus.llm.engine``) does not pull in aiohttp, asyncio or sqlite3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedbus.llm.engine import ChatEngine, Completion, EngineStatistics, Sampling, ScriptedEngine, estimate_tokens

if TYPE_CHECKING:
    from fedbus.llm.cache import CachedEngine, ResponseCache, cache_key
    from fedbus.llm.openai_compat import OpenAIConfig, OpenAIEngine

_LAZY = {
    "CachedEngine": "fedbus.llm.cache",
    "ResponseCache": "fedbus.llm.cache",
    "cache_key": "fedbus.llm.cache",
    "OpenAIConfig": "fedbus.llm.openai_compat",
    "OpenAIEngine": "fedbus.llm.openai_compat",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedbus.llm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CachedEngine",
    "ChatEngine",
    "Completion",
    "EngineStatistics",
    "OpenAIConfig",
    "OpenAIEngine",
    "ResponseCache",
    "Sampling",
    "ScriptedEngine",
    "cache_key",
    "estimate_tokens",
]
