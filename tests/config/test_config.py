"""The config schema: every shipped YAML loads, the team's values survive, and bad input names its key path."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.keys import markdown_table
from llmkit.config.schema import AxolotlConfig, ConfigError, ConfigWarning, duplicate_keys, load_config
from llmkit.core.errors import short_repr

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("axolotl_configs/**/*.yml"), *ROOT.glob("axolotl_configs/**/*.yaml")])
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
# The team's configs as docs/axolotl.md lists them:
# base, model_type, seq, r, alpha, listed targets, micro, accum, epochs, warmup, optimizer, lr
L7, L13, M7 = "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "mistralai/Mistral-7B-v0.1"
LL, ML, P32, B8 = "LlamaForCausalLM", "MistralForCausalLM", "paged_adamw_32bit", "adamw_bnb_8bit"
TEAM = {
    "Llama-2-7b-03": (L7, LL, 4096, 16, 16, MLP, 1, 16, 2, 100, P32, 4e-4),
    "Llama-2-13b-01": (L13, LL, 4096, 16, 16, MLP, 1, 2, 1, 100, P32, 4e-4),
    "Llama-2-13b-02": (L13, LL, 4096, 64, 64, MLP, 2, 4, 1, 300, P32, 4e-4),
    "Mistral-01": (M7, ML, 8192, 32, 16, ALL_LINEAR, 2, 4, 3, 300, P32, 4e-4),
    "Mistral-02": (M7, ML, 8192, 32, 16, MLP, 2, 4, 3, 300, B8, 4e-4),
    "Mistral-03": (M7, ML, 8192, 64, 32, MLP, 4, 8, 3, 300, B8, 3e-4),
}
REAL_WORLD = Path(__file__).parent / "real_world"  # users' configs, as written (the corpus of test_real_world_configs)
MINIMAL = """\
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
adapter: qlora
load_in_4bit: true
lora_target_linear: true
datasets:
  - path: onuralp/open-otter
    type: alpaca
learning_rate: 0.0002
"""


def write(tmp_path: Path, text: str, name: str = "run.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_quietly(path: Path, overrides: dict | None = None) -> AxolotlConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return load_config(path, overrides)


def error_of(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_quietly(path, overrides)
    assert str(path) in str(info.value)  # every error names the file
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path):
    cfg = load_quietly(path)
    assert cfg.base_model and cfg.datasets and cfg.learning_rate > 0
    assert cfg.source == path


def test_the_six_team_configs_are_shipped_with_their_values():
    assert set(TEAM) <= {path.stem for path in SHIPPED}
    for name, (base, model_type, seq, r, alpha, listed, micro, accum, epochs, warmup, optim, lr) in TEAM.items():
        cfg = load_quietly(ROOT / "axolotl_configs" / f"{name}.yml")
        got = (cfg.base_model, cfg.model_type, cfg.sequence_len, cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules)
        assert got == (base, model_type, seq, r, alpha, listed), name
        got = (cfg.micro_batch_size, cfg.gradient_accumulation_steps, cfg.num_epochs, cfg.warmup_steps)
        assert got == (micro, accum, epochs, warmup), name
        assert (cfg.optimizer.value, cfg.learning_rate) == (optim, lr), name
        assert cfg.adapter.value == "qlora" and cfg.load_in_4bit and cfg.lora_target_linear and cfg.bf16 is True
        assert (cfg.lora_dropout, cfg.val_set_size, cfg.lr_scheduler.value, cfg.weight_decay) == (
            0.05,
            0.01,
            "cosine",
            0,
        )
        assert cfg.sample_packing and cfg.pad_to_sequence_len and not cfg.train_on_inputs
        assert cfg.gradient_checkpointing and cfg.flash_attention and cfg.eval_steps == 20 and cfg.logging_steps == 1
        assert [(d.path, d.type.value) for d in cfg.datasets] == [("onuralp/open-otter", "alpaca")]
        assert cfg.special_tokens.bos_token == "<s>" and cfg.special_tokens.unk_token == "<unk>"
        assert cfg.wandb_project is None and cfg.output_dir == "./qlora-out"


def test_unimplemented_axolotl_keys_are_named_in_a_warning_and_fail_under_strict():
    path = ROOT / "axolotl_configs" / "Llama-2-7b-03.yml"
    with pytest.warns(ConfigWarning, match="is_llama_derived_model=True: not implemented") as record:
        cfg = load_config(path)
    assert "deepspeed" in str(record[0].message) and "fsdp_config" in str(record[0].message)
    assert {key.path for key in cfg.ignored_keys} >= {"is_llama_derived_model", "local_rank", "deepspeed"}
    message = error_of(path, {"strict": True})
    assert "is_llama_derived_model" in message
    assert "deepspeed" not in message  # left empty: no effect, so strict lets it pass


def test_unknown_keys_get_a_did_you_mean_and_fail_under_strict(tmp_path):
    path = write(tmp_path, MINIMAL + "lora_rr: 32\ndatasets_prepared_path: cache\n")
    with pytest.warns(ConfigWarning, match=r"lora_rr=32: unknown key \(did you mean lora_r\?\)"):
        cfg = load_config(path)
    assert cfg.lora_r == 8 and not hasattr(cfg, "lora_rr")
    assert "did you mean dataset_prepared_path" in error_of(path, {"strict": True})
    nested = write(tmp_path, MINIMAL.replace("type: alpaca", "type: alpaca\n    feild_input: ctx"), "nested.yml")
    with pytest.warns(ConfigWarning, match=r"datasets\[0\].feild_input='ctx': unknown key \(did you mean field_input"):
        load_config(nested)


def test_a_model_or_tokenizer_that_is_neither_here_nor_a_hub_id_is_refused(tmp_path):
    """validate passed it, and preprocess and train stopped on a traceback from the tokenizer's loading."""
    for key in ("tokenizer_config", "base_model", "base_model_config"):
        message = error_of(write(tmp_path, MINIMAL), {key: "../no_tok"})
        assert f"{key}: no such folder here, and not a hub id (owner/name) (got '../no_tok')" in message
    (tmp_path / "tok").mkdir()
    assert load_quietly(write(tmp_path, MINIMAL), {"tokenizer_config": str(tmp_path / "tok")}).tokenizer_config
    assert load_quietly(write(tmp_path, MINIMAL), {"tokenizer_config": "org/tok"}).tokenizer_config == "org/tok"


def test_an_empty_base_model_or_a_folder_without_config_json_is_refused_at_load(tmp_path):
    """validate passed both ("base model (size unknown)") and train stopped on a FileNotFoundError traceback: "" is
    the current folder to a path."""
    (tmp_path / "empty").mkdir()
    for key in ("tokenizer_config", "base_model", "base_model_config"):
        assert f"{key}: empty (got '')" in error_of(write(tmp_path, MINIMAL), {key: ""})
    for key in ("base_model", "base_model_config"):
        message = error_of(write(tmp_path, MINIMAL), {key: str(tmp_path / "empty")})
        assert f"{key}: {tmp_path / 'empty'} is a directory but holds no config.json" in message
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert load_quietly(write(tmp_path, MINIMAL), {"base_model": str(tmp_path / "empty")}).base_model


def test_an_empty_output_dir_is_refused_at_load_as_the_flag_is(tmp_path):
    """validate passed `output_dir: ""` and train stopped on a FileNotFoundError traceback; --output-dir "" was
    already refused."""
    message = error_of(write(tmp_path, MINIMAL + 'output_dir: ""\n'))
    assert "output_dir: an empty folder name; give a folder (./x, or . for the current one) (got '')" in message


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("micro_batch_size", 10**30, "1,048,576 (2**20)"),
        ("gradient_accumulation_steps", 10**30, "1,048,576 (2**20)"),
        ("gradient_accumulation_steps", 2**63, "1,048,576 (2**20)"),
        ("batch_size", 2**63, "1,048,576 (2**20)"),
        ("sequence_len", 10**30, "16,777,216 (2**24)"),
        ("lora_r", 10**30, "65,536 (2**16)"),
    ],
)
def test_an_absurd_integer_is_an_error_saying_its_bound(tmp_path, key, value, bound):
    """validate passed them and train stopped on a traceback (islice's sys.maxsize limit) or looped without end."""
    message = error_of(write(tmp_path, MINIMAL + f"{key}: {value}\n"))
    assert f"{key}: at most {bound}: no real run comes near it (got {value})" in message
    assert load_quietly(write(tmp_path, MINIMAL + f"{key}: {2 ** int(bound.split('**')[1][:-1])}\n"))


