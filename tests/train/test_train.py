"""Training for real: the embedded default config for a few steps (loss falls, the adapter loads with peft and
changes the model), every peft method on a tiny random Llama, clear errors for CUDA-only settings on the CPU,
resuming after a kill, and two DDP processes on the CPU through the Makefile's launcher."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from llmkit.config.schema import ConfigError, load_config
from llmkit.data.pipeline import build_datasets
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
LLMKIT = [sys.executable, "-m", "llmkit.cli"]


def _state(out: Path) -> dict:
    return json.loads((out / "trainer_state.json").read_text())


def _held_out_loss(model, rows) -> float:
    """Mean loss over the held-out (packed) rows, as the Trainer computes it for a batch of one."""
    losses = []
    with torch.no_grad():
        for row in rows:
            batch = {key: torch.tensor([row[key]]) for key in ("input_ids", "labels", "position_ids")}
            losses.append(model(**batch, use_cache=False).loss.item())
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_default_config_learns_and_its_adapter_loads_with_peft(default_run, default_model_dir):
    cfg, out = default_run, Path(default_run.output_dir)

    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    resolved = load_config(out / "config.resolved.yml")
    assert resolved.max_steps == 6 and resolved.optimizer.value == "adamw_torch"
    assert set(resolved.lora_target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    history = _state(out)["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 6 and sum(losses[-3:]) / 3 < losses[0] * 0.8, losses
    eval_losses = {entry["step"]: entry["eval_loss"] for entry in history if "eval_loss" in entry}
    assert list(eval_losses) == [0, 6] and eval_losses[6] < eval_losses[0] * 0.8, eval_losses

    # The adapter on the unquantized base: lower loss on the held-out questions than the base alone.
    held_out = build_datasets(cfg, load_tokenizer(cfg)).eval
    base = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    adapted = _held_out_loss(model, held_out)
    with model.disable_adapter():
        original = _held_out_loss(model, held_out)
        base_logits = model(torch.tensor([held_out[0]["input_ids"][:64]])).logits
    assert adapted < original * 0.8, (adapted, original)
    assert not torch.allclose(model(torch.tensor([held_out[0]["input_ids"][:64]])).logits, base_logits, atol=1e-3)


METHODS = {
    "dora": ({"peft_use_dora": True}, "LORA"),
    "rslora+modules_to_save": ({"peft_use_rslora": True, "lora_modules_to_save": ["embed_tokens"]}, "LORA"),
    "vera": ({"peft_method": "vera", "peft_vera_r": 16}, "VERA"),
    "prompt_tuning": ({"peft_method": "prompt_tuning", "peft_num_virtual_tokens": 4}, "PROMPT_TUNING"),
    "qlora+checkpointing": ({"adapter": "qlora", "load_in_4bit": True, "gradient_checkpointing": True}, "LORA"),
    "8bit_base+neftune+adamw_bnb_8bit": (
        {"load_in_8bit": True, "neftune_noise_alpha": 5, "optimizer": "adamw_bnb_8bit"},
        "LORA",
    ),
    "packed+eval": ({"sample_packing": True, "val_set_size": 0.25, "eval_steps": 1, "save_steps": 1}, "LORA"),
    "full_fine_tune": ({"adapter": "none"}, None),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_two_steps_and_saves_what_loads(method, tiny_config, tiny_model_dir):
    keys, peft_type = METHODS[method]
    out = train(load_config(tiny_config(**keys)))
    assert _state(out)["global_step"] == 2
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    probe = torch.tensor([[1, 42, 314, 2718, 99]])
    with torch.no_grad():
        before = base(probe).logits[0, -1]
    if peft_type is None:
        assert not (out / "adapter_config.json").exists()
        trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    else:
        adapter_config = json.loads((out / "adapter_config.json").read_text())
        assert adapter_config["peft_type"] == peft_type
        assert adapter_config.get("use_dora", False) == keys.get("peft_use_dora", False)
        assert adapter_config.get("use_rslora", False) == keys.get("peft_use_rslora", False)
        trained = PeftModel.from_pretrained(base, out)
    with torch.no_grad():
        after = trained(probe).logits[0, -1]
    assert (after - before).abs().max() > 1e-6, "training changed nothing"
    if "lora_modules_to_save" in keys:
        with safe_open(out / "adapter_model.safetensors", "pt") as weights:
            assert any("embed_tokens" in name for name in weights.keys())
    if keys.get("val_set_size"):
        assert [entry["step"] for entry in _state(out)["log_history"] if "eval_loss" in entry] == [0, 1, 2]


def test_bitsandbytes_cast_is_logged_once(caplog):
    """bitsandbytes' 8-bit matmul logs its float32-to-float16 cast on every call, from this logger (bitsandbytes
    0.50's autograd/_functions.py): a user's 2-step load_in_8bit run of Pythia printed it 48 times."""
    import bitsandbytes.autograd._functions as matmul_8bit

    import llmkit.train.modeling  # noqa: F401 (its filter, installed on import)

    cast = "MatMul8bitLt: inputs will be cast from %s to float16 during quantization"
    assert cast.split(":")[0] in Path(matmul_8bit.__file__).read_text()  # the message this filter is for
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            matmul_8bit.logger.warning(cast, torch.float32)
    assert caplog.text.count("MatMul8bitLt: inputs will be cast") == 1, caplog.text


def test_the_last_step_is_logged_whatever_logging_steps_says(tiny_config):
    """The summary's and the curve's last train loss is the last step's, not the last multiple of logging_steps."""
    out = train(load_config(tiny_config(logging_steps=5)))
    assert [entry["step"] for entry in _state(out)["log_history"] if "loss" in entry] == [1, 2]  # first and last


