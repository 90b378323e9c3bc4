"""The axolotl-style training config: one typed `AxolotlConfig`, loaded from YAML by `load_config`.

    llmkit validate axolotl_configs/Llama-2-7b-03.yml     # load, check and print the plan

Key names are axolotl's (see `llmkit.config.sections` and the README's "Configs" table). A key left empty
(`wandb_project:`) means "not set". Keys axolotl knows but this project does not implement, and unknown keys
(typos), are reported by name in a `ConfigWarning`; with `strict: true` they are an error. A wrong value is a
`ConfigError` that names the file and the key path (`datasets[0].type: ...`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from llmkit.config.keys import (
    DATASET_UNIMPLEMENTED_KEYS,
    UNIMPLEMENTED_KEYS,
    IgnoredKey,
    ignored_message,
    split_keys,
)
from llmkit.config.sections import (
    Adapter,
    DataSection,
    DatasetSpec,
    DatasetType,
    DsType,
    LoraSection,
    LrScheduler,
    ModelSection,
    Optimizer,
    PeftMethod,
    TrainingSection,
)
from llmkit.core import devices

__all__ = [
    "Adapter",
    "AxolotlConfig",
    "ConfigError",
    "ConfigWarning",
    "DatasetSpec",
    "DatasetType",
    "DsType",
    "IgnoredKey",
    "LrScheduler",
    "Optimizer",
    "PeftMethod",
    "load_config",
]

# The config as training ran it, written beside the adapter by `llmkit train` and read back by `llmkit merge`.
RESOLVED_CONFIG = "config.resolved.yml"


class ConfigError(ValueError):
    """A config that cannot be used; `problems` are `key.path: what is wrong` lines."""

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems, self.source = problems, source
        where = f"Invalid config {source}" if source else "Invalid config"
        super().__init__(where + ":\n" + "\n".join(f"  - {problem}" for problem in problems))


class ConfigWarning(UserWarning):
    """Keys in a config that change nothing: not implemented here, or unknown."""


class AxolotlConfig(TrainingSection, DataSection, LoraSection, ModelSection):
    """A training run: base model, adapter, data and trainer settings, as axolotl spells them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    strict: bool = Field(False, description="Unknown or unimplemented keys are an error instead of a warning.")
    _ignored: list[IgnoredKey] = PrivateAttr(default_factory=list)
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _report_ignored_keys(cls, data: Any, handler):
        if not isinstance(data, dict):
            return handler(data)
        data, ignored = split_keys(data, list(cls.model_fields), UNIMPLEMENTED_KEYS, "")
        if isinstance(data.get("datasets"), list):
            entries = []
            for i, entry in enumerate(data["datasets"]):
                if isinstance(entry, dict):
                    fields = list(DatasetSpec.model_fields)
                    entry, dropped = split_keys(entry, fields, DATASET_UNIMPLEMENTED_KEYS, f"datasets[{i}].")
                    ignored += dropped
                entries.append(entry)
            data["datasets"] = entries
        cfg = handler(data)
        cfg._ignored = ignored
        blocking = [key for key in ignored if not key.known or key.effective]
        if cfg.strict and blocking:
            raise ValueError("strict: true forbids these keys: " + "; ".join(key.describe() for key in blocking))
        if ignored:
            warnings.warn(ignored_message(ignored), ConfigWarning, stacklevel=2)
        return cfg

    @model_validator(mode="after")
    def _check_quantization(self) -> AxolotlConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit: choose one")
        if self.adapter is Adapter.qlora and not self.load_in_4bit:
            raise ValueError("adapter: qlora requires load_in_4bit: true")
        if self.adapter is None and (self.load_in_4bit or self.load_in_8bit):
            raise ValueError("load_in_4bit/load_in_8bit: a full fine-tune (no adapter) cannot train quantized weights")
        return self

    @model_validator(mode="after")
    def _check_peft(self) -> AxolotlConfig:
        if self.adapter is None and self.peft is not PeftMethod.lora:
            raise ValueError(f"peft: {self.peft.value} needs adapter: lora or qlora")
        if self.peft is not PeftMethod.lora and (self.peft_use_dora or self.peft_use_rslora):
            raise ValueError(f"peft_use_dora/peft_use_rslora apply to peft: lora, not {self.peft.value}")
        targets_needed = self.adapter is not None and self.peft is not PeftMethod.prompt_tuning
        if targets_needed and not self.lora_target_linear and not self.lora_target_modules:
            raise ValueError("lora_target_modules: empty; list module names or set lora_target_linear: true")
        return self

    @model_validator(mode="after")
    def _check_training(self) -> AxolotlConfig:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("warmup_steps and warmup_ratio: set one, not both")
        if self.bf16 is True and self.fp16 is True:
            raise ValueError("bf16 and fp16: both true; choose one")
        return self

    @property
    def ignored_keys(self) -> list[IgnoredKey]:
        """Keys of the source that change nothing (reported in the ConfigWarning)."""
        return list(self._ignored)

    @property
    def source(self) -> Path | None:
        """The YAML file this config was loaded from."""
        return self._source

    def compute_dtype(self, device: str | None = None, capability: tuple[int, int] | None = None) -> str:
        """float32/bfloat16/float16 from bf16/fp16, "auto" resolved for the device.

        Args:
            device: "cpu" or "cuda"; default: cuda where available.
            capability: the GPU's compute capability, e.g. (8, 9); default: the local GPU's.
        """
        if self.bf16 is True:
            return "bfloat16"
        if self.fp16 is True:
            return "float16"
        # "auto" mixed precision is a GPU feature; `false` rules that half type out of the automatic choice.
        device = device or devices.resolve_device()
        return devices.auto_dtype(device, capability, bf16=self.bf16 == "auto", fp16=self.fp16 == "auto")

    def tf32_enabled(self, device: str | None = None) -> bool:
        """Whether TF32 matmuls are allowed: tf32 true, or "auto" on an Ampere-or-newer GPU."""
        if self.tf32 != "auto":
            return bool(self.tf32)
        return devices.is_cuda(device or devices.resolve_device()) and devices.ampere_or_newer()

    def resolved_target_modules(self, shape_or_model) -> list[str]:
        """Module names the adapter wraps: every linear layer but lm_head with lora_target_linear, plus the list.

        Args:
            shape_or_model: a `llmkit.core.shapes.ModelShape`, or a loaded torch model.
        """
        if self.adapter is None or self.peft is PeftMethod.prompt_tuning:
            return []
        linear, existing = _module_names(shape_or_model)
        listed = self.lora_target_modules or []
        missing = [name for name in listed if name not in existing]
        if missing:
            raise ConfigError(
                [f"lora_target_modules: {missing} not in the model (linear layers: {linear})"], self.source
            )
        chosen = list(linear) if self.lora_target_linear else []
        return chosen + [name for name in listed if name not in chosen]


