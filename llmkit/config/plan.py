"""What a config will do, without loading weights or data: `llmkit validate CONFIG` prints `plan(cfg)`.

    llmkit validate axolotl_configs/Mistral-01.yml

The model's shape comes from a local config.json, the offline table (`llmkit.core.shapes.KNOWN_SHAPES`)
or the hub, so the shipped configs plan offline.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from llmkit.config.schema import Adapter, AxolotlConfig, ConfigError, DatasetSpec, PeftMethod
from llmkit.core.challenge import TRACKS, TrackSpec
from llmkit.core.shapes import KNOWN_SHAPES, ModelShape, model_shape

GIB = 1024**3
CUDA_OVERHEAD_BYTES = 1 * GIB  # CUDA context, cuBLAS workspace and allocator fragmentation
# Bytes of optimizer state per trainable parameter, states kept in fp32 (8-bit optimizers: one byte each).
_STATE_BYTES = {"adamw": 8, "ademamix": 12, "lion": 4, "adagrad": 4, "rmsprop": 4, "adafactor": 0, "sgd": 0}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_ROW_FILES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak training memory on one GPU of a track, in bytes, by part."""

    track: TrackSpec
    weights: int
    trainable: int  # trainable weights + their gradients + optimizer states
    activations: int
    overhead: int = CUDA_OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.track.memory_bytes


@dataclass(frozen=True)
class TrainingPlan:
    cfg: AxolotlConfig
    shape: ModelShape
    shape_source: str  # "local config.json", "offline table" or "hub config.json"
    method: str
    target_modules: list[str]
    trainable_params: int
    world_size: int
    tokens_per_step: int
    rows: int | None  # rows of all local datasets; None when a dataset is on the hub
    steps: int | None
    steps_per_1k_rows: float  # over all epochs
    memory: list[MemoryEstimate]


def plan(cfg: AxolotlConfig, world_size: int | None = None) -> TrainingPlan:
    """Resolve a config into what training will do: targets, parameter counts, steps and memory per track.

    Args:
        cfg: the validated config.
        world_size: GPUs in data parallel; default `WORLD_SIZE` from the environment, else 1.
    """
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    shape, source = _shape(cfg)
    targets = cfg.resolved_target_modules(shape)
    trainable = trainable_params(cfg, shape, targets)
    micro_tokens = cfg.micro_batch_size * cfg.sequence_len
    rows = _count_all_rows(cfg.datasets)
    step_rows = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size
    return TrainingPlan(
        cfg=cfg,
        shape=shape,
        shape_source=source,
        method=_describe_method(cfg),
        target_modules=targets,
        trainable_params=trainable,
        world_size=world_size,
        tokens_per_step=micro_tokens * cfg.gradient_accumulation_steps * world_size,
        rows=rows,
        steps=cfg.max_steps or (None if rows is None else _optimizer_steps(cfg, rows, world_size)),
        steps_per_1k_rows=1000 * (1 - cfg.val_set_size) * cfg.num_epochs / step_rows,
        memory=[estimate_memory(cfg, shape, targets, trainable, track) for track in TRACKS.values()],
    )


def _shape(cfg: AxolotlConfig) -> tuple[ModelShape, str]:
    name = cfg.base_model_config or cfg.base_model
    local = Path(name).expanduser() / "config.json"
    source = "local config.json" if local.is_file() else "offline table" if name in KNOWN_SHAPES else "hub config.json"
    try:
        return model_shape(name), source
    except (LookupError, ValueError) as err:
        key = "base_model_config" if cfg.base_model_config else "base_model"
        raise ConfigError([f"{key}: {err}"], cfg.source) from err


