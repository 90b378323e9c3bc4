"""Fixtures shared by every test area: the real embedded model, and a real server on a loopback port."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from server.launch import ServerProcess
from server.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]
# Seconds one HTTP request of a test may take (httpx's default is 5 s): generous, because a loaded 2-core machine
# without a GPU can take minutes for a long generation. A test that hangs is still stopped by pytest-timeout.
HTTP_TIMEOUT = 300.0


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors directory (converted once, then cached)."""
    return resolve_model(None).path


@pytest.fixture(scope="session")
def start_server():
    """Factory: start `python -m server <args>` on a free loopback port; every server started is stopped at the end."""
    started: list[ServerProcess] = []

    def _start(*args: str, **kwargs) -> ServerProcess:
        server = ServerProcess(args, cwd=ROOT, **kwargs).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def http():
    """The tests' HTTP client (absolute URLs) with HTTP_TIMEOUT; `http.timeout` sizes any other client a test makes."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        yield client


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
