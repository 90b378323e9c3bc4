"""Every model family end to end, the way a user runs it: a tiny random model of the family (make_tiny_model), a
QLoRA YAML config trained 2 steps by the real entry point, `llmkit merge CONFIG` (verified against base + adapter by
the merge itself, and equal to peft's own merge_and_unload here), then `python -m llmkit.server` over HTTP, whose
/process answers (prompt and completion logprobs, top alternatives, greedy text) must equal a direct forward pass of
the merged model.

The families differ where the pipeline could go wrong: fused projections (Phi-3's qkv_proj and gate_up_proj,
GPT-NeoX's and Falcon's query_key_value), MoE experts that are fused 3D parameters rather than linear layers
(Mixtral: only attention is wrapped), GPT-2's Conv1D that stores weights (in, out), tied embeddings and logit
soft-capping (Gemma-2), learned positions (OPT, GPT-2), sliding-window KV caches (Mistral, Gemma-2) whose window is
wider than the server's context, so that they batch like plain caches.

Two more checks per family, where the families differ: an NF4 round-trip merge rounds exactly the layers training
saw in 4 bits (GPT-2's Conv1D transposed, none of Falcon's), and `load_in_4bit` really loads every targeted layer in
4 bits (not Falcon's: a transformers limitation, marked xfail so that its fix shows).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from merge_agreement import agreement_with_trained
from peft import PeftModel
from safetensors.torch import load_file
from tiny_families import TINY_FAMILIES
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.schema import load_config
from llmkit.merge.fold import MANIFEST, merge_adapter
from llmkit.server.protocol import ProcessResponse, helm_body
from llmkit.train.run import train

# One family takes 10-20 s here (training 2 steps, merging with its verification, a server start); the limit
# leaves room for a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


# Different lengths, sent at once: the server left-pads them into one batch.
PROMPTS = ["The capital of France is", "Question: What is 2 plus 3?\nAnswer:", "def add(a, b):\n    return a"]
NEW_TOKENS = 6
TOP_K = 3
NEVER = ["<<no such text>>"]  # a stop sequence that never appears: the completion is not cut at a newline


@dataclass(frozen=True)
class Trained:
    base: Path
    config: Path  # the YAML a user would write
    adapter: Path  # its output_dir


@pytest.fixture(scope="module")
def trained(tiny_family_dir, tiny_dataset, tmp_path_factory) -> Callable[[str], Trained]:
    """Factory: the family's tiny model trained 2 steps with QLoRA by `llmkit train`'s entry point (once)."""
    runs: dict[str, Trained] = {}

    def get(family: str) -> Trained:
        if family not in runs:
            base = tiny_family_dir(family)
            config = write_config(tmp_path_factory.mktemp(f"run-{family}"), base, tiny_dataset)
            runs[family] = Trained(base, config, train(load_config(config)))
        return runs[family]

    return get


def write_config(tmp_path: Path, base: Path, data: Path) -> Path:
    """A QLoRA config as a user writes it; training on this CPU needs a non-paged optimizer."""
    config = {
        "base_model": str(base),
        "adapter": "qlora",
        "load_in_4bit": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_linear": True,
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "val_set_size": 0,
        "sequence_len": 64,
        "micro_batch_size": 4,
        "max_steps": 2,
        "learning_rate": 1e-2,  # large enough that 2 steps move the merged weights past bfloat16 rounding
        "optimizer": "adamw_torch",
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "qlora.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def saved_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def peft_merged(base: Path, adapter: Path, dtype: torch.dtype, out: Path) -> dict[str, torch.Tensor]:
    """What peft's own merge_and_unload makes of the 16-bit base + the adapter, as transformers saves it (in the
    checkpoint's names and layout: Mixtral's experts one tensor each, GPT-NeoX's head `embed_out`, tied heads once)."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2: "fan_in_fan_out is set to False but the target module is Conv1D"
        PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    return saved_tensors(out)


@torch.inference_mode()
def reference_answer(model, tokenizer, prompt: str) -> tuple[list[int], list[int], torch.Tensor]:
    """Prompt ids, greedy completion ids (up to EOS) and log-softmax at every position, from the model directly."""
    prompt_ids = tokenizer(prompt).input_ids
    generated = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    completion = generated[0, len(prompt_ids) :].tolist()
    if tokenizer.eos_token_id in completion:
        completion = completion[: completion.index(tokenizer.eos_token_id)]
    logits = model(torch.tensor([prompt_ids + completion])).logits[0].float()
    return prompt_ids, completion, torch.log_softmax(logits, dim=-1)