def trainable_params(cfg: AxolotlConfig, shape: ModelShape, targets: list[str]) -> int:
    """Trainable parameters, counted from the shape the way peft creates them."""
    if cfg.adapter is None:
        return shape.num_params
    if cfg.peft is PeftMethod.prompt_tuning:
        return cfg.peft_num_virtual_tokens * shape.hidden_size
    io = {**shape.linear_layers(), "embed_tokens": (shape.vocab_size, shape.hidden_size)}
    io["lm_head"] = (shape.hidden_size, shape.vocab_size)
    total = 0
    for name in targets:
        fan_in, fan_out = io[name]
        if cfg.peft is PeftMethod.vera:  # shared frozen A/B; trained: lambda_d (r) and lambda_b (out)
            per_module = cfg.peft_vera_r + fan_out
        else:  # A: r x in, B: out x r; DoRA adds one magnitude per output
            per_module = cfg.lora_r * (fan_in + fan_out) + (fan_out if cfg.peft_use_dora else 0)
        total += per_module * (1 if name in ("embed_tokens", "lm_head") else shape.num_layers)
    full = {"embed_tokens": shape.vocab_size * shape.hidden_size, "lm_head": shape.vocab_size * shape.hidden_size}
    return total + sum(full.get(name, 0) for name in cfg.lora_modules_to_save or [])


def estimate_memory(
    cfg: AxolotlConfig, shape: ModelShape, targets: list[str], trainable: int, track: TrackSpec
) -> MemoryEstimate:
    """Peak training memory on one GPU of `track`: weights + trainable state + activations + overhead.

    With P_lin the decoder layers' linear weights, P_rest the rest (embeddings, lm_head, norms), b the bytes of
    the compute dtype on the track, T = micro_batch_size x sequence_len tokens, L layers, h hidden size,
    kv the key/value width, i the MLP width and V the vocabulary:

    - weights: P_lin x (0.516 bytes at 4-bit NF4 with double quantization, 0.5625 without, 1 at 8-bit, b at
      16-bit) + P_rest x b. A full fine-tune counts its weights under trainable instead.
    - trainable: N trainable x (4 weight + 4 gradient + optimizer state) bytes: adapters are kept in fp32, and
      a full fine-tune keeps fp32 master weights (`llmkit.train.modeling`). Optimizer states in fp32: 8 bytes for
      AdamW, 2 for 8-bit AdamW, 4 for Lion, 0 for SGD/Adafactor (factored, negligible).
    - activations per token and layer: A = b x (6h + 4kv + 4i), plus b x the summed input widths of the
      targeted layers when lora_dropout > 0 (dropout keeps a copy of each input). Attention is flash/SDPA, so
      no T^2 scores are stored. Without gradient checkpointing: T x L x A; with it: T x L x b x h (each layer's
      input) + T x A (one layer recomputed). The loss adds T x V x (b + 8) (logits, fp32 copy, its gradient).
    - overhead: 1 GiB for the CUDA context, cuBLAS workspace and allocator fragmentation.
    """
    b = _DTYPE_BYTES[cfg.compute_dtype("cuda", capability=_capability(track))]
    layer_linear = sum(i * o for i, o in shape.linear_layers().values())
    p_lin, p_rest = shape.num_layers * layer_linear, shape.num_params - shape.num_layers * layer_linear
    # Trainable weights are float32 (adapters, and a full fine-tune's master weights), as is their gradient.
    state = trainable * (4 + 4 + _optimizer_state_bytes(cfg))
    weights = 0 if cfg.adapter is None else int(p_lin * _quantized_bytes(cfg, b) + p_rest * b)
    return MemoryEstimate(track, weights, state, _activation_bytes(cfg, shape, targets, b))


def _activation_bytes(cfg: AxolotlConfig, shape: ModelShape, targets: list[str], b: int) -> int:
    tokens = cfg.micro_batch_size * cfg.sequence_len
    kv = shape.num_kv_heads * shape.head_size
    per_layer = b * (6 * shape.hidden_size + 4 * kv + 4 * shape.intermediate_size)
    if cfg.adapter is not None and cfg.lora_dropout > 0:
        widths = shape.linear_layers()
        per_layer += b * sum(widths[name][0] for name in targets if name in widths)
    if cfg.gradient_checkpointing:
        layers = tokens * shape.num_layers * b * shape.hidden_size + tokens * per_layer
    else:
        layers = tokens * shape.num_layers * per_layer
    return layers + tokens * shape.vocab_size * (b + 8)


