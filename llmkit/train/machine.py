"""What this machine can train: the checks of a config against the machine (CUDA, installed packages) that `train`
makes before it prepares any data, and that `validate` reports as warnings, since a config is often checked on one
machine and trained on another."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmkit.config.schema import AxolotlConfig, ConfigError
from llmkit.config.sections import MODEL_PATH_KEYS, model_path_problem
from llmkit.core import devices


def check_tf32(cfg: AxolotlConfig) -> None:
    """Raises ConfigError: `tf32: true` on a machine without CUDA (TF32 is an Ampere tensor-core mode)."""
    if cfg.tf32 is True and devices.resolve_device() != "cuda":
        raise ConfigError(["tf32: true needs an Ampere-or-newer CUDA GPU; set tf32: auto or false"], cfg.source)


def check_loftq(cfg: AxolotlConfig) -> None:
    """Raises ConfigError: `peft.loftq_config` without scipy or without CUDA (peft quantizes the weights with
    bitsandbytes' CUDA kernels)."""
    if cfg.loftq_bits is None:
        return
    if importlib.util.find_spec("scipy") is None:
        problem = "peft.loftq_config: peft's LoftQ needs scipy, which is not installed (pip install scipy)"
        raise ConfigError([problem], cfg.source)
    if devices.resolve_device() != "cuda":
        raise ConfigError(["peft.loftq_config: peft's LoftQ needs a CUDA GPU, which this machine lacks"], cfg.source)


def check_model_paths(cfg: AxolotlConfig) -> None:
    """Raises ConfigError: a local base_model, base_model_config or tokenizer_config path not on this machine (a
    config loaded with models_elsewhere, as validate loads it; load_config refuses it for train)."""
    named = [(key, value) for key in MODEL_PATH_KEYS if (value := getattr(cfg, key))]
    problems = [f"{key}: {value}: {problem}" for key, value in named if (problem := model_path_problem(value))]
    if problems:
        raise ConfigError(problems, cfg.source)


def refusals_here(cfg: AxolotlConfig) -> list[str]:
    """Each `key: why` for which `train` would stop on this machine (run with --cpu-fallback, only the paged
    optimizers' CUDA need goes away); empty when it would train here."""
    from llmkit.train.modeling import attn_implementation
    from llmkit.train.optimizers import optimizer_for_machine
    from llmkit.train.resume import check_writable

    def writable_here(cfg: AxolotlConfig) -> None:  # a file in their place is refused on any machine: not here
        check_writable(Path(cfg.output_dir), cfg, PermissionError)

    problems = []
    # Not strict, an attention this machine lacks is replaced, not a stop (fallbacks_here); the check would log it.
    attention = (attn_implementation,) if cfg.strict else ()
    for check in (check_model_paths, writable_here, optimizer_for_machine, check_tf32, check_loftq, *attention):
        try:
            check(cfg)
        except ConfigError as error:
            problems.extend(error.problems)
    return problems


def fallbacks_here(cfg: AxolotlConfig) -> list[str]:
    """What `train` would run on this machine in place of what the config asks (it logs each as a warning); empty
    where it runs the config as written. With `strict` these are refusals (refusals_here)."""
    from llmkit.train.modeling import ATTENTION_FALLBACK, attention_problem

    problem = None if cfg.strict else attention_problem(cfg)
    return [f"{problem}; {ATTENTION_FALLBACK}"] if problem else []


def wandb_unavailable(cfg: AxolotlConfig) -> str | None:
    """What a `wandb_project` without the wandb package means (said by `validate`, and by `train`, which then logs
    to TensorBoard alone): axolotl installs wandb, so its configs name projects; this project does not."""
    if cfg.wandb_project and importlib.util.find_spec("wandb") is None:
        return (
            f"wandb_project: {cfg.wandb_project!r} is set, but the wandb package is not installed: no W&B logging "
            "(TensorBoard only; pip install wandb to log there)"
        )
    return None