def test_a_best_checkpoint_published_instead_of_the_last_is_said_in_the_summary(tiny_config):
    """load_best_model_at_end publishes an earlier checkpoint: the summary gave the last step's eval loss and the
    steps run as if the last step's model were the one published."""
    from rich.console import Console

    from llmkit.train import print_summary

    keys = {"learning_rate": 0.05, "max_steps": 6, "val_set_size": 0.25, "eval_steps": 2, "save_steps": 2}
    out = train(load_config(tiny_config(**keys, load_best_model_at_end=True, early_stopping_patience=1)))
    state = _state(out)
    evals = {entry["step"]: entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry}
    best = min((step for step in evals if step > 0), key=evals.get)  # step 0 (eval_on_start) has no checkpoint
    assert best < state["global_step"] and state["best_global_step"] == best  # the divergent rate's best is early
    console = Console(record=True, width=200)
    print_summary(out, console)
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in text.splitlines() if "│" in line}
    assert rows["published model"] == f"checkpoint of step {best}: best eval_loss {evals[best]:.4f}"
    assert rows["optimizer steps"] == f"{state['global_step']} of 6 (stopped early: early_stopping_patience)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"optimizer": "paged_adamw_32bit"}, "optimizer: paged_adamw_32bit pages its state through CUDA memory"),
        ({"tf32": True}, "tf32: true needs an Ampere-or-newer CUDA GPU"),
    ],
)
def test_cuda_only_settings_fail_early_on_the_cpu(keys, message, tiny_config):
    path = tiny_config(**keys)
    with pytest.raises(ConfigError, match=message):
        train(load_config(path))
    assert not (path.parent / "out").exists()  # failed before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
