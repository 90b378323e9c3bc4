"""`plan(cfg)`: parameter counts against peft on the real model, steps, tokens and memory of the team's configs."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.plan import TokenizedSplit, plan
from llmkit.config.schema import AxolotlConfig, ConfigError, ConfigWarning, load_config
from llmkit.core.challenge import Loading, Track
from llmkit.core.memory import weight_bytes
from llmkit.core.shapes import model_shape
from llmkit.train import train
from llmkit.train import validate as validate_module
from llmkit.train.validate import validate

ROOT = Path(__file__).resolve().parents[2]
TEAM = ["Llama-2-7b-03", "Llama-2-13b-01", "Llama-2-13b-02", "Mistral-01", "Mistral-02", "Mistral-03"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the shipped configs must plan without the hub


def team(name: str, overrides: dict | None = None) -> AxolotlConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return load_config(ROOT / "axolotl_configs" / f"{name}.yml", overrides)


def small(model_dir: Path, **keys) -> AxolotlConfig:
    base = {"base_model": str(model_dir), "adapter": "lora", "learning_rate": 1e-4}
    base["datasets"] = [{"path": "onuralp/open-otter", "type": "alpaca"}]
    return AxolotlConfig.model_validate(base | keys)


@pytest.mark.parametrize("name", TEAM)
def test_team_configs_plan_offline_with_sensible_numbers(name):
    cfg = team(name)
    p = plan(cfg, world_size=1)
    shape = model_shape(cfg.base_model)
    assert p.shape_source == "shipped with llmkit"
    assert p.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # LoRA on every linear layer: r x (in + out) per module, per layer (independent of the plan's own loop)
    h, kv, i = shape.hidden_size, shape.num_kv_heads * shape.head_size, shape.mlp_width
    per_layer = cfg.lora_r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    assert p.trainable_params == shape.num_layers * per_layer
    assert 0.001 < p.trainable_params / shape.num_params < 0.05
    assert p.tokens_per_step == cfg.micro_batch_size * cfg.gradient_accumulation_steps * cfg.sequence_len
    assert p.steps is None and p.rows is None  # a hub dataset: counted only once downloaded
    assert p.steps_per_1k_rows == pytest.approx(
        1000 * 0.99 * cfg.num_epochs / (cfg.micro_batch_size * cfg.gradient_accumulation_steps)
    )
    for m in p.memory:
        # ~4 bits + fp32 embeddings and lm_head (upcast for k-bit training) + bf16 copies of the adapters and lm_head
        assert 0.5 * shape.num_params < m.weights < 0.75 * shape.num_params
        assert m.total == m.weights + m.trainable + m.activations + m.overhead


def test_llama_2_7b_qlora_fits_the_4090_and_its_full_fine_tune_does_not():
    qlora = {m.track.name: m for m in plan(team("Llama-2-7b-03")).memory}
    assert qlora[Track.rtx4090.value].fits and qlora[Track.a100.value].fits
    full = plan(team("Llama-2-7b-03", {"adapter": None, "load_in_4bit": False}))
    assert full.trainable_params == model_shape("meta-llama/Llama-2-7b-hf").num_params
    assert not any(m.fits for m in full.memory)  # 6.7B weights + grads + AdamW states exceed 40 GiB


def test_mistral_8k_batches_need_the_a100_and_mistral_03s_four_fit_neither():
    # 2 x 8192 tokens: the fp32 residual stream of k-bit training (norms upcast) outgrows the 4090's 23.6 GiB
    fits = {m.track.name: m.fits for m in plan(team("Mistral-01")).memory}
    assert fits == {"4090": False, "A100": True}
    assert not any(m.fits for m in plan(team("Mistral-03")).memory)  # 4 x 8192 tokens: over 40 GiB


def test_a_16_bit_lora_counts_the_serving_weights_plus_bf16_copies_of_its_adapters():
    p = plan(team("Llama-2-7b-03", {"adapter": "lora", "load_in_4bit": False}))
    serving = weight_bytes(p.shape, Loading.bf16)  # the fit check's bf16 weights: one definition for both
    assert p.memory[0].weights == int(serving + 2 * p.trainable_params)


def test_the_method_line_gives_loras_scale_and_rsloras():
    assert "r=64 alpha=16 (scale 0.25)" in plan(team("Llama-2-7b-03", {"lora_r": 64, "lora_alpha": 16})).method
    rs = plan(team("Llama-2-7b-03", {"lora_r": 64, "lora_alpha": 16, "peft_use_rslora": True})).method
    assert rs.startswith("QLoRA + rsLoRA ") and "(scale 2)" in rs  # alpha / sqrt(r)
    loftq = {"adapter": "lora", "load_in_4bit": False, "peft": {"loftq_config": {"loftq_bits": 4}}}
    assert plan(team("Llama-2-7b-03", loftq)).method.startswith("LoRA + LoftQ 4-bit init r=")


def test_memory_grows_without_gradient_checkpointing_and_with_longer_sequences():
    base = plan(team("Llama-2-7b-03")).memory[0]
    no_ckpt = plan(team("Llama-2-7b-03", {"gradient_checkpointing": False})).memory[0]
    longer = plan(team("Llama-2-7b-03", {"sequence_len": 8192})).memory[0]
    assert no_ckpt.activations > 5 * base.activations
    assert longer.activations == pytest.approx(2 * base.activations, rel=0.01)
    assert (no_ckpt.weights, longer.weights) == (base.weights, base.weights)


def test_world_size_multiplies_tokens_per_step():
    one, two = plan(team("Mistral-01"), world_size=1), plan(team("Mistral-01"), world_size=2)
    assert two.tokens_per_step == 2 * one.tokens_per_step == 2 * 2 * 4 * 8192


def test_steps_are_counted_from_local_rows(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"instruction": "q{n}", "output": "a{n}"}}\n' for n in range(1000)))
    overrides = {"datasets": [{"path": str(rows), "type": "alpaca"}], "sample_packing": False}
    p = plan(team("Mistral-01", overrides), world_size=1)
    train_rows = 1000 - math.ceil(1000 * 0.01)
    assert p.rows == 1000
    assert p.steps == 3 * math.ceil(math.ceil(train_rows / 2) / 4)  # 3 epochs of 2 x 4 rows per step
    assert plan(team("Mistral-01", overrides | {"max_steps": 7})).steps == 7


def test_fractional_epochs_and_a_fractional_held_out_split_round_up_as_the_trainer_does(tmp_path):
    import datasets

    def steps(rows: int, **keys) -> int:
        path = tmp_path / f"rows{rows}.jsonl"
        path.write_text("".join(f'{{"instruction": "q{n}", "output": "a{n}"}}\n' for n in range(rows)))
        single = {"micro_batch_size": 1, "gradient_accumulation_steps": 1, "num_epochs": 1, "val_set_size": 0}
        overrides = {"datasets": [{"path": str(path), "type": "alpaca"}], "sample_packing": False} | single
        return plan(team("Mistral-01", overrides | keys), world_size=1).steps

    assert steps(10, micro_batch_size=2, num_epochs=1.5) == 8  # 1.5 x 5 steps: Trainer's max_steps rounds up
    # 5% of 101 rows is 5.05: train_test_split holds out 6, and 95 rows are trained
    held_out = len(datasets.Dataset.from_dict({"n": range(101)}).train_test_split(test_size=0.05, seed=0)["test"])
    assert team("Mistral-01", {"val_set_size": 0.05}).held_out_rows(101) == held_out == 6
    assert steps(101, val_set_size=0.05) == 101 - held_out


def _compressed(plain: Path, compression: str) -> Path:
    """`plain` compressed beside it (rows.jsonl -> rows.jsonl.gz) with the opener the data stage reads it with."""
    from llmkit.config.sections import COMPRESSIONS

    packed = plain.with_name(plain.name + compression)
    with COMPRESSIONS[compression](packed, "wb") as file:
        file.write(plain.read_bytes())
    plain.unlink()
    return packed


@pytest.mark.parametrize(
    ("kind", "compression"),
    [("json", ""), ("csv", ""), ("parquet", ""), ("folder", "")]
    + [("jsonl", ".gz"), ("json", ".bz2"), ("csv", ".xz"), ("txt", ".gz"), ("folder", ".gz")],
)
def test_rows_are_counted_in_each_local_format(tmp_path, kind, compression):
    """A compressed file (rows.jsonl.gz) is counted as the file inside it: it was left out, and the plan called the
    dataset one on the hub (so validate tokenized and checked none of its rows)."""
    import datasets

    table = datasets.Dataset.from_dict({"instruction": [f"q{n}" for n in range(37)], "output": ["a"] * 37})
    if kind == "folder":
        (tmp_path / "data").mkdir()
        for part in ("part-0.jsonl", "part-1.jsonl"):
            table.to_json(tmp_path / "data" / part)
            if compression:
                _compressed(tmp_path / "data" / part, compression)
        path, expected = tmp_path / "data", 74
    else:
        path, expected = tmp_path / f"rows.{kind}", 37
        {
            "json": lambda p: p.write_text(json.dumps(table.to_list())),
            "jsonl": table.to_json,
            "csv": table.to_csv,
            "parquet": table.to_parquet,
            "txt": lambda p: p.write_text("".join(f"q{n}\n" for n in range(37))),
        }[kind](path)
        path = _compressed(path, compression) if compression else path
    assert plan(team("Mistral-01", {"datasets": [{"path": str(path), "type": "alpaca"}]})).rows == expected


@pytest.mark.parametrize(("data_files", "rows"), [(["part-*.jsonl"], 15), (["part-[01].jsonl"], 5), (["*-0.*"], 5)])
def test_a_folders_data_files_are_counted_as_the_loader_reads_them(tmp_path, data_files, rows):
    """A pattern was opened as a file's name (FileNotFoundError); an entry naming a file is that file alone."""
    from llmkit.data.sources import load_rows

    folder = tmp_path / "data"
    folder.mkdir()
    row = json.dumps({"instruction": "q", "output": "a"}) + "\n"
    for name in ("part-0.jsonl", "part-1.jsonl", "part-[01].jsonl"):
        (folder / name).write_text(row * 5)
    cfg = team("Mistral-01", {"datasets": [{"path": str(folder), "type": "alpaca", "data_files": data_files}]})
    assert plan(cfg).rows == len(load_rows(cfg.datasets[0], lambda row: None, cfg.seed, "datasets[0]")) == rows


