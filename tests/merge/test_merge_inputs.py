"""Merging the adapters training and peft really write: embeddings grown for new tokens and trained whole
(modules_to_save), LoRA or a trained copy on a tied base's embeddings, pickled adapter_model.bin, weighted merges of
adapters with a rank_pattern, a new EOS, and a full fine-tune's folder given as the adapter. Tiny random models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from test_merge import lora_adapter, peft_merged, saved_tensors
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.schema import RESOLVED_CONFIG, load_config
from llmkit.merge.command import merge_command
from llmkit.merge.fold import merge_adapter
from llmkit.merge.weighted import load_weighted
from llmkit.merge.weights import AdapterMismatchError
from llmkit.train.run import train

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _generates(model_dir: Path, text: str) -> str:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(text, return_tensors="pt")
    return tokenizer.decode(model.generate(**batch, max_new_tokens=4, do_sample=False)[0])


def _adapter_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("base_model.model."): v for k, v in load_file(adapter / "adapter_model.safetensors").items()
    }


def test_trained_new_tokens_save_each_embedding_once_and_merge(tiny_config, tiny_model_dir, tmp_path):
    # tied base (SmolLM2's layout): peft ties lm_head to the trained embed_tokens copy (ensure_weight_tying)
    keys = {"tokens": ["<|mytok|>"], "lora_modules_to_save": ["embed_tokens", "lm_head"], "max_steps": 1}
    adapter = train(load_config(tiny_config(**keys)))
    tensors = _adapter_tensors(adapter)
    assert {k for k in tensors if "lora_" not in k} == {EMBED, HEAD}  # not also .modules_to_save/.original_module
    report = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged", dtype="float32")

    assert report.verification["max_logit_diff"] < 1e-3
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    config = AutoConfig.from_pretrained(tmp_path / "merged")
    merged = saved_tensors(tmp_path / "merged")
    assert config.tie_word_embeddings and HEAD not in merged  # the head is the trained copy: still one tensor
    assert config.vocab_size == len(tokenizer) == merged[EMBED].shape[0]
    assert torch.equal(merged[EMBED], tensors[EMBED])
    assert _generates(tmp_path / "merged", "Hello <|mytok|>").startswith("Hello <|mytok|>")


@pytest.mark.parametrize("family", ["tied", "llama", "gpt_neox"])
def test_peft_adapter_with_grown_trained_embeddings_merges_as_peft_does(
    family, tiny_model_dir, tiny_family_dir, tmp_path
):
    # plain peft saves six embedding matrices here (save_embedding_layers: the vocabulary grew)
    base = tiny_model_dir if family == "tied" else tiny_family_dir(family)
    model = AutoModelForCausalLM.from_pretrained(base)
    embed = model.get_input_embeddings()
    names = [n for n, m in model.named_modules() if m is embed or m is model.get_output_embeddings()]
    adapter = lora_adapter(
        base,
        tmp_path / "adapter",
        tokens=("<|mytok|>",),
        target_modules=["q_proj"] if family != "gpt_neox" else ["query_key_value"],
        modules_to_save=[n.rsplit(".", 1)[-1] for n in names],
        ensure_weight_tying=family == "tied",
    )
    assert any(".original_module." in k for k in _adapter_tensors(adapter))
    report = merge_adapter(base, adapter, tmp_path / "merged", dtype="float32")

    assert report.verification["max_logit_diff"] < 1e-3
    expected = peft_merged(base, adapter, torch.float32)
    config = AutoConfig.from_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()  # names as loaded (lm_head)
    assert merged.keys() == expected.keys()
    assert not [name for name in merged if not torch.equal(merged[name], expected[name])]
    assert config.tie_word_embeddings == (family == "tied")  # tied to the one trained copy
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(adapter))


@pytest.mark.parametrize(
    "lora",
    [
        # init_lora_weights False: peft starts lora_embedding_A at zero, and the test's random B alone adds nothing
        {"target_modules": ["embed_tokens", "q_proj"], "init_lora_weights": False},
        {"target_modules": ["embed_tokens", "q_proj"], "init_lora_weights": False, "tokens": ("<|mytok|>",)},
        {"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]},
    ],
    ids=["lora", "lora_grown", "modules_to_save"],
)
def test_changed_embeddings_of_a_tied_base_untie_the_head(lora, tiny_model_dir, tmp_path):
    # base + adapter computes the head with the old shared weight; folding into that one tensor would change it too
    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter", **lora)
    report = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged", dtype="float32")

    assert report.verification["max_logit_diff"] < 1e-3
    assert not AutoConfig.from_pretrained(tmp_path / "merged").tie_word_embeddings
    merged, base = saved_tensors(tmp_path / "merged"), saved_tensors(tiny_model_dir)
    # the old shared weight: the base's, or (vocabulary grown) the resized one the adapter saved as base_layer
    old = _adapter_tensors(adapter).get("model.embed_tokens.base_layer.weight", base[EMBED])
    assert torch.equal(merged[HEAD], old) and not torch.equal(merged[EMBED][: len(old)], old)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.equal(reloaded.lm_head.weight, old)  # transformers does not tie it back


def test_a_pickled_adapter_model_bin_merges_like_its_safetensors(tiny_model_dir, tmp_path):
    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter", target_modules=["q_proj", "v_proj"])
    merge_adapter(tiny_model_dir, adapter, tmp_path / "from_safetensors", dtype="float32", verify=False)
    tensors = load_file(adapter / "adapter_model.safetensors")
    torch.save(tensors, adapter / "adapter_model.bin")  # what peft's save_pretrained(safe_serialization=False) writes
    (adapter / "adapter_model.safetensors").unlink()
    report = merge_adapter(tiny_model_dir, adapter, tmp_path / "from_bin", dtype="float32")

    assert report.verification["max_logit_diff"] < 1e-3
    from_bin, from_safetensors = saved_tensors(tmp_path / "from_bin"), saved_tensors(tmp_path / "from_safetensors")
    assert all(torch.equal(from_bin[name], from_safetensors[name]) for name in from_safetensors)
    (adapter / "adapter_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="adapter_model.bin cannot be read as a weights-only PyTorch file"):
        merge_adapter(tiny_model_dir, adapter, tmp_path / "broken", dtype="float32")
    # safetensors' error, on a file cut short by an interrupted copy, named no file (a traceback in `llmkit merge`)
    (adapter / "adapter_model.bin").unlink()
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10")
    with pytest.raises(ValueError, match=r"adapter_model.safetensors cannot be read as safetensors \(empty or cut"):
        merge_adapter(tiny_model_dir, adapter, tmp_path / "broken", dtype="float32")


@pytest.mark.parametrize(
    ("family", "indices"), [("tied", [1, 5, 9]), ("llama", {"embed_tokens": [2, 7]})], ids=["tied_list", "dict"]
)
def test_trainable_token_indices_merge_to_the_peft_models_logits(
    family, indices, tiny_model_dir, tiny_family_dir, tmp_path
):
    """peft's TrainableTokens inside LoRA: merge said "...token_adapter.trainable_tokens_delta is [3, 64] in the
    adapter but absent in the base"; peft's merge writes the trained rows into the embeddings."""
    base = tiny_model_dir if family == "tied" else tiny_family_dir(family)
    adapter = lora_adapter(base, tmp_path / "adapter", target_modules=["q_proj"], trainable_token_indices=indices)
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
    tensors[key] += 0.5 * torch.randn_like(tensors[key])  # peft starts the rows at the base's: trained ones differ
    save_file(tensors, weights)
    report = merge_adapter(base, adapter, tmp_path / "merged", dtype="float32")

    assert report.verification["max_logit_diff"] < 1e-3
    ids = torch.tensor([[1, 5, 9, 2, 7, 20, 30, 9, 40]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)
    rows = sorted(indices if isinstance(indices, list) else indices["embed_tokens"])
    changed = (saved_tensors(tmp_path / "merged")[EMBED] != saved_tensors(base)[EMBED]).any(dim=1)
    assert changed.nonzero().flatten().tolist() == rows
    spec = {"adapters": [str(adapter), str(adapter)], "weights": [0.5, 0.5], "out": str(tmp_path / "fused")}
    with pytest.raises(ValueError, match=rf"{adapter} trains embedding rows .* merge that adapter alone"):
        merge_command(base=str(base), dtype="float32", **spec)  # peft's combination kept the base's rows


@pytest.mark.parametrize("name", ["default", "foo"])
def test_an_adapter_saved_from_a_peft_models_state_dict_merges_to_the_peft_models_logits(
    tiny_model_dir, tmp_path, name
):
    """Keys with peft's adapter name (lora_A.default.weight, or lora_A.foo.weight where the PeftModel named the
    adapter foo), which peft loads as the adapter of that name: merge said "...lora_A.default.weight is [8, 64] in
    the adapter but absent in the base", and the same of lora_A.foo.weight when default was read."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter", target_modules=["q_proj", "v_proj"], use_dora=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, adapter, adapter_name=name).eval()
    named = {key: tensor for key, tensor in peft_model.state_dict().items() if ".lora_" in key}
    assert all(f".{name}" in key for key in named)
    save_file(named, adapter / "adapter_model.safetensors")
    report = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged", dtype="float32")

    assert report.verification["max_logit_diff"] < 1e-3
    ids = torch.tensor([[1, 5, 9, 5, 6, 20, 30, 9, 40]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(ids).logits
    assert (expected - base).abs().max() > 1e-3  # the adapter changes the model
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)


def _saved_from_state_dict(base: Path, adapter: Path, out: Path) -> Path:
    """`adapter` again, its weights as a PeftModel's state_dict names them (lora_A.default.weight)."""
    shutil.copytree(adapter, out)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    named = {key: tensor for key, tensor in peft_model.state_dict().items() if ".lora_" in key}
    assert named and all(".default." in key for key in named)
    save_file(named, out / "adapter_model.safetensors")
    return out


def test_a_weighted_merge_of_adapters_saved_from_a_peft_models_state_dict_is_that_of_the_adapters(
    tiny_model_dir, tmp_path
):
    """A weighted merge refused keys with peft's adapter name (lora_A.default.weight), which a single merge and the
    server read; peft combines them, mapped as the server maps them, into what it makes of the adapters as saved."""
    saved = [
        lora_adapter(tiny_model_dir, tmp_path / name, seed=seed, target_modules=["q_proj", "v_proj"])
        for seed, name in enumerate(["a", "b"])
    ]
    named = [_saved_from_state_dict(tiny_model_dir, path, tmp_path / f"{path.name}-named") for path in saved]
    merged = {}
    for kind, adapters in {"saved": saved, "named": named}.items():
        spec = {"adapters": [str(path) for path in adapters], "weights": [0.7, 0.3], "out": str(tmp_path / kind)}
        report, _ = merge_command(base=str(tiny_model_dir), dtype="float32", combination="ties", density=0.5, **spec)
        assert report.verification["max_logit_diff"] < 1e-3
        merged[kind] = saved_tensors(tmp_path / kind)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged["saved"][name], saved_tensors(tiny_model_dir)[name])  # the adapters are in it
    assert merged["named"].keys() == merged["saved"].keys()
    assert all(torch.equal(merged["named"][key], merged["saved"][key]) for key in merged["saved"])


