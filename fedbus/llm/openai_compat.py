"""An engine for any OpenAI-compatible chat-completions server: OpenAI, vLLM, Ollama, llama.cpp.

The only module of ``fedbus.llm`` that imports aiohttp, and the one place its exceptions become
``EngineError``. One ``aiohttp.ClientSession`` per engine, opened and closed with the engine:

    async with OpenAIEngine(OpenAIConfig(base_url="http://127.0.0.1:8080/v1", model="qwen")) as engine:
        completion = await engine.complete("Say hi", system="Be brief")

Requests wait on one semaphore per engine (``concurrency``). A 429, a 5xx, a connection error, a
timeout or a malformed body is retried with exponential backoff and jitter (a ``Retry-After`` in
seconds is honoured, capped by ``backoff_max_s``); any other 4xx fails at once. The API key is
read once, from the environment variable the config names, and is never shown: not in ``repr``,
errors, logs or statistics. A reply's ``finish_reason`` is kept on its ``Completion``; ``length``
(cut at ``max_tokens``) is counted in ``truncated``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp

from fedbus.errors import EngineError
from fedbus.llm.engine import Completion, EngineStatistics, Sampling, estimate_tokens
from fedbus.text import whole_text

SNIPPET_CHARS = 200
MAX_BACKOFF_EXPONENT = 30  # 2**30 * any sane base is far past any backoff_max_s

_log = logging.getLogger("fedbus.llm")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAIConfig:
    """Where the server is and how to talk to it.

    ``api_key_env`` names the environment variable holding the key (``None``: send no key, as for
    a local vLLM, Ollama or llama.cpp server). ``name`` is the engine kind shown in output;
    ``identity`` keys the response cache and defaults to ``base_url`` (set it when the URL is not
    stable, e.g. a local server on a free port).
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    concurrency: int = 4
    sampling: Sampling = field(default_factory=Sampling)
    name: str = "openai"
    identity: str = ""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"Invalid base_url: {self.base_url!r} (want http:// or https://)")
        if not self.model:
            raise ValueError("Invalid model: empty")
        if self.api_key_env is not None and not self.api_key_env:
            raise ValueError("Invalid api_key_env: empty (use None for no key)")
        if not self.timeout_s > 0:
            raise ValueError(f"Invalid timeout_s: {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"Invalid max_retries: {self.max_retries}")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"Invalid backoff: base {self.backoff_base_s}, max {self.backoff_max_s}")
        if self.concurrency < 1:
            raise ValueError(f"Invalid concurrency: {self.concurrency}")
        if not self.name:
            raise ValueError("Invalid name: empty")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None = None


class _Retryable(Exception):  # an internal signal: never leaves this module
    """One attempt failed in a way worth another try."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(slots=True)
class _Counters:
    calls: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: int = 0
    truncated: int = 0


class OpenAIEngine:
    """A ``ChatEngine`` over HTTP. Use as ``async with OpenAIEngine(config) as engine``."""

    def __init__(self, config: OpenAIConfig, *, environ: Mapping[str, str] | None = None, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None, semaphore: asyncio.Semaphore | None = None) -> None:
        """``environ``: where the key named by ``config.api_key_env`` is looked up (the CLI passes the process's
        environment; nothing else reads it). ``semaphore``: one shared with other engines on the same server
        (roles with their own sampling), instead of one of ``config.concurrency`` for this engine alone."""
        self._config = config
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._semaphore = semaphore if semaphore is not None else asyncio.Semaphore(config.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._counters = _Counters()
        self._headers = {"Content-Type": "application/json"}
        self._secret = ""
        self._no_tokenizer = False
        self._no_prompt_logprobs = False
        if config.api_key_env is not None:
            key = (environ or {}).get(config.api_key_env, "")
            if not key:
                raise EngineError(f"{config.name} engine: environment variable {config.api_key_env} is not set")
            self._secret = key
            self._headers["Authorization"] = f"Bearer {key}"

    # -- ChatEngine ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def model(self) -> str:
        return self._config.model

    @property
    def identity(self) -> str:
        return self._config.identity or self._config.base_url.rstrip("/")

    @property
    def sampling(self) -> Sampling:
        return self._config.sampling

    @property
    def config(self) -> OpenAIConfig:
        return self._config

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("OpenAIEngine is not open: use `async with OpenAIEngine(config) as engine`")
        self._counters.calls += 1
        started = time.monotonic()
        body = self._request_body(prompt, system)
        attempts = self._config.max_retries + 1
        for attempt in range(attempts):
            try:
                async with self._semaphore:
                    reply = await self._attempt(session, body)
            except _Retryable as failed:
                if attempt + 1 == attempts:
                    self._counters.failures += 1
                    raise EngineError(f"{self._where()}: gave up after {attempts} attempts: {failed.reason}") from None
                delay = self._backoff_s(attempt, failed.retry_after)
                _log.warning("%s: attempt %d/%d failed (%s); retrying in %.2fs",
                             self._where(), attempt + 1, attempts, failed.reason, delay)
                self._counters.retries += 1
                await self._sleep(delay)
            except EngineError:
                self._counters.failures += 1
                raise
            else:
                return self._completion(reply, prompt, system, time.monotonic() - started)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def count_tokens(self, text: str) -> int | None:
        """Tokens in ``text`` by the server's own tokenizer, or ``None`` where the server has none.

        llama.cpp's server (the local engine) and vLLM answer ``POST /tokenize`` next to ``/v1``; OpenAI
        and Ollama do not, and after one failure the engine stops asking. Not counted as an LLM call.
        """
        session = self._session
        if session is None or session.closed or self._no_tokenizer:
            return None
        root = self._config.base_url.rstrip("/").removesuffix("/v1")
        try:
            async with self._semaphore, session.post(
                    f"{root}/tokenize", json={"content": text, "prompt": text, "model": self._config.model},
                    headers=self._headers) as response:
                if response.status != 200:
                    raise ValueError(f"status {response.status}")
                document = await response.json(content_type=None)
            tokens = document.get("tokens") if isinstance(document, dict) else None
            if not isinstance(tokens, list):
                raise ValueError("no token list")
            return len(tokens)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            self._no_tokenizer = True
            return None

    async def prompt_logprobs(self, text: str) -> list[float] | None:
        """The natural-log probability of each of ``text``'s tokens given the ones before it, by the model itself
        (the first token has none), or ``None`` where the server does not give them.

        Asks ``POST /v1/completions`` with ``echo`` and ``logprobs``, the completions API's way of scoring a
        prompt, which vLLM serves. llama.cpp's server (the local engine), Ollama and OpenAI's chat models return
        log-probabilities of generated tokens only (llama.cpp issue #27174); after one such answer the engine
        stops asking (a timeout, a 429 or a 5xx only skips this prompt). A forward pass over ``text``, not counted
        as an LLM call.
        """
        session = self._session
        if session is None or session.closed or self._no_prompt_logprobs:
            return None
        body = {"model": self._config.model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True,
                "logprobs": 1}
        try:
            async with self._semaphore, session.post(f"{self._config.base_url.rstrip('/')}/completions", json=body,
                                                     headers=self._headers) as response:
                if response.status == 429 or response.status >= 500:
                    return None  # not this time: ask again next round
                if response.status != 200:
                    raise ValueError(f"status {response.status}")
                document = await response.json(content_type=None)
            return _echoed_prompt_logprobs(document)
        except (TimeoutError, aiohttp.ClientError):
            return None  # a transient failure: not measured this round
        except (ValueError, KeyError, IndexError, TypeError):  # the server's answer: it does not score prompts
            self._no_prompt_logprobs = True
            return None

    def statistics(self) -> EngineStatistics:
        c = self._counters
        return EngineStatistics(
            calls=c.calls,
            failures=c.failures,
            retries=c.retries,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            usage_estimated=c.usage_estimated,
            truncated=c.truncated,
        )

    async def unreachable(self, timeout_s: float = 10.0) -> str | None:
        """Why the server cannot be used at all (None: it answered): asked once before a run starts, so that a
        server that is down or refuses the key is one clear line, not a run of failed rounds. Any HTTP answer to
        ``GET /models`` but 401/403 counts as up (not every OpenAI-compatible server lists its models)."""
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("OpenAIEngine is not open: use `async with OpenAIEngine(config) as engine`")
        url = self._config.base_url.rstrip("/") + "/models"
        try:
            async with session.get(url, headers=self._headers,
                                   timeout=aiohttp.ClientTimeout(total=min(timeout_s, self._config.timeout_s))) as r:
                status = r.status
                raw = await r.read()
        except aiohttp.InvalidURL:
            return f"invalid URL {url!r}"
        except TimeoutError:
            return f"no answer within {min(timeout_s, self._config.timeout_s):g} s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {self._redact(str(exc))}"
        if status in (401, 403):
            return f"HTTP {status}, the server refused the API key: {self._snippet(raw)}"
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_s))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session. Safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        auth = "from $" + self._config.api_key_env if self._config.api_key_env else "none"
        return (f"OpenAIEngine(name={self.name!r}, model={self.model!r}, base_url={self._config.base_url!r}, "
                f"auth={auth})")

    __str__ = __repr__

    # -- one attempt --------------------------------------------------------------------------

    def _request_body(self, prompt: str, system: str | None) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        sampling = self._config.sampling
        body: dict[str, Any] = {
            "model": self._config.model,
            "messages": messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        return body

    async def _attempt(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> _Reply:
        """POST once. Returns a reply, raises ``_Retryable`` or a final ``EngineError``."""
        try:
            async with session.post(self._config.url, json=body, headers=self._headers) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                raw = await response.read()
        except aiohttp.InvalidURL:
            raise EngineError(f"{self._where()}: invalid URL {self._config.url!r}") from None
        except TimeoutError:
            raise _Retryable(f"timeout after {self._config.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise _Retryable(f"connection error: {type(exc).__name__}: {self._redact(str(exc))}") from None
        if status == 429 or 500 <= status <= 599:
            raise _Retryable(f"HTTP {status}: {self._snippet(raw)}", _parse_retry_after(retry_after))
        if not 200 <= status <= 299:
            raise EngineError(f"{self._where()}: HTTP {status} (not retried): {self._snippet(raw)}")
        return _parse_reply(raw)

    def _completion(self, reply: _Reply, prompt: str, system: str | None, latency_s: float) -> Completion:
        prompt_tokens, completion_tokens = reply.prompt_tokens, reply.completion_tokens
        if prompt_tokens is None or completion_tokens is None:
            prompt_tokens = estimate_tokens(system or "") + estimate_tokens(prompt)
            completion_tokens = estimate_tokens(reply.text)
            self._counters.usage_estimated += 1
        self._counters.prompt_tokens += prompt_tokens
        self._counters.completion_tokens += completion_tokens
        if reply.finish_reason == "length":
            self._counters.truncated += 1
            _log.info("%s: a reply was cut at max_tokens=%d", self._where(), self._config.sampling.max_tokens)
        return Completion(text=reply.text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          cached=False, latency_s=max(0.0, latency_s), finish_reason=reply.finish_reason)

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based): the server's word, else 2**n with jitter."""
        cfg = self._config
        if retry_after is not None:
            return min(retry_after, cfg.backoff_max_s)
        ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * 2.0 ** min(attempt, MAX_BACKOFF_EXPONENT))
        return ceiling * (0.5 + 0.5 * self._rng.random())  # "equal jitter": never less than half

    def _where(self) -> str:
        return f"{self._config.name} engine ({self._config.model} at {self._config.base_url})"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _snippet(self, raw: bytes) -> str:
        text = " ".join(raw.decode("utf-8", errors="replace").split())
        text = self._redact(text)
        return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def _echoed_prompt_logprobs(document: Any) -> list[float]:
    """The prompt's token log-probabilities from an ``echo`` completions reply: the first ``usage.prompt_tokens``
    entries of ``token_logprobs`` (the reply's own tokens follow), without the first token's ``null``. A reply
    that holds fewer entries than the prompt has tokens did not echo: ``ValueError``."""
    prompt_tokens = int(document["usage"]["prompt_tokens"])
    values = document["choices"][0]["logprobs"]["token_logprobs"]
    if prompt_tokens < 2 or not isinstance(values, list) or len(values) < prompt_tokens:
        raise ValueError("no log-probabilities of the prompt's tokens")
    scored = [float(v) for v in values[1:prompt_tokens] if v is not None]
    if len(scored) != prompt_tokens - 1:
        raise ValueError("a prompt token without its log-probability")
    return scored


def _parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds; an HTTP date (or garbage) is ignored in favour of backoff."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_reply(raw: bytes) -> _Reply:
    """The first choice's message content, its ``finish_reason`` and the usage, or
    ``_Retryable('malformed response: ...')``."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Retryable("malformed response: not JSON") from None
    if not isinstance(data, dict):
        raise _Retryable("malformed response: not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Retryable("malformed response: no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _Retryable("malformed response: no message content")
    # a server's JSON can escape half a surrogate pair; the reply becomes a prompt that messages, logs and results
    # write as UTF-8, which cannot hold one
    content = whole_text(content)
    usage = data.get("usage")
    prompt_tokens = completion_tokens = None
    if isinstance(usage, dict):
        prompt_tokens = _count(usage.get("prompt_tokens"))
        completion_tokens = _count(usage.get("completion_tokens"))
    finish_reason = choices[0].get("finish_reason")
    return _Reply(text=content, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                  finish_reason=finish_reason if isinstance(finish_reason, str) and finish_reason else None)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


__all__ = ["OpenAIConfig", "OpenAIEngine", "Sleep"]
