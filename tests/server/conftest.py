from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.core.venvs import ToolVenvError
from llmkit.server.launch import ServerProcess
from llmkit.server.vllm_venv import vllm_venv

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["builtin", "vllm"]


@pytest.fixture(scope="package", params=ENGINES)
def server(request):
    """The embedded default model behind a real uvicorn server on a loopback port, on each engine in turn (the API
    contract is the same); vLLM's venv comes from `make vllm-setup`, and a missing one fails with that command.

    One server per engine for every module of tests/server that uses it, stopped when the last one ends: pytest
    orders those modules' tests by engine, so the vLLM server (half a minute to start) starts once, not per module.
    The tests read only what their own requests change (metric deltas, their own request ids)."""
    args: tuple[str, ...] = ()
    if request.param == "vllm":
        try:
            vllm_venv().require()
        except ToolVenvError as err:
            pytest.fail(str(err))
        args = ("--engine", "vllm")
    server = ServerProcess(args, cwd=ROOT, startup_timeout=600).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server, http):
    with httpx.Client(base_url=server.url, timeout=http.timeout) as client:
        yield client


@pytest.fixture(scope="session")
def reference(default_model_dir):
    """The same model loaded directly with transformers: what the server's answers are checked against."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    return model, tokenizer