def test_a_rope_scaling_transformers_cannot_compute_is_refused_at_load(tmp_path):
    """validate passed {type: wizard, factor: -2} and train stopped on KeyError: 'wizard' from the rotary embedding."""
    says = {
        "{type: wizard, factor: -2}": "rope_scaling: type 'wizard': give type: one of default, linear, dynamic, yarn",
        "{factor: 2.0}": "rope_scaling: no type: give type: one of default, linear",
        "{type: linear, factor: -2}": "rope_scaling: factor -2: give a number above 0",
        "{rope_type: linear, factor: big}": "rope_scaling: factor 'big': give a number above 0",
    }
    for value, message in says.items():
        assert message in error_of(write(tmp_path, MINIMAL + f"rope_scaling: {value}\n")), value
    cfg = load_quietly(write(tmp_path, MINIMAL + "rope_scaling: {type: yarn, factor: 4.0}\n"))
    assert cfg.rope_scaling == {"type": "yarn", "factor": 4.0}


def test_an_empty_dataset_path_is_refused_at_load(tmp_path):
    """`path: ""` was the config's folder: validate scanned it for 25 s, then failed on a datasets error naming no
    key."""
    (tmp_path / "rows.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    for path in ('""', '"  "'):
        text = MINIMAL.replace("path: onuralp/open-otter", f"path: {path}")
        assert "datasets[0].path: empty (got " in error_of(write(tmp_path, text))


def test_a_key_given_twice_is_a_warning_naming_its_lines(tmp_path):
    """PyYAML, and so axolotl, keeps the last of two equal keys without a word: a second learning_rate further down
    a long config silently replaced the first."""
    text = MINIMAL.replace("type: alpaca", "type: alpaca\n    type: completion") + "lora_r: 16\nlora_r: 32\n"
    path = write(tmp_path, text)
    lines = text.splitlines()
    first, second = (n for n, line in enumerate(lines, 1) if line.startswith("lora_r:"))
    kinds = [n for n, line in enumerate(lines, 1) if line.strip().startswith("type:")]
    with pytest.warns(ConfigWarning) as record:
        cfg = load_config(path)
    message = " ".join(str(w.message) for w in record)
    assert f"lora_r is given twice (lines {first}, {second}): the last is used" in message
    assert f"datasets[0].type is given twice (lines {kinds[0]}, {kinds[1]})" in message
    assert cfg.lora_r == 32 and cfg.datasets[0].type == "completion"  # as axolotl reads it
    load_quietly(path, {"strict": True})  # a warning under strict too: the file means what axolotl reads
    assert _warnings_of(lambda: load_config(write(tmp_path, MINIMAL, "once.yml"))) == []
    anchors = "base: &b {lr: 1}\nother: *b\nmerged:\n  <<: *b\n  lr: 2\n"
    assert duplicate_keys(anchors) == []  # an alias and a merge key override are not repeats


def _warnings_of(load) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", ConfigWarning)
        load()
    return [w for w in record if "given twice" in str(w.message)]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"lora_r": "sixteen"}, "lora_r: Input should be a valid integer"),
        ({"lora_dropout": 1.5}, "lora_dropout: Input should be less than 1"),
        ({"optimizer": "adamw_tourch"}, "optimizer: Input should be 'adamw_torch'"),
        ({"lr_scheduler": "cosinus"}, "lr_scheduler: Input should be"),
        ({"adapter": "qlor"}, "adapter: Input should be 'lora' or 'qlora'"),
        ({"peft_method": "ia3"}, "peft_method: Input should be 'lora', 'vera' or 'prompt_tuning'"),
        ({"peft": "ia3"}, "peft: 'ia3': axolotl's peft: is a mapping"),
        ({"bf16": "sometimes"}, "bf16: Input should be a valid boolean"),
        (
            {"datasets": [{"path": "x.jsonl", "type": "alpacca"}]},
            "datasets[0].type: unknown dataset type 'alpacca' (did",
        ),
        ({"datasets": [{"type": "alpaca"}]}, "datasets[0].path: Field required"),
        ({"datasets": []}, "datasets: List should have at least 1 item"),
        ({"special_tokens": {"pad": "<pad>"}}, "special_tokens.pad: Extra inputs are not permitted"),
        ({"load_in_4bit": False}, "adapter: qlora requires load_in_4bit: true"),
        ({"load_in_8bit": True}, "load_in_4bit and load_in_8bit: choose one"),
        ({"adapter": "none"}, "- load_in_4bit: a full fine-tune (no adapter) cannot train quantized weights"),
        # axolotl's examples/4bit-lora-7b (2023): no adapter and load_in_8bit was said as "load_in_4bit/load_in_8bit"
        (
            {"adapter": None, "load_in_4bit": False, "load_in_8bit": True},
            "- load_in_8bit: a full fine-tune (no adapter) cannot train quantized weights; set adapter: lora or "
            "qlora, or load_in_8bit: false",
        ),
        ({"warmup_steps": 10, "warmup_ratio": 0.1}, "warmup_steps and warmup_ratio: set one, not both"),
        ({"bf16": True, "fp16": True}, "bf16 and fp16: both true"),
        ({"lora_target_linear": False}, "lora_target_modules: empty"),
        ({"peft_method": "vera", "peft_use_dora": True}, "peft_use_dora applies to peft_method: lora, not vera"),
    ],
)
def test_wrong_values_name_the_key_path(tmp_path, change, expected):
    message = error_of(write(tmp_path, MINIMAL), change)
    assert expected in message


@pytest.mark.parametrize("key", ["base_model", "learning_rate", "datasets"])
def test_missing_required_keys_are_named(tmp_path, key):
    text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(key))
    text = text.replace("  - path: onuralp/open-otter\n    type: alpaca", "") if key == "datasets" else text
    assert f"{key}: Field required" in error_of(write(tmp_path, text))


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"lora_r": True}, "lora_r"),
        ({"micro_batch_size": False}, "micro_batch_size"),
        ({"eval_steps": True}, "eval_steps"),  # int | float
        ({"datasets": [{"path": "onuralp/open-otter", "type": "alpaca", "shards": True}]}, "datasets[0].shards"),
        ({"rl": "grpo", "trl": {"num_generations": True}}, "trl.num_generations"),
    ],
)
def test_a_boolean_for_an_integer_key_is_refused(tmp_path, change, path):
    """pydantic reads true as 1: `lora_r: yes` (a YAML boolean) trained a rank-1 adapter."""
    assert f"{path}: a whole number, not true or false" in error_of(write(tmp_path, MINIMAL), change)


def test_a_required_key_written_in_another_case_is_named(tmp_path):
    """Base_Model: got "base_model: Field required" alone, though a miscased optional key gets "did you mean"."""
    text = MINIMAL.replace("base_model:", "Base_Model:").replace("learning_rate:", "Learning_Rate:")
    message = error_of(write(tmp_path, text))
    assert "base_model: Field required (Base_Model is set: did you mean base_model?)" in message
    assert "learning_rate: Field required (Learning_Rate is set: did you mean learning_rate?)" in message
    typo = error_of(write(tmp_path, MINIMAL.replace("base_model:", "base_modle:")))
    assert "base_model: Field required (base_modle is set: did you mean base_model?)" in typo


def test_a_full_fine_tune_cannot_carry_a_peft_method(tmp_path):
    message = error_of(write(tmp_path, MINIMAL), {"adapter": None, "load_in_4bit": False, "peft_method": "vera"})
    assert "peft_method: vera needs adapter: lora or qlora" in message
    cfg = load_quietly(write(tmp_path, MINIMAL), {"adapter": "none", "load_in_4bit": False})
    assert cfg.adapter is None


