"""What an LLM engine is: sampling settings, a completion, statistics, and the ``ChatEngine`` protocol.

Pure: stdlib only, no clock, no I/O. Concrete engines live beside it (``openai_compat`` for any
OpenAI-compatible server, ``cache`` for the on-disk response cache); ``ScriptedEngine`` here answers
from a script, for tests and dry runs, and says so in its name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from fedbus.errors import EngineError
from fedbus.text import CHARS_PER_TOKEN, estimate_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """How to sample a reply. ``seed=None`` (and ``top_p=None``) leaves the setting out of the request."""

    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"Invalid max_tokens: {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 2.0:  # the OpenAI API's range
            raise ValueError(f"Invalid temperature: {self.temperature!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"Invalid seed: {self.seed!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:  # nucleus sampling keeps a share of the mass
            raise ValueError(f"Invalid top_p: {self.top_p!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """One reply. ``cached`` says it came from the response cache, not from the engine.

    ``finish_reason`` is the server's word on why the reply ended (``stop``, ``length``, ...; ``None`` where it
    gave none); ``length`` means the reply was cut at ``max_tokens``: :attr:`truncated`.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    latency_s: float = 0.0
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        """Whether the server cut the reply at ``max_tokens`` (OpenAI's ``finish_reason: length``)."""
        return self.finish_reason == "length"

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise ValueError(f"Invalid token counts: {self.prompt_tokens}, {self.completion_tokens}")
        if self.latency_s < 0:
            raise ValueError(f"Invalid latency_s: {self.latency_s}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineStatistics:
    """A snapshot of an engine's counters.

    ``calls`` counts every ``complete()``, ``cached_calls`` those answered from the cache,
    ``failures`` those that raised, ``retries`` the extra attempts made. Tokens are those the
    server spent (a cached answer costs none); ``usage_estimated`` counts the replies whose token
    counts came from ``estimate_tokens`` because the server did not report them; ``truncated`` counts the
    replies cut at ``max_tokens`` (cached ones included: a cut reply is cut wherever it comes from).
    """

    calls: int = 0
    cached_calls: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: int = 0
    truncated: int = 0


@runtime_checkable
class ChatEngine(Protocol):
    """Anything that turns a prompt (and an optional system prompt) into a ``Completion``."""

    @property
    def name(self) -> str:
        """The kind of engine, shown in output: ``openai``, ``local``, ``scripted``."""

    @property
    def model(self) -> str:
        """The model name sent to (or reported by) the engine."""

    @property
    def identity(self) -> str:
        """What else decides the answers, for cache keys: a server's base URL, or the engine's name."""

    @property
    def sampling(self) -> Sampling:
        """The sampling settings every request uses."""

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        """Ask for one reply. Raises ``EngineError`` when none can be had."""

    def statistics(self) -> EngineStatistics:
        """A snapshot of the counters."""


ScriptFunction = Callable[[str, str | None], str]
"""A script as a function: ``(prompt, system) -> reply``; it may raise ``EngineError``."""


class EngineWrapper:
    """What an engine in front of another (the response cache, a role's view) passes through unchanged: its
    name, model, identity and sampling, and the calls that are not chat calls (token counts, log-probabilities
    of a prompt's tokens), where the inner engine has them."""

    def __init__(self, inner: ChatEngine) -> None:
        self._inner = inner

    @property
    def inner(self) -> ChatEngine:
        return self._inner

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def identity(self) -> str:
        return self._inner.identity

    @property
    def sampling(self) -> Sampling:
        return self._inner.sampling

    async def count_tokens(self, text: str) -> int | None:
        """The inner engine's tokenizer count, where it has one (not a chat call)."""
        count = getattr(self._inner, "count_tokens", None)
        return None if count is None else cast("int | None", await count(text))

    async def prompt_logprobs(self, text: str) -> list[float] | None:
        """The inner engine's log-probabilities of ``text``'s tokens, where it gives them (not a chat call)."""
        logprobs = getattr(self._inner, "prompt_logprobs", None)
        return None if logprobs is None else cast("list[float] | None", await logprobs(text))


@dataclass(slots=True)
class CallCounters:
    """What an engine wrapper counts of the calls through it (the response cache, a role's view)."""

    calls: int = 0
    cached_calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0


class ScriptedEngine:
    """A deterministic engine for tests: replies come from a function or, in order, from a list.

    A list entry that is an ``EngineError`` is raised instead of answered (a scripted failure);
    running past the end of the list raises ``EngineError`` too. Token counts are estimated.
    Its ``name`` is ``"scripted"``, so any output built on it says it was not a real model.
    """

    def __init__(
        self,
        replies: ScriptFunction | Sequence[str | EngineError],
        *,
        model: str = "scripted",
        sampling: Sampling | None = None,
    ) -> None:
        if isinstance(replies, str):
            raise TypeError("ScriptedEngine wants a list of replies or a function, not one string")
        self._function: ScriptFunction | None = replies if callable(replies) else None
        self._replies: tuple[str | EngineError, ...] = () if callable(replies) else tuple(replies)
        self._model = model
        self._sampling = sampling if sampling is not None else Sampling()
        self._requests: list[tuple[str | None, str]] = []
        self._counters = CallCounters()

    @property
    def name(self) -> str:
        return "scripted"

    @property
    def model(self) -> str:
        return self._model

    @property
    def identity(self) -> str:
        return "scripted"

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @property
    def requests(self) -> tuple[tuple[str | None, str], ...]:
        """Every ``(system, prompt)`` asked so far, in order."""
        return tuple(self._requests)

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        return self.reply(prompt, system=system)

    def reply(self, prompt: str, *, system: str | None = None) -> Completion:
        """The same as ``complete``, without an event loop."""
        index = len(self._requests)
        self._requests.append((system, prompt))
        self._counters.calls += 1
        try:
            text = self._next_text(index, prompt, system)
        except EngineError:
            self._counters.failures += 1
            raise
        completion = Completion(
            text=text,
            prompt_tokens=estimate_tokens(system or "") + estimate_tokens(prompt),
            completion_tokens=estimate_tokens(text),
        )
        self._counters.prompt_tokens += completion.prompt_tokens
        self._counters.completion_tokens += completion.completion_tokens
        return completion

    def _next_text(self, index: int, prompt: str, system: str | None) -> str:
        if self._function is not None:
            return self._function(prompt, system)
        if index >= len(self._replies):
            raise EngineError(f"scripted engine ran out of replies after {len(self._replies)}")
        entry = self._replies[index]
        if isinstance(entry, EngineError):
            raise entry
        return entry

    def statistics(self) -> EngineStatistics:
        c = self._counters
        return EngineStatistics(
            calls=c.calls,
            failures=c.failures,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            usage_estimated=c.calls - c.failures,
        )

    def __repr__(self) -> str:
        return f"ScriptedEngine(model={self._model!r}, calls={self._counters.calls})"


__all__ = [
    "CHARS_PER_TOKEN",
    "ChatEngine",
    "Completion",
    "EngineStatistics",
    "Sampling",
    "ScriptFunction",
    "ScriptedEngine",
    "estimate_tokens",
]
