"""OpenAIEngine against a small aiohttp server on 127.0.0.1 that misbehaves on purpose, one way per test."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from fedbus.errors import EngineError
from fedbus.llm import ChatEngine, OpenAIConfig, OpenAIEngine, Sampling

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]

SECRET = "sk-test-SECRET-7f3a9c2e"


def ok_body(text: str = "hello", usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "x", "object": "chat.completion",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return body


class FakeSleep:
    """Records the backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def release() -> asyncio.Event:
    """Set at teardown: handlers that 'never answer' wait on it, so the server can shut down."""
    return asyncio.Event()


@pytest.fixture
def requests_by_path() -> Counter[str]:
    """How many requests each path of the test servers received, unknown paths (404) included."""
    return Counter()


@pytest.fixture
async def serve(release: asyncio.Event, requests_by_path: Counter[str]) -> AsyncIterator[Serve]:
    """Start a server on 127.0.0.1 with one handler at POST /v1/chat/completions; yields its base URL."""
    servers: list[TestServer] = []

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        requests_by_path[request.path] += 1
        return await handler(request)

    async def start(handler: Handler) -> str:
        app = web.Application(middlewares=[count])
        app.router.add_post("/v1/chat/completions", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/v1"))

    yield start
    release.set()
    for server in servers:
        await server.close()


def config(base_url: str, **overrides: Any) -> OpenAIConfig:
    settings: dict[str, Any] = {"base_url": base_url, "model": "test-model", "timeout_s": 5.0, "max_retries": 2,
                                "backoff_base_s": 0.1, "backoff_max_s": 10.0, "concurrency": 4}
    settings.update(overrides)
    return OpenAIConfig(**settings)


async def test_a_normal_reply_carries_text_usage_and_the_request_fields(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply's text and usage come back; the request has model, messages, sampling and the bearer key."""
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((await request.json(), request.headers.get("Authorization")))
        await asyncio.sleep(0.05)  # so the measured latency has a floor to check against
        return web.json_response(ok_body("the answer", {"prompt_tokens": 17, "completion_tokens": 3}))

    url = await serve(handler)
    cfg = config(url, api_key_env="FEDBUS_TEST_KEY", sampling=Sampling(max_tokens=64, temperature=0.3, seed=11))
    environ = {"FEDBUS_TEST_KEY": SECRET}
    async with OpenAIEngine(cfg, environ=environ) as engine:
        assert isinstance(engine, ChatEngine)
        completion = await engine.complete("What is 2+2?", system="Answer briefly.")
        stats = engine.statistics()

    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("the answer", 17, 3)
    assert completion.cached is False and completion.latency_s >= 0.05  # the round trip, server time included
    body, auth = seen[0]
    assert body["model"] == "test-model"
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (64, 0.3, 11)
    assert body["messages"] == [{"role": "system", "content": "Answer briefly."},
                                {"role": "user", "content": "What is 2+2?"}]
    assert auth == f"Bearer {SECRET}"
    assert (stats.calls, stats.failures, stats.retries, stats.prompt_tokens, stats.completion_tokens,
            stats.usage_estimated) == (1, 0, 0, 17, 3, 0)


async def test_no_seed_no_system_and_no_key_are_left_out(serve: Serve) -> None:
    """seed=None, system=None and api_key_env=None leave seed, the system message and Authorization out."""
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((await request.json(), request.headers.get("Authorization")))
        return web.json_response(ok_body("hi", {"prompt_tokens": 1, "completion_tokens": 1}))

    async with OpenAIEngine(config(await serve(handler))) as engine:
        await engine.complete("hello")
    body, auth = seen[0]
    assert "seed" not in body
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert auth is None


async def test_b_429_twice_then_ok_succeeds_after_two_retries(serve: Serve) -> None:
    """Two 429s (the first with Retry-After: 7) are retried; the first wait is the server's 7 s."""
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "7"})
        if attempts == 2:
            return web.Response(status=429, text="slow down")
        return web.json_response(ok_body("finally", {"prompt_tokens": 2, "completion_tokens": 1}))

    sleep = FakeSleep()
    async with OpenAIEngine(config(await serve(handler), max_retries=3), sleep=sleep) as engine:
        completion = await engine.complete("q")
        stats = engine.statistics()
    assert completion.text == "finally"
    assert attempts == 3
    assert stats.retries == 2 and stats.failures == 0
    assert sleep.delays[0] == 7.0
    assert 0.1 <= sleep.delays[1] <= 0.2  # base 0.1 * 2**1, with jitter down to half


async def test_retry_after_is_capped_by_backoff_max(serve: Serve) -> None:
    """A Retry-After past backoff_max_s waits backoff_max_s."""
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.Response(status=429, headers={"Retry-After": "3600"})
        return web.json_response(ok_body())

    sleep = FakeSleep()
    async with OpenAIEngine(config(await serve(handler), backoff_max_s=2.5), sleep=sleep) as engine:
        await engine.complete("q")
    assert sleep.delays == [2.5]