def test_paged_optimizer_cli_message_and_cpu_fallback(tiny_config):
    path = tiny_config(optimizer="paged_adamw_8bit")
    failed = subprocess.run([*LLMKIT, "train", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert "optimizer: paged_adamw_8bit" in failed.stderr and "optimizer: adamw_bnb_8bit" in failed.stderr
    assert "--cpu-fallback" in failed.stderr
    out = train(load_config(path), cpu_fallback=True)
    assert load_config(out / "config.resolved.yml").optimizer.value == "adamw_bnb_8bit"


def _tensorboard_steps(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [scalar.step for scalar in events.Scalars("train/loss")]


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(tiny_config):
    path = tiny_config(max_steps=30, save_steps=5, save_total_limit=2)
    out = path.parent / "out"
    command = [*LLMKIT, "train", str(path)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-5" / "trainer_state.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before it could be killed"
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert not (out / "adapter_config.json").exists(), "an interrupted run must not look finished"
    killed_at = max(_state(c)["global_step"] for c in out.glob("checkpoint-*") if (c / "trainer_state.json").exists())
    assert 5 <= killed_at < 30

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Resuming from {out / f'checkpoint-{killed_at}'}" in second.stderr
    assert _state(out)["global_step"] == 30 and (out / "adapter_config.json").is_file()
    assert max(_state(c)["global_step"] for c in out.glob("checkpoint-*")) == 30  # stopped exactly at the end
    first_run, second_run = sorted((out / "runs").iterdir(), key=lambda run: run.stat().st_mtime)
    assert _tensorboard_steps(second_run)[0] == killed_at + 1  # continued, not restarted from step 1
    assert _tensorboard_steps(first_run)[0] == 1


@pytest.mark.slow
def test_make_train_nproc_2_runs_two_ddp_processes_on_the_cpu(tiny_config, ddp_launch):
    # QLoRA with gradient checkpointing: the case that needs non-reentrant checkpointing under DDP.
    path = tiny_config(max_steps=None, num_epochs=1, adapter="qlora", load_in_4bit=True, gradient_checkpointing=True)
    launch = ddp_launch(path)
    result = subprocess.run(launch, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = path.parent / "out"
    # 24 rows in batches of 4 per process: 6 steps in one process, 3 when two processes share each step.
    assert _state(out)["global_step"] == 3
    assert "cpu, 2 process(es)" in (out / "config.resolved.yml").read_text()
    assert (out / "adapter_model.safetensors").is_file()


def test_the_cli_summary_gives_an_output_dir_with_brackets_as_written(tiny_config, tmp_path):
    """Rich read `[v2]` as markup: the summary named weights under /tmp/x/tr and a tensorboard command for a folder
    that does not exist."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    out = tmp_path / "tr[v2]"
    result = CliRunner().invoke(app, ["train", str(tiny_config(output_dir=str(out)))], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"output_dir: {out}" in result.output
    assert str(out / "adapter_model.safetensors") in result.output
    assert f"tensorboard --logdir {shlex.quote(str(out / 'runs'))}" in result.output


def test_the_summary_gives_each_path_whole_on_an_80_column_terminal(tiny_config, tmp_path):
    """The summary's table folded the weights' path and the TensorBoard command over several lines at 80 columns:
    neither could be copied."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    out = tmp_path / "a-folder-name-long-enough-to-need-more-than-one-table-cell-line"
    result = CliRunner().invoke(app, ["train", str(tiny_config(output_dir=str(out)))], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for path in (out, out / "adapter_model.safetensors", out / "loss_curve.png"):
        assert any(line.endswith(f": {path}") for line in lines), (path, result.output)
    assert f"TensorBoard: tensorboard --logdir {shlex.quote(str(out / 'runs'))}" in lines
    assert max(len(line) for line in lines if "│" in line) <= 80  # the table itself still fits the terminal


def test_a_piped_training_log_is_plain_lines_without_cursor_codes(tiny_config):
    """Piped (CI, `| tee`), the Trainer's eval bar nested in its training bar wrote ESC[A cursor-up codes and
    carriage returns into the log: each logged step is a line of its own instead."""
    path = tiny_config(max_steps=4, val_set_size=0.25, eval_steps=2, save_steps=2)
    result = subprocess.run([*LLMKIT, "train", str(path)], cwd=ROOT, capture_output=True, timeout=300)
    log = (result.stdout + result.stderr).decode()  # not text=True, which reads a lone \r as a newline
    assert result.returncode == 0 and "\x1b[" not in log and "\r" not in log, log
    assert sum("'eval_loss'" in line for line in log.splitlines()) == 3 and "'loss'" in log  # steps 0, 2, 4


def test_on_a_terminal_training_shows_its_progress_bar(tiny_config):
    import fcntl
    import pty
    import select
    import struct
    import termios

    terminal, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 columns: an empty bar
    command = [*LLMKIT, "train", str(tiny_config(max_steps=4))]
    # as a terminal's shell has it: a CliRunner test in this process set them (its stderr is no terminal)
    env = {key: value for key, value in os.environ.items() if not key.endswith("_DISABLE_PROGRESS_BARS")}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=tty)
    os.close(tty)
    shown = b""
    try:
        while select.select([terminal], [], [], 300)[0]:
            shown += os.read(terminal, 1 << 16)
    except OSError:  # EIO: the process closed the terminal's other end
        pass
    finally:
        os.close(terminal)
    assert process.wait(timeout=60) == 0
    assert b"4/4 [" in shown, shown  # tqdm's bar: optimizer steps done of the total