def test_weighted_merge_of_adapters_with_other_ranks_names_module_and_ranks(tiny_model_dir, tmp_path):
    first = lora_adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj", "o_proj"])
    second = lora_adapter(
        tiny_model_dir, tmp_path / "b", target_modules=["q_proj", "o_proj"], rank_pattern={"o_proj": 2}
    )
    spec = {"adapters": [str(first), str(second)], "weights": [0.5, 0.5], "out": str(tmp_path / "fused")}
    message = (
        rf"combine {first} and {second} with combination_type linear: model.layers.0.self_attn.o_proj has rank 8 "
        r"in the first but 2 in the second .* use cat"
    )
    with pytest.raises(ValueError, match=message):
        merge_command(base=str(tiny_model_dir), dtype="float32", **spec)
    report, _ = merge_command(base=str(tiny_model_dir), dtype="float32", combination="cat", **spec)
    assert report.verification["max_logit_diff"] < 1e-3


def test_a_weighted_merge_reads_each_adapters_weights_once(tiny_model_dir, tmp_path, monkeypatch):
    """It read each adapter's weights twice before peft loads them: for the ranks, then for the fit to the base."""
    import safetensors

    from llmkit.merge import weights

    first = lora_adapter(tiny_model_dir, tmp_path / "a", target_modules=["q_proj"])
    second = lora_adapter(tiny_model_dir, tmp_path / "b", target_modules=["q_proj"], seed=1)
    opened = []
    for module, name in [(weights, "load_file"), (weights, "safe_open"), (safetensors, "safe_open")]:
        original = getattr(module, name)
        monkeypatch.setattr(
            module,
            name,
            lambda file, *args, _read=original, **kw: opened.append(Path(file)) or _read(file, *args, **kw),
        )
    spec = {"adapters": [str(first), str(second)], "weights": [0.5, 0.5], "out": str(tmp_path / "fused")}
    report, _ = merge_command(base=str(tiny_model_dir), dtype="float32", **spec)

    assert report.verification["max_logit_diff"] < 1e-3
    for adapter in (first, second):
        assert opened.count(adapter / "adapter_model.safetensors") == 1