def test_empty_values_mean_unset_and_yaml_1_1_floats_load(tmp_path):
    text = MINIMAL.replace("learning_rate: 0.0002", "learning_rate: 4e-4")  # YAML 1.1 reads this as a string
    cfg = load_quietly(write(tmp_path, text + "wandb_project:\nlora_dropout:\nseed:\nspecial_tokens:\n"))
    assert cfg.learning_rate == 4e-4 and cfg.wandb_project is None
    assert (cfg.lora_dropout, cfg.seed, cfg.special_tokens) == (0.0, 42, None)


def test_not_yaml_or_not_a_mapping_is_a_config_error(tmp_path):
    assert "not valid YAML" in error_of(write(tmp_path, "base_model: [unclosed\n"))
    assert "expected a mapping of keys to values (base_model: ...), got a list" in error_of(
        write(tmp_path, "- just\n- a list\n")
    )
    assert "got a single word or text" in error_of(write(tmp_path, "x\n"))  # it said "got str"
    assert "the file is empty: a config is a mapping" in error_of(write(tmp_path, "# nothing yet\n"))  # "NoneType"
    assert "cannot read the config" in error_of(tmp_path / "missing.yml")
    (tmp_path / "latin1.yml").write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    assert "not UTF-8 text (byte 0xe9 at offset" in error_of(tmp_path / "latin1.yml")
    datasets = "datasets:\n  - path: onuralp/open-otter\n    type: alpaca\n"
    # A mapping (an entry's keys written without the dash before the first) is told how a list is written
    hint = ", not a mapping: write `- ` before each entry (`- path: ...` where this mapping is one entry)"
    for value, got in [("5", " (got 5)"), ("{path: x, type: alpaca}", hint)]:
        text = MINIMAL.replace(datasets, f"datasets: {value}\n")
        assert f"datasets: Input should be a valid list{got}" in error_of(write(tmp_path, text))


def test_relative_dataset_paths_resolve_from_cwd_first_then_the_config_folder(tmp_path, monkeypatch):
    config_dir, work_dir = tmp_path / "configs", tmp_path / "work"
    (config_dir / "data").mkdir(parents=True)
    work_dir.mkdir()
    (config_dir / "data" / "rows.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = write(config_dir, MINIMAL.replace("onuralp/open-otter", "data/rows.jsonl"))
    monkeypatch.chdir(work_dir)
    assert load_quietly(path).datasets[0].path == str(config_dir / "data" / "rows.jsonl")
    (work_dir / "data").mkdir()
    (work_dir / "data" / "rows.jsonl").write_text('{"instruction": "c", "output": "d"}\n')
    assert load_quietly(path).datasets[0].path == str(work_dir / "data" / "rows.jsonl")
    assert load_quietly(write(config_dir, MINIMAL, "hub.yml")).datasets[0].path == "onuralp/open-otter"


def test_overrides_replace_the_files_values(tmp_path):
    cfg = load_quietly(write(tmp_path, MINIMAL), {"max_steps": 5, "output_dir": str(tmp_path / "out")})
    assert (cfg.max_steps, cfg.output_dir) == (5, str(tmp_path / "out"))


def test_compute_dtype_resolves_auto_for_the_device(tmp_path):
    cfg = load_quietly(write(tmp_path, MINIMAL))
    assert (cfg.bf16, cfg.fp16) == ("auto", "auto")
    assert cfg.compute_dtype("cpu") == "float32"
    assert cfg.compute_dtype("cuda", capability=(8, 9)) == "bfloat16"
    assert cfg.compute_dtype("cuda", capability=(7, 0)) == "float16"
    assert cfg.model_copy(update={"fp16": False}).compute_dtype("cuda", capability=(7, 5)) == "float32"
    assert cfg.model_copy(update={"bf16": True}).compute_dtype("cpu") == "bfloat16"
    assert not cfg.tf32_enabled("cpu") and cfg.model_copy(update={"tf32": True}).tf32_enabled("cpu")


def test_a_config_survives_a_dump_and_reload(tmp_path):
    cfg = load_quietly(ROOT / "axolotl_configs" / "Mistral-01.yml")
    dumped = yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)  # a dump carries no ignored keys
        again = AxolotlConfig.model_validate(dumped)
    assert again.model_dump() == cfg.model_dump() and again.ignored_keys == []


def test_cli_validate_reports_errors_with_the_key_path(tmp_path):
    bad = write(tmp_path, MINIMAL.replace("lora_target_linear: true", "lora_target_linear: true\nlora_r: -4"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "lora_r: Input should be greater than 0" in result.output


def test_readme_config_table_is_the_generated_one():
    table = markdown_table(AxolotlConfig)
    assert "| `datasets[].type` | str \\| {system_prompt," in table  # pipes escaped inside a cell
    assert "| `base_model` | str | **required** |" in table
    result = CliRunner().invoke(app, ["config-keys"])
    assert result.exit_code == 0 and result.output.strip() == table
    assert table in (ROOT / "README.md").read_text(), "README's Configs table is stale: paste `llmkit config-keys`"


# --- axolotl keys that change what is trained (issue #14): each means what it means in axolotl, or is refused ---

DPO = MINIMAL.replace("type: alpaca", "type: chatml.intel") + "rl: dpo\n"


def test_peft_string_is_the_old_spelling_of_peft_method(tmp_path):
    path = write(tmp_path, MINIMAL.replace("adapter: qlora", "adapter: qlora\npeft: vera"))
    with pytest.warns(ConfigWarning, match="peft: vera is this project's old spelling; use peft_method: vera"):
        cfg = load_config(path)
    assert cfg.peft_method.value == "vera" and cfg.peft is None
    assert "peft: vera is this project's old spelling" in error_of(path, {"strict": True})
    assert "peft: vera (old spelling) and peft_method: lora disagree" in error_of(path, {"peft_method": "lora"})


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "eva", "mica", "svd"])
def test_a_lora_init_llmkit_cannot_merge_or_run_is_refused_by_name(tmp_path, init):
    """pissa passed validate, then stopped training on a 4-bit base in peft, or trained and failed merge's check
    (peft moves part of the base into the adapter at the start)."""
    message = error_of(write(tmp_path, MINIMAL), {"peft_init_lora_weights": init})
    assert f"peft_init_lora_weights: {init!r}" in message
    assert ("not implemented" in message) != (init == "svd"), message  # svd is no init of peft's
    for accepted in (True, False, "gaussian", "orthogonal"):
        assert load_quietly(write(tmp_path, MINIMAL), {"peft_init_lora_weights": accepted})
    assert "peft_init_lora_weights: loftq needs peft: {loftq_config" in error_of(
        write(tmp_path, MINIMAL), {"peft_init_lora_weights": "loftq", "adapter": "lora", "load_in_4bit": False}
    )


def test_peft_mapping_is_axolotls_loftq(tmp_path):
    loftq = {"peft": {"loftq_config": {"loftq_bits": 4}}}
    cfg = load_quietly(write(tmp_path, MINIMAL), {**loftq, "adapter": "lora", "load_in_4bit": False})
    assert cfg.loftq_bits == 4 and cfg.peft_method.value == "lora"
    assert "LoftQ starts from the unquantized base" in error_of(write(tmp_path, MINIMAL), loftq)  # a 4-bit load
    assert "peft.loftq_config.loftq_bits: Input should be 4 or 8" in error_of(
        write(tmp_path, MINIMAL),
        {"peft": {"loftq_config": {"loftq_bits": 3}}, "adapter": "lora", "load_in_4bit": False},
    )
    assert "peft.backend: Input should be 'bnb'" in error_of(
        write(tmp_path, MINIMAL), {"peft": {"backend": "torchao"}}
    )


def test_neftune_and_its_older_name(tmp_path):
    cfg = load_quietly(write(tmp_path, MINIMAL), {"noisy_embedding_alpha": 5})
    assert cfg.neftune_alpha == 5
    assert (
        load_quietly(write(tmp_path, MINIMAL), {"noisy_embedding_alpha": 5, "neftune_noise_alpha": 5}).neftune_alpha
        == 5
    )
    message = error_of(write(tmp_path, MINIMAL), {"noisy_embedding_alpha": 5, "neftune_noise_alpha": 3})
    assert "neftune_noise_alpha: 3.0 and noisy_embedding_alpha (its older name): 5.0; set one" in message


