from __future__ import annotations

import json
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


@pytest.fixture(scope="session")
def llama2_style_tokenizer():
    """A small BPE trained here with Llama-2's pipeline: a "▁" prepended and spaces as "▁", byte fallback, the
    decoder stripping the first space, "<s>" added before every text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bpe.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    bpe.train_from_iterator(["Hello world, the capital of France is Paris."] * 20, trainer)
    spec = json.loads(bpe.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<0x{byte:02X}>": len(vocab) + byte for byte in range(256)})  # the byte-fallback tokens
    bpe = Tokenizer.from_str(json.dumps(spec))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