def check_answer(answer: ProcessResponse, tokenizer, prompt: str, reference) -> None:
    prompt_ids, completion, logprobs = reference
    ids = prompt_ids + completion
    assert answer.text == prompt + tokenizer.decode(completion)
    assert len(answer.tokens) == len(ids)
    assert answer.tokens[0].logprob == 0.0  # the first token has no context
    for position in range(1, len(ids)):
        token, expected = answer.tokens[position], logprobs[position - 1]
        assert token.logprob == pytest.approx(expected[ids[position]].item(), abs=1e-4), position
        top = torch.topk(expected, TOP_K).values.tolist()
        # two ids with the same text keep one entry: every listed value is one of the top-k
        assert all(any(abs(value - t) < 1e-4 for t in top) for value in token.top_logprob.values()), position
        assert max(token.top_logprob.values()) == pytest.approx(top[0], abs=1e-4)
    for token in answer.tokens[len(prompt_ids) :]:  # greedy: each completion token is the likeliest
        assert token.logprob == pytest.approx(max(token.top_logprob.values()), abs=1e-4)
    assert answer.logprob == pytest.approx(sum(t.logprob for t in answer.tokens), abs=1e-4)  # echoed: prompt too


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_family_trains_merges_and_serves(family, trained, tmp_path, start_server, http):
    run = trained(family)
    assert json.loads((run.adapter / "trainer_state.json").read_text())["global_step"] == 2
    targets = TINY_FAMILIES[family][3]
    assert set(json.loads((run.adapter / "adapter_config.json").read_text())["target_modules"]) == targets

    result = CliRunner().invoke(app, ["merge", str(run.config)])  # verifies against base + adapter, or fails
    assert result.exit_code == 0, result.output
    merged = run.adapter / "merged"
    assert json.loads((merged / MANIFEST).read_text())["verification"]

    with ThreadPoolExecutor(1) as background:  # the server starts while this process checks the weights
        starting = background.submit(start_server, "--model", str(merged), "--dtype", "float32")

        tensors = saved_tensors(merged)
        expected = peft_merged(run.base, run.adapter, torch.bfloat16, tmp_path / "peft-merged")
        assert tensors.keys() == expected.keys()
        unequal = [name for name in tensors if not torch.equal(tensors[name], expected[name])]
        assert not unequal, f"differ from peft's merge_and_unload: {unequal}"
        base_tensors = saved_tensors(run.base)
        # layers' weights (a fused MoE expert parameter, `experts.down_proj`, is no layer and is not trained)
        wrapped = [
            n for n in tensors if n.endswith(".weight") and n.removesuffix(".weight").rsplit(".", 1)[-1] in targets
        ]
        assert wrapped and all(not torch.equal(tensors[n], base_tensors[n].bfloat16()) for n in wrapped)

        tokenizer = AutoTokenizer.from_pretrained(merged)
        model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        references = [reference_answer(model, tokenizer, prompt) for prompt in PROMPTS]
        server = starting.result()
    # the cache re-pads: the prompts below share a batch; Llama-4's chunked-attention cache does not (served one
    # request at a time, as a warning at start says)
    assert (server.info["batch"]["max_batch_size"] > 1) == (family != "llama4_text")

    def ask(prompt: str) -> ProcessResponse:
        body = helm_body(
            prompt, echo_prompt=True, max_new_tokens=NEW_TOKENS, top_k_per_token=TOP_K, stop_sequences=NEVER
        )
        response = http.post(f"{server.url}/process", json=body)
        assert response.status_code == 200, response.text
        return ProcessResponse.model_validate_json(response.text)

    with ThreadPoolExecutor(len(PROMPTS)) as clients:
        answers = list(clients.map(ask, PROMPTS))
    server.stop()
    for answer, prompt, reference in zip(answers, PROMPTS, references, strict=True):
        check_answer(answer, tokenizer, prompt, reference)


# Where the layers training saw in 4 bits differ: plain linear layers, GPT-2's Conv1D (quantized transposed),
# Falcon's FalconLinear (left 16-bit by transformers, see below).
@pytest.mark.parametrize("family", ["llama", "gpt2", "falcon"])
def test_nf4_roundtrip_merge_rebuilds_the_model_training_ran(family, trained, tmp_path):
    run = trained(family)
    merged = {
        name: merge_adapter(None, run.adapter, tmp_path / name, dtype="float32", nf4_roundtrip=nf4, verify=False)
        for name, nf4 in (("nf4", True), ("plain", False))
    }
    # NF4 base + adapter in float32, as training ran it; greedy tokens are no measure: a random model's top
    # logits nearly tie
    found = agreement_with_trained({n: m.out_dir for n, m in merged.items()}, run.base, run.adapter, torch.float32)
    assert found["nf4"].max_logit_diff < 0.02  # bitsandbytes' kernels against a dense matmul
    if family == "falcon":  # nothing was quantized: both merges are the same model
        assert found["plain"].max_logit_diff < 0.02
    else:
        assert found["nf4"].mean_logit_diff < found["plain"].mean_logit_diff / 4


@pytest.mark.parametrize(
    "family",
    [
        pytest.param(
            family,
            marks=pytest.mark.xfail(
                strict=True,
                reason="transformers 5 quantizes modules whose type is exactly nn.Linear (or Conv1D); Falcon's "
                "layers are FalconLinear, a subclass, and stay 16-bit under load_in_4bit: QLoRA trains as LoRA",
            ),
        )
        if family == "falcon"
        else family
        for family in TINY_FAMILIES
    ],
)
def test_qlora_loads_every_targeted_layer_in_4bit(family, tiny_family_dir, tiny_dataset, tmp_path):
    import bitsandbytes as bnb

    from llmkit.train.modeling import load_base_model

    targets = TINY_FAMILIES[family][3]
    config = write_config(tmp_path, tiny_family_dir(family), tiny_dataset)
    model = load_base_model(load_config(config), for_training=False)
    layers = {name: type(module) for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in targets}
    assert layers and all(kind is bnb.nn.Linear4bit for kind in layers.values()), layers


def test_layers_left_unquantized_are_named_in_a_warning(tiny_family_dir, tiny_dataset, tmp_path, caplog):
    from llmkit.train.modeling import load_base_model

    config = write_config(tmp_path, tiny_family_dir("falcon"), tiny_dataset)
    with caplog.at_level("WARNING", logger="llmkit.train.modeling"):
        load_base_model(load_config(config), for_training=False)
    assert "left 8 linear layers unquantized (dense, dense_4h_to_h, dense_h_to_4h, query_key_value)" in caplog.text
