"""axolotl keys that change what is trained, honoured on a tiny random Llama: checkpoint cadence per epoch,
checkpointing with CPU offload, attention, optimizers and their packages, LoRA options, LoRA+, full-fine-tune
freezing, added tokens, config overrides, and the trainer settings the other keys become."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, Trainer

from llmkit.config.plan import logging_steps, warmup_steps
from llmkit.config.schema import ConfigError, load_config
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.modeling import attn_implementation, build_peft_model, load_base_model
from llmkit.train.optimizers import loraplus_optimizer, optimizer_for_machine
from llmkit.train.run import train, training_arguments

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA says")


def _checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(path.name.removeprefix("checkpoint-")) for path in out.glob("checkpoint-*"))


def test_saves_per_epoch_checkpoints_at_fractions_of_each_epoch(tiny_config):
    # 24 rows in batches of 4: 6 steps per epoch, 12 in all; 2 saves per epoch -> every 3 steps
    out = train(load_config(tiny_config(max_steps=None, num_epochs=2, saves_per_epoch=2)))
    assert _checkpoint_steps(out) == [3, 6, 9, 12]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloads GPU activations to pinned CPU memory")
def test_offload_checkpointing_trains_the_same_weights_as_plain_checkpointing(tiny_config, tmp_path):
    runs = {}
    for mode in (True, "offload"):
        cfg = load_config(tiny_config(gradient_checkpointing=mode, output_dir=str(tmp_path / f"out-{mode}")))
        checkpointing = training_arguments(cfg, "adamw_torch").activation_checkpointing_kwargs
        assert checkpointing == (
            {"use_reentrant": False, "offload": True} if mode == "offload" else {"use_reentrant": False}
        )
        runs[mode] = load_file(train(cfg) / "adapter_model.safetensors")
    assert runs[True].keys() == runs["offload"].keys()
    assert all(torch.allclose(runs[True][name], runs["offload"][name]) for name in runs[True])


@CPU_ONLY
def test_offload_on_the_cpu_is_plain_checkpointing(tiny_config, caplog):
    cfg = load_config(tiny_config(gradient_checkpointing="unsloth"))
    with caplog.at_level(logging.INFO):
        args = training_arguments(cfg, "adamw_torch")
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert "gradient_checkpointing: unsloth: the activations are in CPU memory already" in caplog.text


@CPU_ONLY
def test_attention_this_machine_lacks_is_said_and_replaced_or_refused(tiny_config, caplog):
    cfg = load_config(tiny_config(attn_implementation="flash_attention_2"))
    with caplog.at_level(logging.WARNING):
        assert attn_implementation(cfg) is None
    assert "attention flash_attention_2: needs a CUDA GPU, which this machine lacks; using the default" in caplog.text
    with pytest.raises(ConfigError, match="strict: true does not substitute another attention"):
        attn_implementation(load_config(tiny_config(attn_implementation="flash_attention_2", strict=True)))
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # gpt-oss's examples: a hub kernel, and flash_attention: true ignored
        kernel = load_config(
            tiny_config(attn_implementation="kernels-community/vllm-flash-attn3", flash_attention=True)
        )
        assert attn_implementation(kernel) is None
    assert "a hub attention kernel runs on a GPU, and this machine has no CUDA GPU; using the default" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert attn_implementation(load_config(tiny_config(xformers_attention=True))) is None
    assert "which transformers has no attention for" in caplog.text


@pytest.mark.parametrize("keys", [{"eager_attention": True}, {"attention": "sdpa"}])
def test_attention_the_machine_has_is_what_the_model_runs(tiny_config, keys):
    model = load_base_model(load_config(tiny_config(**keys)), for_training=False)
    assert model.config._attn_implementation == ("eager" if "eager_attention" in keys else "sdpa")


@pytest.mark.parametrize(
    ("optimizer", "module", "install", "nearest"),
    [
        ("adamw_torch_4bit", "torchao", "pip install torchao", "adamw_bnb_8bit"),
        ("schedule_free_adamw", "schedulefree", "pip install schedulefree", "adamw_torch"),
        ("galore_adamw", "galore_torch", "pip install galore-torch", "adamw_torch"),
    ],
)
def test_an_optimizer_whose_package_is_missing_names_it_and_the_nearest(
    tiny_config, optimizer, module, install, nearest
):
    if importlib.util.find_spec(module):
        pytest.skip(f"{module} is installed here")
    cfg = load_config(tiny_config(optimizer=optimizer))
    with pytest.raises(
        ConfigError, match=rf"optimizer: {optimizer} .*needs .*\({install}\).*set optimizer: {nearest}"
    ):
        optimizer_for_machine(cfg)


def test_an_axolotl_optimizer_alias_whose_package_is_missing_names_both_names(tiny_config):
    if importlib.util.find_spec("torchao"):
        pytest.skip("torchao is installed here")
    cfg = load_config(tiny_config(optimizer="ao_adamw_8bit"))
    with pytest.raises(ConfigError, match=r"optimizer: adamw_torch_8bit \(axolotl's ao_adamw_8bit\) needs .*torchao"):
        optimizer_for_machine(cfg)


def test_lora_options_reach_peft(tiny_config):
    cfg = load_config(tiny_config(peft_layers_to_transform=1, peft_init_lora_weights="gaussian", lora_dropout=0.2))
    model = build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))
    wrapped = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert wrapped and all(".layers.1." in name for name in wrapped)
    assert model.peft_config["default"].init_lora_weights == "gaussian"
    assert model.peft_config["default"].lora_dropout == 0.2


def test_lora_model_dir_continues_a_trained_adapter(tiny_config, tmp_path):
    first = train(load_config(tiny_config(output_dir=str(tmp_path / "first"))))
    cfg = load_config(tiny_config(lora_model_dir=str(first), lora_r=16, output_dir=str(tmp_path / "second")))
    model = build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))
    trained = load_file(first / "adapter_model.safetensors")
    loaded = {name.replace(".default", ""): value for name, value in model.state_dict().items() if "lora_" in name}
    assert loaded.keys() == trained.keys() and model.peft_config["default"].r == 4  # the adapter's own rank
    assert all(torch.equal(loaded[name], trained[name].to(loaded[name].dtype)) for name in trained)
    assert any(param.requires_grad for param in model.parameters())


def test_a_lora_model_dir_trained_on_another_model_is_the_configs_error_in_train(
    tiny_config, tiny_model_dir, tmp_path
):
    """An adapter whose weights peft put nowhere (trained on a deeper model) was trained on from its fresh
    initialisation, silently; one whose target modules the base lacks ended train in peft's traceback."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from llmkit.cli import app

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "deeper")
    weights = tmp_path / "deeper" / "adapter_model.safetensors"  # as if trained on a base with 8 layers
    save_file({name.replace("layers.1.", "layers.7."): t for name, t in load_file(weights).items()}, weights)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "gpt2")
    config = json.loads((tmp_path / "gpt2" / "adapter_config.json").read_text())  # as trained on GPT-2
    (tmp_path / "gpt2" / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["c_attn"]}))
    says = {
        "deeper": f"lora_model_dir: Adapter {tmp_path / 'deeper'} does not fit base model {tiny_model_dir}: its "
        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight (and 1 more LoRA weights) has no place",
        "gpt2": f"lora_model_dir: Adapter {tmp_path / 'gpt2'} does not fit base model {tiny_model_dir}: Target "
        "modules {'c_attn'} not found in the base model",
    }
    for name, message in says.items():
        result = CliRunner().invoke(app, ["train", str(tiny_config(lora_model_dir=str(tmp_path / name)))])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (name, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_loraplus_gives_the_b_matrices_the_higher_learning_rate(tiny_config):
    cfg = load_config(tiny_config(loraplus_lr_ratio=16))
    model = build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))
    optimizer = loraplus_optimizer(Trainer(model=model, args=training_arguments(cfg, "adamw_torch")), cfg)
    lr_of = {id(param): group["lr"] for group in optimizer.param_groups for param in group["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert lr_of[id(param)] == pytest.approx(1e-3 * (16 if "lora_B" in name else 1)), name


def test_unfrozen_parameters_train_only_the_matching_weights(tiny_config, tiny_model_dir):
    out = train(load_config(tiny_config(adapter="none", unfrozen_parameters=[r"model\.layers\.1\."])))
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))}
    assert changed and all(name.startswith("model.layers.1.") for name in changed)


