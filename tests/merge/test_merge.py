"""Merging (llmkit/merge/fold.py): the shard-wise merge equals peft's merge_and_unload, the output is a complete
16-bit model, verification catches a wrong merge, kills leave nothing half-written, weighted merges combine
adapters, bad input fails clearly. Most tests use the tiny random Llama (merges in a second); the slow ones merge
an adapter trained from the default config into the embedded model and serve it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.merge.command import merge_command
from llmkit.merge.fold import MANIFEST, merge_adapter
from llmkit.merge.verify import VerificationError, verify_merge
from llmkit.merge.weighted import load_weighted
from llmkit.merge.weights import AdapterMismatchError, Nf4Options

ROOT = Path(__file__).resolve().parents[2]


def lora_adapter(base_dir: Path, out: Path, *, seed: int = 0, std: float = 0.05, tokens=(), **lora) -> Path:
    """A peft LoRA adapter with random non-zero B (so merging changes the weights) saved with its tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokens:  # training added special tokens: the embeddings grow and the adapter carries them
        tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)})
        model.resize_token_embeddings(len(tokenizer))
    config = LoraConfig(task_type="CAUSAL_LM", **{"r": 8, "lora_alpha": 16, "target_modules": "all-linear", **lora})
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.normal_(0, std)
            elif "lora_magnitude_vector" in name:
                param.mul_(1 + 0.1 * torch.randn_like(param))  # DoRA: magnitudes that differ from the norms
            elif "modules_to_save" in name:
                param.add_(0.01 * torch.randn_like(param))  # a fully trained module
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def peft_merged(base_dir: Path, adapter: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """What peft's own merge_and_unload makes of base + adapter, as a state dict."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def saved_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def tree_digest(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "plain": lora_adapter(tiny_model_dir, root / "plain"),
        "other": lora_adapter(tiny_model_dir, root / "other", seed=1),
        "dora_rslora_head": lora_adapter(
            tiny_model_dir,
            root / "dora",
            target_modules=["q_proj", "v_proj", "down_proj"],
            use_dora=True,
            use_rslora=True,
            modules_to_save=["lm_head"],
        ),
        "embedding_patterns_tokens": lora_adapter(
            tiny_model_dir,
            root / "emb",
            target_modules=["embed_tokens", "q_proj", "up_proj"],
            rank_pattern={"q_proj": 4},
            alpha_pattern={"up_proj": 32},
            tokens=("<|answer|>",),
        ),
    }


@pytest.mark.parametrize("kind", ["plain", "dora_rslora_head", "embedding_patterns_tokens"])
def test_shardwise_merge_equals_peft_merge_and_unload(kind, adapters, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    report = merge_adapter(tiny_model_dir, adapters[kind], out, dtype="bfloat16", max_shard_size="2MB")

    expected = peft_merged(tiny_model_dir, adapters[kind], torch.bfloat16)
    config = AutoConfig.from_pretrained(out)
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")  # tied: stored once, as the input embeddings
    merged = saved_tensors(out)
    assert merged.keys() == expected.keys()
    unequal = [name for name in merged if not torch.equal(merged[name], expected[name])]
    assert not unequal, f"differ from peft's merge_and_unload: {unequal}"
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}
    assert str(config.dtype).removeprefix("torch.") == "bfloat16"
    assert getattr(config, "quantization_config", None) is None
    index = json.loads((out / "model.safetensors.index.json").read_text())  # 2MB shards: the embeddings alone
    assert set(index["weight_map"]) == set(merged) and len(set(index["weight_map"].values())) > 1
    assert report.verification["token_agreement"] >= report.verification["tolerance"]["min_token_agreement"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # transformers reads what we wrote, index and all
    assert reloaded.dtype == torch.bfloat16
    reloaded.save_pretrained(tmp_path / "saved", max_shard_size="2MB")  # the layout transformers itself writes
    saved = json.loads((tmp_path / "saved" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == saved["metadata"]["total_size"]
    assert index["weight_map"].keys() == saved["weight_map"].keys()  # the tensor order may differ: an untied head
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(saved["weight_map"].values()))


def test_merged_model_carries_training_tokenizer_and_grown_vocabulary(adapters, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    merge_adapter(tiny_model_dir, adapters["embedding_patterns_tokens"], out, dtype="bfloat16", verify=False)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|answer|>" in tokenizer.get_vocab()
    assert AutoConfig.from_pretrained(out).vocab_size == len(tokenizer)
    assert (out / "generation_config.json").is_file()
    assert json.loads((out / MANIFEST).read_text())["inputs"]["adapter"]["adapter_model.safetensors"]


def test_the_guessed_dtype_is_said_when_merging_not_when_a_merge_is_kept(adapters, tiny_model_dir, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "merged"  # a float32 base, an adapter without its training config: bfloat16 is a guess
    assert merge_adapter(tiny_model_dir, adapters["plain"], out, verify=False).dtype == "bfloat16"
    assert "merging in bfloat16 (--dtype float32 keeps float32" in caplog.text
    caplog.clear()
    assert merge_adapter(tiny_model_dir, adapters["plain"], out, verify=False).skipped
    assert "merging in bfloat16" not in caplog.text and "already holds this merge" in caplog.text


def test_unchanged_inputs_skip_and_changed_adapter_remerges(adapters, tiny_model_dir, tmp_path):
    adapter = shutil.copytree(adapters["plain"], tmp_path / "adapter")
    out = tmp_path / "merged"
    first = merge_adapter(tiny_model_dir, adapter, out, dtype="bfloat16", verify=False)
    before = tree_digest(out)
    again = merge_adapter(tiny_model_dir, adapter, out, dtype="bfloat16", verify=False)
    assert again.skipped and not first.skipped and tree_digest(out) == before
    # the same files under other names: still skipped, and said by the names given now, not the first run's
    moved, base = shutil.copytree(adapter, tmp_path / "moved"), shutil.copytree(tiny_model_dir, tmp_path / "base")
    flags = ["--base", str(base), "--adapter", str(moved), "--out", str(out), "--dtype", "bfloat16", "--no-verify"]
    result = CliRunner().invoke(app, ["merge", *flags])
    assert result.exit_code == 0 and "unchanged, skipped" in result.output, result.output
    assert f"adapter: {moved}" in result.output.splitlines() and f"base: {base}" in result.output.splitlines()
    assert re.search(rf"│ time +│ {first.seconds:.1f} s \(when it was merged\)", result.output), result.output
    assert tree_digest(out) == before
    shutil.copy2(adapters["other"] / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    changed = merge_adapter(tiny_model_dir, adapter, out, dtype="bfloat16", verify=False)
    assert not changed.skipped
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(saved_tensors(out)[name], peft_merged(tiny_model_dir, adapters["other"], torch.bfloat16)[name])
    assert not list(tmp_path.glob(".merged.*"))  # no temp or moved-aside folders left


@pytest.mark.parametrize("damage", ["deleted", "truncated", "changed", "unrecorded"])
def test_a_merge_whose_files_were_damaged_is_merged_again_saying_why(
    damage, adapters, tiny_model_dir, tmp_path, caplog
):
    """A weights file deleted or cut to 1,000 bytes was "already holds this merge (inputs unchanged); skipping",
    with the old size and file count in the summary: the inputs alone were compared, and the submission bundled
    the broken file."""
    out = tmp_path / "merged"
    flags = ["--adapter", str(adapters["plain"]), "--base", str(tiny_model_dir), "--out", str(out), "--no-verify"]
    assert CliRunner().invoke(app, ["merge", *flags]).exit_code == 0
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    if damage == "deleted":
        weights.unlink()
        why = "model.safetensors is missing"
    elif damage == "truncated":
        os.truncate(weights, 1000)
        why = f"model.safetensors is 1,000 bytes, not the {len(good):,} it was written with"
    elif damage == "changed":  # the same size: only the hash tells
        weights.write_bytes(good[:-4] + bytes(4 * [255]))
        why = "model.safetensors has changed since it was written (another sha256)"
    else:  # a merge an older llmkit wrote: its manifest records no output files, so none can be checked
        manifest = json.loads((out / MANIFEST).read_text())
        del manifest["outputs"]
        (out / MANIFEST).write_text(json.dumps(manifest))
        why = "it lists no files: written by an older llmkit"
    result = CliRunner().invoke(app, ["merge", *flags], env={"COLUMNS": "400"})
    assert result.exit_code == 0 and "unchanged, skipped" not in result.output, result.output
    assert f"{out} no longer holds the merge its {MANIFEST} records ({why}); merging again" in caplog.text
    assert weights.read_bytes() == good
    size = sum(p.stat().st_size for p in out.iterdir() if p.name != MANIFEST) / 1e6
    assert f"{size:,.1f} MB in {len(list(out.iterdir()))} files" in result.output
    again = CliRunner().invoke(app, ["merge", *flags])
    assert again.exit_code == 0 and "unchanged, skipped" in again.output, again.output


def test_verification_catches_a_wrong_merge(adapters, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    good = merge_adapter(tiny_model_dir, adapters["plain"], out, dtype="float32")
    assert good.verification["max_logit_diff"] < 1e-3
    with pytest.raises(VerificationError, match="disagrees with base \\+ adapter"):
        verify_merge(out, tiny_model_dir, adapters["other"], torch.float32)  # merged A, checked against B


def test_verification_fails_on_non_finite_logits_naming_whose(adapters, tiny_model_dir, tmp_path):
    """A merged model of NaNs verified with a largest difference of 0 (max(0.0, nan) is 0.0) and 100% agreement
    (all-NaN rows share their argmax)."""
    out = tmp_path / "merged"
    merge_adapter(tiny_model_dir, adapters["plain"], out, dtype="float32", verify=False)
    name = "model.layers.0.mlp.down_proj.weight"
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    for model in (out, base):  # a merge, or a base, gone NaN
        tensors = load_file(model / "model.safetensors")
        tensors[name][:, 0] = float("nan")
        save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VerificationError, match=r"The merged model gives NaN or infinite logits at \d+ of \d+ pos"):
        verify_merge(out, tiny_model_dir, adapters["plain"], torch.float32)
    message = rf"base \+ adapter \({base} \+ {adapters['plain']}\) gives NaN or infinite logits at \d+ of \d+"
    with pytest.raises(VerificationError, match=message):
        verify_merge(tiny_model_dir, base, adapters["plain"], torch.float32)


def test_an_nf4_round_trip_of_some_layers_is_checked_against_those_layers_in_4_bits(tiny_model_dir, tmp_path):
    """The round-trip leaves untargeted layers at the base's precision, but the reference quantized every linear
    layer: in float32 a correct merge was 0.11 logits off (tolerance 0.05) and refused."""
    from llmkit.merge.verify import agreement, reference_of

    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter", target_modules=["q_proj", "v_proj", "up_proj"])
    out = tmp_path / "merged"
    merge_adapter(tiny_model_dir, adapter, out, dtype="float32", nf4_roundtrip=True, verify=False)
    checked = verify_merge(
        out, tiny_model_dir, adapter, torch.float32, round_trip=Nf4Options("float32", "nf4", double_quant=True)
    )
    every_layer_4bit = reference_of(tiny_model_dir, adapter, torch.float32, quantization="nf4")
    assert checked.max_logit_diff < 0.01 < agreement(out, torch.float32, every_layer_4bit).max_logit_diff
    # the reference computes as the merged weights do: bitsandbytes' repacked bfloat16 CPU kernel (AVX512-BF16
    # CPUs, this one) drifted 0.0035 here and 0.16 to 0.17 on the default model: a correct float32 merge was refused
    assert checked.max_logit_diff < 1e-4


def test_an_fp4_round_trip_is_checked_against_the_fp4_base_training_ran(tiny_model_dir, tiny_config, tmp_path):
    """`adapter: lora` + `load_in_4bit` trains on an FP4 base without double quantization (transformers' defaults, as
    axolotl passes them): the round-trip used FP4, but the reference was always NF4, and a correct float32 merge was
    refused (0.17 logits off, 66.7% agreement, on a tiny Phi-3)."""
    from llmkit.config.schema import load_config

    cfg = load_config(tiny_config(load_in_4bit=True))
    assert cfg.quantization_options.bnb_4bit_quant_type == "fp4"
    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter")
    report = merge_adapter(tiny_model_dir, adapter, tmp_path / "merged", dtype="float32", nf4_roundtrip=True, cfg=cfg)
    assert report.verification["max_logit_diff"] < 1e-4 and report.verification["token_agreement"] == 1.0


# `llmkit merge` with each tensor 0.3 s slower to make (~7 s of writing): time to kill it mid-shard.
_SLOW_MERGE = """
import time
import llmkit.merge.weights as mw
from llmkit.cli import app
made = mw.merged_tensor
def slowly(*args, **kwargs):
    time.sleep(0.3)
    return made(*args, **kwargs)
mw.merged_tensor = slowly
app()
"""


def _start_merge(adapter: Path, base: Path, out: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        _SLOW_MERGE,
        "merge",
        "--adapter",
        str(adapter),
        "--base",
        str(base),
        "--out",
        str(out),
        "--dtype",
        "bfloat16",
        "--no-verify",
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_mid_write(process: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shards = list(out.parent.glob(f".{out.name}.tmp-{process.pid}-*/*.safetensors"))
        if shards and shards[0].stat().st_size > 0:
            return
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("the merge never started writing")


@pytest.mark.slow
def test_killed_merge_leaves_no_half_written_model(adapters, tiny_model_dir, tmp_path):
    fresh = tmp_path / "fresh"
    process = _start_merge(adapters["plain"], tiny_model_dir, fresh)
    _wait_mid_write(process, fresh)
    process.send_signal(signal.SIGTERM)  # Ctrl-C and `kill` unwind: the temp folder goes too
    assert process.wait(60) == 143
    said = process.stderr.read().decode()  # it stopped without a word
    assert "interrupted: no merged model was written" in said and "Traceback" not in said, said
    assert not fresh.exists() and not list(tmp_path.glob(".fresh.*"))

    good = tmp_path / "good"
    merge_adapter(tiny_model_dir, adapters["plain"], good, dtype="bfloat16", verify=False)
    before = tree_digest(good)
    process = _start_merge(adapters["other"], tiny_model_dir, good)
    _wait_mid_write(process, good)
    process.kill()  # SIGKILL: nothing can clean up; the next merge does
    process.wait(60)
    assert tree_digest(good) == before
    assert list(tmp_path.glob(".good.tmp-*"))
    merge_adapter(tiny_model_dir, adapters["plain"], good, dtype="bfloat16", verify=False)  # unchanged: skipped...
    assert tree_digest(good) == before and not list(tmp_path.glob(".good.*"))  # ...after removing the leftovers


@pytest.mark.parametrize("first_kind", ["plain", "rslora"])
def test_weighted_cat_merge_adds_the_weighted_deltas(first_kind, adapters, tiny_model_dir, tmp_path):
    """Whatever the first adapter's scaling: peft gives the combined adapter the first one's config (rsLoRA
    scaled the combined delta by sqrt(r) until the merge reset it)."""
    out = tmp_path / "fused"
    first_dir = adapters["plain"]
    if first_kind == "rslora":
        first_dir = lora_adapter(tiny_model_dir, tmp_path / "rslora", seed=2, use_rslora=True)
    report, _ = merge_command(
        base=str(tiny_model_dir),
        adapters=[str(first_dir), str(adapters["other"])],
        weights=[0.7, 0.3],
        combination="cat",
        out=str(out),
        dtype="float32",
    )
    assert report.verification["max_logit_diff"] < 1e-3
    base = saved_tensors(tiny_model_dir)
    first, second = (peft_merged(tiny_model_dir, path, torch.float32) for path in (first_dir, adapters["other"]))
    name = "model.layers.1.self_attn.o_proj.weight"
    expected = base[name] + 0.7 * (first[name] - base[name]) + 0.3 * (second[name] - base[name])
    torch.testing.assert_close(saved_tensors(out)[name], expected, atol=1e-5, rtol=1e-4)


def test_one_adapter_with_a_weight_is_merged_at_that_strength(adapters, tiny_model_dir, tmp_path):
    """`--adapter A --weight 0.5` exited 0 and merged A at full strength; the weight (and --combination, --density)
    went unread with one adapter."""
    half = tmp_path / "half"
    half_strength = ["--adapter", str(adapters["plain"]), "--weight", "0.5", "--out", str(half), "--dtype", "float32"]
    result = CliRunner().invoke(app, ["merge", *half_strength])
    assert result.exit_code == 0, result.output
    base, full = saved_tensors(tiny_model_dir), peft_merged(tiny_model_dir, adapters["plain"], torch.float32)
    name = "model.layers.1.self_attn.o_proj.weight"
    merged = saved_tensors(half)[name]
    assert not torch.allclose(merged, full[name], atol=1e-4)
    torch.testing.assert_close(merged, base[name] + 0.5 * (full[name] - base[name]), atol=1e-5, rtol=1e-4)
    one = ["merge", "--adapter", str(adapters["plain"]), "--out", str(tmp_path / "ties")]
    for options in (["--combination", "ties", "--density", "0.5"], ["--density", "0.5"]):  # peft merges one linearly
        result = CliRunner().invoke(app, [*one, *options])
        assert result.exit_code == 2 and "one adapter is merged scaled by its weight (linear)" in result.output
    result = CliRunner().invoke(app, ["merge", "--weight", "0.5", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "give --adapter DIR" in result.output


def test_weighted_ties_merge_from_yaml(adapters, tiny_model_dir, tmp_path):
    for name in ("plain", "other"):
        shutil.copytree(adapters[name], tmp_path / name)
    (tmp_path / "conf").mkdir()
    fusion = tmp_path / "conf" / "fusion.yml"
    fusion.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_model_dir),
                "combination_type": "ties",
                "density": 0.5,
                "adapters": [{"path": "../plain", "weight": 0.6}, {"path": "../other", "weight": 0.4}],
            }
        )
    )
    result = CliRunner().invoke(app, ["merge", "--weighted", str(fusion), "--out", str(tmp_path / "fused")])
    assert result.exit_code == 0, result.output
    # the folders read, not <fusion's folder>/../plain
    assert f"adapter: 0.6 x {tmp_path / 'plain'} + 0.4 x {tmp_path / 'other'} (ties)" in result.output.splitlines()
    assert "greedy-token agreement" in result.output
    fused, plain = saved_tensors(tmp_path / "fused"), saved_tensors(tiny_model_dir)
    assert not torch.equal(fused["model.layers.0.mlp.gate_proj.weight"], plain["model.layers.0.mlp.gate_proj.weight"])
    assert not list(tmp_path.glob(".fused.*"))

    fusion.write_text(yaml.safe_dump({"combination_type": "dare_ties", "adapters": [{"path": "../plain"}] * 2}))
    with pytest.raises(ValueError, match=r"(?s)fusion.yml.*combination_type dare_ties needs density"):
        load_weighted(fusion)
    fusion.write_text(yaml.safe_dump({"adapters": [{"path": "../plain", "wieght": 2}] * 2}))
    with pytest.raises(ValueError, match=r"adapters\[0\].wieght: Extra inputs are not permitted"):
        load_weighted(fusion)


def test_a_weighted_merge_files_adapter_paths_are_relative_to_it_and_expand_the_home_folder(tmp_path, monkeypatch):
    """`path: ~/a` was joined to the YAML's folder: <folder>/~/a."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fusion = tmp_path / "conf" / "fusion.yml"
    fusion.parent.mkdir()
    fusion.write_text(yaml.safe_dump({"adapters": [{"path": "~/runs/a"}, {"path": "b"}, {"path": "/abs/c"}]}))
    paths = [adapter.path for adapter in load_weighted(fusion).adapters]
    assert paths == [tmp_path / "home" / "runs" / "a", tmp_path / "conf" / "b", Path("/abs/c")]


def test_the_report_gives_paths_whole_and_with_brackets_as_written(adapters, tmp_path):
    """Rich read `[v2]` as markup: `merge --adapter "ad[v2]" --out "m[v2]"` printed `Merged model: m`. At 80
    columns the table folded a long path over lines that could not be copied."""
    deep = tmp_path / ("long-folder-name-" * 4)
    adapter, out = shutil.copytree(adapters["plain"], deep / "ad[v2]"), deep / "m[v2]"
    result = CliRunner().invoke(
        app, ["merge", "--adapter", str(adapter), "--out", str(out), "--no-verify"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"merged model: {out}" in lines and f"adapter: {adapter}" in lines, result.output
    assert len(str(out)) > 80 and all(len(line) <= 80 for line in lines if "│" in line)


def test_merge_piped_draws_no_bar_as_train_does(adapters, tiny_model_dir, tmp_path):
    """Piped (a log, CI), train's bars give way to lines; merge's own "Merging" bar redrew with carriage returns."""
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "llmkit.cli", "merge", "--adapter", str(adapters["plain"]), "--no-verify"]
    command += ["--base", str(tiny_model_dir), "--out", str(out)]
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, env=env, timeout=300)  # bytes: keeps \r
    assert done.returncode == 0, done.stderr.decode()
    assert b"Merging" not in done.stderr and b"\r" not in done.stderr + done.stdout, done.stderr.decode()
    assert (out / "model.safetensors").is_file()


def test_bad_adapter_paths_fail_clearly(tiny_model_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["merge", "--adapter", str(tmp_path / "nope"), "--base", str(tiny_model_dir)])
    assert result.exit_code == 1 and f"Adapter directory {tmp_path / 'nope'} does not exist" in result.output
    result = runner.invoke(app, ["merge", "--adapter", str(tiny_model_dir), "--base", str(tiny_model_dir)])
    assert result.exit_code == 1 and "holds no adapter_config.json" in result.output
    config = tmp_path / "untrained.yml"  # a config whose training has not run: its output_dir is not there
    keys = {"base_model": str(tiny_model_dir), "adapter": "lora", "output_dir": "nowhere", "learning_rate": 1e-4}
    keys["lora_target_linear"] = True
    config.write_text(yaml.safe_dump({**keys, "datasets": [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]}))
    result = runner.invoke(app, ["merge", str(config)])
    assert result.exit_code == 1, result.output
    # relative to the current folder, not the config's: the path tried is shown whole
    tried = f"output_dir nowhere (from the current folder: {Path.cwd() / 'nowhere'}) does not exist"
    assert f"{tried}: train first (llmkit train {config})" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    for text, problem in [("{", "is not valid JSON"), ("[1]", "holds a JSON list, not an object")]:
        (broken / "adapter_config.json").write_text(text)
        result = runner.invoke(app, ["merge", "--adapter", str(broken), "--base", str(tiny_model_dir)])
        assert result.exit_code == 1 and f"{broken / 'adapter_config.json'} {problem}" in result.output
    result = runner.invoke(app, ["merge"])
    assert result.exit_code == 2 and "Nothing to merge" in result.output
    (tmp_path / "taken").write_text("somebody's file")
    (broken / "adapter_config.json").write_text("{}")
    result = runner.invoke(app, ["merge", "--adapter", str(broken), "--out", str(tmp_path / "taken")])
    assert result.exit_code == 1 and f"{tmp_path / 'taken'} is a file, not a folder" in result.output
    assert (tmp_path / "taken").read_text() == "somebody's file"


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_an_adapter_whose_init_moved_the_base_is_refused_before_merging(init, tiny_model_dir, tmp_path):
    """A PiSSA adapter trained, then merge folded it onto the base as stored (peft had moved its principal part into
    the adapter) and failed verification minutes later; nothing can fold it onto that base."""
    adapter = lora_adapter(tiny_model_dir, tmp_path / init, init_lora_weights=init, target_modules=["q_proj"])
    result = CliRunner().invoke(app, ["merge", "--adapter", str(adapter), "--base", str(tiny_model_dir)])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"adapter_config.json has init_lora_weights '{init}': peft changed the base weights" in said
    assert "serve it unmerged" in said and not (adapter / "merged").exists()


@pytest.mark.parametrize(
    ("lora", "said"),
    [
        # aLoRA merged without a word: folded, it acts on every token, not from its invocation tokens on
        ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens [5, 6]: an activated LoRA (aLoRA)"),
        # it ended in "the base has no module model.layers.2.self_attn.q_proj"
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication [[0, 2], [1, 2]]: LoRA on a base deepened"),
    ],
    ids=["alora", "layer_replication"],
)
def test_an_adapter_no_fold_computes_is_refused_naming_the_feature(lora, said, tiny_model_dir, tmp_path):
    adapter = lora_adapter(tiny_model_dir, tmp_path / "adapter", target_modules=["q_proj"], **lora)
    result = CliRunner().invoke(app, ["merge", "--adapter", str(adapter), "--base", str(tiny_model_dir)])
    assert result.exit_code == 1, result.output
    assert f"{adapter}/adapter_config.json has {said}" in " ".join(result.output.split())
    assert "unmerged" in result.output and not (adapter / "merged").exists()


def test_a_full_disk_is_named_and_leaves_nothing(adapters, tiny_model_dir, tmp_path, monkeypatch):
    """It said only "[Errno 28] No space left on device": no disk, no folder."""
    from llmkit.merge import weights

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 1000)  # a shard cut short
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "write_shard", full)
    out = tmp_path / "merged"
    command = ["merge", "--adapter", str(adapters["plain"]), "--base", str(tiny_model_dir), "--out", str(out)]
    result = CliRunner().invoke(app, command)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and f"the disk holding {out} is full" in said, result.output
    assert f"the merged model for {out} did not fit; nothing of it is left" in said
    assert not out.exists() and os.listdir(tmp_path) == []


