"""`llmkit bench --stage training --quick`: another model's QLoRA/LoRA throughput with a given config (what the
GPU checks measure on a Llama-2-7B-shaped model); benchmarks print figures, these tests check what is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from llmkit.cli import app


def test_quick_training_measures_the_model_given_with_the_configs_settings(tmp_path, tiny_model_dir, tiny_config):
    # The config names a gated 7B base: --model replaces it, so nothing is downloaded.
    config = tiny_config(base_model="meta-llama/Llama-2-7b-hf", sample_packing=True)
    out = tmp_path / "bench"
    args = ["bench", "--stage", "training", "--quick", "--config", str(config), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    measured = json.loads((out / "train_bench.json").read_text())
    assert measured["base_model"] == str(tiny_model_dir) and measured["config"] == str(config)
    assert measured["quick"] and measured["adapter"] == "lora" and measured["sample_packing"]
    assert measured["run"]["steps"] == 2 and measured["train_tokens_per_s"] > 0
    assert measured["run"]["tokens_per_sequence"] <= 64  # the config's sequence_len
    assert not (out / "merge.json").exists() and not (out / "server.json").exists()  # the one stage asked for
    printed = " ".join(result.output.split())
    assert f"Training {tiny_model_dir} (lora, sequence_len 64, sample_packing on) on cpu:" in printed


def test_a_config_error_is_named_with_its_stage(tmp_path, tiny_model_dir, tiny_config):
    config = tiny_config(lora_dropout=2.0)
    args = ["bench", "--stage", "training", "--quick", "--config", str(config), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bench")])
    assert result.exit_code == 1
    assert "Error: training:" in result.output and "lora_dropout" in result.output


def test_a_missing_model_is_named_before_any_stage_runs(tmp_path):
    result = CliRunner().invoke(
        app, ["bench", "--quick", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert f"Error: --model: Model directory {tmp_path / 'nowhere'} does not exist" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


def test_piped_it_draws_no_progress_bars(tmp_path, tiny_model_dir, tiny_config):
    """Piped (a log, CI), bench follows the CLI's rule (core.processes.no_bars_when_piped): without it, datasets'
    and transformers' bars redrew themselves with carriage returns in the log."""
    command = [sys.executable, "-m", "llmkit.cli", "bench", "--stage", "training", "--quick", "--steps", "1"]
    command += ["--config", str(tiny_config()), "--model", str(tiny_model_dir), "--out", str(tmp_path / "bench")]
    env = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    done = subprocess.run(command, capture_output=True, env=env, timeout=300)  # bytes: text=True reads \r as \n
    log = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, log
    assert "\r" not in log and "train_tokens_per_s" in (tmp_path / "bench" / "train_bench.json").read_text(), log