def test_an_unfrozen_row_range_trains_only_those_rows(tiny_config, tiny_model_dir):
    # axolotl's `name$[start:end]`: the tensor is trained, but a hook zeroes the other rows' gradient.
    cfg = load_config(tiny_config(adapter="none", unfrozen_parameters=["^model.embed_tokens.weight$[5:9]"]))
    out = train(cfg)
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))}
    assert changed == {"model.embed_tokens.weight"}
    rows = (before["model.embed_tokens.weight"] != after["model.embed_tokens.weight"].float()).any(dim=1)
    assert rows.any() and set(rows.nonzero().flatten().tolist()) <= {5, 6, 7, 8}
    with pytest.raises(ConfigError, match=r"\[99999:\]: model.embed_tokens.weight has 49152 rows"):
        load_base_model_with_patterns(tiny_config, ["^model.embed_tokens.weight$[99999:]"])


def load_base_model_with_patterns(tiny_config, patterns: list[str]):
    cfg = load_config(tiny_config(adapter="none", unfrozen_parameters=patterns))
    return build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))


def test_a_full_fine_tune_under_bf16_trains_bfloat16_weights_as_axolotl_does(tiny_config):
    cfg = load_config(tiny_config(adapter="none", bf16=True))
    assert cfg.weights_dtype() == "bfloat16" and load_base_model(cfg).dtype == torch.bfloat16
    assert load_config(tiny_config(adapter="none", fp16=True)).weights_dtype() == "float32"  # fp16: float32 masters


