"""Fixtures shared by every test area: the real embedded model, and a real server on a loopback port."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server.launch import ServerProcess
from server.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]


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
def python() -> str:
    return sys.executable
