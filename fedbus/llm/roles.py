"""The engine of each role a run gives an LLM, and what each role cost.

FedTextGrad asks an LLM for six different things; each is a role, and each may run on its own engine
(the scenario's ``engine.roles``):

- ``forward``: the clients' task model, answering training questions under the prompt (TextGrad's forward
  pass, and the re-check of a step's new prompt);
- ``backward``: TextGrad's textual feedback (its backward engine);
- ``optimizer``: TextGrad's update of the prompt (``TextualGradientDescent``);
- ``aggregator``: the LLM merges (``summarize``, ``uid_summarize``, ...);
- ``evaluator``: the validation and test scoring of global prompts;
- ``judge``: an LLM judge of answers, where a task grades with one.

:class:`RoleEngine` is a ``ChatEngine`` that counts the calls, tokens and truncated replies of one role in
front of whichever engine serves it; :class:`Engines` holds one per role. Several roles may share one engine
(the default: all of them); the counts stay per role. Pure: no I/O of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from fedbus.errors import EngineError
from fedbus.llm.engine import CallCounters, ChatEngine, Completion, EngineStatistics, EngineWrapper

ROLES = ("forward", "backward", "optimizer", "aggregator", "evaluator", "judge")
STEP_ROLES = ("forward", "backward", "optimizer")  # what a TextGrad local step asks for


class RoleEngine(EngineWrapper):
    """``inner`` as seen by one role: every call passes through, and is counted for the role.

    Tokens are counted for replies that did not come from the cache (what the server spent); a truncated
    reply (``finish_reason: length``) is counted wherever it came from.
    """

    def __init__(self, role: str, inner: ChatEngine) -> None:
        if role not in ROLES:
            raise ValueError(f"Invalid role: {role!r} (one of {', '.join(ROLES)})")
        super().__init__(inner)
        self._role = role
        self._counters = CallCounters()

    @property
    def role(self) -> str:
        return self._role

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        self._counters.calls += 1
        try:
            completion = await self._inner.complete(prompt, system=system)
        except EngineError:
            self._counters.failures += 1
            raise
        if completion.cached:
            self._counters.cached_calls += 1
        else:
            self._counters.prompt_tokens += completion.prompt_tokens
            self._counters.completion_tokens += completion.completion_tokens
        self._counters.truncated += completion.truncated
        return completion

    def statistics(self) -> EngineStatistics:
        """This role's counts (``retries`` and ``usage_estimated`` belong to the engine: see :class:`Engines`)."""
        c = self._counters
        return EngineStatistics(calls=c.calls, cached_calls=c.cached_calls, failures=c.failures,
                                prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                                truncated=c.truncated)

    def __repr__(self) -> str:
        return f"RoleEngine({self._role!r}, {self._inner!r})"


class Engines:
    """One :class:`RoleEngine` per role; roles without an engine of their own share ``base``'s."""

    def __init__(self, by_role: Mapping[str, ChatEngine], local_url: str | None = None) -> None:
        """``local_url``: the OpenAI-compatible URL of the run's embedded model server, where it started one."""
        missing = [role for role in ROLES if role not in by_role]
        if missing:
            raise ValueError(f"no engine for the role(s) {', '.join(missing)}")
        self._roles = {role: RoleEngine(role, by_role[role]) for role in ROLES}
        self.local_url = local_url

    @classmethod
    def single(cls, engine: ChatEngine) -> Engines:
        """Every role on ``engine`` (what a scenario without ``engine.roles`` gets)."""
        return cls(dict.fromkeys(ROLES, engine))

    def __getitem__(self, role: str) -> RoleEngine:
        return self._roles[role]

    @property
    def forward(self) -> RoleEngine:
        return self._roles["forward"]

    @property
    def backward(self) -> RoleEngine:
        return self._roles["backward"]

    @property
    def optimizer(self) -> RoleEngine:
        return self._roles["optimizer"]

    @property
    def aggregator(self) -> RoleEngine:
        return self._roles["aggregator"]

    @property
    def evaluator(self) -> RoleEngine:
        return self._roles["evaluator"]

    @property
    def judge(self) -> RoleEngine:
        return self._roles["judge"]

    @property
    def model(self) -> str:
        """The forward engine's model: the one the clients' prompts are written for."""
        return self.forward.model

    def statistics(self) -> EngineStatistics:
        """The run's totals: the roles' counts summed, the retries and estimated usages of each engine once."""
        roles = [engine.statistics() for engine in self._roles.values()]
        distinct = list({id(engine.inner): engine.inner for engine in self._roles.values()}.values())
        inner = [engine.statistics() for engine in distinct]
        return EngineStatistics(
            calls=sum(s.calls for s in roles), cached_calls=sum(s.cached_calls for s in roles),
            failures=sum(s.failures for s in roles), retries=sum(s.retries for s in inner),
            prompt_tokens=sum(s.prompt_tokens for s in roles),
            completion_tokens=sum(s.completion_tokens for s in roles),
            usage_estimated=sum(s.usage_estimated for s in inner), truncated=sum(s.truncated for s in roles))

    def by_role(self) -> dict[str, dict[str, Any]]:
        """summary.json's ``llm.by_role``: each role's model, sampling and counts."""
        out: dict[str, dict[str, Any]] = {}
        for role, engine in self._roles.items():
            stats = asdict(engine.statistics())
            del stats["retries"], stats["usage_estimated"]  # the engine's, not the role's: in the totals
            sampling = engine.sampling
            out[role] = {"model": engine.model, "engine": engine.identity,
                         "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                         "top_p": sampling.top_p, **stats}
        return out

    def __repr__(self) -> str:
        return f"Engines({', '.join(f'{r}={e.model}' for r, e in self._roles.items())})"


__all__ = ["ROLES", "STEP_ROLES", "Engines", "RoleEngine"]
