"""A package's names loaded from their modules when first used (PEP 562).

A package that re-exports its modules' names imports every one of them with itself: ``import fedbus.security.policy``
would load key files and join tokens, and a scenario's loader every task's generator. With :func:`exports`, each
module loads when one of its names is first read, and the name is kept in the package from then on; a submodule
read as an attribute (``fedbus.security.crypto``) is imported then, as an eager package would have had it.

A package assigns the pair under ``if not TYPE_CHECKING``, and imports the names under ``if TYPE_CHECKING``:
mypy then checks every name a caller takes from it, as it would an eager import.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, namespace: dict[str, Any],
            modules: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` (whose ``globals()`` is ``namespace``):
    ``modules`` maps each module to the names it gives."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
        elif not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
