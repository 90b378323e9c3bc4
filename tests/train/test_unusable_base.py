"""Base models llmkit cannot train on or merge into, refused up front by validate, train and merge, each naming the
key that gave it: one that needs its repository's own Python code (a model_type transformers lacks, with an
auto_map; llmkit runs no remote code), and one stored quantized (no 16-bit weights to merge into)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.schema import ConfigError, load_config
from llmkit.merge.fold import merge_adapter
from llmkit.train.run import train

NEEDS_CODE = r"base_model: .* needs the Python code of its own repository .* model_type 'toyremote'"


@pytest.fixture
def remote_model(tiny_model_dir, tmp_path):
    """The tiny Llama's weights under a config.json that points to code in the repository, as InternLM2's does."""
    path = shutil.copytree(tiny_model_dir, tmp_path / "toyremote")
    config = json.loads((path / "config.json").read_text())
    config |= {"model_type": "toyremote", "auto_map": {"AutoModelForCausalLM": "modeling_toy.ToyForCausalLM"}}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_validate_refuses_a_model_that_needs_remote_code(tiny_config, remote_model):
    result = CliRunner().invoke(app, ["validate", str(tiny_config(base_model=str(remote_model)))])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())  # rich wraps the line
    assert "base_model: " in message and "does not run remote code" in message and "Traceback" not in message


@pytest.mark.parametrize("trust", [False, True])
def test_train_refuses_it_before_any_data_work(tiny_config, remote_model, tmp_path, trust):
    prepared = tmp_path / "prepared"
    cfg = load_config(
        tiny_config(base_model=str(remote_model), dataset_prepared_path=str(prepared), trust_remote_code=trust)
    )
    with pytest.raises(ConfigError, match=NEEDS_CODE):
        train(cfg)
    assert not prepared.exists() and not (tmp_path / "out").exists()


def test_merge_refuses_it_instead_of_asking_whether_to_run_its_code(tiny_model_dir, remote_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=NEEDS_CODE.replace("base_model", "--base")):
        merge_adapter(str(remote_model), tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


STORED_QUANTIZED = r"base_model: .* is stored quantized \(bitsandbytes 4-bit, its config.json's quantization_config\)"


@pytest.fixture
def quantized_model(tiny_model_dir, tmp_path):
    """The tiny Llama saved 4-bit by bitsandbytes, as the hub's *-bnb-4bit repositories are: training ran on it,
    then merge stopped on its packed weights ("is 1->4096 in the base but 128->64 in the adapter")."""
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=nf4, device_map="cpu")
    path = tmp_path / "tiny-bnb-4bit"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_validate_refuses_a_base_stored_quantized(tiny_config, quantized_model, tmp_path):
    result = CliRunner().invoke(app, ["validate", str(tiny_config(base_model=str(quantized_model)))])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())  # rich wraps the line
    assert "is stored quantized (bitsandbytes 4-bit" in message and "load_in_4bit: true for QLoRA" in message
    gptq = json.loads((quantized_model / "config.json").read_text())
    gptq["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "gptq").mkdir()
    (tmp_path / "gptq" / "config.json").write_text(json.dumps(gptq))
    result = CliRunner().invoke(app, ["validate", str(tiny_config(base_model=str(tmp_path / "gptq")))])
    assert result.exit_code == 1 and "is stored quantized (gptq," in " ".join(result.output.split()), result.output


def test_train_and_merge_refuse_a_base_stored_quantized(tiny_config, tiny_model_dir, quantized_model, tmp_path):
    prepared = tmp_path / "prepared"
    cfg = load_config(tiny_config(base_model=str(quantized_model), dataset_prepared_path=str(prepared)))
    with pytest.raises(ConfigError, match=STORED_QUANTIZED):
        train(cfg)
    assert not prepared.exists() and not (tmp_path / "out").exists()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match=STORED_QUANTIZED.replace("base_model", "--base")):
        merge_adapter(str(quantized_model), tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
