from __future__ import annotations

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.core.venvs import ToolVenvError
from llmkit.server.vllm_venv import vllm_venv

ENGINES = ["builtin", "vllm"]


@pytest.fixture(scope="module", params=ENGINES)
def server(request, start_server):
    """The embedded default model behind a real uvicorn server on a loopback port, on each engine in turn (the API
    contract is the same); vLLM's venv comes from `make vllm-setup`, and a missing one fails with that command."""
    if request.param == "vllm":
        try:
            vllm_venv().require()
        except ToolVenvError as err:
            pytest.fail(str(err))
        return start_server("--engine", "vllm", startup_timeout=600)
    return start_server()


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