async def test_c_500_always_gives_up_after_max_retries_plus_one(serve: Serve) -> None:
    """A server that always answers 500 is tried max_retries+1 times; the error names the status."""
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        return web.Response(status=500, text="internal kaboom")

    sleep = FakeSleep()
    async with OpenAIEngine(config(await serve(handler), max_retries=2), sleep=sleep) as engine:
        with pytest.raises(EngineError) as caught:
            await engine.complete("q")
        stats = engine.statistics()
    assert attempts == 3
    assert "HTTP 500" in str(caught.value) and "internal kaboom" in str(caught.value)
    assert "3 attempts" in str(caught.value)
    assert (stats.calls, stats.failures, stats.retries) == (1, 1, 2)
    assert len(sleep.delays) == 2
    assert sleep.delays[1] <= 10.0


@pytest.mark.parametrize(("body", "why"), [
    (b"this is {not json", "not JSON"),
    (b'{"object": "chat.completion"}', "no choices"),
    (b'{"choices": [{"message": {"role": "assistant"}}]}', "no message content"),
    (b"[1, 2]", "not a JSON object"),
])
async def test_d_malformed_body_is_retried_then_reported(serve: Serve, body: bytes, why: str) -> None:
    """A 200 whose body is not a chat completion is retried, then fails as a malformed response."""
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        return web.Response(status=200, body=body, content_type="application/json")

    async with OpenAIEngine(config(await serve(handler), max_retries=1), sleep=FakeSleep()) as engine:
        with pytest.raises(EngineError, match="malformed response") as caught:
            await engine.complete("q")
    assert why in str(caught.value)
    assert attempts == 2


async def test_e_a_server_that_never_answers_times_out(serve: Serve, release: asyncio.Event) -> None:
    """Each attempt is cut at timeout_s (the server would never answer); the error says so."""
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        await release.wait()
        return web.json_response(ok_body())

    url = await serve(handler)
    async with OpenAIEngine(config(url, timeout_s=0.2, max_retries=1), sleep=FakeSleep()) as engine:
        with pytest.raises(EngineError, match=r"timeout after 0\.2s"):
            await asyncio.wait_for(engine.complete("q"), 60)  # without the cut: TimeoutError, not EngineError
    assert attempts == 2


async def test_f_400_is_not_retried(serve: Serve) -> None:
    """A 4xx other than 429 fails at once, with the status and a snippet of the body."""
    attempts = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        return web.json_response({"error": {"message": "max_tokens is too large"}}, status=400)

    sleep = FakeSleep()
    async with OpenAIEngine(config(await serve(handler), max_retries=4), sleep=sleep) as engine:
        with pytest.raises(EngineError) as caught:
            await engine.complete("q")
        stats = engine.statistics()
    assert attempts == 1
    assert "HTTP 400" in str(caught.value) and "max_tokens is too large" in str(caught.value)
    assert sleep.delays == []
    assert (stats.failures, stats.retries) == (1, 0)


async def test_a_long_error_body_is_cut_to_a_snippet(serve: Serve) -> None:
    """The error quotes at most a short snippet of a long body."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=404, text="x" * 5000)

    async with OpenAIEngine(config(await serve(handler))) as engine:
        with pytest.raises(EngineError, match="HTTP 404") as caught:
            await engine.complete("q")
    assert len(str(caught.value)) < 400


async def test_g_concurrency_limit_is_respected(serve: Serve) -> None:
    """With concurrency=3, twelve concurrent calls never have more than three requests in flight."""
    in_flight = 0
    peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
        finally:
            in_flight -= 1
        return web.json_response(ok_body("ok", {"prompt_tokens": 1, "completion_tokens": 1}))

    async with OpenAIEngine(config(await serve(handler), concurrency=3)) as engine:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(engine.complete(f"q{i}"), name=f"complete-{i}") for i in range(12)]
        stats = engine.statistics()
    assert all(task.result().text == "ok" for task in tasks)
    assert peak == 3
    assert stats.calls == 12


async def test_h_the_api_key_never_shows(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The key reaches the server but not repr, str, errors, logs or statistics, even when the server echoes it."""
    received: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        received.append(auth)
        status = 503 if len(received) == 1 else 401
        return web.Response(status=status, text=f"bad credentials: {auth}")

    caplog.set_level(logging.DEBUG)
    engine = OpenAIEngine(config(await serve(handler), api_key_env="FEDBUS_TEST_KEY"),
                          environ={"FEDBUS_TEST_KEY": SECRET}, sleep=FakeSleep())
    async with engine:
        with pytest.raises(EngineError) as caught:
            await engine.complete("q")
    assert received == [f"Bearer {SECRET}"] * 2
    assert "HTTP 401" in str(caught.value)
    assert "retrying" in caplog.text  # the 503 was logged, so the log check below looks at real text
    shown = [repr(engine), str(engine), str(caught.value), repr(caught.value), caplog.text, repr(engine.statistics()),
             repr(engine.config)]
    for text in shown:
        assert SECRET not in text
    assert "FEDBUS_TEST_KEY" in repr(engine)