def _quantized_bytes(cfg: AxolotlConfig, b: int) -> float:
    if cfg.load_in_4bit:
        double_quant = cfg.bnb_config_kwargs is None or cfg.bnb_config_kwargs.bnb_4bit_use_double_quant
        return 0.516 if double_quant else 0.5625  # 4 bits + the block scales (one per 64 weights)
    return 1.0 if cfg.load_in_8bit else b


def _optimizer_state_bytes(cfg: AxolotlConfig) -> float:
    name = cfg.optimizer.value
    family = next(key for key in _STATE_BYTES if key in name) if any(k in name for k in _STATE_BYTES) else "adamw"
    return _STATE_BYTES[family] / 4 if name.endswith("8bit") else _STATE_BYTES[family]


def _capability(track: TrackSpec) -> tuple[int, int]:
    major, minor = track.compute_capability.split(".")
    return int(major), int(minor)


def _describe_method(cfg: AxolotlConfig) -> str:
    if cfg.adapter is None:
        return "full fine-tune (every weight trained)"
    base = "4-bit NF4 base" if cfg.load_in_4bit else "8-bit base" if cfg.load_in_8bit else "16-bit base"
    if cfg.peft is PeftMethod.prompt_tuning:
        return f"{cfg.adapter.value}: prompt tuning, {cfg.peft_num_virtual_tokens} virtual tokens, on a {base}"
    if cfg.peft is PeftMethod.vera:
        return f"{cfg.adapter.value}: VeRA r={cfg.peft_vera_r}, on a {base}"
    scale = cfg.lora_alpha / (math.sqrt(cfg.lora_r) if cfg.peft_use_rslora else cfg.lora_r)
    extras = [name for name, on in (("DoRA", cfg.peft_use_dora), ("rsLoRA", cfg.peft_use_rslora)) if on]
    kind = "QLoRA" if cfg.adapter is Adapter.qlora else "LoRA"
    extra = f" + {' + '.join(extras)}" if extras else ""
    lora = f"r={cfg.lora_r} alpha={cfg.lora_alpha} (scale {scale:.3g}), dropout {cfg.lora_dropout}"
    return f"{kind}{extra} {lora}, on a {base}"


def _optimizer_steps(cfg: AxolotlConfig, rows: int, world_size: int) -> int:
    """Optimizer steps as transformers' Trainer counts them (before packing, so an upper bound with packing)."""
    held_out = math.ceil(rows * cfg.val_set_size)
    batches = math.ceil((rows - held_out) / (cfg.micro_batch_size * world_size))
    per_epoch = max(math.ceil(batches / cfg.gradient_accumulation_steps), 1)
    return math.ceil(cfg.num_epochs * per_epoch)


def _count_all_rows(datasets: list[DatasetSpec]) -> int | None:
    counts = [_count_rows(spec) for spec in datasets]
    return None if None in counts else sum(counts)


def _count_rows(spec: DatasetSpec) -> int | None:
    """Rows of a local dataset (file, folder, or data_files); None for a hub dataset."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        files = [path / f for f in spec.data_files] if spec.data_files else sorted(path.iterdir())
    elif path.is_file():
        files = [path]
    elif spec.data_files and all(Path(f).is_file() for f in spec.data_files):
        files = [Path(f) for f in spec.data_files]  # `path: json` with local data_files
    else:
        return None
    counts = [_rows_in_file(f) for f in files if f.suffix in _ROW_FILES]
    return None if not counts or None in counts else sum(counts)


def _rows_in_file(path: Path) -> int | None:
    if path.suffix == ".jsonl" or (path.suffix == ".json" and not path.read_text().lstrip().startswith("[")):
        with path.open() as f:
            return sum(1 for line in f if line.strip())
    if path.suffix == ".json":
        return len(json.loads(path.read_text()))
    if path.suffix == ".csv":
        with path.open(newline="") as f:
            return max(sum(1 for _ in csv.reader(f)) - 1, 0)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open() as f:
        return sum(1 for _ in f)