@pytest.mark.parametrize(
    "keys",
    [
        {"split": "train[:25%]"},
        {"split": "train[5:-3]"},
        {"shards": 3, "shards_idx": 0},
        {"shards": 3, "shards_idx": 2},
    ],
)
def test_rows_counted_are_those_the_split_and_shard_select(tmp_path, keys):
    """The step count read every row of the file, whatever the split or shard kept (40 rows planned, 10 trained)."""
    import datasets

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{n}", "output": "a"}) + "\n" for n in range(40)))
    kept = datasets.load_dataset("json", data_files=str(path), split=keys.get("split", "train"))
    if "shards" in keys:
        kept = kept.shard(num_shards=keys["shards"], index=keys["shards_idx"])
    assert len(kept) < 40
    assert plan(team("Mistral-01", {"datasets": [{"path": str(path), "type": "alpaca", **keys}]})).rows == len(kept)


def test_an_unknown_base_offline_still_plans_and_says_how_to_give_its_config():
    p = plan(team("Mistral-02", {"base_model": "nobody/no-such-model"}))
    assert p.shape is None and p.memory == [] and p.trainable_params is None
    assert "no config.json for nobody/no-such-model" in p.shape_source and "--model-config" in p.shape_source
    assert p.target_modules == ["all-linear", "gate_proj", "up_proj", "down_proj"]  # unchecked, as listed


def test_added_tokens_on_an_unknown_base_still_need_lora_modules_to_save():
    """Offline, a base whose config.json is not here: validate passed `tokens` with no lora_modules_to_save at all
    (train refused it once it had the model); listing any module passes, as the model's names are unknown."""
    keys = {"base_model": "nobody/no-such-model", "tokens": ["<sum>"]}
    said = r"tokens: \['<sum>'\] get new embedding rows, .*must list embed_tokens and lm_head"
    with pytest.raises(ConfigError, match=said):
        plan(team("Mistral-02", keys | {"lora_modules_to_save": None}))
    assert plan(team("Mistral-02", keys | {"lora_modules_to_save": ["wte", "lm_head"]})).shape is None  # GPT-2's


def test_a_copy_under_another_owner_or_a_tuned_variant_uses_a_shipped_config_of_the_same_name():
    p = plan(team("Llama-2-7b-03", {"base_model": "NousResearch/Llama-2-7b-hf"}))
    assert p.shape_source == "shipped with llmkit for meta-llama/Llama-2-7b-hf (same repository name)"
    assert p.trainable_params == plan(team("Llama-2-7b-03")).trainable_params
    tuned = plan(team("Llama-2-7b-03", {"base_model": "meta-llama/Llama-3.1-8B-Instruct"}))
    assert tuned.shape_source == "shipped with llmkit for meta-llama/Llama-3.1-8B (its base model's shape)"


def test_model_config_option_sizes_a_base_from_any_config_json(tmp_path):
    from transformers import FalconConfig

    FalconConfig(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, vocab_size=1000).save_pretrained(
        tmp_path
    )
    cfg = team("Mistral-01", {"base_model": "someone/private-falcon", "lora_target_modules": None})
    p = plan(cfg, model_config=str(tmp_path / "config.json"))
    assert p.shape.architecture == "FalconForCausalLM" and p.shape_source == str(tmp_path / "config.json")
    assert p.target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def test_a_listed_module_the_model_lacks_is_named_with_what_exists():
    """Some names matching: peft wraps those, so a warning; none matching: peft's error. c_attn is GPT-2's layer,
    no typo of a Mistral one: no hint for it."""
    with pytest.warns(ConfigWarning) as caught:
        p = plan(
            team(
                "Mistral-01", {"lora_target_linear": False, "lora_target_modules": ["c_attn", "q_proj", "gate_projj"]}
            )
        )
    message = " ".join(str(warning.message) for warning in caught)
    assert p.target_modules == ["q_proj"]
    assert "lora_target_modules: ['c_attn', 'gate_projj'] match no module of MistralForCausalLM" in message
    assert "'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'" in message
    assert "did you mean gate_proj for gate_projj" in message and "for c_attn" not in message
    with pytest.raises(ConfigError, match=r"lora_target_modules: \['c_attn'\] match no module"):
        plan(team("Mistral-01", {"lora_target_linear": False, "lora_target_modules": ["c_attn"]}))