def test_neftune_zero_or_false_is_off(tmp_path):
    # axolotl moves noisy_embedding_alpha only where it is truthy: 0 or false is NEFTune off, as is a scale of 0
    for key in ("noisy_embedding_alpha", "neftune_noise_alpha"):
        for off in (False, 0, 0.0, None):
            assert load_quietly(write(tmp_path, MINIMAL), {key: off}).neftune_alpha is None
    both = {"noisy_embedding_alpha": False, "neftune_noise_alpha": 5}
    assert load_quietly(write(tmp_path, MINIMAL), both).neftune_alpha == 5
    assert "greater than 0" in error_of(write(tmp_path, MINIMAL), {"neftune_noise_alpha": -1})


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, None),
        ({"attn_implementation": "flash_attention_2"}, "flash_attention_2"),
        ({"attention": "flash"}, "flash_attention_2"),
        ({"flash_attention": True, "attn_implementation": "flash_attention_2"}, "flash_attention_2"),
        ({"sdp_attention": True}, "sdpa"),
        ({"eager_attention": True}, "eager"),
        ({"flex_attention": True}, "flex_attention"),
        ({"xformers_attention": True}, "xformers"),
        ({"attn_implementation": "xformers"}, "xformers"),
    ],
)
def test_attention_keys_name_one_implementation(tmp_path, keys, expected):
    assert load_quietly(write(tmp_path, MINIMAL), keys).attention_implementation == expected


def test_a_named_attention_wins_over_a_boolean_key_as_in_axolotl(tmp_path):
    """gpt-oss's axolotl examples: flash_attention: true beside a hub kernel; axolotl loads the kernel."""
    keys = {"flash_attention": True, "attn_implementation": "kernels-community/vllm-flash-attn3"}
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(write(tmp_path, MINIMAL), keys)
    assert cfg.attention_implementation == "kernels-community/vllm-flash-attn3"
    assert cfg.ignored_attention_flags == ["flash_attention"]
    said = " ".join(str(warning.message) for warning in caught)
    assert "flash_attention: true is ignored: attn_implementation: kernels-community/vllm-flash-attn3 names" in said
    agreeing = load_quietly(write(tmp_path, MINIMAL), {"flash_attention": True, "attention": "flash"})
    assert agreeing.ignored_attention_flags == [] and agreeing.notices == []


def test_two_boolean_attention_keys_take_axolotls_priority_order_with_a_note():
    """A user's real config sets flash_attention: true and sdp_attention: true: axolotl's config normalizer takes
    the first in its LEGACY_ATTN_FLAG_TO_IMPL order (flash_attention_2); it was refused as attention set two ways."""
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(REAL_WORLD / "mistral-7b-qlora-completion-sdp-gpu-limit.yml")
    assert cfg.attention_implementation == "flash_attention_2" and cfg.ignored_attention_flags == ["sdp_attention"]
    said = " ".join(str(warning.message) for warning in caught)
    assert "sdp_attention: true is ignored: flash_attention: true wins (flash_attention_2)" in said


def test_conflicting_or_unknown_attention_is_an_error(tmp_path):
    message = error_of(write(tmp_path, MINIMAL), {"attn_implementation": "eager", "attention": "sdpa"})
    assert "attention set more than one way: attn_implementation: eager, attention: sdpa" in message
    assert "attn_implementation: 'sage' is not an attention implementation here" in error_of(
        write(tmp_path, MINIMAL), {"attn_implementation": "sage"}
    )


def test_test_datasets_are_checked_as_datasets_and_exclude_val_set_size(tmp_path):
    entry = {"path": "org/eval", "type": "alpaca"}
    cfg = load_quietly(write(tmp_path, MINIMAL), {"test_datasets": [entry], "do_causal_lm_eval": True})
    assert cfg.has_eval and cfg.test_datasets[0].split == "test"  # axolotl's split for them
    assert "test_datasets and val_set_size: both choose the evaluation rows" in error_of(
        write(tmp_path, MINIMAL), {"test_datasets": [entry], "val_set_size": 0.1}
    )
    assert "test_datasets[0].type: unknown dataset type 'alpacca'" in error_of(
        write(tmp_path, MINIMAL), {"test_datasets": [{**entry, "type": "alpacca"}]}
    )
    with pytest.warns(ConfigWarning, match=r"test_datasets\[0\].shardz=2: unknown key \(did you mean shards\?\)"):
        load_config(write(tmp_path, MINIMAL), {"test_datasets": [{**entry, "shardz": 2}]})


def test_val_set_size_is_a_fraction_below_1_or_a_whole_number_of_rows(tmp_path):
    """As axolotl reads it (its train_test_split refuses anything else); 1.5 was taken as one row, silently."""
    assert load_quietly(write(tmp_path, MINIMAL), {"val_set_size": 0.05}).eval_split_size == 0.05
    assert load_quietly(write(tmp_path, MINIMAL), {"val_set_size": 50.0}).eval_split_size == 50
    assert "val_set_size: 1.5 is neither a fraction below 1 nor a whole number of rows" in error_of(
        write(tmp_path, MINIMAL), {"val_set_size": 1.5}
    )