def test_weighted_merge_refuses_fully_trained_modules(tiny_model_dir, tmp_path):
    first = lora_adapter(tiny_model_dir, tmp_path / "a", modules_to_save=["lm_head"])
    second = lora_adapter(tiny_model_dir, tmp_path / "b")
    spec = {"adapters": [str(first), str(second)], "weights": [0.5, 0.5], "out": str(tmp_path / "fused")}
    with pytest.raises(ValueError, match=rf"{first} trains lm_head fully \(modules_to_save"):
        merge_command(base=str(tiny_model_dir), dtype="float32", **spec)
    assert not (tmp_path / "fused").exists()


def test_a_new_eos_reaches_the_merged_config_and_generation_config(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base_eos, base_pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    tokenizer.add_special_tokens({"eos_token": "<|myeos|>"})  # what special_tokens: {eos_token: ...} does
    model.resize_token_embeddings(len(tokenizer))
    get_peft_model(model, LoraConfig(target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "a")
    merge_adapter(tiny_model_dir, tmp_path / "a", tmp_path / "merged", dtype="float32", verify=False)

    eos = AutoTokenizer.from_pretrained(tmp_path / "merged").eos_token_id
    assert eos == len(tokenizer) - 1 != base_eos
    config, generation = (
        AutoConfig.from_pretrained(tmp_path / "merged"),
        GenerationConfig.from_pretrained(tmp_path / "merged"),
    )
    assert config.eos_token_id == generation.eos_token_id == eos
    assert config.pad_token_id == base_pad  # unchanged by training: the base's
    plain = lora_adapter(tiny_model_dir, tmp_path / "plain", target_modules=["q_proj"])
    merge_adapter(tiny_model_dir, plain, tmp_path / "plain_merged", dtype="float32", verify=False)
    assert json.loads((tmp_path / "plain_merged" / "config.json").read_text())["eos_token_id"] == base_eos


def test_the_trained_turn_end_stops_generation_of_the_merged_model(tiny_config, tiny_model_dir, tmp_path):
    """eot_tokens (Gemma's <end_of_turn>, where its EOS is <eos>): the merged model's generation config stops there
    too, after the base's EOS, so neither engine writes past the turn training taught to end."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    turn_end = "<|im_start|>"  # a special token of this tokenizer that is not its EOS
    assert tokenizer.convert_tokens_to_ids(turn_end) != tokenizer.eos_token_id
    adapter = lora_adapter(tiny_model_dir, tmp_path / "run", target_modules=["q_proj"])
    (adapter / RESOLVED_CONFIG).write_text(tiny_config(eot_tokens=[turn_end]).read_text())
    merge_adapter(tiny_model_dir, adapter, tmp_path / "merged", dtype="float32", verify=False)

    generation = GenerationConfig.from_pretrained(tmp_path / "merged")
    assert generation.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(turn_end)]
    assert AutoConfig.from_pretrained(tmp_path / "merged").eos_token_id == tokenizer.eos_token_id


def test_a_full_fine_tune_is_said_to_need_no_merge(tiny_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["merge", "--adapter", str(tiny_model_dir), "--base", str(tiny_model_dir)])
    assert result.exit_code == 1
    assert f"{tiny_model_dir} holds no adapter_config.json but a full model" in result.output
    assert "needs no merge, serve the folder directly" in result.output
    (tmp_path / "notes").mkdir()
    result = runner.invoke(app, ["merge", "--adapter", str(tmp_path / "notes"), "--base", str(tiny_model_dir)])
    assert result.exit_code == 1 and "not a peft adapter directory" in result.output


def test_an_adapter_given_as_the_base_is_said_to_be_one(tiny_model_dir, tmp_path):
    """`merge --base <an adapter's folder>` stopped on ModelConfigNotFound's traceback ("a local path without a
    config.json"); it is the same line serve and submission say (models.local_model_dir), naming --base."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / "run")
    flags = ["merge", "--adapter", str(adapter), "--base", str(adapter), "--out", str(tmp_path / "merged")]
    result = CliRunner().invoke(app, flags)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    said = f"Error: --base: {adapter} is a LoRA adapter (adapter_config.json, no config.json), not a model: serve or"
    assert said in " ".join(result.output.split()), result.output
    assert f"--model {tiny_model_dir} --adapter {adapter}" in " ".join(result.output.split()), result.output


def test_an_out_that_cannot_be_made_is_said_as_out(tiny_model_dir, tmp_path):
    """A --out under a file (or where it may not write) said "Error: <folder> is a file, not a folder", naming no
    flag; train and submission name theirs."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / "run")
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "merged"
    result = CliRunner().invoke(app, ["merge", "--adapter", str(adapter), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"Error: --out {out}: {tmp_path / 'notes.txt'} is a file, not a folder" in result.output, result.output


def _file_size_limit(limit: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG as an error the writer raises, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_merge_past_the_file_size_limit_names_the_limit_and_out(tiny_model_dir, tmp_path):
    """Under `ulimit -f` merge said a bare "Error: [Errno 27] File too large", naming neither the limit nor --out
    (core.files.disk_full now knows errno 27). A real failed write, in a process of its own."""
    import sys

    adapter = lora_adapter(tiny_model_dir, tmp_path / "run")
    out = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "llmkit", "merge", "--adapter", str(adapter), "--base", str(tiny_model_dir)]
        + ["--out", str(out), "--dtype", "float32"],
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=lambda: _file_size_limit(100_000),
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    said = f"reached this process's file size limit of 100,000 bytes (`ulimit -f`): the merged model for {out} did not"
    assert said in " ".join(done.stderr.split()), done.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing of it is left


def test_an_out_folder_holding_other_files_or_the_adapter_is_refused_untouched(tiny_model_dir, tmp_path):
    """A merge replaces its --out whole: it deleted a folder of notes, and the adapter itself when --out named it."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / "run")
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match=rf"--out {notes} holds other files \(no llmkit_merge.json"):
        merge_adapter(tiny_model_dir, adapter, notes, dtype="float32")
    assert (notes / "todo.txt").read_text() == "mine" and (notes / "sub").is_dir()
    for out in (adapter, tmp_path):
        with pytest.raises(ValueError, match=rf"--out {out} holds the adapter {adapter}"):
            merge_adapter(tiny_model_dir, adapter, out, dtype="float32")
    assert (adapter / "adapter_model.safetensors").is_file()
    with pytest.raises(ValueError, match="--max-shard-size 5 GiB: not a size .*Unit 'IB' not supported"):
        merge_adapter(tiny_model_dir, adapter, tmp_path / "new", max_shard_size="5 GiB")
    for size in ("-1MB", "0GB", "infKB"):  # huggingface_hub reads each; every tensor got its own shard
        with pytest.raises(ValueError, match=f"--max-shard-size {size}: a shard must hold at least one byte"):
            merge_adapter(tiny_model_dir, adapter, tmp_path / "new", max_shard_size=size)
    with pytest.raises(ValueError, match="--max-shard-size nanMB: not a size"):
        merge_adapter(tiny_model_dir, adapter, tmp_path / "new", max_shard_size="nanMB")
    merged = tmp_path / "merged"
    merge_adapter(tiny_model_dir, adapter, merged, dtype="float32", verify=False)
    merge_adapter(tiny_model_dir, adapter, merged, dtype="bfloat16", verify=False)  # an earlier merge: replaced
    assert json.loads((merged / "llmkit_merge.json").read_text())["inputs"]["dtype"] == "torch.bfloat16"


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--combination", "nonsense"], "Error: --combination: Input should be 'linear', 'cat', 'svd', 'ties'"),
        (["--combination", "ties"], "Error: --combination ties needs --density (e.g. 0.5)"),
        (["--density", "0", "--combination", "ties"], "Error: --density: Input should be greater than 0 (got 0.0)"),
        (["--weight", "nan", "--weight", "0.5"], "Error: --weight: Input should be a finite number (got nan)"),
        (["--weight", "1", "--weight", "-inf"], "Error: --weight: Input should be a finite number (got -inf)"),
    ],
)
def test_a_bad_weighted_merge_flag_is_one_line_naming_the_flag(flags, error, tmp_path):
    """`--combination nonsense` printed pydantic's dump, naming the fusion file's combination_type."""
    adapters = ["--adapter", str(tmp_path / "a"), "--adapter", str(tmp_path / "b")]
    result = CliRunner().invoke(app, ["merge", *adapters, *flags, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2  # a usage error
    assert result.output.startswith(error) and result.output.count("\n") == 1, result.output
    assert "combination_type" not in result.output and "validation error" not in result.output


def test_an_empty_or_list_weighted_file_is_said_as_a_config_would_be(tmp_path):
    """pydantic's "Input should be a valid dictionary or instance of WeightedMerge" where a config's loader said the
    file is empty, or got a list (llmkit.core.yaml_files reads all three kinds of file)."""
    fusion = tmp_path / "fusion.yml"
    for text, said in {
        "": "the file is empty: a weighted-merge file is a mapping of keys to values (adapters: ...)",
        "- a\n- b\n": "expected a mapping of keys to values (adapters: ...), got a list",
    }.items():
        fusion.write_text(text)
        result = CliRunner().invoke(app, ["merge", "--weighted", str(fusion), "--out", str(tmp_path / "out")])
        assert result.exit_code == 1 and result.output == (
            f"Error: Invalid weighted-merge file {fusion}:\n  - {said}\n"
        ), result.output
    assert not (tmp_path / "out").exists()


def test_flags_beside_a_weighted_file_are_refused_by_name(tmp_path):
    """`--weighted FILE --adapter DIR` merged the file's adapters alone, rc 0: the flags went unread."""
    fusion = tmp_path / "fusion.yml"
    fusion.write_text(f"adapters: [{{path: {tmp_path / 'a'}}}, {{path: {tmp_path / 'b'}}}]\n")
    weighted = ["merge", "--weighted", str(fusion), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*weighted, "--adapter", str(tmp_path / "c")])
    assert result.exit_code == 2  # a usage error
    assert result.output.startswith(f"Error: --weighted {fusion} describes the whole merge"), result.output
    assert "--adapter would be ignored beside it" in result.output
    flags = ["--base", "b", "--weight", "0.5", "--combination", "ties", "--density", "0.5"]
    result = CliRunner().invoke(app, [*weighted, "config.yml", *flags])
    assert result.exit_code == 2
    assert "CONFIG, --base, --weight, --combination, --density would be ignored" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_weighted_merge_of_an_adapter_for_another_base_names_it_and_both_bases(
    make_tiny_model, tiny_model_dir, tmp_path
):
    """peft printed a 29-line "size mismatch" state-dict dump naming neither the adapter folder nor its base."""
    from transformers import LlamaConfig, LlamaForCausalLM

    narrow = make_tiny_model(LlamaConfig, LlamaForCausalLM, hidden_size=32, intermediate_size=64)
    fits, other = lora_adapter(tiny_model_dir, tmp_path / "a"), lora_adapter(narrow, tmp_path / "b")
    message = (
        rf"adapter {other} \(trained on {narrow}\) does not fit base model {tiny_model_dir}: "
        r"model\.layers\.0\.\w+\.\w+_proj is \d+->\d+ in the base but \d+->\d+ in the adapter$"
    )
    with pytest.raises(AdapterMismatchError, match=message):
        merge_command(adapters=[str(fits), str(other)], weights=[0.5, 0.5], out=str(tmp_path / "fused"))
    assert not (tmp_path / "fused").exists() and not list(tmp_path.glob(".fused.*"))


def test_non_finite_adapters_and_weights_are_refused_naming_them(tiny_model_dir, tmp_path):
    """NaN or inf in an adapter (a diverged run) or a weight (nan, inf, 1e308) merged into a model of NaNs that
    verified with a difference of 0 and 100% agreement, rc 0."""
    good, nan = lora_adapter(tiny_model_dir, tmp_path / "good"), lora_adapter(tiny_model_dir, tmp_path / "nan")
    tensors = load_file(nan / "adapter_model.safetensors")
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, nan / "adapter_model.safetensors")
    refusal = f"{nan / 'adapter_model.safetensors'} is not finite: {name} holds 1 NaN or infinite values of 512"
    for adapters in (["--adapter", str(nan)], ["--adapter", str(good), "--adapter", str(nan)]):
        result = CliRunner().invoke(app, ["merge", *adapters, "--out", str(tmp_path / "merged")])
        assert result.exit_code == 1 and result.output.startswith(f"Error: {refusal}"), result.output
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))

    huge = ["--adapter", str(good), "--adapter", str(good), "--weight", "1e308", "--weight", "1e308"]
    result = CliRunner().invoke(app, ["merge", *huge, "--out", str(tmp_path / "merged")])
    assert result.exit_code == 1, result.output
    assert "Error: peft's linear combination with weights 1e+308, 1e+308 is not finite: " in result.output
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))
    fusion = tmp_path / "fusion.yml"
    fusion.write_text(f"adapters: [{{path: good, weight: .nan}}, {{path: {good}, weight: .inf}}]\n")
    message = r"(?s)adapters\[0\]\.weight: Input should be a finite number .*adapters\[1\]\.weight: Input should be a"
    with pytest.raises(ValueError, match=message):
        load_weighted(fusion)


