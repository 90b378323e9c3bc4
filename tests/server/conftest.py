from __future__ import annotations

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def server(start_server):
    """The embedded default model behind a real uvicorn server on a loopback port."""
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