def test_a_projection_fused_into_another_layer_is_named_for_what_holds_it():
    """Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj; spelling alone suggested o_proj for up_proj."""
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    with pytest.warns(ConfigWarning) as caught:
        plan(team("Mistral-01", {"base_model": "microsoft/Phi-3-mini-4k-instruct", "lora_target_modules": targets}))
    assert (
        "did you mean qkv_proj for q_proj, qkv_proj for v_proj, gate_up_proj for gate_proj, gate_up_proj for up_proj"
        in " ".join(str(warning.message) for warning in caught)
    )


@pytest.mark.parametrize(
    ("keys", "peft_config"),
    [
        ({"lora_r": 8, "lora_target_linear": True}, lambda t: {"kind": "lora", "r": 8, "target_modules": t}),
        (
            {"lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"], "peft_use_dora": True},
            lambda t: {"kind": "lora", "r": 4, "target_modules": t, "use_dora": True},
        ),
        (
            {"peft": "vera", "peft_vera_r": 32, "lora_target_linear": True},
            lambda t: {"kind": "vera", "r": 32, "target_modules": t},
        ),
        (
            {"peft": "prompt_tuning", "peft_num_virtual_tokens": 8},
            lambda t: {"kind": "prompt", "num_virtual_tokens": 8},
        ),
        (  # the plan counted every layer's modules (the same count for [0], [999] and none)
            {"lora_r": 8, "lora_target_linear": True, "peft_layers_to_transform": [0, 2]},
            lambda t: {"kind": "lora", "r": 8, "target_modules": t, "layers_to_transform": [0, 2]},
        ),
        (
            {"lora_r": 8, "lora_target_linear": True, "peft_layers_to_transform": 3, "peft_layers_pattern": "layers"},
            lambda t: {
                "kind": "lora",
                "r": 8,
                "target_modules": t,
                "layers_to_transform": [3],
                "layers_pattern": "layers",
            },
        ),
    ],
    ids=["lora-all-linear", "dora-qv", "vera", "prompt-tuning", "lora-layers-0-2", "lora-layer-3-pattern"],
)
def test_trainable_parameters_equal_peft_count_on_the_real_model(default_model_dir, keys, peft_config):
    from peft import LoraConfig, PromptTuningConfig, TaskType, VeraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = small(default_model_dir, **keys)
    p = plan(cfg)
    assert p.shape_source == "local folder"
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    assert cfg.resolved_target_modules(model) == p.target_modules  # the shape and the model agree on names
    options = peft_config(p.target_modules)
    kind = options.pop("kind")
    config = {"lora": LoraConfig, "vera": VeraConfig, "prompt": PromptTuningConfig}[kind]
    peft_model = get_peft_model(model, config(task_type=TaskType.CAUSAL_LM, **options))
    assert p.trainable_params == peft_model.get_nb_trainable_parameters()[0]


def test_layers_to_transform_the_model_lacks_are_refused_by_validate_and_train(default_model_dir, tiny_config):
    """validate passed [999] and [-1], and train stopped on peft's NoMatchingPeftModuleError traceback."""
    for layers in ([999], [0, -1]):
        with pytest.raises(ConfigError) as err:
            plan(small(default_model_dir, lora_target_linear=True, peft_layers_to_transform=layers))
        outside = [index for index in layers if index != 0]
        assert f"peft_layers_to_transform: {outside} not among the model's layers: it has 30, numbered 0 to 29" in (
            str(err.value)
        )
    result = CliRunner().invoke(app, ["train", str(tiny_config(peft_layers_to_transform=[2]))])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.splitlines()[-1] == (
        "  - peft_layers_to_transform: [2] not among the model's layers: it has 2, numbered 0 to 1"
    ), result.output


