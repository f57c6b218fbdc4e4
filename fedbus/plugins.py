"""Plugin references: a scenario names a user's strategy or optimizer as ``package.module:function``.

The way structlog takes any callable as a processor: the registries (``fedbus.register_strategy``,
``fedbus.register_optimizer``) hold names a program registered; a reference names a function any
process can import, so it also works in worker processes and on other machines. Pure apart from
importing the module a reference names.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from typing import Any

from fedbus.errors import FedbusError

_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class PluginError(FedbusError, LookupError):
    """A name that is neither registered nor an importable ``module:function`` reference."""


def is_reference(name: str) -> bool:
    """True for a ``package.module:function`` reference."""
    return _REFERENCE.fullmatch(name) is not None


def check_name(name: str, reserved: Iterable[str]) -> None:
    """A name a program may register: not reserved, not shaped like a reference."""
    if name in reserved or is_reference(name) or not name:
        raise ValueError(f"{name!r} cannot be registered: it is reserved, empty or looks like module:function")


def lookup(name: str, registry: dict[str, Any], what: str) -> Callable[..., Any]:
    """The callable registered as ``name``, or the one a reference names; ``PluginError`` says what exists."""
    if name in registry:
        found: Callable[..., Any] = registry[name]
        return found
    if not is_reference(name):
        listed = ", ".join(sorted(registry)) or "none"
        raise PluginError(f"unknown {what} {name!r}: registered are {listed}; or name a 'package.module:function'")
    module_name, attribute = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may fail to import in any way: say so at the scenario's path
        raise PluginError(f"{what} {name!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    target: Callable[..., Any] | None = getattr(module, attribute, None)
    if not callable(target):
        raise PluginError(f"{what} {name!r}: module {module_name!r} has no callable {attribute!r}")
    return target