def test_a_tilde_in_adapter_and_out_is_the_home_folder(tiny_model_dir, tmp_path, monkeypatch):
    """A quoted `--out "~/x"` made a folder named `~` in the cwd (and verification failed after the whole merge)."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    lora_adapter(tiny_model_dir, home / "run")
    base = ["merge", "--base", str(tiny_model_dir), "--dtype", "float32"]
    result = CliRunner().invoke(app, [*base, "--adapter", "~/run", "--out", "~/merged"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*base, "--adapter", "~/run", "--no-verify"])  # default: <adapter>/merged
    assert result.exit_code == 0, result.output
    assert (home / "merged" / "llmkit_merge.json").is_file()
    assert (home / "run" / "merged" / "llmkit_merge.json").is_file()
    assert list(cwd.iterdir()) == []


def test_an_out_that_is_a_link_is_written_through_and_stays_a_link(tiny_model_dir, tmp_path):
    """`merge --out LINK` moved the link aside and put a real folder in its place: the link's target never changed."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / "run")
    (tmp_path / "models").mkdir()
    (tmp_path / "current").symlink_to(tmp_path / "models" / "v1")  # dangling until the merge
    flags = ["merge", "--adapter", str(adapter), "--base", str(tiny_model_dir), "--out", str(tmp_path / "current")]
    result = CliRunner().invoke(app, [*flags, "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "current").is_symlink() and (tmp_path / "models" / "v1" / "llmkit_merge.json").is_file()
    result = CliRunner().invoke(app, [*flags, "--dtype", "bfloat16", "--no-verify"])  # over the earlier merge
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "models" / "v1" / "llmkit_merge.json").read_text())
    assert (tmp_path / "current").is_symlink() and manifest["inputs"]["dtype"] == "torch.bfloat16"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v1"]


