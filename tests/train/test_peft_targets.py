"""What peft does to the targets it is given, and the plan must say: on MoE models whose dense MLP layers share the
experts' projection names (DeepSeek-V2/V3's first layers and shared experts, Qwen3-MoE's mlp_only_layers) it renames
them to the fused experts, so what the plan says trains must be what peft wraps, and merge must fold an adapter of
the experts; on Mamba models it refuses some linear layers outright."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from llmkit.config.plan import plan
from llmkit.config.schema import ConfigError, ConfigWarning, load_config
from llmkit.merge.fold import merge_adapter
from llmkit.train.run import train


def test_lora_target_linear_trains_what_the_plan_says_on_a_moe_with_dense_layers(tiny_config, tiny_family_dir):
    cfg = load_config(tiny_config(base_model=str(tiny_family_dir("qwen3_moe"))))
    planned = plan(cfg)
    assert "gate_proj" not in planned.target_modules  # peft would train the experts under that name
    out = train(cfg)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert not adapter.get("target_parameters")
    assert set(adapter["target_modules"]) == set(planned.target_modules)
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        shapes = [weights.get_slice(name).get_shape() for name in weights.keys()]
    assert sum(rows * columns for rows, columns in shapes) == planned.trainable_params
    merge_adapter(None, out, out / "merged", dtype="float32")  # verifies against base + adapter


REAL_WORLD = Path(__file__).parents[1] / "config" / "real_world"


def test_listed_names_the_model_lacks_are_skipped_as_peft_skips_them(tiny_config, tiny_family_dir):
    """A user's Mixtral config lists Llama's MLP names beside attention: peft wraps the names that match and skips
    the rest, so axolotl trains attention alone. It was refused, with hints of v_proj for up_proj; the plan's
    count must be what training wraps."""
    real = yaml.safe_load((REAL_WORLD / "mixtral-8x7b-instruct-lora4bit-chat-legacy-fields.yml").read_text())
    targets = real["lora_target_modules"]
    config = tiny_config(
        base_model=str(tiny_family_dir("mixtral")), lora_target_linear=False, lora_target_modules=targets
    )
    with pytest.warns(ConfigWarning) as caught:
        planned = plan(load_config(config))
    said = " ".join(str(warning.message) for warning in caught)
    assert "lora_target_modules: ['gate_proj', 'up_proj', 'down_proj'] match no module of MixtralForCausalLM" in said
    assert "lora_target_parameters: experts.gate_up_proj for up_proj" in said and "v_proj for" not in said
    assert "the adapter wraps ['q_proj', 'k_proj', 'v_proj', 'o_proj']" in said
    assert planned.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.warns(ConfigWarning):
        out = train(load_config(config))
    assert set(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == set(planned.target_modules)
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        shapes = [weights.get_slice(name).get_shape() for name in weights.keys()]
    assert sum(rows * columns for rows, columns in shapes) == planned.trainable_params
    # nothing listed matches: peft's own error, said before training
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['gate_proj', 'up_proj'\] match no module"):
        plan(
            load_config(
                tiny_config(
                    base_model=str(tiny_family_dir("mixtral")),
                    lora_target_linear=False,
                    lora_target_modules=["gate_proj", "up_proj"],
                )
            )
        )


def test_listing_a_name_peft_renames_to_the_experts_is_refused_with_its_key(tiny_config, tiny_family_dir):
    cfg = load_config(
        tiny_config(
            base_model=str(tiny_family_dir("qwen3_moe")),
            lora_target_linear=False,
            lora_target_modules=["q_proj", "mlp.down_proj"],
        )
    )
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['mlp.down_proj'\] cannot be trained .*experts"):
        plan(cfg)


def test_merge_folds_an_adapter_peft_renamed_to_the_fused_experts(tiny_family_dir, tmp_path):
    """An adapter trained elsewhere on the dense MLP's names holds LoRA on the experts (peft renamed them): merge
    folds it, as it folds lora_target_parameters (tests/train/test_target_parameters.py); it was refused."""
    base = tiny_family_dir("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(base)
    # what peft makes of the dense MLP's names: LoRA on the experts' 3-D parameters (target_parameters)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_parameters"]
    report = merge_adapter(str(base), tmp_path / "adapter", tmp_path / "merged", dtype="float32")
    assert report.verification["token_agreement"] == 1.0


def test_lora_target_linear_leaves_out_what_peft_refuses_on_mamba(tiny_config, make_tiny_model, tmp_path):
    """peft refuses LoRA on a Mamba mixer's out_proj: training stopped on it after the data was prepared."""
    from transformers import MambaConfig, MambaForCausalLM

    mamba = make_tiny_model(MambaConfig, MambaForCausalLM, state_size=8, use_mamba_kernels=False)
    cfg = load_config(tiny_config(base_model=str(mamba)))
    planned = plan(cfg)
    assert planned.target_modules == ["in_proj", "x_proj", "dt_proj"]
    out = train(cfg)
    assert set(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == set(planned.target_modules)
    merge_adapter(None, out, out / "merged", dtype="float32")  # verifies against base + adapter
    listed = tiny_config(base_model=str(mamba), lora_target_linear=False, lora_target_modules=["out_proj"])
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['out_proj'\] match no module of MambaForCausalLM"):
        plan(load_config(listed))


def test_a_module_both_adapted_and_saved_whole_is_refused_before_training(tiny_config, tiny_model_dir):
    """peft stopped training on it ("modules_to_save cannot be applied to modules of type lora.Linear"), after the
    data was prepared; validate had passed it. The tiny model is tied: saving its embeddings saves its head too."""
    saved = {"lora_target_linear": False, "lora_modules_to_save": ["embed_tokens"]}
    for target in ("lm_head", "embed_tokens"):
        cfg = load_config(tiny_config(**saved, lora_target_modules=["q_proj", target]))
        with pytest.raises(ConfigError, match=rf"lora_target_modules: \['{target}'\] also trained whole by lora_"):
            plan(cfg)
    fine = plan(load_config(tiny_config(**saved, lora_target_modules=["q_proj"])))
    assert fine.target_modules == ["q_proj"]
    prepared = tiny_config(**saved, lora_target_modules=["q_proj", "lm_head"]).parent / "prepared"
    cfg = load_config(
        tiny_config(**saved, lora_target_modules=["q_proj", "lm_head"], dataset_prepared_path=str(prepared))
    )
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['lm_head'\] also trained whole .*tied model"):
        train(cfg)
    assert not prepared.exists()  # said before the data is prepared, as validate says it


def test_a_module_both_adapted_and_saved_whole_on_an_untied_model_is_not_called_tied(tiny_config, make_tiny_model):
    """Mistral's DPO example (untied) was refused "on this tied model, saving the embeddings or the head saves"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    untied = make_tiny_model(LlamaConfig, LlamaForCausalLM, tie_word_embeddings=False)
    keys = {"lora_target_linear": False, "lora_modules_to_save": ["embed_tokens", "lm_head"]}
    cfg = load_config(tiny_config(base_model=str(untied), **keys, lora_target_modules=["embed_tokens", "lm_head"]))
    with pytest.raises(ConfigError) as refused:
        plan(cfg)
    said = str(refused.value)
    assert "['embed_tokens', 'lm_head'] also trained whole by lora_modules_to_save: a module" in said
    assert "tied" not in said
    # untied, saving the embeddings leaves the head to LoRA (refused above on the tied model)
    saved = {**keys, "lora_modules_to_save": ["embed_tokens"], "lora_target_modules": ["q_proj", "lm_head"]}
    cfg = load_config(tiny_config(base_model=str(untied), **saved))
    assert plan(cfg).target_modules == ["q_proj", "lm_head"]


def test_validate_says_what_lora_target_linear_leaves_out_only_when_it_is_set(tiny_config, tiny_family_dir, capsys):
    """The 'not targeted' row blamed lora_target_linear for renamed layers a config with lora_target_modules alone
    never asked for."""
    from llmkit.train.validate import validate

    base = str(tiny_family_dir("qwen3_moe"))
    for keys, said in (
        ({}, True),
        ({"lora_target_linear": False, "lora_target_modules": ["q_proj", "v_proj"]}, False),
    ):
        assert validate(tiny_config(base_model=base, **keys)) == 0
        out = capsys.readouterr()
        text = " ".join((out.out + out.err).split())
        assert ("not targeted" in text) is said, text
