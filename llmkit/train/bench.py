"""Training benchmark on the embedded default config, for `make bench` (`llmkit bench`).

- Training throughput: real (non-padding) tokens per second over a few optimizer steps, with and without
  sample_packing. The count is the steps' sequences times the mean real tokens per sequence of the prepared
  training set, so both runs are measured the same way; the Trainer's train_runtime includes the first step
  and the final checkpoint, which the short run does not amortise.
- Memory: the base model's weight footprint loaded in 4-bit NF4 (QLoRA) next to the 16-bit one.

`--model DIR` measures another base model with the config's settings (e.g. a Llama-2-7B-shaped one that
`llmkit random-model` wrote, on a GPU); `--quick` measures the config's own packing setting only, without the
unpacked run and the weight footprints (each loads the model again).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llmkit.config.schema import AxolotlConfig, load_config
from llmkit.core.assets import DEFAULT_CONFIG
from llmkit.core.devices import device_name

BENCH_STEPS = 4  # enough to see the steady rate on a CPU; a GPU run is over in seconds


def _throughput(cfg: AxolotlConfig, steps: int, work_dir: Path) -> dict:
    from llmkit.data.pipeline import build_datasets
    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.train.run import train

    overrides = {
        "max_steps": steps,
        "val_set_size": 0,
        "save_steps": 10**6,
        "logging_steps": steps,
        "output_dir": str(work_dir),
        "dataset_prepared_path": str(work_dir.parent / "prepared"),
    }
    cfg = _variant(cfg, **overrides)
    train_rows = build_datasets(cfg, load_tokenizer(cfg)).train
    mean_tokens = sum(len(ids) for ids in train_rows["input_ids"]) / len(train_rows)
    train(cfg, cpu_fallback=True)  # a paged optimizer on a machine without CUDA: its plain variant
    state = json.loads((work_dir / "trainer_state.json").read_text())
    seconds = next(entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry)
    sequences = steps * cfg.micro_batch_size * cfg.gradient_accumulation_steps
    return {
        "tokens_per_s": sequences * mean_tokens / seconds,
        "seconds": seconds,
        "steps": steps,
        "tokens_per_sequence": mean_tokens,
    }


def _variant(cfg: AxolotlConfig, **changes) -> AxolotlConfig:
    return AxolotlConfig.model_validate({**cfg.model_dump(exclude_none=True), **changes})


def _weights_mb(cfg: AxolotlConfig) -> float:
    from llmkit.train.modeling import load_base_model

    model = load_base_model(cfg, for_training=False)
    megabytes = model.get_memory_footprint() / 2**20
    del model
    return megabytes


def run(
    out_dir: Path,
    *,
    config: Path = DEFAULT_CONFIG,
    steps: int = BENCH_STEPS,
    model: str | None = None,
    quick: bool = False,
) -> dict:
    """Measure training throughput (packed vs not) and 4-bit vs 16-bit weight memory; write train_bench.json.

    Args:
        out_dir: folder for `train_bench.json`.
        config: the config measured (default: the embedded default).
        steps: optimizer steps per throughput run.
        model: hub id or folder trained instead of the config's base_model (its tokenizer too).
        quick: only the config's own sample_packing setting; no weight footprints.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config)
    if model:
        cfg = _variant(cfg, base_model=model, base_model_config=None, revision_of_model=None, tokenizer_config=None)
    if quick:
        return _quick(out_dir, config, cfg, steps)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        packed = _throughput(_variant(cfg, sample_packing=True), steps, Path(tmp) / "packed")
        unpacked = _throughput(_variant(cfg, sample_packing=False), steps, Path(tmp) / "unpacked")
    # Both in bfloat16 where not quantized, so the difference is the quantized linear layers alone.
    sixteen_bit = {"load_in_8bit": False, "bf16": True, "fp16": False}
    nf4_mb = _weights_mb(_variant(cfg, load_in_4bit=True, adapter="qlora", **sixteen_bit))
    bf16_mb = _weights_mb(_variant(cfg, load_in_4bit=False, adapter="lora", **sixteen_bit))
    result = {
        **_measured_what(config, cfg),
        "train_tokens_per_s_packed": packed["tokens_per_s"],
        "train_tokens_per_s_unpacked": unpacked["tokens_per_s"],
        "packing_speedup": packed["tokens_per_s"] / unpacked["tokens_per_s"],
        "weights_mb_nf4": nf4_mb,
        "weights_mb_bf16": bf16_mb,
        "nf4_memory_fraction": nf4_mb / bf16_mb,
        "runs": {"packed": packed, "unpacked": unpacked},
    }
    (out_dir / "train_bench.json").write_text(json.dumps(result, indent=2))
    _print(result)
    return result


def _measured_what(config: Path, cfg: AxolotlConfig) -> dict:
    """The result's first keys: the config, the model trained (after --model) and the device."""
    return {"config": str(config), "base_model": cfg.base_model, "device": device_name()}


def _quick(out_dir: Path, config: Path, cfg: AxolotlConfig, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        measured = _throughput(cfg, steps, Path(tmp) / "run")
    result = {
        **_measured_what(config, cfg),
        "quick": True,
        "adapter": cfg.adapter.value if cfg.adapter else "full",
        "sample_packing": bool(cfg.sample_packing),
        "sequence_len": cfg.sequence_len,
        "train_tokens_per_s": measured["tokens_per_s"],
        "run": measured,
    }
    (out_dir / "train_bench.json").write_text(json.dumps(result, indent=2))
    packing = "on" if cfg.sample_packing else "off"
    Console().print(
        escape(
            f"Training {cfg.base_model} ({result['adapter']}, sequence_len {cfg.sequence_len}, sample_packing "
            f"{packing}) on {result['device']}: {measured['tokens_per_s']:,.0f} tokens/s over {steps} optimizer "
            f"steps ({measured['seconds']:.1f} s)"
        ),
        highlight=False,
    )
    return result


def _print(result: dict) -> None:
    name = Path(result["config"]).name
    table = Table(
        title=escape(
            f"Training {name} ({result['base_model']}) on {result['device']} "
            f"({result['runs']['packed']['steps']} optimizer steps each)"
        )
    )
    for column in ("measure", "value", "ratio"):
        table.add_column(column)
    table.add_row(
        "tokens/s, sample_packing on",
        f"{result['train_tokens_per_s_packed']:.0f}",
        f"{result['packing_speedup']:.2f}x the unpacked rate",
    )
    table.add_row("tokens/s, sample_packing off", f"{result['train_tokens_per_s_unpacked']:.0f}", "1.00x")
    table.add_row(
        "base weights, 4-bit NF4",
        f"{result['weights_mb_nf4']:.0f} MB",
        f"{result['nf4_memory_fraction']:.2f}x the 16-bit size",
    )
    table.add_row("base weights, bfloat16", f"{result['weights_mb_bf16']:.0f} MB", "1.00x")
    Console().print(table)