def test_added_tokens_get_trained_embeddings(tiny_config):
    keys = {"tokens": ["<sum>"], "lora_modules_to_save": ["embed_tokens", "lm_head"]}
    out = train(load_config(tiny_config(**keys)))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<sum>") == len(tokenizer) - 1
    embeddings = [
        value for name, value in load_file(out / "adapter_model.safetensors").items() if "embed_tokens" in name
    ]
    assert embeddings and embeddings[0].shape[0] == len(tokenizer)


def test_a_new_special_token_under_an_adapter_needs_its_embeddings_trained(tiny_config):
    """axolotl refuses it; it was accepted, and the run trained toward a new EOS whose embedding and head rows no
    step could change (the merged model then stopped on an id it hardly ever emits)."""
    new_eos = {"special_tokens": {"eos_token": "</s>"}}  # three pieces in this tokenizer: a new token
    with pytest.raises(ConfigError, match=r"special_tokens.eos_token: '</s>' is a new token here, whose embedding"):
        load_tokenizer(load_config(tiny_config(**new_eos)))
    trained = load_tokenizer(load_config(tiny_config(**new_eos, lora_modules_to_save=["embed_tokens", "lm_head"])))
    assert trained.eos_token == "</s>"
    assert load_tokenizer(load_config(tiny_config(special_tokens={"pad_token": "<pad>"}))).pad_token == "<pad>"
    assert load_tokenizer(load_config(tiny_config(**new_eos, adapter="none"))).eos_token == "</s>"  # all trained


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_eot_tokens_end_generation_of_the_published_adapter_or_model(tiny_config, adapter):
    """A run with eot_tokens publishes the base's generation config that also ends at them: the adapter served
    unmerged, or the fully fine-tuned folder, stops where training taught it (only a merge wrote it before)."""
    turn_end = "<|im_start|>"  # a special token of this tokenizer that is not its EOS
    out = train(load_config(tiny_config(adapter=adapter, eot_tokens=[turn_end], max_steps=1)))
    tokenizer = AutoTokenizer.from_pretrained(out)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(turn_end)]
    if adapter == "lora":
        plain = train(load_config(tiny_config(max_steps=1, output_dir=str(out.parent / "plain"))))
        assert not (plain / "generation_config.json").exists()  # the base's applies as it is