def test_infinite_numbers_tilde_folders_and_falsy_cli_overrides(tmp_path, monkeypatch):
    """learning_rate 1e400 (inf) passed `gt=0`; "~/run" was a folder named "~" here and $HOME for the Trainer;
    `train --max-steps 0` fell back to the config's max_steps."""
    for key in ("learning_rate", "num_epochs", "val_set_size", "weight_decay"):
        assert f"{key}: Input should be a finite number (got inf)" in error_of(write(tmp_path, MINIMAL), {key: 1e400})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_quietly(write(tmp_path, MINIMAL), {"output_dir": "~/run", "dataset_prepared_path": "~/prepared"})
    assert (cfg.output_dir, cfg.dataset_prepared_path) == (str(tmp_path / "home/run"), str(tmp_path / "home/prepared"))
    result = CliRunner().invoke(app, ["train", str(write(tmp_path, MINIMAL)), "--max-steps", "0"])
    assert result.exit_code == 2 and "--max-steps: Input should be greater than 0 (got 0)" in result.output


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Nine levels of anchors (9^9 values) under an unknown key: validate hung at 6 GB printing its value."""
    levels = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    for name, inner in zip("bcdefghi", "abcdefgh", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{inner}"] * 9) + "]")
    bomb = write(tmp_path, MINIMAL + "\n".join(levels) + "\n")
    started = time.monotonic()
    assert "holds more than 100,000 values once its YAML aliases are expanded" in error_of(bomb)
    assert time.monotonic() - started < 10
    wide = [list(range(50))] * 50  # large but legal: its warning shows a bounded excerpt
    with pytest.warns(ConfigWarning) as caught:
        load_config(write(tmp_path, MINIMAL), {"my_table": wide})
    assert "my_table=[[0, 1, 2, 3, 4, 5, 6, 7, ...]" in str(caught[0].message) and len(str(caught[0].message)) < 400


def test_a_yaml_nested_too_deeply_or_holding_itself_is_one_line(tmp_path):
    """5,000 levels stopped validate on a RecursionError traceback in PyYAML's reader; `loop: &l [*l]` was called an
    alias bomb of more than 100,000 values, naming no key."""
    deep = write(tmp_path, MINIMAL + "deep: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply: more than 100 levels of mappings or lists" in error_of(deep)
    deep = write(tmp_path, MINIMAL + "my_tree: " + "{a: " * 150 + "1" + "}" * 150 + "\n")
    assert "my_tree: nested too deeply: more than 100 levels of mappings or lists" in error_of(deep)
    loop = write(tmp_path, MINIMAL + "loop: &l [*l]\n")
    assert "loop[0]: a YAML alias inside its own anchor (a cycle), which holds itself without end" in error_of(loop)
    shared = write(tmp_path, MINIMAL + "one: &x [1, 2]\ntwo: [*x, *x]\n")  # an alias used twice is no cycle
    assert load_quietly(shared).base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_shard_index_must_name_one_of_the_shards(tmp_path):
    spec = {"path": "org/data", "type": "alpaca"}
    assert "datasets[0]: shards_idx: 3 is not one of the 3 shards (0..2)" in error_of(
        write(tmp_path, MINIMAL), {"datasets": [{**spec, "shards": 3, "shards_idx": 3}]}
    )
    assert "datasets[0]: shards_idx: 1 without shards" in error_of(
        write(tmp_path, MINIMAL), {"datasets": [{**spec, "shards_idx": 1}]}
    )
    assert "datasets[0].shards: Input should be greater than or equal to 1" in error_of(
        write(tmp_path, MINIMAL), {"datasets": [{**spec, "shards": 0}]}
    )


def test_saves_and_evals_per_epoch_become_fractions_of_the_run(tmp_path):
    cfg = load_quietly(write(tmp_path, MINIMAL), {"num_epochs": 2, "saves_per_epoch": 2, "evals_per_epoch": 4})
    assert (cfg.save_every(), cfg.eval_every()) == (0.25, 0.125)  # 1 / (per_epoch x num_epochs), as axolotl
    once = load_quietly(write(tmp_path, MINIMAL), {"saves_per_epoch": 1})
    assert once.save_every() is None  # a whole run: checkpoints follow save_strategy (each epoch)
    both = error_of(write(tmp_path, MINIMAL), {"saves_per_epoch": 2, "save_steps": 10})
    assert "save_steps and saves_per_epoch: set one, not both" in both
    assert "eval_steps and evals_per_epoch: set one, not both" in error_of(
        write(tmp_path, MINIMAL), {"evals_per_epoch": 2, "eval_steps": 10}
    )


def test_optimizer_names_are_transformers_and_axolotls(tmp_path):
    from transformers.training_args import OptimizerNames

    from llmkit.config.sections import Optimizer

    assert {o.value for o in Optimizer} == {o.value for o in OptimizerNames}
    assert load_quietly(write(tmp_path, MINIMAL), {"optimizer": "ao_adamw_8bit"}).optimizer.value == "adamw_torch_8bit"
    assert load_quietly(write(tmp_path, MINIMAL), {"optimizer": "schedule_free_adamw"}).optimizer.value
    message = error_of(write(tmp_path, MINIMAL), {"optimizer": "optimi_adamw"})
    assert "optimizer: optimi_adamw is torch-optimi's AdamW" in message and "set optimizer: adamw_torch" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"rl": "kto", "micro_batch_size": 2, "datasets": [{"path": "x.jsonl", "type": "chatml.icr"}]},
            "datasets[0].type: chatml.icr is a pair type (axolotl's dpo and orpo strategies), which rl: kto does not "
            "read; supported: chatml.argilla, ",
        ),  # fmt: skip
        ({"rl": "kto", "micro_batch_size": 1}, "micro_batch_size: rl: kto needs at least 2"),
        ({"rl": "kto_pair"}, "supported: dpo, ipo, orpo, simpo, kto, grpo, gdpo"),
        ({"rl": "ppo"}, "rl: Input should be 'dpo', 'ipo', 'orpo', 'simpo', 'kto' or 'grpo'"),
        ({"rl": "simpo"}, "simpo_gamma: required with rl: simpo"),
        (
            {"rl": "orpo"},
            "datasets[0].type: chatml.intel is rl: dpo's type (axolotl's dpo strategies), which rl: "
            "orpo does not read; supported: chat_template.argilla",
        ),  # fmt: skip
        ({"datasets": [{"path": "x.jsonl", "type": "alpaca"}]}, "datasets[0].type: alpaca is not a preference"),
        ({"sample_packing": True}, "sample_packing: true does not work with rl: dpo"),
        (
            {"dpo_label_smoothing": 0.1},
            "dpo_label_smoothing: read by TRL's robust, exo_pair, aot, aot_unpaired losses "
            "only, none of the default dpo_loss_type ['sigmoid']",
        ),  # fmt: skip
        ({"peft_method": "vera"}, "rl: dpo trains a LoRA adapter or the full model, not vera"),
        # axolotl's DFT replaces the causal LM loss, which DPO's loss never calls: the run would be plain DPO
        ({"use_dynamic_finetuning": True}, "use_dynamic_finetuning: true reweights the supervised cross-entropy"),
    ],
)
def test_rl_values_and_their_datasets(tmp_path, change, expected):
    assert expected in error_of(write(tmp_path, DPO), change)


def test_a_dataset_without_a_type_names_no_user_module():
    """rl's rows as they are (no type) name no module.function: reading it raised AttributeError, so `llmkit
    submission --training` of such an rl config stopped in a traceback."""
    from llmkit.config.sections import DatasetSpec

    assert DatasetSpec(path="pairs.jsonl").user_module is None
    assert DatasetSpec(path="q.jsonl", type="rewards.questions").user_module == "rewards.questions"
    assert DatasetSpec(path="q.jsonl", type="alpaca").user_module is None


def test_a_preference_type_without_rl_and_rl_keys_without_rl_are_errors(tmp_path):
    no_rl = write(tmp_path, MINIMAL.replace("type: alpaca", "type: chatml.intel"))
    assert "it needs a top-level rl" in error_of(no_rl)
    assert "rl_beta: preference-training keys, but rl is not set" in error_of(
        write(tmp_path, MINIMAL), {"rl_beta": 0.2}
    )


def test_dpo_beta_is_axolotls_older_rl_beta_and_trl_beta_wins(tmp_path):
    cfg = load_quietly(write(tmp_path, DPO), {"dpo_beta": 0.2})
    assert (cfg.rl.value, cfg.preference_beta) == ("dpo", 0.2)
    assert load_quietly(write(tmp_path, DPO), {"dpo_beta": 0.2, "rl_beta": 0.3}).preference_beta == 0.3
    assert load_quietly(write(tmp_path, DPO), {"rl_beta": 0.3, "trl": {"beta": 0.4}}).preference_beta == 0.4
    assert load_quietly(write(tmp_path, DPO), {"rl": "ipo"}).rl.value == "ipo"
    refused = error_of(write(tmp_path, DPO), {"trl": {"beta": 0.1, "max_length": 9}})
    assert "trl: not implemented here: max_length (read: trl.beta, trl.reward_funcs" in refused
    # trl.loss_type is GRPO's (DPO's loss is rl: dpo or ipo)
    grpo_loss = error_of(write(tmp_path, DPO), {"trl": {"beta": 0.1, "loss_type": "grpo"}})
    assert "trl.loss_type: GRPO's keys, read with rl: grpo, not rl: dpo" in grpo_loss
    assert "trl.loss_type: Input should be 'grpo'" in error_of(write(tmp_path, DPO), {"trl": {"loss_type": "hinge"}})
    assert load_quietly(write(tmp_path, MINIMAL), {"rl": False}).rl is None  # false: no preference training


def test_a_false_key_whose_axolotl_default_is_true_is_said_to_change_something():
    """Dolphin 2.9's config sets tokenizer_use_fast: false (axolotl's default true: the slow tokenizer): it was
    listed as "left empty or false, no effect either way", and passed under strict."""
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(REAL_WORLD / "dolphin-2.9-llama3-8b-fft-sharegpt-chatml-tokens.yml")
    said = " ".join(str(warning.message) for warning in caught)
    assert "tokenizer_use_fast=False: axolotl's default is true; false loads the slow (Python) tokenizer" in said
    assert [key.effective for key in cfg.ignored_keys if key.path == "tokenizer_use_fast"] == [True]
    message = error_of(REAL_WORLD / "dolphin-2.9-llama3-8b-fft-sharegpt-chatml-tokens.yml", {"strict": True})
    assert "tokenizer_use_fast=False: axolotl's default is true" in message


def test_val_datasets_and_val_dataset_point_at_test_datasets():
    """A user's Gemma config holds its validation file under val_datasets: the hint was datasets (spelling alone),
    and val_dataset got none; axolotl's key is test_datasets."""
    with pytest.warns(ConfigWarning) as caught:
        load_config(REAL_WORLD / "gemma-2b-it-lora4bit-alpaca-valdatasets.yml")
    said = " ".join(str(warning.message) for warning in caught)
    assert "val_datasets=" in said and "unknown key (did you mean test_datasets?)" in said
    assert "did you mean datasets?" not in said
    entry = [{"path": "rows.jsonl", "type": "alpaca"}]
    with pytest.warns(ConfigWarning, match=r"val_dataset=.*unknown key \(did you mean test_datasets\?\)"):
        load_config(
            REAL_WORLD / "gemma-2b-it-lora4bit-alpaca-valdatasets.yml", {"val_datasets": None, "val_dataset": entry}
        )


def test_a_conversations_keys_on_an_alpaca_dataset_are_said_to_do_nothing():
    """A user's TinyLlama config sets field_messages and message_property_mappings under type: alpaca: only the chat
    types read them; they passed silently, under strict too."""
    path = REAL_WORLD / "tinyllama-chat-qlora-postman-alpaca-fieldmsgs.yml"
    with pytest.warns(ConfigWarning) as caught:
        load_config(path)
    said = " ".join(str(warning.message) for warning in caught)
    assert (
        "datasets[0].field_messages='conversations': read only by type: chat_template (and sharegpt); type: " in said
    )
    assert "datasets[0].message_property_mappings=" in said
    assert "datasets[0].field_messages='conversations'" in error_of(path, {"strict": True})


def test_max_prompt_len_is_ignored_as_axolotl_no_longer_passes_it():
    """A blog's DPO config sets max_prompt_len: 512 beside max_length: axolotl's trainer builder passes DPO
    max_length alone and strips max_prompt_length for KTO, ORPO and SimPO; it was refused as a key that changes
    what is trained."""
    with pytest.warns(ConfigWarning) as caught:
        cfg = load_config(REAL_WORLD / "llama3.1-8b-instruct-dpo-qlora-chatml-intel-blog.yml")
    said = " ".join(str(warning.message) for warning in caught)
    assert "max_prompt_len=512: axolotl no longer passes it to TRL (DPO cuts a row at max_length alone" in said
    assert [key.path for key in cfg.ignored_keys if key.path == "max_prompt_len"] == ["max_prompt_len"]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("s2_attention", True, "shifted-sparse attention (LongLoRA) changes the attention itself"),
        ("relora_steps", 200, "ReLoRA"),
        ("gptq", True, "training on a GPTQ-quantized base is not implemented"),
        ("lr_quadratic_warmup", True, "warmup here is linear"),
        ("dataset_shard_num", 4, "one shard of the data"),
        ("reward_model", True, "reward-model training"),
        ("qat", {"weight_dtype": "int4"}, "quantization-aware training is not implemented"),
        ("gkd_trainer", True, "GKD"),
        ("quantize_moe_experts", True, "bitsandbytes leaves them in 16 bits"),
        # axolotl passes these to peft (rank_pattern, alpha_pattern, exclude_modules): warned as unknown, the run
        # trained other ranks and modules
        ("lora_rank_pattern", {"q_proj": 64}, "per-module LoRA ranks are not implemented"),
        ("lora_alpha_pattern", {"q_proj": 128}, "per-module LoRA alphas are not implemented"),
        ("lora_exclude_modules", ["down_proj"], "excluding modules from the targets is not implemented"),
        # the learning-rate schedule and per-parameter learning rates: once reported as unknown keys and dropped
        ("cosine_constant_lr_ratio", 0.8, "cosine_min_lr_ratio is"),
        ("lr_scheduler_kwargs", {"num_cycles": 3}, "extra scheduler arguments are not implemented"),
        ("lr_groups", [{"name": "o", "modules": ["o_proj"], "lr": 1e-5}], "per-module learning rates"),
        ("curriculum_sampling", True, "sequential (curriculum) sampling is not implemented"),
        ("chat_template_kwargs", {"enable_thinking": False}, "extra chat template arguments are not implemented"),
        ("min_sample_len", 8, "a minimum row length is not implemented"),
        ("embedding_lr", 1e-5, "a separate embedding learning rate"),
        # in axolotl's schema, and once reported as unknown keys (a typo?) and dropped
        ("peft_layer_replication", [[0, 4], [2, 6]], "LoRA layer replication"),
        ("peft_trainable_token_indices", [5, 6], "training single tokens' embeddings is not implemented"),
        ("fix_untrained_tokens", True, "untrained tokens' embeddings"),
        ("added_tokens_overrides", {128002: "<tool>"}, "renaming the tokenizer's reserved tokens"),
        ("shrink_embeddings", True, "shrinking the embeddings"),
        ("use_pose", True, "PoSE"),
        ("fp8", True, "FP8 mixed-precision training"),
        ("reinit_weights", True, "randomly initialised weights"),
        ("trainer_cls", "my.Trainer", "a custom trainer class"),
        ("model_kwargs", {"torch_dtype": "float16"}, "extra from_pretrained arguments"),
        ("quantization", {"weight_dtype": "int8"}, "post-training quantization"),
        # axolotl's mistral-common tokenizer (Magistral's configs): other token ids, once only an ignored key
        ("tokenizer_use_mistral_common", True, "the mistral-common tokenizer (Magistral, Devstral), which encodes"),
        # axolotl's Llama 4 patch that makes a linearized checkpoint load at all: once reported as an ignored key
        ("llama4_linearized_experts", True, "axolotl patches transformers' Llama 4 to hold each expert as its own"),
    ],
)
def test_keys_that_would_change_training_and_are_not_implemented_are_refused(tmp_path, key, value, reason):
    message = error_of(write(tmp_path, MINIMAL), {key: value})
    assert f"{key}={short_repr(value, 60)}: " in message and reason in message  # a bounded repr (dict keys sorted)
    load_quietly(write(tmp_path, MINIMAL), {key: None})  # left empty: no effect, no error


def test_lisa_is_refused_when_axolotl_would_run_it_and_its_keys_alone_are_ignored(tmp_path):
    """axolotl runs LISA when lisa_n_layers and lisa_step_interval are both set (lisa_layers_attribute has a
    default); processor_type alone loads no processor. Refusing each key alone refused configs axolotl trains."""
    lisa = {"lisa_n_layers": 4, "lisa_step_interval": 20, "lisa_layers_attribute": "model.layers"}
    message = error_of(write(tmp_path, MINIMAL), lisa)
    assert "lisa_n_layers=4, lisa_step_interval=20: LISA (training a few randomly chosen layers" in message
    for alone in (
        {"lisa_n_layers": 4},
        {"lisa_layers_attribute": "model.layers"},
        {"processor_type": "AutoProcessor"},
    ):
        cfg = load_quietly(write(tmp_path, MINIMAL), alone)
        assert [key.path for key in cfg.ignored_keys] == list(alone)  # reported as ignored, by name


def test_plugins_that_may_change_training_are_refused_and_speed_only_ones_ignored(tmp_path):
    speed = ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin", "axolotl.integrations.liger.LigerPlugin"]
    cfg = load_quietly(write(tmp_path, MINIMAL), {"plugins": speed})
    assert [key.describe() for key in cfg.ignored_keys] == [f"plugins={speed!r}: not implemented here"]
    message = error_of(write(tmp_path, MINIMAL), {"plugins": [*speed, "diffusion.DiffusionPlugin"]})
    assert "plugins: diffusion.DiffusionPlugin may change how the model is trained" in message
    assert "CutCrossEntropyPlugin" not in message.split("may change")[0]


def test_an_unsupported_rl_is_the_only_error_and_reward_data_says_what_it_is(tmp_path):
    ebft = {"rl": "ebft", "trl": {"use_vllm": True, "num_generations": 8, "reward_funcs": ["r.f"]}}
    message = error_of(write(tmp_path, DPO), ebft)
    assert message.endswith("- rl: ebft: axolotl's EBFT (energy-based fine-tuning) runs a trainer of axolotl's own, "
                            "which TRL 1.16 has no counterpart of: not implemented here; supported: dpo, ipo, orpo, "
                            "simpo, kto, grpo, gdpo")  # fmt: skip
    assert "trl." not in message
    pairs = write(tmp_path, MINIMAL.replace("type: alpaca", "type: bradley_terry.chat_template"))
    assert "datasets[0].type: dataset type 'bradley_terry.chat_template' is reward-model data" in error_of(pairs)


def test_documented_axolotl_keys_for_speed_or_parallelism_are_known_not_unknown(tmp_path):
    keys = {
        "tiled_mlp": True,
        "sequence_parallel_degree": 2,
        "experts_implementation": "scattermoe",
        "use_kernels": 1,
        "unsloth_lora_mlp": True,
        "gc_steps": 10,
        "save_only_model": True,
        "fused_attn_kernel": True,  # examples/qwen3/8b-lora-fused-attn.yaml: a Triton kernel, once "unknown key"
        "base_model_ignore_patterns": "pytorch*",  # examples/pythia-12b: which hub files are fetched
    }
    cfg = load_quietly(write(tmp_path, MINIMAL), keys)
    described = [key.describe() for key in cfg.ignored_keys]
    assert described == [f"{key}={value!r}: not implemented here" for key, value in keys.items()]


def test_real_axolotl_keys_once_unknown_say_what_happens_here(tmp_path):
    """Real configs' keys (h5's outside check) that were "unknown key"s (a typo?): rl_adapter_ref_model, which
    axolotl's DPO code reads, and liger_cross_entropy, a sibling of the liger_* keys reported as not implemented."""
    reference = (
        "an adapter's reference here is the model before training (TRL's frozen copy of the adapter), the weights a "
        "second copy of the base would hold, without that copy's memory (axolotl's schema drops the key, so axolotl "
        "runs the same)"
    )
    for value in (True, False):
        cfg = load_quietly(write(tmp_path, DPO), {"rl_adapter_ref_model": value})
        assert [key.describe() for key in cfg.ignored_keys] == [f"rl_adapter_ref_model={value}: {reference}"]
    # Where no adapter's reference is chosen, it says what happens instead (the adapter's explanation was said)
    full = DPO.replace("adapter: qlora\nload_in_4bit: true\nlora_target_linear: true\n", "")
    orpo = DPO.replace("rl: dpo", "rl: orpo").replace("chatml.intel", "chat_template.argilla")
    for text, said in [
        (MINIMAL, "read only with rl (an adapter's reference model in preference training); without rl it does "
                  "nothing"),
        (orpo, "rl: orpo trains without a reference model, so it does nothing"),
        (full, "it chooses an adapter's reference; a full fine-tune's reference is TRL's frozen copy of the model "
               "before training whatever it says (axolotl loads that second copy too)"),
    ]:  # fmt: skip
        cfg = load_quietly(write(tmp_path, text), {"rl_adapter_ref_model": True})
        assert [key.describe() for key in cfg.ignored_keys] == [f"rl_adapter_ref_model=True: {said}"]
    liger = load_quietly(write(tmp_path, MINIMAL), {"liger_cross_entropy": True, "liger_swiglu": True})
    assert [key.describe() for key in liger.ignored_keys] == [
        "liger_cross_entropy=True: not implemented here",
        "liger_swiglu=True: not implemented here",
    ]


def test_save_safetensors_true_is_what_happens_and_false_says_safetensors_only(tmp_path):
    """true was an ignored key "not implemented here" though safetensors is what is written; false was listed as
    "off, not implemented", though in axolotl it asks for another format (.bin)."""
    assert load_quietly(write(tmp_path, MINIMAL), {"save_safetensors": True}).ignored_keys == []
    cfg = load_quietly(write(tmp_path, MINIMAL), {"save_safetensors": False})
    assert [key.describe() for key in cfg.ignored_keys] == [
        "save_safetensors=False: the model is saved as safetensors only here (false asks axolotl for "
        "pytorch_model.bin files)"
    ]
    assert all(key.named_alone for key in cfg.ignored_keys)  # its own line, not among the keys left off


def test_use_tensorboard_true_is_what_happens_and_false_says_it_stays_on(tmp_path):
    """train always logs to TensorBoard, yet use_tensorboard: true was an ignored key "not implemented here"."""
    assert load_quietly(write(tmp_path, MINIMAL), {"use_tensorboard": True}).ignored_keys == []
    cfg = load_quietly(write(tmp_path, MINIMAL), {"use_tensorboard": False})
    assert [key.describe() for key in cfg.ignored_keys] == [
        "use_tensorboard=False: TensorBoard logs are always written here, under output_dir/runs/ (false does not "
        "stop them)"
    ]


def test_gradient_checkpointing_offload_values(tmp_path):
    for value in ("offload", "unsloth", "offload_disk"):
        cfg = load_quietly(write(tmp_path, MINIMAL), {"gradient_checkpointing": value})
        assert cfg.checkpoint_offload and cfg.gradient_checkpointing == value
    assert not load_quietly(write(tmp_path, MINIMAL), {"gradient_checkpointing": True}).checkpoint_offload
    assert "gradient_checkpointing" in error_of(write(tmp_path, MINIMAL), {"gradient_checkpointing": "disk"})


def test_older_spellings_axolotl_still_reads(tmp_path):
    cfg = load_quietly(
        write(tmp_path, MINIMAL),
        {
            "batch_size": 8,
            "micro_batch_size": 2,
            "model_config": {"output_router_logits": True},
            "evaluation_strategy": "steps",
            "tokens": {"bos_token": "<s>"},
            "model_revision": "abc123",  # axolotl's aliases of revision_of_model and model_type
            "type_of_model": "LlamaForCausalLM",
        },
    )
    assert cfg.revision_of_model == "abc123" and cfg.model_type == "LlamaForCausalLM"
    assert cfg.gradient_accumulation_steps == 4  # batch_size / micro_batch_size
    assert cfg.overrides_of_model_config == {"output_router_logits": True} and cfg.eval_strategy == "steps"
    assert cfg.special_tokens.bos_token == "<s>" and cfg.tokens is None
    wrong = {"batch_size": 8, "micro_batch_size": 2, "gradient_accumulation_steps": 2}
    assert "batch_size: 8 is not micro_batch_size x gradient_accumulation_steps (2 x 2)" in error_of(
        write(tmp_path, MINIMAL), wrong
    )


def test_a_tokenizer_class_or_unfrozen_pattern_that_cannot_work_is_named_at_load(tmp_path):
    config = write(tmp_path, MINIMAL)
    assert "tokenizer_type: LlamaTokenizergin is not a transformers tokenizer class (did you mean LlamaTokenizer?" in (
        error_of(config, {"tokenizer_type": "LlamaTokenizergin"})
    )
    assert load_quietly(config, {"tokenizer_type": "LlamaTokenizer"}).tokenizer_type == "LlamaTokenizer"
    full = {"adapter": "none", "load_in_4bit": False}
    assert "unfrozen_parameters: lm_head[(: not a regular expression" in error_of(
        config, {**full, "unfrozen_parameters": ["lm_head", "lm_head[("]}
    )
    assert "the range's end must be after its start" in error_of(config, {**full, "unfrozen_parameters": "x$[9:2]"})


def test_lora_and_full_fine_tune_only_keys(tmp_path):
    full = {"adapter": "none", "load_in_4bit": False}
    cfg = load_quietly(write(tmp_path, MINIMAL), {**full, "unfrozen_parameters": "model.layers.1.*"})
    assert cfg.unfrozen_parameters == ["model.layers.1.*"]
    # axolotl's gemma-3-1b-qlora.yml: there, freezing runs after peft wraps the base, so nothing is left to train
    said = error_of(
        write(tmp_path, MINIMAL), {"unfrozen_parameters": [r"^model\.language_model\..*", r"^lm_head\..*"]}
    )
    assert (
        "unfrozen_parameters: is for a full fine-tune (adapter: none); beside an adapter axolotl freezes every "
        "parameter it does not match after the adapter is attached, the adapter's own included"
    ) in said
    assert "Leave it out to train the adapter (lora_modules_to_save trains whole modules beside it)" in said
    assert "cosine_min_lr_ratio applies to lr_scheduler: cosine, not linear" in error_of(
        write(tmp_path, MINIMAL), {"cosine_min_lr_ratio": 0.1, "lr_scheduler": "linear"}
    )
    assert "compare evaluations: set val_set_size" in error_of(
        write(tmp_path, MINIMAL), {"early_stopping_patience": 3}
    )


def test_data_files_without_a_path_asks_for_the_path_they_are_in(tmp_path):
    text = MINIMAL.replace("  - path: onuralp/open-otter\n", "  - ds_type: json\n    data_files: team/dpo-mix\n")
    message = error_of(write(tmp_path, text))
    assert "datasets[0]: path: missing; data_files (team/dpo-mix) name files inside path" in message
    assert "(path: team/dpo-mix, if that is the hub dataset meant)" in message
    both = MINIMAL.replace("open-otter\n", "open-otter\n    data_files: [a.jsonl, b.jsonl]\n")
    assert load_quietly(write(tmp_path, both, "both.yml")).datasets[0].data_files == ["a.jsonl", "b.jsonl"]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("ia3", "axolotl's IA3 adapter"),
        ("llama-adapter", "LLaMA-Adapter"),
        # examples/llama-2/qalora.yml: once pydantic's bare "Input should be 'lora' or 'qlora'"
        ("qalora", "axolotl's QA-LoRA adapter"),
    ],
)
def test_axolotls_other_adapters_are_named_as_not_implemented(tmp_path, value, named):
    message = error_of(write(tmp_path, MINIMAL.replace("adapter: qlora", f"adapter: {value}")))
    assert f"adapter: {value} (" in message and named in message and "not implemented here" in message


def test_every_key_of_axolotls_schema_is_known_here():
    """A key axolotl accepts is a field here, an older spelling read as one, or named as ignored or refused: never
    "unknown key" (which says typo), and never dropped while it changes training."""
    from llmkit.config.keys import DATASET_UNIMPLEMENTED_KEYS, REFUSED_KEYS, REFUSED_TOGETHER, UNIMPLEMENTED_KEYS
    from llmkit.config.schema import _RENAMED_KEYS, AxolotlConfig
    from llmkit.config.sections import DatasetSpec

    lines = list((Path(__file__).parent / "axolotl_keys.txt").read_text().splitlines())
    keys = [line for line in lines if line and not line.startswith("#")]
    split = keys.index("[dataset]")
    top, dataset = keys[:split], keys[split + 1 :]
    together = {key for group in REFUSED_TOGETHER for key in group}
    known = {*AxolotlConfig.model_fields, *_RENAMED_KEYS, *UNIMPLEMENTED_KEYS, *REFUSED_KEYS, *together}
    assert len(top) > 350 and [key for key in top if key not in known] == []
    entry = {*DatasetSpec.model_fields, *(field.alias for field in DatasetSpec.model_fields.values() if field.alias)}
    assert len(dataset) > 40 and [key for key in dataset if key not in entry | DATASET_UNIMPLEMENTED_KEYS] == []


@pytest.mark.parametrize("name", ["one_cycle", "rex", "reduce_lr_on_plateau", "warmup_stable_decay"])
def test_schedules_axolotl_knows_and_this_project_does_not_run_are_refused_by_name(tmp_path, name):
    """warmup_stable_decay passed validate and train stopped in a traceback (it needs num_decay_steps); axolotl's
    own names were refused as if misspelt ("Input should be ...")."""
    message = error_of(write(tmp_path, MINIMAL), {"lr_scheduler": name})
    assert f"lr_scheduler: {name} is not implemented here (" in message and "supported: linear" in message


def test_cosine_with_min_lr_takes_its_floor_from_cosine_min_lr_ratio(tmp_path):
    """Without a floor transformers stops the run in a traceback; with cosine_min_lr_ratio it is cosine's floor."""
    message = error_of(write(tmp_path, MINIMAL), {"lr_scheduler": "cosine_with_min_lr"})
    assert "cosine_with_min_lr needs its floor: set cosine_min_lr_ratio" in message
    cfg = load_quietly(write(tmp_path, MINIMAL), {"lr_scheduler": "cosine_with_min_lr", "cosine_min_lr_ratio": 0.1})
    assert cfg.cosine_min_lr_ratio == 0.1


@pytest.mark.parametrize("value", [True, False])
def test_auto_resume_is_said_to_be_always_on_not_unimplemented(tmp_path, value):
    """A run here always resumes from its newest checkpoint: "not implemented here" read as "does not resume"."""
    cfg = load_quietly(write(tmp_path, MINIMAL), {"auto_resume_from_checkpoints": value})
    described = [key.describe() for key in cfg.ignored_keys]
    assert described == [f"auto_resume_from_checkpoints={value}: always on here: a rerun resumes from output_dir's "
                         "newest checkpoint (--fresh starts from step 0)"]  # fmt: skip
    config = write(tmp_path, MINIMAL + f"auto_resume_from_checkpoints: {str(value).lower()}\n")
    plan_text = CliRunner().invoke(app, ["validate", str(config)], env={"COLUMNS": "400"}).output
    assert "always on here" in plan_text and "off, not implemented" not in plan_text  # the plan said "off" of false


def test_max_packed_sequence_len_points_to_sample_packing(tmp_path):
    """2023's configs packed with it; "not implemented here" left them without the key that packs now."""
    cfg = load_quietly(write(tmp_path, MINIMAL), {"max_packed_sequence_len": 2048})
    assert [key.describe() for key in cfg.ignored_keys] == [
        "max_packed_sequence_len=2048: axolotl's packing of 2023, which it now refuses: sample_packing: true packs "
        "rows up to sequence_len"
    ]


def test_a_save_cadence_off_the_evaluations_is_refused_at_load_where_the_best_checkpoint_is_published(tmp_path):
    """transformers refused it only in train, after the data was prepared, naming its --load_best_model_at_end."""
    best = {"val_set_size": 0.1, "load_best_model_at_end": True, "eval_steps": 3}
    message = error_of(write(tmp_path, MINIMAL), {**best, "save_steps": 2})
    assert (
        "save_steps: 2 and eval_steps: 3: a save every 2 steps is not a multiple of an evaluation every 3" in message
    )
    for cadence, said in [
        ({"save_steps": 0.5, "eval_steps": 2}, "save_steps: 0.5 and eval_steps: 2 mix a fraction of the run with a"),
        ({"save_steps": 4, "evals_per_epoch": 3, "eval_steps": None}, "save_steps: 4 and evals_per_epoch: 3 mix"),
        ({"saves_per_epoch": 3, "evals_per_epoch": 2, "eval_steps": None}, "saves_per_epoch: 3 and evals_per_epoch"),
    ]:  # transformers' rule on the cadence as run: validate passed these, train refused them
        assert said in error_of(write(tmp_path, MINIMAL), {**best, **cadence})
    assert load_quietly(
        write(tmp_path, MINIMAL), {**best, "eval_steps": None, "saves_per_epoch": 2, "evals_per_epoch": 4}
    )
    assert load_quietly(write(tmp_path, MINIMAL), {**best, "save_steps": 6}).save_steps == 6
    assert load_quietly(write(tmp_path, MINIMAL), {**best, "eval_steps": 0.1, "save_steps": 0.3}).save_steps == 0.3
    assert load_quietly(write(tmp_path, MINIMAL), {"eval_steps": 3, "save_steps": 2}).save_steps == 2  # no best


def test_optim_args_that_transformers_cannot_split_are_refused_naming_the_key(tmp_path):
    """transformers splits optim_args at each comma, then at '=': a value holding a comma (betas as a tuple) passed
    validate and stopped train with transformers' ValueError traceback as the optimizer was made."""
    path = write(tmp_path, MINIMAL)
    for value, piece in [({"betas": "(0.9,0.95)"}, "0.95)"), ("betas=(0.9, 0.95)", "0.95)"), ("decay", "decay")]:
        message = error_of(path, {"optim_args": value})
        assert f"optim_args: {piece!r} is no key=value pair: transformers splits optim_args at each comma" in message
    for value in ({"foo": 1, "bar": "x"}, "foo=1, bar=x"):
        assert load_quietly(path, {"optim_args": value}).optim_args == value
