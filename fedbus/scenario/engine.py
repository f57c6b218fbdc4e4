"""The scenario's ``engine:``: which LLM the clients (and the LLM aggregators) talk to, and how.

``engine: surrogate`` (or ``openai`` / ``local``) is shorthand for ``engine: {name: ...}``. The API key is
never in the scenario: ``api_key_env`` names the environment variable that holds it.

``engine.roles`` gives a role (``forward``, ``backward``, ``optimizer``, ``aggregator``, ``evaluator``, ``judge``:
see :mod:`fedbus.llm.roles`) its own ``model``, ``base_url``, ``api_key_env``, ``max_tokens``, ``top_p`` or
``temperature``; what a role does not set, and every role not named, is the base engine's. A role with its own
``base_url`` talks to that OpenAI-compatible server even when the base engine is ``local``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from fedbus.scenario.reader import Reader, at_least, one_of, shown, within

ENGINE_NAMES = ("surrogate", "openai", "local")
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"
_KEYS = {"name", "model", "base_url", "api_key_env", "max_tokens", "temperature", "seed", "timeout_s", "max_retries",
         "concurrency", "threads", "ctx_size", "parallel", "gguf", "cache", "top_p", "roles"}
ROLES = ("forward", "backward", "optimizer", "aggregator", "evaluator", "judge")  # fedbus.llm.roles.ROLES
GRADERS = ("exact", "judge")  # task.grader; fedbus.llm.judge.GRADERS
_ROLE_KEYS = ("model", "base_url", "api_key_env", "max_tokens", "top_p", "temperature")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSpec:
    """What one role changes about the base engine; ``None``: the base engine's setting."""

    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSpec:
    """An engine as the scenario describes it; CLI flags (``--engine-url``, ``--no-cache``) may override."""

    name: str = "surrogate"
    model: str = ""  # openai: required; local: a label for the GGUF
    base_url: str = ""  # openai: e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)
    api_key_env: str | None = None  # the NAME of the variable holding the key, never the key
    max_tokens: int = 512  # textgrad's stock engines ask for 2000, which takes minutes on a small local model
    temperature: float = 0.0
    seed: int | None = None
    top_p: float | None = None  # None: not sent (the server's default)
    timeout_s: float = 120.0
    max_retries: int = 3
    concurrency: int = 4
    threads: int = 1  # local: llama.cpp threads (on 2 busy cores, 1 is steadier than 2)
    ctx_size: int = 4096  # local: context window, shared by the parallel slots
    parallel: int = 1  # local: requests the server decodes together (batching is nearly free on CPU)
    gguf: str = ""  # local: a GGUF file of your own instead of the default model
    cache: bool = True  # reuse identical requests (model, sampling, system prompt, prompt)
    roles: tuple[tuple[str, RoleSpec], ...] = ()  # (role, overrides) in ROLES order; roles not named: the base

    @property
    def is_llm(self) -> bool:
        return self.name != "surrogate"

    def role(self, role: str) -> RoleSpec:
        """The overrides of ``role`` (none set where the scenario names none)."""
        if role not in ROLES:
            raise ValueError(f"Invalid role: {role!r}")
        return dict(self.roles).get(role, RoleSpec())

    def for_role(self, role: str) -> EngineSpec:
        """The engine ``role`` runs on: this one with the role's overrides, and no roles of its own. A role with
        its own ``base_url`` on a ``local`` base engine is an ``openai`` engine at that URL."""
        o = self.role(role)
        changes: dict[str, Any] = {k: getattr(o, k) for k in _ROLE_KEYS if getattr(o, k) is not None}
        if o.base_url is not None and self.name == "local":
            changes["name"] = "openai"
        return replace(self, roles=(), **changes)