def test_rope_scaling_and_config_overrides_reach_the_model(tiny_config):
    keys = {"rope_scaling": {"type": "linear", "factor": 2.0}, "model_config": {"attention_dropout": 0.1}}
    model = load_base_model(load_config(tiny_config(**keys)), for_training=False)
    rope = model.config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["rope_theta"]) == ("linear", 2.0, 10000.0)
    assert model.config.attention_dropout == 0.1


def test_the_plan_sizes_the_model_with_its_config_overrides(tiny_config):
    """The plan sized the base from its config.json alone: num_hidden_layers: 1 trained a 1-layer model while
    validate counted (and budgeted memory for) both layers."""
    from llmkit.config.plan import plan

    cfg = load_config(tiny_config(overrides_of_model_config={"num_hidden_layers": 1}))
    planned = plan(cfg)
    model = build_peft_model(cfg, load_base_model(cfg), load_tokenizer(cfg))
    assert planned.shape.num_layers == model.config.num_hidden_layers == 1
    assert planned.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert planned.total_params == sum(p.numel() for p in model.base_model.model.parameters() if not p.requires_grad)


def test_an_override_the_model_config_cannot_take_is_one_line_naming_it(tiny_config):
    """train stopped on a StrictDataclassFieldValidationError traceback (hidden_size: big), a ZeroDivisionError
    (num_attention_heads: 0) or peft's NoMatchingPeftModuleError (num_hidden_layers: -5: a model of no layers);
    validate passed them all, the check being train's alone."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    says = {
        "hidden_size": ("big", "'big': a size or count, 64 in the model's config.json; give a whole number above 0"),
        "num_hidden_layers": (-5, "-5: a size or count, 2 in the model's config.json; give a whole number above 0"),
        "rms_norm_eps": ("x", "'x': TypeError: Field 'rms_norm_eps' expected float, got str (value: 'x')"),
    }
    for key, (value, said) in says.items():
        config = tiny_config(overrides_of_model_config={key: value})
        for command in ("validate", "train"):
            result = CliRunner().invoke(app, [command, str(config)])
            assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
            assert result.output.splitlines()[-1] == f"  - overrides_of_model_config.{key}: {said}", result.output


def test_a_sequence_len_over_a_learned_position_table_is_one_line_in_validate_and_train(
    tiny_config, tiny_family_dir, tiny_model_dir
):
    """GPT-2's positions are a table of n_positions rows: sequence_len 2048 over its 1,024 passed validate, and
    train stopped on torch's IndexError (index out of range in self) once a packed sequence passed the table."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.config.plan import base_shape

    gpt2 = tiny_family_dir("gpt2")
    config = tiny_config(base_model=str(gpt2), sequence_len=2048, sample_packing=True)
    said = (
        "  - sequence_len: 2048 is over the 1024 positions of GPT2LMHeadModel's learned position table "
        "(max_position_embeddings): no sequence can be longer; write sequence_len: 1024 or less"
    )
    for command in ("validate", "train"):
        result = CliRunner().invoke(app, [command, str(config)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert said in result.output.splitlines(), result.output
    assert base_shape(load_config(tiny_config(base_model=str(gpt2), sequence_len=1024)), None)[0].learned_positions
    # within the table it trains, and the plan says what the 1,024 positions mean for HELM's 2,048-token prompts
    fits = CliRunner().invoke(app, ["validate", str(tiny_config(base_model=str(gpt2), sequence_len=1024))])
    said = " ".join(fits.output.replace("│", " ").split())
    assert fits.exit_code == 0, fits.output
    assert "the model has 1,024 (max_position_embeddings), fewer than the challenge's 2,048-token prompt" in said
    assert "fewer than the challenge's" not in CliRunner().invoke(app, ["validate", str(tiny_config())]).output
    llama = load_config(tiny_config(sequence_len=4096))  # rotary positions: no table to pass (2048 in its config)
    assert base_shape(llama, None)[0].learned_positions is None


def test_trainer_settings_the_keys_become(tiny_config):
    keys = {
        "noisy_embedding_alpha": 5,
        "cosine_min_lr_ratio": 0.1,
        "adam_beta2": 0.95,
        "optim_args": {"foo": 1},
        "group_by_length": True,
        "val_set_size": 0.25,
        "evals_per_epoch": 2,
        "saves_per_epoch": 2,
        "early_stopping_patience": 2,
    }
    cfg = load_config(tiny_config(**keys))
    args = training_arguments(cfg, "adamw_torch")
    assert (args.neftune_noise_alpha, args.lr_scheduler_type.value, args.lr_scheduler_kwargs) == (
        5,
        "cosine_with_min_lr",
        {"min_lr_rate": 0.1},
    )
    assert (args.adam_beta2, args.optim_args, args.train_sampling_strategy) == (0.95, "foo=1", "group_by_length")
    assert (args.load_best_model_at_end, args.metric_for_best_model) == (True, "eval_loss")
    assert (args.save_steps, args.eval_steps) == (0.5, 0.5)  # 1 / (2 per epoch x 1 epoch) of the run
    accumulated = training_arguments(load_config(tiny_config(gradient_accumulation_steps=3)), "sgd")
    assert accumulated.gradient_accumulation_steps == 3
    mismatched = tiny_config(**{**keys, "saves_per_epoch": None, "save_steps": 3, "evals_per_epoch": 3})
    with pytest.raises(ConfigError, match="save_steps: 3 and evals_per_epoch: 3 mix a fraction of the run"):
        load_config(mismatched)  # at load, naming the keys: transformers' rule, which training_arguments met late


@pytest.mark.parametrize(
    ("keys", "total", "expected"),
    [
        ({}, 1000, 30),  # axolotl: 3% of the run when neither key is set,
        ({}, 10_000, 100),  # at most 100 steps,
        ({}, 40, 2),  # and 1 step becomes 2
        ({}, 20, 0),
        ({"warmup_ratio": 0.1}, 125, 12),  # a ratio of the run, rounded down
        ({"warmup_steps": 7}, 1000, 7),
    ],
)
def test_warmup_is_axolotls(tiny_config, keys, total, expected):
    assert warmup_steps(load_config(tiny_config(**keys)), total) == expected


@pytest.mark.parametrize(
    ("keys", "total", "expected"),
    [({"logging_steps": None}, 30, 1), ({"logging_steps": None}, 1000, 5), ({"logging_steps": None}, 10_000, 10)]
    + [({"logging_steps": 3}, 10_000, 3)],  # axolotl: 0.5% of the run, 1 to 10, unless given
)
def test_logging_cadence_is_axolotls(tiny_config, keys, total, expected):
    assert logging_steps(load_config(tiny_config(**keys)), total) == expected


def test_training_warms_up_as_axolotl_when_no_warmup_is_set(tiny_config):
    """No warmup key: axolotl warms up over 3% of the run (2 of these 40 steps); this project did none."""
    out = train(load_config(tiny_config(max_steps=40, lr_scheduler="constant_with_warmup", logging_steps=1)))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    assert rates[:3] == pytest.approx([0.0, 0.5e-3, 1e-3])  # learning_rate 1e-3, reached after 2 warmup steps


@CPU_ONLY
def test_loftq_needs_a_cuda_gpu(tiny_config):
    cfg = load_config(tiny_config(peft={"loftq_config": {"loftq_bits": 4}}))
    with pytest.raises(ConfigError, match="peft.loftq_config: peft's LoftQ needs"):
        train(cfg)  # before the data is prepared or the base loaded
    assert not Path(cfg.output_dir).exists()


def test_the_resolved_config_of_a_run_with_new_keys_reloads(tiny_config):
    """It also says the warmup and logging cadence that ran: warmup_steps: 1 ran as axolotl's 2, and no
    logging_steps as axolotl's every step on a short run (this project logged every 10th)."""
    keys = {"noisy_embedding_alpha": 5, "gradient_checkpointing": "offload", "attention": "eager"}
    keys |= {"warmup_steps": 1, "logging_steps": None}
    out = train(load_config(tiny_config(**keys)))
    resolved = load_config(out / "config.resolved.yml")
    assert (resolved.neftune_alpha, resolved.gradient_checkpointing, resolved.attention_implementation) == (
        5,
        "offload",
        "eager",
    )
    assert (resolved.warmup_steps, resolved.logging_steps) == (2, 1)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["logging_steps"] == 1


def test_the_resolved_config_keeps_modules_to_save_as_written_on_a_tied_model(tiny_config, make_tiny_model):
    """peft edits the modules_to_save list it gets when it ties embeddings; the config's own list stays as written,
    so config.resolved.yml says what ran and a rerun is the same run."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = make_tiny_model(LlamaConfig, LlamaForCausalLM, tie_word_embeddings=True)
    keys = {"base_model": str(tied), "tokens": ["<sum>"], "lora_modules_to_save": ["embed_tokens", "lm_head"]}
    path = tiny_config(**keys)
    out = train(load_config(path))
    assert load_config(out / "config.resolved.yml").lora_modules_to_save == ["embed_tokens", "lm_head"]
    assert train(load_config(path)) == out  # the same run: finds itself complete instead of refusing a changed config


def test_a_lora_model_dir_the_hub_cannot_give_is_the_configs_error_in_train(tiny_config, monkeypatch):
    """`outs/missing` (a run's folder not made yet, shaped like a hub id) went to peft, which died in a traceback of
    LocalEntryNotFoundError and "Can't find 'adapter_config.json' at 'outs/missing'"."""
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from llmkit.cli import app

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = CliRunner().invoke(app, ["train", str(tiny_config(lora_model_dir="outs/missing"))])
    says = "lora_model_dir: outs/missing: no folder here, and the hub cannot give it as a hub id"
    assert result.exit_code == 1 and says in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.slow  # the hub client waits 23 s between its tries, as it would offline
def test_a_lora_model_dir_the_hub_cannot_be_reached_for_is_one_line_in_train(tiny_config, caplog, monkeypatch):
    """Offline without HF_HUB_OFFLINE, the hub's client warned of each of its 6 tries and each wait between them
    (12 warnings, each twice: its own handler and the root's) before the config's one-line error."""
    import socket

    from huggingface_hub import constants
    from typer.testing import CliRunner

    from llmkit.cli import app

    with socket.socket() as closed:  # a port nothing listens on: the connection is refused, as with no network
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    caplog.set_level("WARNING")
    result = CliRunner().invoke(app, ["train", str(tiny_config(lora_model_dir="outs/missing"))])
    says = "lora_model_dir: outs/missing: no folder here, and the hub cannot give it as a hub id: "
    assert result.exit_code == 1 and says in result.output, result.output
    assert not [record for record in caplog.records if record.name.startswith("huggingface_hub")], caplog.text
    error = result.output[result.output.index(says) :]
    assert error.count("\n") == 1 and "6 tries, the last: " in error and "/outs/missing/" in error, error


def test_a_hub_repo_that_cannot_be_made_names_hub_model_id(tiny_config, monkeypatch):
    """Offline (or with no network, or no login), a config with hub_model_id stopped after loading the model with
    huggingface_hub's own message, which named no key."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="hub_model_id: someone/x: the hub repo cannot be reached or made"):
        train(load_config(tiny_config(hub_model_id="someone/x")))


def test_a_lora_model_dir_that_is_not_here_is_the_configs_error_in_validate_and_train(
    tiny_config, tiny_model_dir, tmp_path, monkeypatch
):
    """validate passed a lora_model_dir that is not there, or a folder with an adapter's config but no weights; train
    then died in peft's traceback ("Can't find 'adapter_config.json'", or HFValidationError for a `~` path, which
    also went to peft unexpanded, or for the folder without weights)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from llmkit.cli import app

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "config-only").mkdir()  # peft took it for a hub id, in a traceback of 388 lines
    (tmp_path / "config-only" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (tmp_path / "cut").mkdir()  # a copy interrupted: train stopped in safetensors' traceback, naming no file
    (tmp_path / "cut" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (tmp_path / "cut" / "adapter_model.safetensors").write_bytes(b"")
    says = {
        str(tmp_path / "cut"): f"lora_model_dir: {tmp_path / 'cut' / 'adapter_model.safetensors'} cannot be read as "
        "safetensors (empty or cut short?)",
        "./no-such": "lora_model_dir: ./no-such: no such folder here, and not a hub id (owner/name)",
        "~/runs/a": f"lora_model_dir: {tmp_path / 'home' / 'runs' / 'a'}: no such folder here, and not a hub id",
        str(tmp_path / "notes"): f"lora_model_dir: {tmp_path / 'notes'} holds no adapter_config.json",
        str(tmp_path / "config-only"): f"lora_model_dir: {tmp_path / 'config-only'} holds no adapter_model.safet",
    }
    for value, message in says.items():
        for command in ("validate", "train"):
            result = CliRunner().invoke(app, [command, str(tiny_config(lora_model_dir=value))])
            assert result.exit_code == 1 and message in result.output, (command, result.output)
            assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    hub = CliRunner().invoke(app, ["validate", str(tiny_config(lora_model_dir="someone/their-adapter"))])
    assert hub.exit_code == 0, hub.output  # axolotl takes a hub id: peft downloads it when training starts
    assert "lora_model_dir: someone/their-adapter: no folder here, so train loads it from the hub" in hub.output

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "home" / "stage1")
    result = CliRunner().invoke(app, ["train", str(tiny_config(lora_model_dir="~/stage1"))])
    assert result.exit_code == 0, result.output
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out")
    assert trained.peft_config["default"].r == 4 and trained.peft_config["default"].target_modules == {"q_proj"}


def test_eval_sample_packing_false_evaluates_rows_unpacked_while_training_packs(tiny_config):
    """axolotl's mistral full fine-tune example packs training (sample_packing: true) and sets eval_sample_packing:
    false; it was ignored as "left empty or false, no effect either way", and the evaluation rows were packed."""
    import yaml

    from llmkit.data.pipeline import build_datasets

    real = yaml.safe_load((Path(__file__).parents[1] / "config" / "real_world" / "mistral-7b-full.yml").read_text())
    keys = {key: real[key] for key in ("sample_packing", "eval_sample_packing")}
    assert keys == {"sample_packing": True, "eval_sample_packing": False}
    cfg = load_config(tiny_config(**keys, val_set_size=0.25, eval_steps=1))
    assert "eval_sample_packing" not in [key.path for key in cfg.ignored_keys]
    data = build_datasets(cfg, load_tokenizer(cfg))
    assert "position_ids" in data.train.column_names and "position_ids" not in data.eval.column_names
    assert len(data.eval) == 6  # one row per sequence: a quarter of the 24 rows
    packed = build_datasets(load_config(tiny_config(sample_packing=True, val_set_size=0.25)), load_tokenizer(cfg))
    assert "position_ids" in packed.eval.column_names  # axolotl's default: as training
    out = train(cfg)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [entry["eval_loss"] for entry in history if "eval_loss" in entry]  # the unpacked rows evaluated