def test_adapter_for_another_base_names_both(adapters, tiny_model_dir, default_model_dir, tmp_path):
    with pytest.raises(AdapterMismatchError) as err:
        merge_adapter(default_model_dir, adapters["plain"], tmp_path / "merged", dtype="bfloat16")
    message = str(err.value)
    assert str(adapters["plain"]) in message and str(tiny_model_dir) in message and str(default_model_dir) in message
    assert re.search(r"layers\.\d+\.\w+\.\w+_proj is \d+->\d+ in the base but \d+->(64|128) in the adapter", message)
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))


def test_hub_dry_run_lists_the_merged_files_offline(adapters, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "merged"
    report, listed = merge_command(
        adapters=[str(adapters["plain"])],
        base=str(tiny_model_dir),
        out=str(out),
        verify=False,
        hub_model_id="someone/tiny-merged",
        dry_run=True,
    )
    assert sorted(f["path"] for f in listed) == sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", MANIFEST} <= {f["path"] for f in listed}
    # the report's "size ... in N files" counts the folder the hub row lists (it left out llmkit_merge.json: 6 vs 7)
    assert report.files == sorted(p.name for p in out.iterdir())
    result = CliRunner().invoke(
        app,
        [
            "merge",
            "--adapter",
            str(adapters["plain"]),
            "--base",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--no-verify",
            "--hub-model-id",
            "not a repo id",
            "--dry-run",
        ],
    )
    assert result.exit_code == 1 and "not a valid repo id" in result.output


# --- the embedded model and an adapter trained from the default config ----------------------------------------
MCQA_PROMPTS = [
    "Answer the following questions with a single letter only.\n\nQuestion: Which of the following is a fruit?\n"
    "A. mouse\nB. purple\nC. peach\nD. hammer\nAnswer:",
    "The following are multiple choice questions (with answers) about arithmetic.\n\nQuestion: What is 7 + 5?\n"
    "A. 11\nB. 12\nC. 13\nD. 10\nAnswer:",
    "Question: Which planet is known as the red planet?\nA. Venus\nB. Jupiter\nC. Mars\nD. Saturn\nAnswer:",
    "The capital of France is",
]


@pytest.fixture(scope="module")
def merged_default(default_run) -> Path:
    from llmkit.merge.fold import merge_from_config

    return merge_from_config(default_run).out_dir


@pytest.mark.slow
def test_merge_of_the_default_config_adapter(default_run, merged_default):
    manifest = json.loads((merged_default / MANIFEST).read_text())
    check = manifest["verification"]
    assert check["max_logit_diff"] <= 3.0 and check["token_agreement"] >= 0.9
    # training ran in float32 on this CPU; the merged model is still 16-bit, never silently float32
    assert json.loads((merged_default / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in saved_tensors(merged_default).values()} == {torch.bfloat16}
    size = sum(p.stat().st_size for p in merged_default.glob("*.safetensors"))
    assert 250e6 < size < 300e6  # 135M parameters x 2 bytes (tied embeddings stored once)
    result = CliRunner().invoke(app, ["merge", str(default_run.source)])  # again: inputs unchanged
    assert result.exit_code == 0 and "unchanged, skipped" in result.output, result.output


@pytest.mark.slow
def test_nf4_roundtrip_reproduces_the_trained_qlora_model(default_run, merged_default, default_model_dir, tmp_path):
    from merge_agreement import agreement_with_trained

    adapter = Path(default_run.output_dir)
    nf4 = merge_adapter(None, adapter, tmp_path / "nf4", nf4_roundtrip=True, verify=False)
    assert nf4.nf4_roundtrip and nf4.dtype == "bfloat16"
    found = agreement_with_trained(
        {"plain": merged_default, "nf4": tmp_path / "nf4"}, default_model_dir, adapter, torch.float32
    )
    # the adapter learned against NF4-rounded weights: the round-tripped merge is the model that was trained
    assert found["nf4"].mean_logit_diff < found["plain"].mean_logit_diff / 4
    assert found["nf4"].max_logit_diff < found["plain"].max_logit_diff
    assert found["nf4"].token_agreement >= 0.95


@pytest.mark.slow
def test_served_merged_model_answers_like_base_plus_adapter(start_server, http, default_run, merged_default):
    merged = start_server("--model", str(merged_default), "--dtype", "bfloat16")
    unmerged = start_server("--adapter", default_run.output_dir, "--dtype", "bfloat16")
    answers = {}
    for name, server in (("merged", merged), ("unmerged", unmerged)):
        answers[name] = []
        for prompt in MCQA_PROMPTS:
            body = {
                "prompt": prompt,
                "temperature": 0,
                "max_new_tokens": 3,
                "num_return_sequences": 1,
                "top_p": 1,
                "echo_prompt": False,
                "top_k_per_token": 1,
                "stop_sequences": [],
            }
            response = http.post(f"{server.url}/process", json=body)
            assert response.status_code == 200, response.text
            answers[name].append(response.json()["text"])
    assert answers["merged"] == answers["unmerged"]
    assert any(text.strip() for text in answers["merged"])


@pytest.mark.slow
def test_merge_peak_memory_stays_under_three_times_the_merged_size(default_model_dir, tmp_path):
    from llmkit.merge.bench import PEAK_BOUND, _measure, _synthetic_adapter

    adapter = _synthetic_adapter(default_model_dir, tmp_path / "adapter")
    child = _measure(adapter, tmp_path / "merged", verify=False)  # a fresh process: its own peak RSS
    size = sum(p.stat().st_size for p in (tmp_path / "merged").glob("*.safetensors"))
    assert child["peak_rss_bytes"] < PEAK_BOUND * size, (child, size)


def test_the_train_first_command_quotes_a_config_path_with_spaces(tiny_model_dir, tmp_path):
    """`train first (llmkit train dir with space/cfg.yml)` ran `llmkit train dir` with two stray arguments."""
    config = tmp_path / "dir with space" / "cfg.yml"
    config.parent.mkdir()
    keys = {"base_model": str(tiny_model_dir), "adapter": "lora", "output_dir": "nowhere", "learning_rate": 1e-4}
    keys["lora_target_linear"] = True
    config.write_text(yaml.safe_dump({**keys, "datasets": [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]}))
    result = CliRunner().invoke(app, ["merge", str(config)], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and f"train first (llmkit train '{config}')" in result.output


_KILLED_MID_MERGE = """
import os, signal, sys
from pathlib import Path
from llmkit.core.files import staging_dir
out = Path(sys.argv[1])
with staging_dir(out, "tmp") as tmp, staging_dir(out, "adapter") as adapter:
    (tmp / "model.safetensors").write_bytes(b"\\0" * 1000)  # half a merge, and a weighted merge's adapter
    (adapter / "weighted").mkdir()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_merge_removes_what_killed_merges_left_beside_any_out(adapters, tiny_model_dir, python, tmp_path):
    """A merge killed with SIGKILL left `.<out>.tmp-PID-*` and `.<out>.adapter-PID-*` beside --out (a model's size),
    hidden; only a merge to that same --out removed them, so a merge never retried left them there for good."""
    killed = subprocess.run([python, "-c", _KILLED_MID_MERGE, str(tmp_path / "abandoned")], cwd=ROOT, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [name.split("-")[0] for name in left] == [".abandoned.adapter", ".abandoned.tmp"], left
    running = tmp_path / f".busy.tmp-{os.getpid()}-x"  # a merge still running (this process): kept
    running.mkdir()
    merge_adapter(tiny_model_dir, adapters["plain"], tmp_path / "merged", dtype="bfloat16", verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "merged"]