def read_engine(r: Reader, value: Any, path: str = "engine") -> EngineSpec:
    """``engine:`` as a name or a mapping; problems go to ``r`` with their paths."""
    if value is None:
        return EngineSpec()
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        r.problem(path, f"must be an engine name or a mapping, got {type(value).__name__}")
        return EngineSpec()
    r.unknown_keys(value, path, _KEYS)
    name = r.get(value, "name", path, str, default="surrogate", check=one_of(ENGINE_NAMES))
    spec = EngineSpec(
        name=name if name in ENGINE_NAMES else "surrogate",
        model=r.get(value, "model", path, str, default=DEFAULT_LOCAL_MODEL if name == "local" else ""),
        base_url=r.get(value, "base_url", path, str, default=""),
        api_key_env=r.get(value, "api_key_env", path, str, default=None),
        max_tokens=r.get(value, "max_tokens", path, int, default=512, check=within(1, 32_768)),
        temperature=r.get(value, "temperature", path, float, default=0.0, check=within(0.0, 2.0)),
        seed=r.get(value, "seed", path, int, default=None),
        top_p=r.get(value, "top_p", path, float, default=None, check=_top_p),
        timeout_s=r.get(value, "timeout_s", path, float, default=120.0, check=at_least(0.1)),
        max_retries=r.get(value, "max_retries", path, int, default=3, check=within(0, 20)),
        concurrency=r.get(value, "concurrency", path, int, default=4, check=within(1, 1024)),
        threads=r.get(value, "threads", path, int, default=1, check=within(1, 256)),
        ctx_size=r.get(value, "ctx_size", path, int, default=4096, check=within(256, 1_048_576)),
        parallel=r.get(value, "parallel", path, int, default=1, check=within(1, 64)),
        gguf=r.get(value, "gguf", path, str, default=""),
        cache=r.get(value, "cache", path, bool, default=True),
        roles=_read_roles(r, value.get("roles"), f"{path}.roles", name),
    )
    if name == "openai" and not spec.model:
        r.problem(f"{path}.model", "is required for the openai engine (the server's model name)")
    return spec


def _top_p(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be within (0, 1]"


def _read_roles(r: Reader, value: Any, path: str, name: str) -> tuple[tuple[str, RoleSpec], ...]:
    """``engine.roles``: a mapping of role to overrides; problems at ``engine.roles.<role>.<key>``."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        r.problem(path, f"must be a mapping of role to settings ({', '.join(ROLES)}), got {type(value).__name__}")
        return ()
    if name == "surrogate" and value:
        r.problem(path, "roles need an LLM engine (openai or local), not the surrogate")
        return ()
    r.unknown_keys(value, path, set(ROLES))
    out: list[tuple[str, RoleSpec]] = []
    for role in ROLES:
        if role not in value:
            continue
        where = f"{path}.{role}"
        doc = value[role]
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            r.problem(where, f"must be a mapping of settings ({', '.join(_ROLE_KEYS)}), got {shown(doc)}")
            continue
        r.unknown_keys(doc, where, set(_ROLE_KEYS))
        spec = RoleSpec(
            model=r.get(doc, "model", where, str, default=None),
            base_url=r.get(doc, "base_url", where, str, default=None),
            api_key_env=r.get(doc, "api_key_env", where, str, default=None),
            max_tokens=r.get(doc, "max_tokens", where, int, default=None, check=within(1, 32_768)),
            top_p=r.get(doc, "top_p", where, float, default=None, check=_top_p),
            temperature=r.get(doc, "temperature", where, float, default=None, check=within(0.0, 2.0)),
        )
        if spec.model is not None and not spec.model:
            r.problem(f"{where}.model", "must not be empty")
        if spec.base_url is not None and not spec.base_url.startswith(("http://", "https://")):
            r.problem(f"{where}.base_url", f"must be an http:// or https:// URL, got {shown(spec.base_url)}")
        if spec.api_key_env is not None and not spec.api_key_env:
            r.problem(f"{where}.api_key_env", "must name an environment variable")
        if name == "local" and spec.base_url is None and spec.model is not None:
            r.problem(f"{where}.model", "the local engine serves one model: give this role a base_url (an "
                                        "OpenAI-compatible server) to run another")
        if name == "local" and spec.base_url is not None and not spec.model:
            r.problem(f"{where}.model", "is required with base_url on a local engine (the server's model name)")
        if spec != RoleSpec():
            out.append((role, spec))
    return tuple(out)


def _role_mapping(spec: RoleSpec) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in _ROLE_KEYS if getattr(spec, k) is not None}


def engine_to_mapping(spec: EngineSpec) -> str | dict[str, Any]:
    """The inverse of :func:`read_engine`: a bare name when nothing else differs from the defaults."""
    default = EngineSpec(name=spec.name, model=DEFAULT_LOCAL_MODEL if spec.name == "local" else "")
    if spec == default:
        return spec.name
    out = {f.name: getattr(spec, f.name) for f in fields(spec) if getattr(spec, f.name) != getattr(default, f.name)
           or f.name == "name"}
    if spec.roles:
        out["roles"] = {role: _role_mapping(overrides) for role, overrides in spec.roles}
    return out
