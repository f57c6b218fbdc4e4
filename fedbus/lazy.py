"""A package's names loaded from their modules when first used (PEP 562).

A package that re-exports its modules' names imports every one of them with itself: ``import fedbus.security.policy``
would load key files and join tokens, and a scenario's loader every task's generator. With :func:`exports`, each
module loads when one of its names is first read, and the name is kept in the package from then on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def exports(package: str, namespace: dict[str, Any], modules: Mapping[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """The module-level ``__getattr__`` of ``package`` (whose ``globals()`` is ``namespace``): ``modules`` maps each
    module to the names it gives."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