def test_a_refused_merge_leaves_no_new_parent_folders_of_out(tiny_model_dir, default_model_dir, tmp_path):
    """`--out new/deeper/merged` for an adapter that does not fit the base left new/deeper/ behind, empty."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / "run")
    flags = ["--adapter", str(adapter), "--base", str(default_model_dir), "--dtype", "bfloat16"]
    result = CliRunner().invoke(app, ["merge", *flags, "--out", str(tmp_path / "new" / "deeper" / "merged")])
    assert result.exit_code == 1 and "in the base but" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("sharded", [False, True])
def test_a_base_whose_weights_are_cut_short_is_named_by_merge_and_serve(sharded, tiny_model_dir, python, tmp_path):
    """`truncate -s 3000 model.safetensors` in the base ended merge and serve in safetensors' traceback ("incomplete
    metadata"), naming no file; an adapter's weights cut short were already said so, in these words."""
    base = tmp_path / "base"
    if sharded:  # a shard of an indexed base
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(base, max_shard_size="2MB")
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    else:
        shutil.copytree(tiny_model_dir, base)
    adapter = lora_adapter(base, tmp_path / "adapter")
    cut = sorted(base.glob("*.safetensors"))[-1]
    os.truncate(cut, 3000)
    said = f"{cut} cannot be read as safetensors (empty or cut short?)"
    flags = ["--adapter", str(adapter), "--base", str(base), "--out", str(tmp_path / "merged")]
    result = CliRunner().invoke(app, ["merge", *flags], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and said in " ".join(result.output.split()), result.output
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))
    command = [python, "-m", "llmkit.server", "--model", str(base), "--device", "cpu", "--port", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and f"Error: cannot serve: {said}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_adapter_merged_into_another_model_whose_shapes_fit_is_warned_of(
    tiny_model_dir, tiny_family_dir, tmp_path, caplog
):
    """A Llama adapter merged into a Mistral of the same sizes (`merge --base <mistral>`) was merged without a word,
    and a weighted merge of a Llama's and a Mistral's adapters folded both."""
    mistral = tiny_family_dir("mistral")
    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter")
    merge_adapter(mistral, adapter, tmp_path / "merged", dtype="float32", verify=False)
    said = [r.getMessage() for r in caplog.records if "is another model" in r.getMessage()]
    assert said == [
        f"{adapter} was trained on {tiny_model_dir}, but --base {mistral} is another model (model_type llama vs "
        "mistral): the merge is not the model that was trained, even where the shapes fit"
    ]
    # the same model under another name: a local copy, or a hub id whose config is nowhere at hand (no evidence)
    caplog.clear()
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    merge_adapter(copy, adapter, tmp_path / "merged-copy", dtype="float32", verify=False)
    unknown = shutil.copytree(adapter, tmp_path / "from-hub")
    config = json.loads((unknown / "adapter_config.json").read_text())
    (unknown / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": "someone/unknown"}))
    merge_adapter(copy, unknown, tmp_path / "merged-unknown", dtype="float32", verify=False)
    assert not [r for r in caplog.records if "is another model" in r.getMessage()]

    # a weighted merge of adapters trained on different models is refused; on one model named two ways it is not
    other = lora_adapter(mistral, tmp_path / "mistral-adapter")
    refusal = (
        f"{adapter} was trained on {tiny_model_dir} but {other} on {mistral}, another model (model_type llama vs "
        "mistral): a weighted merge adds their deltas onto one base; merge each onto its own base"
    )
    result = CliRunner().invoke(
        app, ["merge", "--adapter", str(adapter), "--adapter", str(other), "--out", str(tmp_path / "fused")]
    )
    assert result.exit_code == 1 and refusal in " ".join(result.output.split()), result.output
    assert not (tmp_path / "fused").exists() and not list(tmp_path.glob(".fused.*"))
    from llmkit.merge.fold import check_same_base  # here: the parts above fail on the code before it, not the import

    check_same_base([adapter, lora_adapter(copy, tmp_path / "copy-adapter"), unknown])
