"""Which optimizer a run trains with: the config's transformers name, checked against what this machine has.

transformers knows every name of `llmkit.config.sections.Optimizer`, but some need a package beyond torch and
bitsandbytes (torchao, galore-torch, schedulefree, ...) and the paged ones need CUDA. Both are said before
anything is loaded, with the nearest name that trains here. LoRA+ (`loraplus_lr_ratio`) builds the optimizer
itself, with peft's parameter groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers.utils import (
    is_apollo_torch_available,
    is_galore_torch_available,
    is_grokadamw_available,
    is_lomo_available,
    is_schedulefree_available,
    is_torch_npu_available,
    is_torch_optimi_available,
    is_torch_xla_available,
    is_torchao_available,
    is_torchdistx_available,
)

from llmkit.config.schema import AxolotlConfig, ConfigError
from llmkit.config.sections import OPTIMIZER_ALIASES
from llmkit.core import devices

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from transformers import Trainer

LOG = logging.getLogger(__name__)

# Paged optimizers page their state through CUDA unified memory; without CUDA the plain variant is the same maths.
PAGED_TO_PLAIN = {
    "paged_adamw_32bit": "adamw_torch",
    "paged_adamw_8bit": "adamw_bnb_8bit",
    "paged_ademamix_32bit": "ademamix",
    "paged_ademamix_8bit": "ademamix_8bit",
    "paged_lion_32bit": "lion_32bit",
    "paged_lion_8bit": "lion_8bit",
}


@dataclass(frozen=True)
class Package:
    """A package an optimizer needs: whether it is installed, how to install it, what trains without it."""

    available: Callable[[], bool]
    install: str
    nearest: str  # the optimizer name with the closest maths that needs nothing more


_TORCHAO = Package(is_torchao_available, "pip install torchao", "adamw_bnb_8bit")
_GALORE = Package(is_galore_torch_available, "pip install galore-torch", "adamw_torch")
_APOLLO = Package(is_apollo_torch_available, "pip install apollo-torch", "adamw_torch")
_SCHEDULE_FREE = Package(is_schedulefree_available, "pip install schedulefree", "adamw_torch")
NEEDS_PACKAGE: dict[str, Package] = {
    "adamw_torch_4bit": _TORCHAO,
    "adamw_torch_8bit": _TORCHAO,
    "adamw_anyprecision": Package(is_torchdistx_available, "pip install torchdistx", "adamw_torch"),
    "adamw_torch_xla": Package(is_torch_xla_available, "pip install torch_xla (TPU)", "adamw_torch"),
    "adamw_torch_npu_fused": Package(
        is_torch_npu_available, "pip install torch_npu (Ascend NPU)", "adamw_torch_fused"
    ),
    "galore_adamw": _GALORE,
    "galore_adamw_8bit": _GALORE,
    "galore_adafactor": _GALORE,
    "galore_adamw_layerwise": _GALORE,
    "galore_adamw_8bit_layerwise": _GALORE,
    "galore_adafactor_layerwise": _GALORE,
    "apollo_adamw": _APOLLO,
    "apollo_adamw_layerwise": _APOLLO,
    "lomo": Package(is_lomo_available, "pip install lomo-optim", "sgd"),
    "adalomo": Package(is_lomo_available, "pip install lomo-optim", "adafactor"),
    "grokadamw": Package(is_grokadamw_available, "pip install grokadamw", "adamw_torch"),
    "schedule_free_radam": _SCHEDULE_FREE,
    "schedule_free_adamw": _SCHEDULE_FREE,
    "schedule_free_sgd": Package(is_schedulefree_available, "pip install schedulefree", "sgd"),
    "stable_adamw": Package(is_torch_optimi_available, "pip install torch-optimi", "adamw_torch"),
}
# Optimizers that project the weights of chosen modules (optim_target_modules).
_PROJECTING = ("galore_", "apollo_")


def optimizer_for_machine(cfg: AxolotlConfig, cpu_fallback: bool = False) -> str:
    """The transformers optimizer name to train with on this machine.

    Args:
        cfg: the validated config.
        cpu_fallback: on a machine without CUDA, replace a paged optimizer by its plain variant instead of failing.

    Raises:
        ConfigError: the optimizer needs a package that is not installed, optim_target_modules it lacks, or CUDA.
    """
    name = cfg.optimizer.value
    package = NEEDS_PACKAGE.get(name)
    if package and not package.available():
        # the name the config may have written instead (axolotl's ao_adamw_8bit is adamw_torch_8bit here)
        aliases = [alias for alias, target in OPTIMIZER_ALIASES.items() if target == name]
        named = f"{name} (axolotl's {aliases[0]})" if aliases else name
        raise ConfigError(
            [
                f"optimizer: {named} needs a package that is not installed ({package.install}); the nearest optimizer "
                f"that trains without it is {package.nearest} (set optimizer: {package.nearest})"
            ],
            cfg.source,
        )
    if name.startswith(_PROJECTING) and not cfg.optim_target_modules:
        raise ConfigError(
            [f"optimizer: {name} projects chosen weights: set optim_target_modules (e.g. [attn, mlp] or all_linear)"],
            cfg.source,
        )
    if name not in PAGED_TO_PLAIN or devices.resolve_device() == "cuda":
        return name
    plain = PAGED_TO_PLAIN[name]
    if not cpu_fallback:
        raise ConfigError(
            [
                f"optimizer: {name} pages its state through CUDA memory and needs a CUDA GPU, which this machine "
                f"lacks; set optimizer: {plain} to train here, or pass --cpu-fallback to substitute it for this run"
            ],
            cfg.source,
        )
    LOG.warning("optimizer: %s needs CUDA; --cpu-fallback: using %s on this machine", name, plain)
    return plain


def loraplus_optimizer(trainer: Trainer, cfg: AxolotlConfig) -> Optimizer:
    """LoRA+: the configured optimizer over peft's groups, the B matrices at learning_rate x loraplus_lr_ratio."""
    from peft.optimizers import create_loraplus_optimizer

    optimizer_cls, options = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    return create_loraplus_optimizer(
        trainer.model,
        optimizer_cls,
        loraplus_lr_ratio=cfg.loraplus_lr_ratio,
        loraplus_lr_embedding=cfg.loraplus_lr_embedding,
        loraplus_weight_decay=cfg.weight_decay,
        **options,
    )
