"""lora_target_parameters: LoRA on the fused 3-D MoE expert parameters of transformers 5 (peft's target_parameters,
its ParamWrapper), on tiny random Mixtral, Qwen3-MoE and gpt-oss models: checked against the model where the other
targets are, trained (LoRA and QLoRA), counted by the plan, and folded by llmkit merge into the per-expert tensors
the checkpoint stores."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from llmkit.config.plan import plan
from llmkit.config.schema import ConfigError, load_config
from llmkit.merge.fold import merge_adapter
from llmkit.train.run import train

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]  # as axolotl's gpt-oss and Qwen3-MoE examples write
ONLY_EXPERTS = {"lora_target_linear": False, "lora_target_parameters": EXPERTS, "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def gpt_oss_dir(make_tiny_model):
    """gpt-oss's experts are stored fused, (experts, in, out), with biases beside them."""
    from transformers import GptOssConfig, GptOssForCausalLM

    return make_tiny_model(
        GptOssConfig, GptOssForCausalLM, head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=32
    )


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_names_that_match_no_expert_parameter_are_an_error_naming_the_key(tiny_config, tiny_family_dir):
    moe = str(tiny_family_dir("qwen3_moe"))
    cfg = load_config(tiny_config(base_model=moe, **{**ONLY_EXPERTS, "lora_target_parameters": ["experts.gate_proj"]}))
    with pytest.raises(ConfigError) as refused:
        plan(cfg)
    said = str(refused.value)
    assert "lora_target_parameters: ['experts.gate_proj'] match no MoE expert parameter of Qwen3MoeForCausalLM" in said
    assert (
        "['experts.gate_up_proj', 'experts.down_proj']" in said and "model.layers.1.mlp.experts.gate_up_proj" in said
    )
    # a name that also ends a parameter that is no fused expert (peft would wrap a norm as one expert)
    cfg = load_config(tiny_config(base_model=moe, **{**ONLY_EXPERTS, "lora_target_parameters": ["weight"]}))
    with pytest.raises(ConfigError, match=r"lora_target_parameters: .*parameters that are no fused experts"):
        plan(cfg)
    cfg = load_config(tiny_config(lora_target_parameters=EXPERTS, lora_dropout=0.0))  # the dense tiny Llama
    with pytest.raises(ConfigError, match="LlamaForCausalLM has no fused 3-D MoE expert parameters"):
        plan(cfg)
    # what peft's ParamWrapper refuses for the whole adapter, said when the config loads
    with pytest.raises(ConfigError, match="lora_target_parameters with lora_dropout: 0.05: .*set lora_dropout: 0"):
        load_config(tiny_config(base_model=moe, **{**ONLY_EXPERTS, "lora_dropout": 0.05}))


def test_mixtral_w1_in_lora_target_modules_points_to_lora_target_parameters(tiny_config, tiny_family_dir):
    mixtral = str(tiny_family_dir("mixtral"))  # nothing listed matches (peft's error), lora_target_linear off
    cfg = load_config(tiny_config(base_model=mixtral, lora_target_linear=False, lora_target_modules=["w1", "w2"]))
    with pytest.raises(ConfigError) as refused:
        plan(cfg)
    said = str(refused.value)
    assert "lora_target_parameters: ['experts.gate_up_proj', 'experts.down_proj'] trains the experts" in said
    assert "lora_target_parameters: experts.gate_up_proj for w1" in said
    assert "lora_target_parameters: experts.down_proj for w2" in said


