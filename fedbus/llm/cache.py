"""An on-disk response cache, and ``CachedEngine`` that puts it in front of any ``ChatEngine``.

One SQLite file (``<dir>/responses.sqlite``, WAL journal) keyed by the SHA-256 of canonical JSON of
everything that decides a reply: the engine's identity (base URL or name), the model, max_tokens,
temperature, seed, top_p (where set: keys written before it existed stay valid), the system prompt and
the prompt. (textgrad's own cache keys on the prompt alone, so a changed system prompt or model would
return a stale answer.) Not caching is simply not wrapping the engine.

A stored reply keeps the server's ``finish_reason``, so a reply cut at ``max_tokens`` is still known as cut
when it comes from the cache (entries written before the column existed read ``None``: not known).

SQLite calls run in a worker thread (``asyncio.to_thread``): a lookup takes microseconds, but a
write can wait on another process's lock on a shared cache directory (up to ``busy_timeout_s``),
and the event loop must not wait with it. One connection, shared by those threads under a lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

from fedbus.errors import EngineError
from fedbus.llm.engine import CallCounters, ChatEngine, Completion, EngineStatistics, EngineWrapper, Sampling

CACHE_FILE = "responses.sqlite"
KEY_VERSION = 1  # bump when the key's inputs change, so old entries are never misread

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at REAL NOT NULL,
    finish_reason TEXT
)
"""
_COLUMNS = "key, text, prompt_tokens, completion_tokens, engine, model, created_at, finish_reason"


def cache_key(*, identity: str, model: str, sampling: Sampling, system: str | None, prompt: str) -> str:
    """The SHA-256 (hex) of canonical JSON of every input that decides a reply."""
    document = {
        "v": KEY_VERSION,
        "engine": identity,
        "model": model,
        "max_tokens": sampling.max_tokens,
        "temperature": float(sampling.temperature),  # 0 and 0.0 are the same setting
        "seed": sampling.seed,
        "system": system,
        "prompt": prompt,
    }
    if sampling.top_p is not None:  # only where set, so the keys of earlier entries (no top_p sent) still match
        document["top_p"] = float(sampling.top_p)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedReply:
    """What the cache keeps of a completion."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


class ResponseCache:
    """A key -> reply store in ``<directory>/responses.sqlite``. Thread-safe; blocking calls."""

    def __init__(self, directory: Path | str, *, busy_timeout_s: float = 10.0) -> None:
        self._path = Path(directory) / CACHE_FILE
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; each statement below is one atomic transaction.
            self._db = sqlite3.connect(self._path, timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of fedbus
            self._db.execute(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
            if "finish_reason" not in columns:  # a cache written before replies kept their finish_reason
                self._db.execute("ALTER TABLE responses ADD COLUMN finish_reason TEXT")
        except (OSError, sqlite3.Error) as exc:
            raise EngineError(f"response cache {self._path}: cannot open: {exc}") from exc

    @property
    def path(self) -> Path:
        return self._path

    def get(self, key: str) -> CachedReply | None:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT text, prompt_tokens, completion_tokens, finish_reason FROM responses WHERE key = ?",
                    (key,)
                ).fetchone()
        except sqlite3.Error as exc:
            raise EngineError(f"response cache {self._path}: read failed: {exc}") from exc
        if row is None:
            return None
        text, prompt_tokens, completion_tokens, finish_reason = row
        return CachedReply(text=str(text), prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                           finish_reason=None if finish_reason is None else str(finish_reason))

    def put(self, key: str, completion: Completion, *, engine: str, model: str) -> None:
        try:
            with self._lock:
                self._db.execute(
                    f"INSERT OR REPLACE INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, completion.text, completion.prompt_tokens, completion.completion_tokens, engine, model,
                     time.time(), completion.finish_reason),
                )
        except sqlite3.Error as exc:
            raise EngineError(f"response cache {self._path}: write failed: {exc}") from exc

    def __len__(self) -> int:
        try:
            with self._lock:
                (count,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        except sqlite3.Error as exc:
            raise EngineError(f"response cache {self._path}: read failed: {exc}") from exc
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self._path)!r})"


class CachedEngine(EngineWrapper):
    """A ``ChatEngine`` that answers from a ``ResponseCache`` and asks ``inner`` only on a miss.

    Concurrent calls with the same key share one request to ``inner`` (the others count as cached).
    A hit returns the stored text and token counts with ``cached=True`` and the lookup time as
    ``latency_s``. ``statistics()`` counts tokens only for misses (what the server spent) and takes
    ``retries`` and ``usage_estimated`` from ``inner``'s own statistics.
    """

    def __init__(self, inner: ChatEngine, cache: ResponseCache) -> None:
        super().__init__(inner)
        self._cache = cache
        self._counters = CallCounters()
        self._pending: dict[str, asyncio.Future[Completion]] = {}

    def key(self, prompt: str, *, system: str | None = None) -> str:
        return cache_key(identity=self.identity, model=self.model, sampling=self.sampling, system=system, prompt=prompt)

    async def complete(self, prompt: str, *, system: str | None = None) -> Completion:
        self._counters.calls += 1
        try:
            return await self._complete(self.key(prompt, system=system), prompt, system)
        except EngineError:
            self._counters.failures += 1
            raise

    async def _complete(self, key: str, prompt: str, system: str | None) -> Completion:
        started = time.monotonic()
        while True:
            hit = await asyncio.to_thread(self._cache.get, key)
            if hit is not None:
                return self._cached(Completion(text=hit.text, prompt_tokens=hit.prompt_tokens,
                                               completion_tokens=hit.completion_tokens, cached=True,
                                               latency_s=time.monotonic() - started, finish_reason=hit.finish_reason))
            pending = self._pending.get(key)
            if pending is None:
                break
            try:
                shared = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and (task is None or task.cancelling() == 0):
                    continue  # the caller that was asking got cancelled, not us: look again
                raise
            return self._cached(replace(shared, cached=True, latency_s=time.monotonic() - started))
        return await self._ask_inner(key, prompt, system)

    def _cached(self, completion: Completion) -> Completion:
        self._counters.cached_calls += 1
        self._counters.truncated += completion.truncated
        return completion

    async def _ask_inner(self, key: str, prompt: str, system: str | None) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            completion = await self._inner.complete(prompt, system=system)
            await asyncio.to_thread(self._cache.put, key, completion, engine=self.identity, model=self.model)
        except EngineError as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "exception never retrieved" warning when nobody waits
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._pending[key]
        future.set_result(completion)
        self._counters.prompt_tokens += completion.prompt_tokens
        self._counters.completion_tokens += completion.completion_tokens
        self._counters.truncated += completion.truncated
        return completion

    def statistics(self) -> EngineStatistics:
        c, inner = self._counters, self._inner.statistics()
        return EngineStatistics(
            calls=c.calls,
            cached_calls=c.cached_calls,
            failures=c.failures,
            retries=inner.retries,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            usage_estimated=inner.usage_estimated,
            truncated=c.truncated,
        )

    def __repr__(self) -> str:
        return f"CachedEngine({self._inner!r}, {self._cache!r})"


__all__ = ["CACHE_FILE", "KEY_VERSION", "CachedEngine", "CachedReply", "ResponseCache", "cache_key"]