def _module_names(shape_or_model) -> tuple[list[str], set[str]]:
    """(linear layer names except the output head, every module name) of a ModelShape or a torch model."""
    from llmkit.core.shapes import ModelShape

    if isinstance(shape_or_model, ModelShape):
        linear = list(shape_or_model.linear_layers())
        return linear, {*linear, "embed_tokens", "lm_head"}
    import torch

    head = shape_or_model.get_output_embeddings() if hasattr(shape_or_model, "get_output_embeddings") else None
    linear, existing = [], set()
    for name, module in shape_or_model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        existing.add(leaf)
        if isinstance(module, torch.nn.Linear) and module is not head and leaf != "lm_head" and leaf not in linear:
            linear.append(leaf)
    return linear, existing


_TYPE_TAG = re.compile(r"^(bool|int|float|str|none|[a-z-]+\[.*\])$")  # pydantic's union-branch loc entries


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _TYPE_TAG.match(part):
            path += f".{part}" if path else part
    return path or "(config)"


def _problems(err: ValidationError) -> list[str]:
    """One line per key path; the branches of a union (bool | "auto") are joined into one line."""
    by_path: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for error in err.errors(include_url=False):
        path = _key_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        by_path.setdefault(path, []).append(message)
        inputs.setdefault(path, error.get("input"))
    lines = []
    for path, messages in by_path.items():
        got = "" if path == "(config)" or isinstance(inputs[path], dict) else f" (got {inputs[path]!r})"
        where = "" if path == "(config)" else f"{path}: "  # cross-field rules name their keys themselves
        lines.append(f"{where}{'; or '.join(dict.fromkeys(messages))}{got}")
    return lines


def _resolve_local(path: str, base: Path) -> str:
    """A relative path that exists from the current directory (axolotl's rule) or else from `base`, made absolute."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return path
    for root in (Path.cwd(), base):
        if (root / candidate).exists():
            return str((root / candidate).resolve())
    return path  # a hub id, or a file that doesn't exist yet (data's own error names it)


def _resolve_dataset_paths(raw: dict, base: Path) -> None:
    for entry in raw.get("datasets") or []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entry["path"] = _resolve_local(entry["path"], base)
            files = entry.get("data_files")
            if not Path(entry["path"]).is_dir() and isinstance(files, (str, list)):
                entry["data_files"] = [_resolve_local(f, base) for f in ([files] if isinstance(files, str) else files)]


def load_config(path: str | Path, overrides: dict | None = None) -> AxolotlConfig:
    """Read, check and type an axolotl-style YAML file.

    Args:
        path: the YAML file.
        overrides: top-level keys replacing the file's (e.g. {"max_steps": 5, "output_dir": "/tmp/run"}).

    Raises:
        ConfigError: unreadable YAML, or values that don't fit the schema; names the file and each key path.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError([f"cannot read the file: {err.strerror or err}"], path) from err
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], path) from err
    if not isinstance(raw, dict):
        raise ConfigError([f"expected a mapping of keys to values, got {type(raw).__name__}"], path)
    raw.update(overrides or {})
    _resolve_dataset_paths(raw, path.resolve().parent)
    try:
        with warnings.catch_warnings():  # re-issued below, pointing at the caller instead of pydantic's internals
            warnings.simplefilter("ignore", ConfigWarning)
            cfg = AxolotlConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_problems(err), path) from None
    cfg._source = path
    if cfg.ignored_keys:
        warnings.warn(f"{path}: {ignored_message(cfg.ignored_keys)}", ConfigWarning, stacklevel=2)
    return cfg
