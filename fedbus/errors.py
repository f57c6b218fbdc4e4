"""The one exception hierarchy of fedbus.

Each edge (the codec, the scenario loader, the MQTT adapter, an engine) translates its
library's exceptions into one of these exactly once.
"""

from __future__ import annotations


class FedbusError(Exception):
    """Base of every error fedbus raises on purpose."""


class ProtocolError(FedbusError):
    """A message or a protocol step is wrong."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something we cannot accept: log it, drop it, go on."""


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid: a bug in fedbus."""


class ScenarioError(FedbusError):
    """A scenario file is invalid. Carries every problem with its YAML path."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = [f"{path}: {message}" if path else message for path, message in self.problems]
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(lines))

    def lines(self) -> list[str]:
        """One 'path: message' line per problem."""
        return [f"{path}: {message}" if path else message for path, message in self.problems]


class EngineError(FedbusError):
    """An LLM engine (or the surrogate) failed to answer."""


class TransportError(FedbusError):
    """The MQTT connection or the broker failed."""


def failure_text(exc: BaseException, limit: int = 200) -> str:
    """Why something failed, for a record: a fedbus error's own message, else the exception's type too."""
    text = str(exc)
    if isinstance(exc, FedbusError) and text:
        return text[:limit]
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:limit]