@pytest.mark.parametrize("tokens", [[], ["<sum>", "<carry>"]], ids=["no-tokens", "added-tokens"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_trainable_embeddings_are_counted_as_peft_trains_them(make_tiny_model, tiny_config, tied, tokens):
    """lora_modules_to_save [embed_tokens, lm_head]: a tied model trains one copy for both (training ties the head to
    it), which the plan counted twice (195.89% of a tiny Qwen2; ~8 GiB too much on gemma-2b); added tokens grow both
    copies, which the plan left out. The count is peft's on the model training builds (resized, then wrapped)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.train.modeling import build_peft_model

    base = make_tiny_model(LlamaConfig, LlamaForCausalLM, tie_word_embeddings=tied)
    saved = {"lora_modules_to_save": ["embed_tokens", "lm_head"], "optimizer": "adamw_torch"}
    config = tiny_config(base_model=str(base), tokens=tokens, **saved)
    cfg = load_config(config)
    model = AutoModelForCausalLM.from_pretrained(base)
    assert model.config.tie_word_embeddings is tied
    peft_model = build_peft_model(cfg, model, load_tokenizer(cfg))  # resizes for the added tokens, as training does
    trained = peft_model.get_nb_trainable_parameters()[0]
    lora = sum(p.numel() for name, p in peft_model.named_parameters() if p.requires_grad and "lora_" in name)
    rows = model.get_input_embeddings().num_embeddings
    assert rows == 49152 + len(tokens) and trained == lora + rows * 64 * (1 if tied else 2)  # the copies peft trains
    # the resized base's own weights (peft's count adds the adapters and the saved copies)
    total = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    status, output = _validate_output(config)
    # of the model training builds, added tokens' rows in both counts: more trainable than total was printed
    share = rf"{trained:,} \({trained / total:.2%} of the base's {total:,}\)"
    assert status == 0 and re.search(rf"trainable parameters\W+{share}", output), output
    p = plan(cfg, tokenizer_size=len(load_tokenizer(cfg)))
    assert p.trainable_params == trained and p.total_params == total
    assert all(m.trainable == trained * (4 + 4 + 8) for m in p.memory)  # adapters in fp32: weight, gradient, AdamW


def test_cli_validate_prints_the_plan():
    result = CliRunner().invoke(app, ["validate", str(ROOT / "axolotl_configs" / "Llama-2-7b-03.yml")])
    assert result.exit_code == 0, result.output
    for expected in ("meta-llama/Llama-2-7b-hf", "shipped", "39,976,960", "65,536", "gate_proj", "4090", "fits"):
        assert expected in result.output
    strict = CliRunner().invoke(app, ["validate", "--strict", str(ROOT / "axolotl_configs" / "Llama-2-7b-03.yml")])
    assert strict.exit_code == 1 and "is_llama_derived_model" in strict.output


def test_piped_validate_draws_no_progress_bars(tiny_config):
    """Piped (`| cat -A`, CI, a file), validate redrew the datasets' Tokenizing and Masks bars with carriage
    returns, where train and preprocess turn them off."""
    env = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    command = [sys.executable, "-m", "llmkit.cli", "validate", str(tiny_config())]
    result = subprocess.run(command, capture_output=True, env=env, timeout=300)  # bytes: text=True reads \r as \n
    assert result.returncode == 0, result.stderr.decode()
    assert b"tokens to train" in result.stdout and b"%|" not in result.stderr and b"\r" not in result.stderr
    # piped, a long step is one plain line instead of a bar
    assert b"Tokenizing sums.jsonl: 24 rows\n" in result.stderr


def test_cli_validate_without_a_config_json_checks_the_rest_and_says_how_to_give_one(tmp_path, make_tiny_model):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = tmp_path / "neox.yml"
    keys = {"base_model": "someone/unpublished-neox", "adapter": "lora", "lora_target_linear": True}
    config.write_text(yaml.safe_dump(keys | {"learning_rate": 1e-4, "datasets": [{"path": "x/y", "type": "alpaca"}]}))
    unknown = CliRunner().invoke(app, ["validate", str(config)])
    assert unknown.exit_code == 0, unknown.output
    text = " ".join(unknown.output.split())
    assert "size unknown" in text and "memory plan" in text and "--model-config" in text
    model_dir = make_tiny_model(GPTNeoXConfig, GPTNeoXForCausalLM)
    known = CliRunner().invoke(app, ["validate", str(config), "--model-config", str(model_dir)])
    assert known.exit_code == 0, known.output
    assert "GPTNeoXForCausalLM" in known.output and "query_key_value" in known.output and "fits" in known.output


def test_cli_validate_refuses_a_model_config_it_cannot_read(tmp_path, monkeypatch):
    """A --model-config path the user gave is theirs to fix: exit 1 naming the flag and the path, not a plan whose
    memory row says "unknown" (which stays for a model whose config.json cannot be found)."""
    config = tmp_path / "neox.yml"
    keys = {"base_model": "someone/unpublished-neox", "learning_rate": 1e-4}
    config.write_text(yaml.safe_dump(keys | {"datasets": [{"path": "x/y", "type": "alpaca"}]}))
    (tmp_path / "broken.json").write_text('{"model_type": ')
    (tmp_path / "empty").mkdir()
    for given, why in [
        ("nothere.json", "no such file or folder"),
        (str(tmp_path / "broken.json"), "not a readable config.json (Expecting value"),
        (str(tmp_path / "empty"), "a folder without a config.json"),
    ]:
        result = CliRunner().invoke(app, ["validate", str(config), "--model-config", given])
        assert result.exit_code == 1, result.output
        assert f"Error: --model-config {given}: {why}" in " ".join(result.output.split())
        assert "Training plan" not in result.output
    # ... before the data is tokenized (minutes on a large dataset), not after it
    counted = []
    monkeypatch.setattr(validate_module, "count_training_tokens", counted.append)
    assert validate(config, model_config="nothere.json", console=Console()) == 1
    assert counted == []


def test_dpo_plans_chosen_and_rejected_tokens_and_a_full_fine_tunes_reference_copy():
    dpo_keys = {"rl": "dpo", "dpo_beta": 0.2, "sample_packing": False}
    dpo_keys["datasets"] = [{"path": "x/y", "type": "chat_template.default"}]
    sft = plan(team("Llama-2-7b-03", {"gradient_checkpointing": False}))
    dpo = plan(team("Llama-2-7b-03", {"gradient_checkpointing": False} | dpo_keys))
    assert "preference training: DPO (TRL), beta 0.2" in dpo.method
    assert dpo.memory[0].activations == 2 * sft.memory[0].activations  # both answers of a pair in one batch
    assert dpo.memory[0].weights == sft.memory[0].weights  # an adapter's reference policy is the base itself
    full = {"adapter": None, "load_in_4bit": False}
    full_dpo, full_sft = plan(team("Llama-2-7b-03", full | dpo_keys)), plan(team("Llama-2-7b-03", full))
    # bf16: true loads a full fine-tune's weights in bfloat16 (as axolotl does): the reference copy is 2 bytes each
    assert full_dpo.memory[0].weights - full_sft.memory[0].weights == 2 * full_sft.shape.num_params


@pytest.mark.parametrize(
    ("keys", "kind", "said"),
    [
        ({"rl": "orpo", "orpo_alpha": 0.2}, "chat_template.argilla", "ORPO (TRL), beta 0.2"),
        ({"rl": "simpo", "simpo_gamma": 0.5}, "chatml.intel", "SimPO (TRL), beta 0.1"),
    ],
)
def test_orpo_and_simpo_plan_both_answers_and_no_reference_copy(keys, kind, said):
    rl_keys = keys | {"sample_packing": False, "datasets": [{"path": "x/y", "type": kind}]}
    full = {"adapter": None, "load_in_4bit": False, "gradient_checkpointing": False}
    full_rl, full_sft = plan(team("Llama-2-7b-03", full | rl_keys)), plan(team("Llama-2-7b-03", full))
    assert f"preference training: {said}" in full_rl.method
    assert full_rl.memory[0].activations == 2 * full_sft.memory[0].activations  # chosen and rejected in one batch
    assert full_rl.memory[0].weights == full_sft.memory[0].weights  # neither loss needs a reference model


def test_kto_plans_one_sequence_per_row_and_a_full_fine_tunes_reference_copy():
    kto_keys = {"rl": "kto", "rl_beta": 0.2, "kto_undesirable_weight": 1.3, "sample_packing": False}
    kto_keys["datasets"] = [{"path": "x/y", "type": "chatml.argilla"}]
    batch = {"micro_batch_size": 2, "gradient_checkpointing": False}  # KTO's KL term needs two rows per micro-batch
    full = batch | {"adapter": None, "load_in_4bit": False}
    full_kto, full_sft = plan(team("Llama-2-7b-03", full | kto_keys)), plan(team("Llama-2-7b-03", full))
    assert "preference training: KTO (TRL), beta 0.2" in full_kto.method
    assert full_kto.memory[0].activations == full_sft.memory[0].activations  # one answer per row has gradients
    assert full_kto.memory[0].weights - full_sft.memory[0].weights == 2 * full_sft.shape.num_params  # the reference
    lora_kto, lora_sft = plan(team("Llama-2-7b-03", batch | kto_keys)), plan(team("Llama-2-7b-03", batch))
    assert lora_kto.memory[0].weights == lora_sft.memory[0].weights  # an adapter's reference is the base itself
    assert "x 2 (preference pairs)" not in full_kto.tokens_basis


def test_dynamic_finetuning_is_said_in_the_plan_and_needs_the_memory_cross_entropy_needs():
    # axolotl's DFT (examples/gemma3/gemma-3-1b-fft-dft.yml) was refused as not implemented. Its loss upcasts the same
    # logits to float32 and keeps the same log-probabilities for the backward pass as transformers' cross-entropy.
    sft, dft = (plan(team("Llama-2-7b-03", {"use_dynamic_finetuning": on})) for on in (False, True))
    assert dft.method == sft.method + "; DFT loss (each target token's cross-entropy times its probability)"
    assert dft.memory == sft.memory


def test_a_full_fine_tune_holds_its_weights_in_the_dtype_axolotl_loads_them_in():
    # bf16: the weights, their gradients and AdamW's two states in bfloat16 (2 + 2 + 4 bytes); fp16: float32 master
    # weights (the gradient scaler cannot unscale float16 gradients), so 4 + 4 + 8 and autocast's 16-bit copies.
    full = {"adapter": None, "load_in_4bit": False, "optimizer": "adamw_torch", "gradient_checkpointing": True}
    bf16 = plan(team("Llama-2-7b-03", full | {"bf16": True}))
    fp16 = plan(team("Llama-2-7b-03", full | {"bf16": False, "fp16": True}))
    n = bf16.shape.num_params
    assert "bfloat16 weights" in bf16.method and "float32 master weights, float16 autocast" in fp16.method
    assert bf16.memory[0].trainable == n * (2 + 2 + 4) and bf16.memory[0].weights == 0
    assert fp16.memory[0].trainable == n * (4 + 4 + 8) and fp16.memory[0].weights == 2 * n
    eight_bit = plan(team("Llama-2-7b-03", full | {"bf16": True, "optimizer": "paged_adamw_8bit"}))
    assert eight_bit.memory[0].trainable == n * (2 + 2 + 2)  # 8-bit states: one byte each, whatever the dtype


def test_unfrozen_parameters_are_what_the_plan_counts_as_trained():
    keys = {"adapter": None, "load_in_4bit": False, "bf16": True, "optimizer": "adamw_torch"}
    patterns = [r"^model.layers.(0|1).mlp.down_proj", "^lm_head.weight$[:100]"]  # a row range trains whole-size
    unfrozen = plan(team("Llama-2-7b-03", keys | {"unfrozen_parameters": patterns}))
    down, head = 4096 * 11008, 32000 * 4096
    assert unfrozen.trainable_params == 2 * down + head
    assert "unfrozen_parameters" in unfrozen.method
    n = unfrozen.shape.num_params
    assert unfrozen.memory[0].trainable == (2 * down + head) * 8
    assert unfrozen.memory[0].weights == (n - 2 * down - head) * 2  # the frozen rest, in bfloat16


def test_lora_with_load_in_4bit_is_fp4_as_axolotl_loads_it_and_qlora_is_nf4():
    lora = plan(team("Llama-2-7b-03", {"adapter": "lora"}))
    assert lora.method.endswith("on a 4-bit FP4 base") and lora.cfg.quantization_options.bnb_4bit_quant_type == "fp4"
    assert plan(team("Llama-2-7b-03")).method.endswith("on a 4-bit NF4 base (double quantized)")
    chosen = {"adapter": "lora", "bnb_config_kwargs": {"bnb_4bit_quant_type": "nf4"}}
    assert plan(team("Llama-2-7b-03", chosen)).method.endswith("on a 4-bit NF4 base")  # no double quant: FP4's default
    assert lora.memory[0].weights > plan(team("Llama-2-7b-03")).memory[0].weights  # no double quantization


def test_a_missing_local_dataset_is_named_not_called_a_hub_dataset(tmp_path):
    cfg = team(
        "Llama-2-7b-03", {"datasets": [{"path": "x/y", "type": "alpaca"}, {"path": "./gone.jsonl", "type": "alpaca"}]}
    )
    tokens = plan(cfg)
    assert (
        tokens.tokens is None
        and tokens.tokens_basis == "unknown: no such file or folder here: datasets[1].path ./gone.jsonl"
    )


def test_modules_to_save_must_name_modules_and_new_tokens_need_the_embeddings_and_the_head_among_them():
    """The shipped Llama-2 config's tokenizer is not here offline: the plan's model shape holds `tokens` to the rule
    (`model.embed_tokens` alone was accepted: the head's new rows never trained)."""
    with pytest.raises(ConfigError, match=r"lora_modules_to_save: \['wte'\] match no module of LlamaForCausalLM"):
        plan(team("Llama-2-7b-03", {"lora_modules_to_save": ["wte"]}))
    for listed, missing in (
        (None, "embed_tokens, lm_head"),
        (["norm"], "embed_tokens, lm_head"),
        (["model.embed_tokens"], "lm_head"),
    ):
        keys = {"tokens": ["<sum>"], "lora_modules_to_save": listed}
        with pytest.raises(ConfigError, match=rf"must list embed_tokens and lm_head \(as axolotl requires; {missing}"):
            plan(team("Llama-2-7b-03", keys))
    both = ["model.embed_tokens", "lm_head"]
    saved = plan(team("Llama-2-7b-03", {"tokens": ["<sum>"], "lora_modules_to_save": both}))
    assert saved.trainable_params > 2 * 32000 * 4096  # the whole embedding matrix and head train


def _validate_output(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(config)])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_packed_steps_are_said_of_the_rows_that_are_packed_and_as_a_bound_before_packing(tmp_path, tiny_model_dir):
    """The plan said "7 packed sequences from 200 rows" where 20 of the 200 were held out and 180 packed, and for a
    hub dataset "225.0 steps per 1k rows" with no word that packing makes them many times fewer."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": str(i)}) + "\n" for i in range(200)))
    local = small(
        tiny_model_dir,
        lora_target_linear=True,
        sample_packing=True,
        val_set_size=0.1,
        datasets=[{"path": str(rows), "type": "alpaca"}],
    )
    packed = plan(local, world_size=1, data=TokenizedSplit(tokens=7 * 64, sequences=7))
    assert (
        validate_module._steps_text(packed)
        == "7 (7 packed sequences from 180 training rows (20 held out), over 1 epoch)"
    )
    hub = validate_module._steps_text(
        plan(small(tiny_model_dir, sample_packing=True, val_set_size=0, lora_target_linear=True))
    )
    assert hub == (
        "needs the dataset to count its rows: at most 1000.0 steps per 1k rows over 1 epoch, one row per sequence "
        "(packed rows make fewer)"
    )


def test_validate_refuses_a_dataset_written_as_a_local_path_that_is_not_there(tiny_config, tmp_path):
    """It exited 0, the missing file a cell of the plan at most (with max_steps not even that); train then failed."""
    gone = tmp_path / "gone.jsonl"
    datasets = [{"path": str(gone), "type": "alpaca"}]
    test = [{"path": "./also-gone.jsonl", "type": "alpaca", "split": "train"}]
    status, output = _validate_output(tiny_config(datasets=datasets, test_datasets=test, val_set_size=0))
    assert status == 1
    assert f"datasets[0].path: {gone}: no such file or folder" in output
    assert "test_datasets[0].path: ./also-gone.jsonl: no such file or folder" in output


def test_validate_reports_a_chat_dataset_on_a_tokenizer_without_a_template(tiny_config, tiny_model_dir, tmp_path):
    base = shutil.copytree(tiny_model_dir, tmp_path / "no-template")
    (base / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((base / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(settings))
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps({"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]})
    )
    status, output = _validate_output(
        tiny_config(base_model=str(base), datasets=[{"path": str(chats), "type": "chat_template"}])
    )
    assert status == 1
    # the data pipeline's own message, naming the dataset and the key
    assert "datasets[0].chat_template: tokenizer_default, but the tokenizer has no chat template" in output
    assert f"chatml ({chats})" in output


def test_validate_refuses_a_bad_row_that_training_would_stop_on(tiny_config, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n")
    status, output = _validate_output(tiny_config(datasets=[{"path": str(rows), "type": "alpaca"}]))
    assert status == 1
    assert f"{rows}: row 2: field 'output' is missing" in output  # the data pipeline's own message


def test_validate_reads_local_data_whose_rows_the_plan_cannot_count_as_training_reads_it(tiny_config, tmp_path):
    """An empty folder, a data_files entry that names no file and a split a local file lacks: the plan cannot count
    their rows, so validate tokenized nothing and exited 0; training then refused each (preprocess too)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    gone = tmp_path / "gone.jsonl"
    # each said by its key: datasets' own errors named the file alone, a missing data_files entry as "hub dataset json"
    for key, spec, said in [
        ("datasets", {"path": str(empty)}, f"datasets[0].path: {empty}: holds no data file datasets reads"),
        ("datasets", {"path": "json", "data_files": [str(rows), str(gone)]}, f"[0].data_files[1]: {gone}: no such"),
        ("datasets", {"path": str(rows), "split": "validation"}, "[0].split: validation: a local file has one split"),
        ("test_datasets", {"path": str(rows)}, "test_datasets[0].split: test: a local file has one split, train"),
    ]:
        config = tiny_config(
            **{key: [spec | {"type": "alpaca"}]}, **({"val_set_size": 0} if key != "datasets" else {})
        )
        status, output = _validate_output(config)
        assert status == 1 and said in output, output
        if key == "test_datasets":  # axolotl's default split for test_datasets, which a local file lacks
            assert (
                "a test_datasets entry that names no split asks for test, as in axolotl: write split: train" in output
            )
        preprocess = CliRunner().invoke(app, ["preprocess", str(config)])
        assert preprocess.exit_code == 1 and said in " ".join(preprocess.output.split())  # the same refusal


def test_validate_reads_a_local_dataset_beside_a_hub_one(tiny_config, tiny_dataset, tmp_path):
    """A hub dataset left the data uncounted, and the local file beside it unread: validate passed a bad row that
    training stopped on once the hub's rows were downloaded. The hub's are still not read (offline here)."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n")
    hub = {"path": "nobody-here/no-such-dataset", "type": "alpaca"}
    status, output = _validate_output(tiny_config(datasets=[hub, {"path": str(rows), "type": "alpaca"}]))
    assert status == 1
    assert f"{rows}: row 2: field 'output' is missing" in output  # the data pipeline's own message
    status, output = _validate_output(tiny_config(datasets=[hub, {"path": str(tiny_dataset), "type": "alpaca"}]))
    assert status == 0, output
    assert "tokens to train" in output


def test_validate_checks_local_rows_without_the_tokenizer(tiny_config, tiny_dataset, tmp_path):
    """A hub base model whose tokenizer is not here (HF_HUB_OFFLINE, never downloaded): validate read no local data
    at all, and passed rows without the fields their type needs, and bad JSON, that training stopped on."""
    hub = {"base_model": "meta-llama/Llama-2-7b-hf"}  # no folder here: its tokenizer is not loaded
    rows, chats, pairs, broken = (tmp_path / name for name in ("rows.jsonl", "chats.jsonl", "pairs.jsonl", "b.jsonl"))
    rows.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}) + "\n")
    chats.write_text(json.dumps({"messages": "hello"}) + "\n")
    pairs.write_text(json.dumps({"question": "q", "chosen": "a"}) + "\n")
    broken.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n{bad\n")
    for keys, said in [
        ({"datasets": [{"path": str(rows), "type": "alpaca"}]}, f"{rows}: row 2: field 'output' is missing"),
        ({"datasets": [{"path": str(chats), "type": "chat_template"}]}, "row 1: field 'messages' must be a list"),
        ({"datasets": [{"path": str(pairs), "type": "chatml.intel"}], "rl": "dpo"}, "field 'rejected' is missing"),
        ({"datasets": [{"path": str(broken), "type": "alpaca"}]}, f"{broken}: row 2 (line 2): not valid JSON"),
    ]:
        status, output = _validate_output(tiny_config(**hub, **keys))
        assert status == 1 and said in output, output
    call = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, call]}) + "\n")
    tools = {"datasets": [{"path": str(chats), "type": "chat_template"}]}  # a template may write the call: unknown
    assert _validate_output(tiny_config(**hub, **tools))[0] == 0
    status, output = _validate_output(tiny_config(**hub))  # good rows: what stayed unchecked is said, and how
    assert status == 0, output
    assert (
        "base_model: meta-llama/Llama-2-7b-hf: the tokenizer is not a folder here (validate downloads no model), so "
        "the local data's files and rows' fields were checked but not tokenized" in output
    )
    assert "hf download meta-llama/Llama-2-7b-hf --local-dir <folder>" in output
    assert "tokenizer is not a folder here" not in _validate_output(tiny_config())[1]  # the tiny model's is


def test_validate_says_what_a_hub_dataset_leaves_unchecked(tiny_config, tiny_dataset):
    """Beside a hub dataset, val_set_size's held-out split and packing need every dataset's rows, so validate skips
    them: it said only that the tokens to train were unknown, not that these went unchecked."""
    hub = {"path": "nobody-here/no-such-dataset", "type": "alpaca"}
    datasets = [hub, {"path": str(tiny_dataset), "type": "alpaca"}]
    status, output = _validate_output(tiny_config(datasets=datasets, val_set_size=0.5, sample_packing=True))
    assert status == 0, output
    assert (
        "datasets[0] (nobody-here/no-such-dataset) is on the hub, which validate does not download: its rows are "
        "unchecked, and so is what needs every dataset's rows: val_set_size 0.5's held-out split, sample_packing's "
        "packed sequences, the steps and tokens to train; datasets[1] was read and checked alone" in output
    )
    assert "on the hub, which validate does not download" not in _validate_output(tiny_config())[1]  # all local


def test_validate_reads_local_preference_pairs_and_grpo_prompts_beside_a_hub_dataset(tiny_config, tmp_path):
    """rl: the local dataset beside a hub one was not read at all (only SFT rows were): validate passed rows that
    training's pair or prompt step stops on."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "a", "chosen": "b"}) + "\n")
    (tmp_path / "rewards.py").write_text("def reward(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    hub, local = {"path": "nobody-here/no-such-dataset"}, {"path": str(rows)}
    for keys, said in [
        ({"rl": "dpo"}, f"{rows}: row 1: field 'prompt' is missing"),
        (
            {"rl": "grpo", "micro_batch_size": 8, "trl": {"reward_funcs": ["rewards.reward"]}},
            f"{rows}: row 1: no prompt: GRPO's rows need `prompt`",
        ),
    ]:
        status, output = _validate_output(tiny_config(datasets=[hub, local], sample_packing=False, **keys))
        assert status == 1 and said in output, output


def test_validate_refuses_a_file_where_train_writes_a_folder(tiny_config, tmp_path):
    """output_dir or dataset_prepared_path naming a file: train refused it before loading anything, validate passed
    it (its tokenizing writes no prepared data)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for key in ("output_dir", "dataset_prepared_path"):
        status, output = _validate_output(tiny_config(**{key: str(afile)}))
        assert status == 1
        assert f"{key}: {afile} is a file, not a folder" in output  # train's own message
        train = CliRunner().invoke(app, ["train", str(tiny_config(**{key: str(afile)}))])
        assert train.exit_code == 1 and f"{key}: {afile} is a file, not a folder" in " ".join(train.output.split())


def test_validate_warns_of_an_output_dir_it_may_not_write_in_here(tiny_config, tmp_path, monkeypatch):
    """A folder this process may not write in (`output_dir: /workspace/out` on a laptop, where / is not writable)
    depends on the machine: validate refused the config, which trains on the cluster it was written for. Train
    here still stops on it."""
    # os.access stands in for a read-only folder: root, which these tests may run as, may write anywhere.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    for key in ("output_dir", "dataset_prepared_path"):
        config = tiny_config(**{key: str(locked / "out")})
        status, output = _validate_output(config)
        assert status == 0, output
        assert f"on this machine, train would stop: {key}: no permission to write in {locked}" in output
        train = CliRunner().invoke(app, ["train", str(config)])
        assert train.exit_code == 1 and f"{key}: no permission to write in {locked}" in " ".join(train.output.split())


def test_validate_warns_of_a_model_path_not_on_this_machine(tiny_config, tiny_model_dir, tmp_path):
    """`base_model: /workspace/models/llama-3-8b`, written for the GPU box: validate refused it ("no such folder
    here"), even with --model-config, which is for a model it cannot find offline. A warning now, the plan sized
    from --model-config (or said unknown without it); train and preprocess here still stop on it."""
    away = str(tmp_path / "workspace" / "models" / "llama-3-8b")
    config = tiny_config(base_model="./curr-model", tokenizer_config=away)
    status, output = _validate_output(config)
    assert status == 0, output
    for key, value in (("base_model", "./curr-model"), ("tokenizer_config", away)):
        assert f"on this machine, train would stop: {key}: {value}: no such folder here, and not a hub id" in output
    table = " ".join(output.replace("│", " ").split())  # the plan's cells wrap
    assert "size unknown) memory plan unknown: ./curr-model is not on this machine; --model-config names its" in table
    sized = CliRunner().invoke(app, ["validate", str(config), "--model-config", str(tiny_model_dir)])
    assert sized.exit_code == 0 and "LlamaForCausalLM; config.json:" in " ".join(sized.output.split())
    for command in ("train", "preprocess"):
        refused = CliRunner().invoke(app, [command, str(config)])
        said = " ".join(refused.output.split())
        assert refused.exit_code == 1 and "base_model: no such folder here, and not a hub id (owner/name)" in said


def test_validate_refuses_unfrozen_parameters_that_match_no_parameter(tiny_config):
    """A full fine-tune whose unfrozen_parameters match no parameter of the model trains nothing: train refused it,
    once the data was prepared and the model loaded, and validate passed it."""
    keys = {"adapter": None, "lora_target_linear": None, "max_steps": 1}
    said = "unfrozen_parameters: ['^nothing_here$'] match no parameter name (e.g. model.embed_tokens.weight)"
    config = tiny_config(**keys, unfrozen_parameters=["^nothing_here$"])
    status, output = _validate_output(config)
    assert status == 1 and said in output, output
    train = CliRunner().invoke(app, ["train", str(config), "--cpu-fallback"])
    assert train.exit_code == 1 and said in " ".join(train.output.split())  # train's own refusal, the same line
    status, output = _validate_output(tiny_config(**keys, unfrozen_parameters=["model.embed_tokens.weight"]))
    assert status == 0, output


def test_validate_reads_no_hub_test_dataset(tiny_config, monkeypatch):
    """Local training data with a hub test_datasets entry: validate tokenized both (the plan counted the training
    rows alone), downloading the hub's, and offline refused the config for it."""
    test = [{"path": "nobody-here/no-such-dataset", "type": "alpaca"}]
    status, output = _validate_output(tiny_config(test_datasets=test, val_set_size=0))
    assert status == 0, output
    assert "tokens to train" in output


def test_validate_loads_the_tokenizer_once_for_all_its_checks(tiny_config, monkeypatch):
    """The token count, the added tokens' embeddings and the tokenizer's problems each loaded it again: three loads
    (seconds each for a large tokenizer) in one validate."""
    import transformers

    loads, load = [], transformers.AutoTokenizer.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args[0])
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counted)
    added = {"tokens": ["<|tool|>"], "lora_modules_to_save": ["embed_tokens", "lm_head"]}
    status, output = _validate_output(tiny_config(max_steps=None, **added))  # the tiny dataset's tokens are counted
    assert status == 0, output
    assert "tokens of the tokenized training split" in output and "trainable parameters" in output
    assert len(loads) == 1


def test_validate_tokenizes_a_base_model_folder_written_with_a_tilde(
    tiny_config, tiny_model_dir, tmp_path, monkeypatch
):
    """`base_model: ~/models/x` (a folder here) was taken for a model whose tokenizer is not here: validate left the
    data untokenized, and so unchecked, where training reads that folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_model_dir)
    status, output = _validate_output(tiny_config(base_model="~/models/tiny", max_steps=None))
    assert status == 0, output
    assert "tokens of the tokenized training split" in output


def test_validate_builds_the_base_models_shape_once_for_the_plan_and_the_special_tokens_rule(tiny_config, monkeypatch):
    """The rule that a new special token's embeddings are trained found and built the model's shape again, for each
    tokenizer load, where the plan had built it (and without --model-config, which the plan read)."""
    from llmkit.core import shapes

    builds, build = [], shapes._shape_of
    monkeypatch.setattr(shapes, "_shape_of", lambda config_json: builds.append(config_json) or build(config_json))
    new_eos = {"special_tokens": {"eos_token": "<|myend|>"}}  # a new token here: the rule applies
    status, output = _validate_output(tiny_config(**new_eos, lora_modules_to_save=["embed_tokens", "lm_head"]))
    assert status == 0, output
    assert len(builds) == 1
    builds.clear()
    status, output = _validate_output(tiny_config(**new_eos, lora_modules_to_save=["lm_head"]))
    assert status == 1 and "must list embed_tokens and lm_head (as axolotl requires; embed_tokens missing)" in output
    assert len(builds) == 1


@pytest.mark.parametrize("compression", ["", ".gz", ".bz2", ".xz"])
def test_validate_checks_a_compressed_file_as_the_file_inside_it(tiny_config, tmp_path, compression):
    """validate left rows.jsonl.gz unread (its rows "cannot be counted offline", as a hub dataset's), and passed a
    row that preprocess and train refuse."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps(["c", "d"]) + "\n")
    path = _compressed(rows, compression) if compression else rows
    status, output = _validate_output(tiny_config(datasets=[{"path": str(path), "type": "alpaca"}]))
    assert status == 1
    assert f"{path}: row 2: must be an object, got list" in output  # the data pipeline's own message


def test_validate_names_a_compressed_file_that_cannot_be_decompressed_and_the_config(tiny_config, tmp_path):
    """Counting the rows found it first, and said "Invalid config:" without the config's path, as no other error."""
    cut = tmp_path / "rows.jsonl.gz"
    cut.write_bytes(b'{"instruction": "a", "output": "b"}\n')  # not compressed
    config = tiny_config(datasets=[{"path": str(cut), "type": "alpaca"}])
    status, output = _validate_output(config)
    assert status == 1
    assert f"Invalid config {config}: - {cut}: cannot be read: BadGzipFile: Not a gzipped file" in output


def test_validate_warns_of_what_train_would_refuse_on_this_machine(tiny_config):
    """tf32 and a paged optimizer passed `validate` and then stopped `train` on this machine (no CUDA). A warning,
    not a refusal: a config is often checked on one machine and trained on another."""
    config = tiny_config(tf32=True, optimizer="paged_adamw_8bit")
    status, output = _validate_output(config)
    said = " ".join(output.split())
    assert status == 0, output
    assert "on this machine, train would stop: tf32: true needs an Ampere-or-newer CUDA GPU" in said
    assert "on this machine, train would stop: optimizer: paged_adamw_8bit pages its state through CUDA" in said
    with pytest.raises(ConfigError, match="tf32: true needs"):
        train(load_config(config), cpu_fallback=True)
    assert "on this machine" not in _validate_output(tiny_config())[1]
    # beside a config error too: it was said alone, and train then stopped on the optimizer (one fix per run)
    bad = tiny_config(optimizer="paged_adamw_8bit", special_tokens={"bos_token": ">>ABSTRACT<<"})
    status, output = _validate_output(bad)
    said = " ".join(output.split())
    assert status == 1 and "special_tokens.bos_token: '>>ABSTRACT<<' is a new token here" in said, output
    assert "on this machine, train would stop: optimizer: paged_adamw_8bit pages its state through CUDA" in said


def test_validate_says_an_attention_train_would_replace_once_as_a_warning_of_this_machine(tiny_config, caplog):
    """The fallback came out as a bare log line (`LOG.warning`, logging unconfigured), not as one of validate's
    warnings; with strict: true it is a refusal, said once too (xformers: no machine runs it, a GPU one neither)."""
    said = "attention xformers: axolotl patches in the xformers kernel, which transformers has no attention for"
    with caplog.at_level(logging.WARNING):
        status, output = _validate_output(tiny_config(xformers_attention=True))
    assert status == 0 and output.count(said) == 1, output
    assert f"Warning: on this machine, train would substitute: {said}; using the default attention" in output
    assert not caplog.records
    status, output = _validate_output(tiny_config(xformers_attention=True, strict=True))
    assert status == 0 and output.count(said) == 1, output
    assert f"Warning: on this machine, train would stop: {said}; strict: true does not substitute" in output
    assert not caplog.records


@pytest.mark.parametrize("checkpoint", ["missing", "incomplete"])
def test_validate_refuses_a_resume_from_checkpoint_train_would_refuse(tiny_config, tmp_path, checkpoint):
    folder = tmp_path / "checkpoint-5"
    if checkpoint == "incomplete":
        folder.mkdir()  # no trainer_state.json: killed while being written
    config = tiny_config(resume_from_checkpoint=str(folder))
    status, output = _validate_output(config)
    said = " ".join(output.split())
    why = "no such folder" if checkpoint == "missing" else "is not a complete Trainer checkpoint"
    assert status == 1 and f"resume_from_checkpoint: {folder}" in said and why in said, output
    with pytest.raises(ConfigError, match=why):
        train(load_config(config))


def test_a_wandb_project_without_wandb_is_a_warning_not_a_refusal(tiny_config, caplog):
    """axolotl installs wandb, so its configs name projects (phi3-ft.yml): validate said nothing and `train` then
    refused the config. Now both say it, and train logs to TensorBoard alone."""
    assert importlib.util.find_spec("wandb") is None  # the project's environment does not install it
    config = tiny_config(wandb_project="phi3", max_steps=1)
    status, output = _validate_output(config)
    note = "wandb_project: 'phi3' is set, but the wandb package is not installed: no W&B logging"
    assert status == 0 and note in " ".join(output.split()), output
    with caplog.at_level(logging.WARNING):
        out = train(load_config(config))
    assert note in caplog.text and (out / "adapter_config.json").is_file() and any((out / "runs").iterdir())


def test_validate_reports_a_tokenizer_larger_than_the_embeddings(tiny_config, make_tiny_model, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = make_tiny_model(LlamaConfig, LlamaForCausalLM, vocab_size=len(tokenizer) - 100)
    status, output = _validate_output(tiny_config(base_model=str(base)))
    assert status == 1
    assert (
        f"base_model: the tokenizer has {len(tokenizer):,} tokens but the model has {len(tokenizer) - 100:,}" in output
    )


def test_validate_accepts_a_tokenizer_smaller_than_the_embeddings(tiny_config, make_tiny_model, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = make_tiny_model(LlamaConfig, LlamaForCausalLM, vocab_size=len(tokenizer) + 64)  # padded rows, as Qwen's
    status, output = _validate_output(tiny_config(base_model=str(base)))
    assert status == 0, output


def test_a_lora_target_modules_string_with_regex_syntax_is_peft_s_regex_over_full_names():
    """axolotl hands a string to peft, which matches it whole against full module names (axolotl's Mistral-Small
    example); it was read as one module name and refused as matching none."""
    pattern = r"model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj"
    p = plan(team("Mistral-01", {"lora_target_modules": pattern, "lora_target_linear": False}))
    assert len(p.target_modules) == 7 * p.shape.num_layers
    assert "model.layers.0.self_attn.q_proj" in p.target_modules and "lm_head" not in p.target_modules
    only = {"lora_target_modules": r"model\.layers\.[0-9]+\.self_attn\.(q|v)_proj", "lora_target_linear": False}
    attention = plan(team("Mistral-01", only))
    assert attention.trainable_params < p.trainable_params
    name = {"lora_target_modules": "q_proj", "lora_target_linear": False}
    assert plan(team("Mistral-01", name)).target_modules == ["q_proj"]  # a name alone
    with pytest.raises(ConfigError, match=r"regular expression '\.\*attn.*qq_proj' matches no module of Mistral"):
        plan(team("Mistral-01", {"lora_target_modules": r".*attn\.qq_proj", "lora_target_linear": False}))
    with pytest.raises(ConfigError, match=r"lora_target_modules: .*'q_proj\(' is not a regular expression"):
        team("Mistral-01", {"lora_target_modules": "q_proj("})


def test_validate_prints_brackets_in_paths_keys_and_errors_as_written(tiny_config, tiny_model_dir, tmp_path):
    """Rich read `[ir]` in `we[ir]d.yml` as markup and dropped it: the file, an unknown key and a YAML error's
    snippet lost their brackets."""
    weird = tiny_config(**{"foo[bar]": 1}).rename(tmp_path / "we[ir]d.yml")
    wide = {"COLUMNS": "400"}
    planned = CliRunner().invoke(app, ["validate", str(weird)], env=wide)
    assert planned.exit_code == 0, planned.output
    assert f"Training plan: {weird}" in planned.output and "foo[bar]=1: unknown key" in planned.output
    weird.write_text(f"base_model: {tiny_model_dir}\nfoo[bar]: [1\n")
    unreadable = CliRunner().invoke(app, ["validate", str(weird)], env=wide)
    assert unreadable.exit_code == 1
    assert f"{weird}" in unreadable.output and "foo[bar]: [1" in unreadable.output


@pytest.mark.parametrize(
    ("rl", "dataset_type", "adapter", "per_token"),
    [
        ("dpo", "chatml.intel", "lora", 1 + 1 / 2),  # the reference over both answers: one pass a trained sequence
        ("ipo", "chatml.intel", "lora", 1 + 1 / 2),
        ("kto", "chatml.prompt_pairs", "lora", 1 + 3 / 2),  # the KL pass, and the reference over the row and KL
        ("orpo", "chat_template.argilla", "lora", 1),  # no reference model, no KL
        ("simpo", "chatml.intel", "lora", 1),
        ("dpo", "chatml.intel", None, 1 + 1 / 3),  # a full fine-tune's step also computes the weights' gradients
        ("kto", "chatml.prompt_pairs", None, 1 + 3 / 3),
    ],
)
def test_the_projection_counts_the_passes_without_gradients(make_cfg, rl, dataset_type, adapter, per_token):
    """Against an SFT run of the same settings, a preference run's projected seconds per trained token grow by its
    forward passes without gradients (TRL's reference passes, KTO's KL pass), each half an adapter step's FLOPs (a
    third of a full fine-tune's): KTO's projection counted its row once, as if KTOTrainer ran nothing else, and
    DPO's left out its reference."""
    keys = {"micro_batch_size": 2, "max_steps": 10, "sequence_len": 256, "adapter": adapter}
    keys |= {"lora_target_linear": True} if adapter else {}
    sft = plan(make_cfg(**keys), world_size=1)
    rl_keys = {"rl": rl, "simpo_gamma": 0.5} if rl == "simpo" else {"rl": rl}
    preference = plan(make_cfg([{"path": "unused.jsonl", "type": dataset_type}], **rl_keys, **keys), world_size=1)
    pairs = 1 if rl == "kto" else 2  # the tokens trained: chosen and rejected, or KTO's one answer
    assert preference.tokens == sft.tokens * pairs
    for before, now in zip(sft.training_time, preference.training_time, strict=True):
        assert now.projected_s / now.tokens == pytest.approx(before.projected_s / before.tokens * per_token)
        assert ("forward-only" in now.sentence()) == (per_token != 1), now.sentence()
