"""`llmkit random-model`: a base model's shape with random weights, saved as a model folder that loads, generates
and trains like any other; errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.core.random_model import write_random_model

TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def config_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "shape" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**TINY_LLAMA, **changes}))
    return path


def test_a_small_vocabulary_is_widened_to_the_tokenizer_and_the_model_loads_and_generates(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models" / "tiny"
    shape = config_file(tmp_path, vocab_size=1000, bos_token_id=50279, eos_token_id=50279)  # OLMo-2's, past it
    made = write_random_model(str(shape), out, dtype="float32", seed=3)
    assert made.path == out and made.model_type == "llama" and made.dtype == "float32"
    assert made.vocab_size == len(tokenizer) and made.widened_from == 1000
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # nothing staged is left beside it

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    ends = (model.config.eos_token_id, model.generation_config.eos_token_id, model.config.bos_token_id)
    assert ends == (tokenizer.eos_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert sum(p.numel() for p in model.parameters()) == made.params
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    ids = tokenizer("The last token id of the vocabulary", return_tensors="pt").input_ids
    ids[0, -1] = len(tokenizer) - 1  # every id the tokenizer can make has a row
    with torch.inference_mode():
        generated = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 3

    again = write_random_model(str(shape), out, dtype="float32", seed=3)
    reloaded = AutoModelForCausalLM.from_pretrained(again.path)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)  # the seed decides the weights
    assert json.loads((out / "llmkit_random_model.json").read_text())["seed"] == 3  # what may be replaced


def test_an_out_folder_holding_other_files_is_refused_untouched(tmp_path):
    """random-model replaces its --out whole: it deleted a folder of notes (or a real model's weights)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    result = CliRunner().invoke(app, ["random-model", str(config_file(tmp_path)), "--out", str(notes)])
    assert result.exit_code == 1 and (notes / "todo.txt").read_text() == "mine"
    message = " ".join(result.output.split())
    assert f"{notes} holds other files (no llmkit_random_model.json: not an earlier random model)" in message


def test_a_larger_vocabulary_is_kept_and_a_shipped_shape_is_found_by_its_hub_id(tmp_path):
    kept = write_random_model(str(config_file(tmp_path, vocab_size=60000)), tmp_path / "wide", dtype="bfloat16")
    assert kept.vocab_size == 60000 and kept.widened_from is None and kept.dtype == "bfloat16"

    result = CliRunner().invoke(
        app, ["random-model", "HuggingFaceTB/SmolLM2-135M", "--out", str(tmp_path / "smol"), "--dtype", "float16"]
    )
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    assert "a random llama of 0.135B parameters in float16" in printed
    assert "config.json: shipped with llmkit" in printed and "not for answers" in printed
    assert json.loads((tmp_path / "smol" / "config.json").read_text())["num_hidden_layers"] == 30


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("no-such-owner/no-such-model", "Give it as SHAPE: a config.json file, or a folder"),
        ("T5", "'t5' is not a causal language model transformers can build"),
        ("MADE-UP", "model_type 'made-up' is not an architecture transformers knows"),
        ("DTYPE", "dtype 'int8': expected bfloat16, float16 or float32"),
        # transformers took the path for a hub id: "Repo id must use alphanumeric chars..."
        ("TOKENIZER", "--tokenizer ./nothere: no such folder here, and not a hub id (owner/name)"),
    ],
)
def test_errors_name_what_is_wrong_and_write_nothing(tmp_path, monkeypatch, shape, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["random-model", shape, "--out", str(tmp_path / "out")]
    if shape in ("T5", "MADE-UP"):
        args[1] = str(config_file(tmp_path, model_type=shape.lower(), architectures=[], vocab_size=100))
    if shape == "DTYPE":
        args[1:2] = [str(config_file(tmp_path, vocab_size=100)), "--dtype", "int8"]
    if shape == "TOKENIZER":
        args[1:2] = [str(config_file(tmp_path, vocab_size=100)), "--tokenizer", "./nothere"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == (2 if shape == "DTYPE" else 1)  # --dtype int8: a usage error, before anything loads
    unboxed = " ".join(line.strip("│╭╮╰╯─ ") for line in result.output.splitlines())  # rich's error box, unwrapped
    assert message in " ".join(unboxed.split()), result.output
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_transformers_cannot_load_is_said_as_the_flags(tmp_path, monkeypatch):
    """transformers' "It looks like the config file at 'afile' is not a valid JSON file" named no flag, where
    --model-config's errors do."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("hello\n")
    Path("empty").mkdir()
    for given, said in {
        "afile": "Error: --tokenizer afile: It looks like the config file at 'afile' is not a valid JSON file.",
        "empty": "Error: --tokenizer empty: ",
    }.items():
        args = ["random-model", str(config_file(tmp_path, vocab_size=100)), "--out", "out", "--tokenizer", given]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and result.output.startswith(said), result.output
        assert "Traceback" not in result.output and not Path("out").exists()


def test_a_device_it_does_not_offer_lists_the_ones_it_does(tmp_path):
    """Not torch's own list of device types ("Expected one of cpu, cuda, ipu, xpu, ... device type at start of
    device string: tpu")."""
    args = ["random-model", str(config_file(tmp_path)), "--out", str(tmp_path / "out"), "--device", "tpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2  # a usage error, before anything is made
    message = " ".join(line.strip("│╭╮╰╯─ ") for line in result.output.splitlines())  # rich's error box, unwrapped
    assert "Invalid value for '--device'" in message and "'tpu' is not one of 'auto', 'cpu', 'cuda'" in message
    assert not (tmp_path / "out").exists()


def test_a_tilde_in_out_is_the_home_folder(tmp_path, monkeypatch):
    """A quoted `--out "~/x"` made a folder named `~` in the cwd."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, ["random-model", str(config_file(tmp_path)), "--out", "~/models/tiny"])
    assert result.exit_code == 0, result.output
    assert (home / "models" / "tiny" / "llmkit_random_model.json").is_file() and list(cwd.iterdir()) == []


def test_an_out_that_is_a_link_is_written_through_and_stays_a_link(tmp_path):
    """A link --out (to an empty folder, to an earlier random model, dangling) was replaced by a real folder."""
    shape = str(config_file(tmp_path))
    (tmp_path / "empty").mkdir()
    targets = {"to-empty": tmp_path / "empty", "to-earlier": tmp_path / "earlier", "dangling": tmp_path / "later"}
    write_random_model(shape, targets["to-earlier"], dtype="float32")
    for name, target in targets.items():
        (tmp_path / name).symlink_to(target)
        result = CliRunner().invoke(app, ["random-model", shape, "--out", str(tmp_path / name), "--seed", "1"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).is_symlink() and (tmp_path / name).resolve() == target, name
        assert json.loads((target / "llmkit_random_model.json").read_text())["seed"] == 1, name
    (tmp_path / "nowhere").symlink_to(tmp_path / "gone" / "model")
    result = CliRunner().invoke(app, ["random-model", shape, "--out", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "in a folder that does not exist" in result.output, result.output
    assert not (tmp_path / "gone").exists() and (tmp_path / "nowhere").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing staged is left


def _under_a_file_size_limit(limit: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG as an error the writer raises, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_past_the_file_size_limit_is_one_line_naming_out(tmp_path):
    """safetensors says errno 27 (and 28, a full disk) as a SafetensorError, no OSError: random-model let it through
    as a traceback. A real failed write: a file-size limit stands in for a full disk (no tmpfs in tests)."""
    import subprocess
    import sys

    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "llmkit", "random-model", str(config_file(tmp_path)), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=lambda: _under_a_file_size_limit(100_000),
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "file size limit of 100,000 bytes" in done.stderr and str(out) in done.stderr
    assert not out.exists() and list(tmp_path.glob(".tiny*")) == []  # nothing of it is left