async def test_i_missing_usage_is_estimated_and_counted(serve: Serve) -> None:
    """Without a usage field the token counts are estimated (~4 characters a token) and counted as such."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(ok_body("y" * 40))

    async with OpenAIEngine(config(await serve(handler))) as engine:
        completion = await engine.complete("p" * 20, system="s" * 8)
        stats = engine.statistics()
    assert (completion.prompt_tokens, completion.completion_tokens) == (5 + 2, 10)
    assert stats.usage_estimated == 1
    assert (stats.prompt_tokens, stats.completion_tokens) == (7, 10)


async def test_connection_refused_is_retried_then_an_engine_error() -> None:
    """Nothing listening: each attempt is a connection error, translated into EngineError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleep = FakeSleep()
    async with OpenAIEngine(config(f"http://127.0.0.1:{port}/v1", max_retries=2), sleep=sleep) as engine:
        with pytest.raises(EngineError, match="connection error") as caught:
            await engine.complete("q")
    assert "3 attempts" in str(caught.value)
    assert len(sleep.delays) == 2


def test_a_named_but_unset_key_variable_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_key_env names a variable that is not set: a clear EngineError, before any request."""
    monkeypatch.delenv("FEDBUS_TEST_MISSING_KEY", raising=False)
    with pytest.raises(EngineError, match="FEDBUS_TEST_MISSING_KEY is not set"):
        OpenAIEngine(config("http://127.0.0.1:9/v1", api_key_env="FEDBUS_TEST_MISSING_KEY"))


async def test_complete_outside_the_context_manager_is_a_usage_error() -> None:
    """An engine that was never opened (or was closed) refuses to send."""
    engine = OpenAIEngine(config("http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeError, match="not open"):
        await engine.complete("q")
    async with engine:
        pass
    with pytest.raises(RuntimeError, match="not open"):
        await engine.complete("q")


@pytest.mark.parametrize("bad", [
    {"base_url": "127.0.0.1:8080"}, {"concurrency": 0}, {"timeout_s": 0}, {"max_retries": -1},
    {"backoff_base_s": 5.0, "backoff_max_s": 1.0}, {"model": ""},
])
def test_invalid_configs_are_refused(bad: dict[str, Any]) -> None:
    """OpenAIConfig checks its values at the door."""
    settings: dict[str, Any] = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    settings.update(bad)
    with pytest.raises(ValueError, match="Invalid"):
        OpenAIConfig(**settings)


async def test_a_server_without_a_tokenizer_is_asked_once(serve: Serve, requests_by_path: Counter[str]) -> None:
    """count_tokens: None where the server has no /tokenize (OpenAI, Ollama), and it stops asking."""
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(ok_body())

    async with OpenAIEngine(config(await serve(handler))) as engine:
        assert await engine.count_tokens("one two three") is None
        assert await engine.count_tokens("one two three") is None
        assert await engine.count_tokens("four five") is None
        assert engine.statistics().calls == 0  # tokenizing is not an LLM call
    assert requests_by_path == {"/tokenize": 1}  # one 404, then no more asking (and no chat request)


async def test_a_server_that_is_down_or_refuses_the_key_is_said_before_a_run_starts(serve: Serve,
                                                                                   tmp_path: Any) -> None:
    """`open_engines` (every `fedbus run`, `fedbus client` and `fedbus evaluate` with an LLM) asks each server
    once before anything starts: nothing listening, or 401 on GET /models, is one EngineError naming the server
    (a run used to go through every round's failed calls and end 'completed' at accuracy 0); a server that has
    no /models route (404) still counts as up."""
    from fedbus.runtime.engines import open_engine, open_engines
    from fedbus.scenario.engine import EngineSpec

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = EngineSpec(name="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", cache=False)
    with pytest.raises(EngineError, match=f"cannot use the LLM server at http://127.0.0.1:{port}/v1"):
        async with open_engines(dead, environ={}):
            pass
    with pytest.raises(EngineError, match="cannot use the LLM server"):  # `fedbus client` and `evaluate`'s path
        async with open_engine(dead, environ={}):
            pass

    async def chat(_request: web.Request) -> web.StreamResponse:
        return web.json_response(ok_body())

    up = await serve(chat)  # no GET /models: 404
    async with open_engines(EngineSpec(name="openai", base_url=up, model="m", cache=False), environ={}) as engines:
        assert (await engines.forward.complete("q")).text == "hello"

    async def refuse(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "bad key"}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        spec = EngineSpec(name="openai", base_url=str(server.make_url("/v1")), model="m", cache=False,
                          api_key_env="K")
        with pytest.raises(EngineError, match="401, the server refused the API key") as caught:
            async with open_engines(spec, environ={"K": SECRET}):
                pass
        assert SECRET not in str(caught.value)
    finally:
        await server.close()