def test_a_lora_step_moves_only_the_adapter_and_the_plan_counts_it(tiny_config, tiny_family_dir):
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.train.modeling import build_peft_model, load_base_model

    cfg = load_config(tiny_config(base_model=str(tiny_family_dir("mixtral")), **ONLY_EXPERTS))
    planned = plan(cfg)
    assert planned.target_parameters == EXPERTS and planned.target_modules == []
    # 2 layers x (gate_up_proj (4, 256, 64) + down_proj (4, 64, 128)): r x experts x (rows + columns)
    assert planned.trainable_params == 2 * 4 * 4 * ((256 + 64) + (64 + 128))
    model = build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))
    assert model.get_nb_trainable_parameters()[0] == planned.trainable_params
    with torch.no_grad():  # B starts at zero, where a first step moves B alone: start it elsewhere
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 1000, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved == {name for name, p in model.named_parameters() if p.requires_grad}
    assert {name.split(".mlp.experts.")[-1] for name in moved} == {
        "base_layer.lora_A.default.weight",
        "base_layer.lora_B.default.weight",
        "lora_A.default.weight",
        "lora_B.default.weight",
    }


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_merge_folds_the_expert_lora_into_the_stored_experts(family, tiny_family_dir, gpt_oss_dir, tmp_path):
    """Mixtral stores each expert's w1, w2, w3 (under block_sparse_moe), Qwen3-MoE each expert's gate_proj, up_proj
    and down_proj, gpt-oss the fused tensors (experts, in, out): the merged model computes base + adapter."""
    base = gpt_oss_dir if family == "gpt_oss" else tiny_family_dir(family)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    # one layer's down_proj only, as axolotl's full names select (7.mlp.experts.down_proj on a real model)
    targets = ["mlp.experts.gate_up_proj", "1.mlp.experts.down_proj"]
    peft_model = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], target_parameters=targets)
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 1000, (1, 24))
    expected = _logits(peft_model, ids)
    assert (
        expected - _logits(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), ids)
    ).abs().max() > 0.01
    report = merge_adapter(str(base), tmp_path / "adapter", tmp_path / "merged", dtype="float32")
    assert report.verification["token_agreement"] == 1.0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-4)
    # and as peft's own merge_and_unload folds it
    unloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path / "adapter"
    )
    assert torch.allclose(_logits(unloaded.merge_and_unload(), ids), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lora", "qlora"])
def test_training_on_the_experts_then_merge_and_serve(adapter, tiny_config, tiny_family_dir, tmp_path):
    from llmkit.core.models import load_for_inference

    quantized = {"load_in_4bit": True} if adapter == "qlora" else {}
    cfg = load_config(
        tiny_config(
            base_model=str(tiny_family_dir("qwen3_moe")),
            adapter=adapter,
            **quantized,
            **{**ONLY_EXPERTS, "lora_target_modules": ["q_proj"]},
            learning_rate=0.05,
        )
    )
    planned = plan(cfg)
    out = train(cfg)
    saved = json.loads((out / "adapter_config.json").read_text())
    assert set(saved["target_parameters"]) == set(EXPERTS)
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        shapes = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
        moved = [name for name in shapes if "experts" in name and "lora_B" in name and weights.get_tensor(name).any()]
    assert sum(rows * columns for rows, columns in shapes.values()) == planned.trainable_params
    assert moved  # the experts' B started at zero: training moved them
    report = merge_adapter(None, out, out / "merged", dtype="float32")  # verified against base + adapter
    assert report.verification["token_agreement"] >= 0.99
    served = load_for_inference(str(out / "merged"), dtype="float32", device="cpu")
    ids = torch.randint(0, 1000, (1, 12))
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
    assert (_logits(served.model, ids) - _logits(base, ids)).abs().max() > 0  # the merged experts differ


def test_a_weighted_merge_of_expert_lora_is_refused_naming_the_key(tiny_family_dir, tmp_path):
    """peft's add_weighted_adapter cannot combine LoRA on parameters: said with the key, before the base loads."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    base = tiny_family_dir("mixtral")
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=2, target_modules=[], target_parameters=EXPERTS)).save_pretrained(
        tmp_path / "a"
    )
    args = [
        "merge",
        "--adapter",
        str(tmp_path / "a"),
        "--base",
        str(base),
        "--weight",
        "0.5",
        "--out",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "(target_parameters, axolotl's lora_target_parameters): peft's weighted combination" in result.output
