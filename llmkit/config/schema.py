"""The axolotl-style training config: one typed `AxolotlConfig`, loaded from YAML by `load_config`.

    llmkit validate axolotl_configs/Llama-2-7b-03.yml     # load, check and print the plan

Key names are axolotl's (see `llmkit.config.sections` and the README's "Configs" table). A key left empty
(`wandb_project:`) means "not set". Keys axolotl knows but this project does not implement, and unknown keys
(typos), are reported by name in a `ConfigWarning`; with `strict: true` they are an error. A wrong value is a
`ConfigError` that names the file and the key path (`datasets[0].type: ...`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from llmkit.config.keys import (
    DATASET_UNIMPLEMENTED_KEYS,
    REFUSED_KEYS,
    REFUSED_TOGETHER,
    SPEED_ONLY_PLUGINS,
    UNIMPLEMENTED_KEYS,
    IgnoredKey,
    ignored_message,
    refused_plugins,
    split_keys,
    suggest,
)
from llmkit.config.sections import (
    CAUSAL_LM_METRICS,
    DATASET_LISTS,
    GDPO_AGGREGATION,
    GRPO_DEFAULT_COMPLETION_TOKENS,
    GRPO_DEFAULT_GENERATIONS,
    GRPO_SYNC_DEFAULTS,
    MODELS_ELSEWHERE,
    NORMALISED_DPO_LOSSES,
    REFUSED_PREFERENCE_TYPES,
    SMOOTHED_DPO_LOSSES,
    TYPE_MAPPINGS,
    VLLM_TRL_KEYS,
    Adapter,
    BnbConfigKwargs,
    CustomPrompt,
    DataSection,
    DatasetSpec,
    DatasetType,
    DsType,
    KTOPrompt,
    KTOType,
    LoraSection,
    LrScheduler,
    ModelSection,
    Optimizer,
    PeftMethod,
    PreferencePrompt,
    PreferenceType,
    RLMethod,
    RLSection,
    TrainingSection,
    TrlSettings,
    UnfrozenPattern,
    one_as_list,
    rl_method,
    whole_numbers,
)
from llmkit.core import devices
from llmkit.core.errors import UsageError, error_message, problems, short_repr
from llmkit.core.files import user_path
from llmkit.core.yaml_files import YamlFileError, read_mapping

__all__ = [
    "Adapter",
    "AxolotlConfig",
    "ConfigError",
    "ConfigWarning",
    "DatasetSpec",
    "DatasetType",
    "DsType",
    "IgnoredKey",
    "KTOType",
    "LrScheduler",
    "Optimizer",
    "PeftMethod",
    "PreferenceType",
    "RLMethod",
    "duplicate_keys",
    "load_config",
]

# The config as training ran it, written beside the adapter by `llmkit train` and read back by `llmkit merge`.
RESOLVED_CONFIG = "config.resolved.yml"


# axolotl's name for the preference and KTO `type:` mappings, which it reads from the mapping only (a string
# `type: user_defined.default` is an error there too).
USER_DEFINED = "user_defined.default"


def _user_defined_by_name(mapping: type[PreferencePrompt | KTOPrompt]) -> str:
    keys = ", ".join(mapping.model_fields)
    return f"is axolotl's name for a type given as a mapping, which it reads from the mapping: write type: {{{keys}}}"


def _name_as_default(spec: DatasetSpec, read: set[str]) -> None:
    """axolotl loads an rl type named without a dot as its module's `default` (type: chatml is chatml.default, and
    chat_template, which names the SFT type here until rl is known, chat_template.default): such a name becomes
    that, where `rl` reads it (or it is user_defined.default, to be refused by name)."""
    bare = spec.type.value if isinstance(spec.type, DatasetType) else spec.type
    if isinstance(bare, str) and "." not in bare and f"{bare}.default" in read | {USER_DEFINED}:
        spec.type = f"{bare}.default"


class ConfigError(ValueError):
    """A config that cannot be used; `problems` are `key.path: what is wrong` lines, said under "Invalid config
    <file>:". With `invalid=False` nothing in the file's keys is at fault (the file cannot be read, a flag's value
    cannot be used, another run holds the output folder): the problems are said alone, under no such heading."""

    def __init__(self, problems: list[str], source: str | Path | None = None, *, invalid: bool = True):
        self.problems, self.source, self.invalid = problems, source, invalid
        if not invalid:
            super().__init__("\n".join(problems))
            return
        where = f"Invalid config {source}" if source else "Invalid config"
        super().__init__(where + ":\n" + "\n".join(f"  - {problem}" for problem in problems))


class FlagValueError(ConfigError, UsageError):
    """A ConfigError in a value a command-line flag set (train's --max-steps 0): a usage error, exit 2."""


@contextmanager
def named_as_flags(keys: Iterable[str], *, usage: bool = False) -> Iterator[None]:
    """A ConfigError raised inside names each of `keys` (top-level keys a command-line flag set, such as train's
    --output-dir) by its flag: the value came from the command line, not from the file. With `usage` (around
    load_config, which validates the values) one naming a flag is a FlagValueError; around the run, what it finds
    in a flag's folder is the run's error, as --out elsewhere."""
    flags = {key: "--" + key.replace("_", "-") for key in keys}
    try:
        yield
    except ConfigError as err:
        named = [
            flags[key] + problem.removeprefix(key) if (key := problem.split(":")[0]) in flags else problem
            for problem in err.problems
        ]
        refused = usage and named != err.problems
        # problems that are all the flags' are not the file's: said without "Invalid config <file>:"
        invalid = err.invalid and any(new == old for new, old in zip(named, err.problems, strict=True))
        raise (FlagValueError if refused else ConfigError)(named, err.source, invalid=invalid) from None


class ConfigWarning(UserWarning):
    """Keys in a config that change nothing (not implemented here, or unknown), or that are spelled the old way."""


# Attention names as axolotl writes them (attn_implementation, the short `attention:` spelling, the boolean keys),
# mapped to transformers' attn_implementation; xformers is axolotl's own kernel (`llmkit.train.modeling` says
# what runs instead).
ATTENTION_NAMES = {
    "eager": "eager",
    "sdpa": "sdpa",
    "sdp": "sdpa",
    "flash": "flash_attention_2",
    "flash_attention_2": "flash_attention_2",
    "flash_attention_3": "flash_attention_3",
    "flex": "flex_attention",
    "flex_attention": "flex_attention",
    "xformers": "xformers",
}
# In axolotl's priority order (its LEGACY_ATTN_FLAG_TO_IMPL): of several set, the first wins, the others ignored.
_ATTENTION_FLAGS = {
    "xformers_attention": "xformers",
    "flex_attention": "flex_attention",
    "flash_attention": "flash_attention_2",
    "sdp_attention": "sdpa",
    "eager_attention": "eager",
}
# axolotl's older key names, read as the newer ones.
_RENAMED_KEYS = {  # axolotl's aliases and older names
    "model_config": "overrides_of_model_config",
    "evaluation_strategy": "eval_strategy",
    "model_revision": "revision_of_model",
    "type_of_model": "model_type",
}


class AxolotlConfig(RLSection, TrainingSection, DataSection, LoraSection, ModelSection):
    """A training run: base model, adapter, data and trainer settings, as axolotl spells them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    strict: bool = Field(False, description="Unknown or unimplemented keys are an error instead of a warning.")
    _whole_numbers = field_validator("*", mode="before")(whole_numbers)
    _ignored: list[IgnoredKey] = PrivateAttr(default_factory=list)
    _notices: list[str] = PrivateAttr(default_factory=list)
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _report_ignored_keys(cls, data: Any, handler):
        if not isinstance(data, dict):
            return handler(data)
        data, notices = _migrate_keys(dict(data))
        data = _gdpo_as_grpo(data)
        known = UNIMPLEMENTED_KEYS | REFUSED_KEYS.keys()
        data, ignored = split_keys(data, list(cls.model_fields), known, "")
        refused = [
            f"{key.path}={short_repr(key.value, 60)}: {REFUSED_KEYS[key.path]}" for key in ignored if _refused(key)
        ]
        effective = {key.path: key.value for key in ignored if key.effective}
        for keys, why in REFUSED_TOGETHER.items():
            if all(name in effective for name in keys):
                refused.append(", ".join(f"{name}={short_repr(effective[name], 60)}" for name in keys) + f": {why}")
        if plugins := refused_plugins(next((key.value for key in ignored if key.path == "plugins"), None)):
            refused.append(
                f"plugins: {', '.join(plugins)} may change how the model is trained (axolotl plugins are not run "
                f"here; the speed-only ones are ignored: {', '.join(sorted(SPEED_ONLY_PLUGINS))})"
            )
        try:
            rl_method(data.get("rl"))
        except ValueError as err:  # first and alone: the trl and dataset keys of an unsupported method add nothing
            refused.append(f"rl: {err}")
        if refused:
            raise ValueError("\n  - ".join(refused))
        for key in DATASET_LISTS:
            if isinstance(data.get(key), list):
                entries = []
                for i, entry in enumerate(data[key]):
                    if isinstance(entry, dict):
                        fields = list(DatasetSpec.model_fields)
                        entry, dropped = split_keys(entry, fields, DATASET_UNIMPLEMENTED_KEYS, f"{key}[{i}].")
                        ignored += dropped
                    entries.append(entry)
                data[key] = entries
        ignored += _unimplemented_metrics(data) + _unread_vllm_keys(data)
        cfg = handler(data)
        ignored += (
            _unread_sync_keys(cfg) + _unread_chat_keys(cfg) + _unread_field_tools(cfg) + _unread_argilla_template(cfg)
        )
        cfg._ignored, cfg._notices = ignored, notices
        blocking = [key.describe() for key in ignored if not key.known or key.effective]
        if cfg.strict and (blocking or notices):
            raise ValueError("strict: true forbids these keys: " + "; ".join(blocking + notices))
        cfg._notices += _sharegpt_notices(cfg)  # what the data will mean, not a key: said even under strict
        cfg._notices += _attention_notices(cfg)  # axolotl's own rule for these keys, not one missing here: the same
        if cfg.warning_message():
            warnings.warn(cfg.warning_message(), ConfigWarning, stacklevel=2)
        return cfg

    @model_validator(mode="after")
    def _check_quantization(self) -> AxolotlConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit: choose one")
        if self.adapter is Adapter.qlora and not self.load_in_4bit:
            raise ValueError("adapter: qlora requires load_in_4bit: true")
        if self.adapter is None and (self.load_in_4bit or self.load_in_8bit):
            key = "load_in_4bit" if self.load_in_4bit else "load_in_8bit"  # the one set, as its own problem line says
            raise ValueError(
                f"{key}: a full fine-tune (no adapter) cannot train quantized weights; set adapter: lora or qlora, "
                f"or {key}: false"
            )
        if self.bfloat16 and self.float16:
            raise ValueError("bfloat16 and float16: both true; choose one")
        if self.loftq_bits is not None:
            # peft's LoftQ quantizes the full-precision weights itself and fits the adapter to what rounding lost;
            # axolotl pairs it with adapter: lora and an unquantized load.
            if self.adapter is not Adapter.lora or self.load_in_4bit or self.load_in_8bit:
                raise ValueError(
                    "peft.loftq_config: LoftQ starts from the unquantized base: set adapter: lora and "
                    "load_in_4bit/load_in_8bit: false"
                )
            if self.peft_init_lora_weights not in (None, "loftq"):
                raise ValueError(
                    f"peft.loftq_config and peft_init_lora_weights: {self.peft_init_lora_weights!r}: choose one"
                )
        elif self.peft_init_lora_weights == "loftq":  # peft needs LoftQ's settings beside it
            raise ValueError("peft_init_lora_weights: loftq needs peft: {loftq_config: {loftq_bits: 4}}")
        return self

    @model_validator(mode="after")
    def _check_peft(self) -> AxolotlConfig:
        method = self.peft_method
        if self.adapter is None and method is not PeftMethod.lora:
            raise ValueError(f"peft_method: {method.value} needs adapter: lora or qlora")
        if method is not PeftMethod.lora:
            lora_only = {
                "peft_use_dora": self.peft_use_dora,
                "peft_use_rslora": self.peft_use_rslora,
                "peft.loftq_config": self.loftq_bits,
                "loraplus_lr_ratio": self.loraplus_lr_ratio,
                "peft_init_lora_weights": self.peft_init_lora_weights,
            }
            for key, value in lora_only.items():
                if value is not None and value is not False:
                    raise ValueError(f"{key} applies to peft_method: lora, not {method.value}")
        # a trained adapter (lora_model_dir) brings its own targets
        wraps_modules = method is not PeftMethod.prompt_tuning and not self.lora_model_dir
        targets_needed = self.adapter is not None and wraps_modules
        if targets_needed and not (self.lora_target_linear or self.lora_target_modules or self.lora_target_parameters):
            raise ValueError(
                "lora_target_modules: empty; list module names, set lora_target_linear: true, or list MoE expert "
                "parameters in lora_target_parameters"
            )
        if self.lora_target_parameters:
            self._check_target_parameters()
        if self.unfrozen_parameters and self.adapter is not None:
            # axolotl (train.py) runs freeze_layers_except on the model load_model returns, already wrapped by peft:
            # every parameter no pattern matches is frozen, the adapter's too, and its names start base_model.model.,
            # which patterns written for the base (^model\., ^lm_head\.) never match; its maintainers answer that the
            # key is for full fine-tunes (axolotl issues #1188, #1464). Such a run trains nothing, so it is refused.
            raise ValueError(
                "unfrozen_parameters: is for a full fine-tune (adapter: none); beside an adapter axolotl freezes "
                "every parameter it does not match after the adapter is attached, the adapter's own included (its "
                "names start base_model.model.), so patterns for the base's names leave nothing trained. Leave it "
                "out to train the adapter (lora_modules_to_save trains whole modules beside it)"
            )
        return self

    def _check_target_parameters(self) -> None:
        """What peft's LoRA on parameters (its ParamWrapper) refuses, said before any data is prepared: it adds
        B @ A to the whole weight in each forward, so the adapter's input cannot get dropout, and it has no DoRA."""
        key = "lora_target_parameters"
        if self.adapter is None:
            raise ValueError(f"{key}: LoRA on the MoE experts needs adapter: lora or qlora")
        if self.peft_method is not PeftMethod.lora:
            raise ValueError(
                f"{key}: peft trains parameters with LoRA only, not peft_method: {self.peft_method.value}"
            )
        unsupported = {
            "lora_dropout": self.lora_dropout,
            "peft_use_dora": self.peft_use_dora,
            "lora_fan_in_fan_out": self.lora_fan_in_fan_out,
        }
        for other, value in unsupported.items():
            if value:
                off = 0 if other == "lora_dropout" else "false"
                raise ValueError(
                    f"{key} with {other}: {value}: peft's LoRA on parameters adds its delta to the whole weight, "
                    f"which has no input of its own for dropout and no DoRA (peft refuses it for the whole adapter); "
                    f"set {other}: {off}"
                )

    def resolved_target_parameters(self, shape_or_model) -> list[str]:
        """lora_target_parameters, each checked to name fused MoE expert parameters of the model by peft's rule (the
        full parameter name or a dotted suffix of it) and nothing else.

        Args:
            shape_or_model: a `llmkit.core.shapes.ModelShape`, a loaded torch model, or None when the model's shape
                is unknown (the names are then returned unchecked).
        """
        from llmkit.core.shapes import ModelShape, peft_target_matches

        listed = list(self.lora_target_parameters or [])
        if not listed or shape_or_model is None or self.adapter is None:
            return listed
        shape = shape_or_model if isinstance(shape_or_model, ModelShape) else ModelShape.from_model(shape_or_model)
        missing = [name for name in listed if not shape.matching_experts(name)]
        # peft would also wrap a 2-D parameter (a bias, a norm) the name ends, as one expert: never what was meant
        experts = {expert[0] for expert in shape.experts}
        others = [
            name
            for name, _ in shape.parameters
            if name not in experts and any(peft_target_matches(t, name) for t in listed)
        ]
        if missing or others:
            raise ConfigError([_unknown_parameters(missing, others, shape)], self.source)
        return listed

    @model_validator(mode="after")
    def _check_training(self) -> AxolotlConfig:
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            raise ValueError("warmup_steps and warmup_ratio: set one, not both")
        if self.bf16 is True and self.fp16 is True:
            raise ValueError("bf16 and fp16: both true; choose one")
        both = [("save_steps", "saves_per_epoch"), ("eval_steps", "evals_per_epoch")]
        for steps, per_epoch in both:
            if getattr(self, steps) is not None and getattr(self, per_epoch):
                raise ValueError(f"{steps} and {per_epoch}: set one, not both")
        if self.save_strategy not in (None, "steps") and (self.save_steps or self.saves_per_epoch):
            raise ValueError(f"save_strategy: {self.save_strategy} with save_steps/saves_per_epoch: set steps")
        if self.eval_strategy not in (None, "steps") and (self.eval_steps or self.evals_per_epoch):
            raise ValueError(f"eval_strategy: {self.eval_strategy} with eval_steps/evals_per_epoch: set steps")
        noisy, neftune = self.noisy_embedding_alpha, self.neftune_noise_alpha
        if noisy is not None and neftune is not None and noisy != neftune:
            raise ValueError(
                f"neftune_noise_alpha: {neftune} and noisy_embedding_alpha (its older name): {noisy}; set one"
            )
        if self.batch_size is not None:
            per_step = self.micro_batch_size * self.gradient_accumulation_steps
            if per_step != self.batch_size:
                raise ValueError(
                    f"batch_size: {self.batch_size} is not micro_batch_size x gradient_accumulation_steps "
                    f"({self.micro_batch_size} x {self.gradient_accumulation_steps}); set one of batch_size and "
                    "gradient_accumulation_steps"
                )
        picks_best = self.load_best_model_at_end or self.early_stopping_patience or self.save_strategy == "best"
        if picks_best and not self.has_eval:
            raise ValueError(
                "load_best_model_at_end/early_stopping_patience/save_strategy best compare evaluations: "
                "set val_set_size or test_datasets"
            )
        if self.load_best_model_at_end or self.early_stopping_patience:
            self._check_saves_fall_on_evaluations()
        if self.do_causal_lm_eval and not self.has_eval:
            raise ValueError("do_causal_lm_eval: scores answers to held-out rows; set val_set_size or test_datasets")
        if self.do_causal_lm_eval and self.rl is not None:
            why = (
                "a GRPO row is a prompt whose answers the model generates in training"
                if self.rl is RLMethod.grpo
                else "a preference row has two answers"
            )
            raise ValueError(f"do_causal_lm_eval: not with rl: {self.rl.value} ({why})")
        with_floor = (LrScheduler.cosine, LrScheduler.cosine_with_min_lr)
        if self.cosine_min_lr_ratio is not None and self.lr_scheduler not in with_floor:
            raise ValueError(f"cosine_min_lr_ratio applies to lr_scheduler: cosine, not {self.lr_scheduler.value}")
        if self.lr_scheduler is LrScheduler.cosine_with_min_lr and self.cosine_min_lr_ratio is None:
            raise ValueError(
                "lr_scheduler: cosine_with_min_lr needs its floor: set cosine_min_lr_ratio (transformers' "
                "min_lr_rate; lr_scheduler_kwargs is not implemented)"
            )
        return self

    @model_validator(mode="after")
    def _check_attention(self) -> AxolotlConfig:
        _ = self.attention_implementation  # resolving it raises for an unknown name or two different asks
        return self

    @model_validator(mode="after")
    def _check_rl(self) -> AxolotlConfig:
        if self.rl is None:
            keys = "rl_beta dpo_beta orpo_alpha simpo_gamma cpo_alpha rpo_alpha"
            keys += " kto_desirable_weight kto_undesirable_weight"
            set_keys = [key for key in keys.split() if getattr(self, key) is not None]
            set_keys += ["trl.beta"] if self.trl and self.trl.beta is not None else []
            set_keys += ["dpo_use_weighting"] if self.dpo_use_weighting else []
            set_keys += [key for key in ("dpo_loss_type", "dpo_loss_weights") if getattr(self, key) is not None]
            set_keys += ["dpo_label_smoothing"] if self.dpo_label_smoothing else []
            set_keys += ["dpo_norm_loss"] if self.dpo_norm_loss else []
            if set_keys:
                raise ValueError(f"{', '.join(set_keys)}: preference-training keys, but rl is not set (rl: dpo)")
            if self.trl and self.trl.grpo_keys:
                raise ValueError(f"{', '.join(self.trl.grpo_keys)}: GRPO's keys, but rl is not set (rl: grpo)")
            return self
        if self.trl and self.trl.beta == 0 and self.rl is not RLMethod.grpo:
            raise ValueError(f"trl.beta: 0 leaves rl: {self.rl.value}'s loss without its scale; set it above 0")
        if self.trl and self.trl.grpo_keys and self.rl is not RLMethod.grpo:
            raise ValueError(
                f"{', '.join(self.trl.grpo_keys)}: GRPO's keys, read with rl: grpo, not rl: {self.rl.value}"
            )
        for key in ("sample_packing", "group_by_length"):
            if getattr(self, key):
                raise ValueError(f"{key}: true does not work with rl: {self.rl.value}; set it false")
        if self.use_dynamic_finetuning:  # axolotl's DFT replaces the causal LM loss, which TRL's DPO never calls
            raise ValueError(
                f"use_dynamic_finetuning: true reweights the supervised cross-entropy; rl: {self.rl.value} trains "
                "its preference loss, which DFT leaves unchanged; set it false"
            )
        if self.peft_method is not PeftMethod.lora:
            method = self.peft_method.value
            raise ValueError(f"rl: {self.rl.value} trains a LoRA adapter or the full model, not {method}")
        # axolotl drops long rows; TRL would cut the answers off. axolotl keeps a long GRPO prompt whole
        if self.excess_length_strategy == "truncate":
            why = (
                "axolotl drops preference pairs longer than sequence_len, and a pair cut short compares answers that "
                "are not the data's" if self.rl.paired
                else "axolotl keeps prompts longer than sequence_len whole, and a prompt cut short asks what the data "
                "does not" if self.rl is RLMethod.grpo
                else "axolotl drops KTO rows longer than sequence_len, and a row cut short rates an answer that is "
                "not the data's"
            )  # fmt: skip
            instead = "remove it or use raise" if self.rl is RLMethod.grpo else "use drop or raise"
            raise ValueError(
                f"excess_length_strategy: truncate does not work with rl: {self.rl.value} ({why}); {instead}"
            )
        if self.orpo_alpha is not None and self.rl is not RLMethod.orpo:
            raise ValueError(f"orpo_alpha: ORPO's weight, read with rl: orpo; rl: {self.rl.value}'s beta is rl_beta")
        simpo_keys = [key for key in ("simpo_gamma", "cpo_alpha") if getattr(self, key) is not None]
        if simpo_keys and self.rl is not RLMethod.simpo:
            raise ValueError(f"{', '.join(simpo_keys)}: SimPO's, read with rl: simpo, not rl: {self.rl.value}")
        if self.rl is RLMethod.simpo and self.simpo_gamma is None:  # axolotl passes None, which TRL divides by beta
            raise ValueError("simpo_gamma: required with rl: simpo (SimPO's target reward margin; TRL's example: 0.5)")
        kto_keys = [
            key for key in ("kto_desirable_weight", "kto_undesirable_weight") if getattr(self, key) is not None
        ]
        if kto_keys and self.rl is not RLMethod.kto:
            raise ValueError(f"{', '.join(kto_keys)}: KTO's, read with rl: kto, not rl: {self.rl.value}")
        if self.rl is RLMethod.kto and self.micro_batch_size < 2:
            raise ValueError(
                "micro_batch_size: rl: kto needs at least 2 (TRL's KTO estimates its KL term from each row's prompt "
                "with another row's answer of the same micro-batch)"
            )
        # axolotl passes these under rl: dpo only (rl: ipo's loss is TRL's [ipo], whatever they say)
        dpo_losses = [key for key in ("dpo_loss_type", "dpo_loss_weights") if getattr(self, key) is not None]
        dpo_losses += ["dpo_label_smoothing"] if self.dpo_label_smoothing else []
        if not self.rl.is_dpo:  # DPO's options: ORPOTrainer, CPOTrainer and KTOTrainer have none of them
            dpo_only = ["rpo_alpha"] if self.rpo_alpha is not None else []
            dpo_only += ["dpo_use_weighting"] if self.dpo_use_weighting else []
            dpo_only += ["dpo_norm_loss"] if self.dpo_norm_loss else []
            if dpo_only + dpo_losses:
                named = ", ".join(dpo_only + dpo_losses)
                raise ValueError(f"{named}: options of DPO's loss, not rl: {self.rl.value}'s; remove them")
        if self.rl is RLMethod.ipo and dpo_losses:
            raise ValueError(
                f"{', '.join(dpo_losses)}: read with rl: dpo; rl: ipo's loss is TRL's ipo alone (axolotl drops "
                "them): use rl: dpo with dpo_loss_type: [ipo, ...] to combine it"
            )
        if self.rl is RLMethod.dpo:
            self._check_dpo_losses()
        if self.rl is RLMethod.kto:
            return self._check_kto_types()
        if self.rl is RLMethod.grpo:
            return self._check_grpo()
        read = PreferenceType.read_by(self.rl)
        names = ", ".join(kind.value for kind in read)
        names += "" if self.rl is RLMethod.orpo else ", or a {field_prompt, field_chosen, ...} mapping"
        for key, i, spec in self.dataset_entries():
            if self.rl is RLMethod.orpo and isinstance(spec.type, TYPE_MAPPINGS):
                raise ValueError(
                    f"{key}[{i}].type: a mapping is axolotl's user-defined DPO or KTO format, which rl: orpo does "
                    f"not read; supported: {names}, or no type (rows already prompt, chosen, rejected)"
                )
            if isinstance(spec.type, TYPE_MAPPINGS):
                self._read_mapping_as(PreferencePrompt, key, i, spec)
                continue
            _name_as_default(spec, {kind.value for kind in read})
            if spec.type is not None and spec.type not in {kind.value for kind in read}:
                other = "dpo" if self.rl is RLMethod.orpo else "orpo"  # axolotl loads each method's from its module
                what = (
                    _user_defined_by_name(PreferencePrompt) if spec.type == USER_DEFINED
                    else f"is refused: {REFUSED_PREFERENCE_TYPES[spec.type]}" if spec.type in REFUSED_PREFERENCE_TYPES
                    else f"is rl: {other}'s type (axolotl's {other} strategies), which rl: {self.rl.value} does not "
                    "read" if spec.type in PreferenceType._value2member_map_
                    else f"is rl: {other}'s {spec.type_name}.default (axolotl loads a name without a dot as its "
                    f"module's default, and its {self.rl.value} strategies have none: its loader fails on it)"
                    if f"{spec.type_name}.default" in PreferenceType._value2member_map_
                    else f"is not a preference dataset type, which rl: {self.rl.value} needs"
                )  # fmt: skip
                raise ValueError(f"{key}[{i}].type: {spec.type_name} {what}; supported: {names}")
        return self

    def _check_dpo_losses(self) -> None:
        """rl: dpo's losses as TRL's DPOTrainer would refuse them, only once training starts: a weight per loss,
        label smoothing where a loss reads it (EXO's required), no WPO weighting of the sorted aot losses, and one
        chosen-NLL term (rpo_alpha adds TRL's sft loss)."""
        losses = self.dpo_loss_type or ["sigmoid"]
        given = "dpo_loss_type" if self.dpo_loss_type else "the default dpo_loss_type"
        if self.dpo_loss_weights is not None and len(self.dpo_loss_weights) != len(losses):
            raise ValueError(
                f"dpo_loss_weights: {len(self.dpo_loss_weights)} weights for {len(losses)} losses of {given} "
                f"{losses}; give one per loss"
            )
        if len(set(losses)) != len(losses):
            raise ValueError(f"dpo_loss_type: {losses} names a loss twice; weight it with dpo_loss_weights instead")
        smoothed = [loss for loss in losses if loss in SMOOTHED_DPO_LOSSES]
        if self.dpo_label_smoothing and not smoothed:
            raise ValueError(
                f"dpo_label_smoothing: read by TRL's {', '.join(SMOOTHED_DPO_LOSSES)} losses only, none of {given} "
                f"{losses}: it would change nothing; set 0, or add one of them"
            )
        if "exo_pair" in losses and not self.dpo_label_smoothing:
            raise ValueError(
                "dpo_label_smoothing: required above 0 with dpo_loss_type exo_pair (EXO's epsilon; its paper's 1e-3)"
            )
        if self.dpo_use_weighting and (sorted_losses := [loss for loss in losses if loss.startswith("aot")]):
            raise ValueError(
                f"dpo_use_weighting: TRL does not weight the {', '.join(sorted_losses)} loss (it sorts the pairs, "
                "which would misalign their weights); remove one of them"
            )
        if self.rpo_alpha and "sft" in losses:
            raise ValueError(
                "rpo_alpha: adds TRL's sft loss, which dpo_loss_type already has; weight that one with "
                "dpo_loss_weights instead"
            )
        if self.dpo_norm_loss:
            summed = [loss for loss in losses if loss not in NORMALISED_DPO_LOSSES]
            if summed:  # axolotl's trainer averaged every loss's log-probabilities; TRL 1.16 cannot for these
                raise ValueError(
                    f"dpo_norm_loss: averages each answer's log-probabilities over its tokens, which TRL 1.16 does "
                    f"in its sigmoid_norm (the sigmoid loss's) and ipo losses only; {given} {summed} would be "
                    "trained on the summed ones, so it cannot go with them: remove dpo_norm_loss or those losses"
                )
            if {"sigmoid", "sigmoid_norm"} <= set(losses):
                raise ValueError(
                    "dpo_norm_loss: makes sigmoid sigmoid_norm, which dpo_loss_type already has; weight that one "
                    "with dpo_loss_weights instead"
                )

    def _read_mapping_as(
        self, mapping: type[PreferencePrompt | KTOPrompt], key: str, i: int, spec: DatasetSpec
    ) -> None:
        """A `type:` mapping read as the user-defined format of this `rl` (`mapping`; axolotl reads any mapping as
        its method's user_defined.default): one whose keys that format has too ({}, {field_prompt, prompt_format},
        ...) becomes it; a key of another format is an error naming it."""
        assert isinstance(spec.type, TYPE_MAPPINGS)  # the callers' check
        if isinstance(spec.type, mapping):
            return
        given = spec.type.model_fields_set
        if foreign := sorted(given - set(mapping.model_fields)):
            whose = {
                CustomPrompt: "axolotl's SFT user-defined prompt",
                PreferencePrompt: "axolotl's DPO user-defined mapping (rl: dpo)",
                KTOPrompt: "axolotl's KTO user-defined mapping (rl: kto)",
            }[type(spec.type)]
            what = "KTO" if mapping is KTOPrompt else "preference"
            raise ValueError(
                f"{key}[{i}].type: {', '.join(foreign)}: keys of {whose}; the {what} mapping rl: {self.rl.value} "
                f"reads takes {', '.join(mapping.model_fields)}"
            )
        spec.type = mapping(**spec.type.model_dump(include=given))

    def _check_kto_types(self) -> AxolotlConfig:
        """rl: kto reads axolotl's kto strategies (rows with one completion and a label), its user-defined KTO
        mapping, or rows already {prompt, completion, label}; DPO's names mean other rows there."""
        names = ", ".join(kind.value for kind in KTOType)
        for key, i, spec in self.dataset_entries():
            if isinstance(spec.type, TYPE_MAPPINGS):
                self._read_mapping_as(KTOPrompt, key, i, spec)
                continue
            _name_as_default(spec, set(KTOType._value2member_map_))
            if spec.type is not None and spec.type not in KTOType._value2member_map_:
                what = (
                    _user_defined_by_name(KTOPrompt) if spec.type == USER_DEFINED
                    else "is a pair type (axolotl's dpo and orpo strategies), which rl: kto does not read"
                    if spec.type in PreferenceType._value2member_map_
                    else "is not a KTO dataset type (axolotl's kto strategies), which rl: kto needs"
                )  # fmt: skip
                raise ValueError(f"{key}[{i}].type: {spec.type_name} {what}; supported: {names}")
        return self

    def _check_grpo(self) -> AxolotlConfig:
        """rl: grpo as TRL's GRPOTrainer runs it: reward functions named, the generation batch (micro_batch_size x
        gradient_accumulation_steps x GPUs completions, TRL's default) made of whole groups of num_generations, and
        datasets that are prompts (rows with `prompt`) or axolotl's module.function transform of a user's file."""
        trl = self.trl or TrlSettings()
        if not trl.reward_funcs:
            raise ValueError(
                "trl.reward_funcs: required with rl: grpo (a list of module.function, e.g. [rewards.correct], of a "
                "Python file beside the config or in the current directory)"
            )
        if trl.reward_weights is not None and len(trl.reward_weights) != len(trl.reward_funcs):
            raise ValueError(
                f"trl.reward_weights: {len(trl.reward_weights)} weights for {len(trl.reward_funcs)} trl.reward_funcs; "
                "give one per function"
            )
        if trl.sync_ref_model and not self.preference_beta:
            raise ValueError(
                "trl.sync_ref_model: true needs a reference model, which GRPO has only with a KL penalty: set "
                "trl.beta (or rl_beta) above 0"
            )
        if trl.sync_ref_model and self.adapter is not None:
            raise ValueError(
                f"trl.sync_ref_model: true needs a copy of the model as its reference, which TRL keeps only in full "
                f"fine-tuning (an adapter's reference is the base with the adapter off); remove it or adapter: "
                f"{self.adapter.value}"
            )
        world = int(os.environ.get("WORLD_SIZE", "1"))
        group = self.grpo_generations
        batch = self.micro_batch_size * self.gradient_accumulation_steps * world
        if batch % group:
            given = f"trl.num_generations {group}" + ("" if trl.num_generations else " (unset: TRL's default)")
            raise ValueError(
                f"micro_batch_size x gradient_accumulation_steps x GPUs = {self.micro_batch_size} x "
                f"{self.gradient_accumulation_steps} x {world} = {batch} completions per generation, not divisible "
                f"by {given}: TRL generates whole groups of num_generations completions of a prompt"
            )
        if self.has_eval and (self.micro_batch_size * world) % group:
            raise ValueError(
                f"micro_batch_size x GPUs = {self.micro_batch_size * world} evaluation completions per batch, not "
                f"divisible by trl.num_generations {group} (TRL evaluates whole groups); change them, or remove "
                "val_set_size and test_datasets"
            )
        for key, i, spec in self.dataset_entries():
            if isinstance(spec.type, TYPE_MAPPINGS) or (spec.type and not spec.user_module):
                raise ValueError(
                    f"{key}[{i}].type: {spec.type_name} is not a GRPO dataset type; rl: grpo reads module.function "
                    "(axolotl's transform in a Python file beside the config or in the current directory), or no "
                    "type (rows with a prompt: text or messages)"
                )
        return self

    @model_validator(mode="after")
    def _check_dataset_types(self) -> AxolotlConfig:
        # Preference training (rl) reads its own dataset types (chatml.intel, chat_template.default, ...).
        if getattr(self, "rl", None):
            return self
        # axolotl reads a dataset without a type as rows already tokenized: say that they are not read here
        required = (
            "required: the prompt format (a name from the README's dataset-type table, or a mapping); rows already "
            "tokenized (input_ids, labels), which axolotl reads without a type, are not supported: write them as "
            "text with type: input_output (segments of {label, text}: the false ones masked)"
        )
        preference = {
            PreferencePrompt: "a {field_prompt, field_chosen, field_rejected, ...} mapping is axolotl's preference "
            "format, read under rl only (rl: dpo); the SFT mapping takes field_instruction, format, ...",
            KTOPrompt: "a {field_prompt, field_completion, field_label, ...} mapping is axolotl's KTO format, read "
            "under rl: kto only; the SFT mapping takes field_instruction, format, ...",
        }
        problems = [
            (key, i, spec.type_problem() if spec.type else required) for key, i, spec in self.dataset_entries()
        ]
        problems += [
            (key, i, preference[type(spec.type)])
            for key, i, spec in self.dataset_entries()
            if isinstance(spec.type, (PreferencePrompt, KTOPrompt))
        ]
        wrong = [f"{key}[{i}].type: {problem}" for key, i, problem in problems if problem]
        if wrong:
            raise ValueError("\n  - ".join(wrong))
        return self

    @property
    def ignored_keys(self) -> list[IgnoredKey]:
        """Keys of the source that change nothing (reported in the ConfigWarning)."""
        return list(self._ignored)

    @property
    def notices(self) -> list[str]:
        """Keys spelled the way an older llmkit wrote them, read the new way (reported in the ConfigWarning)."""
        return list(self._notices)

    def warning_message(self) -> str:
        """The ConfigWarning's text: ignored keys and old spellings; empty when there are none."""
        parts = ([ignored_message(self._ignored)] if self._ignored else []) + self._notices
        return "; ".join(parts)

    @property
    def quantization_options(self) -> BnbConfigKwargs:
        """bitsandbytes options of a quantized load, as axolotl builds them: NF4 with double quantization for
        `adapter: qlora`; transformers' own defaults (FP4, no double quantization) for `adapter: lora` with
        `load_in_4bit`, which axolotl passes on bare. Keys set in bnb_config_kwargs win either way."""
        given = self.bnb_config_kwargs.model_dump(exclude_unset=True) if self.bnb_config_kwargs else {}
        if self.adapter is Adapter.lora and self.load_in_4bit:
            return BnbConfigKwargs(**{"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False, **given})
        return BnbConfigKwargs(**given)

    @property
    def unfrozen_patterns(self) -> list[UnfrozenPattern]:
        """unfrozen_parameters, parsed (a full fine-tune trains only the parameters one of them matches)."""
        return [UnfrozenPattern.parse(text) for text in self.unfrozen_parameters or []]

    @property
    def tokenizer_key(self) -> str:
        """The key naming the tokenizer, which its errors name: tokenizer_config where set, else base_model."""
        return "tokenizer_config" if self.tokenizer_config else "base_model"

    @property
    def tokenizer_source(self) -> str:
        """Where the tokenizer is read from: `tokenizer_key`'s value (a hub id or a folder)."""
        return self.tokenizer_config or self.base_model

    @property
    def loftq_bits(self) -> int | None:
        """`peft.loftq_config.loftq_bits`, or None without LoftQ."""
        loftq = self.peft.loftq_config if self.peft else None
        return loftq.loftq_bits if loftq else None

    @property
    def neftune_alpha(self) -> float | None:
        """NEFTune's noise scale: neftune_noise_alpha, or its older name noisy_embedding_alpha."""
        return self.neftune_noise_alpha if self.neftune_noise_alpha is not None else self.noisy_embedding_alpha

    @property
    def grpo_generations(self) -> int:
        """rl: grpo: completions generated per prompt (trl.num_generations; unset: TRL's default)."""
        return (self.trl.num_generations if self.trl else None) or GRPO_DEFAULT_GENERATIONS

    @property
    def grpo_iterations(self) -> int:
        """rl: grpo: optimizer passes over each generation batch (trl.num_iterations; unset: TRL's 1)."""
        return (self.trl.num_iterations if self.trl else None) or 1

    @property
    def grpo_completion_tokens(self) -> int:
        """rl: grpo: the most tokens generated per completion (trl.max_completion_length; unset: TRL's default)."""
        return (self.trl.max_completion_length if self.trl else None) or GRPO_DEFAULT_COMPLETION_TOKENS

    @property
    def has_reference_model(self) -> bool:
        """Whether training computes a frozen reference's log-probabilities: DPO's, IPO's and KTO's always; GRPO's
        under a KL penalty (beta > 0; TRL's 0 loads no reference)."""
        if self.rl is RLMethod.grpo:
            return bool(self.preference_beta)
        return self.rl is not None and self.rl.has_reference

    @property
    def preference_beta(self) -> float | None:
        """The preference loss's beta as axolotl picks it: trl.beta, then rl_beta, then dpo_beta, then orpo_alpha
        (ORPO's weight, which axolotl passes as TRL's beta) (None: TRL's 0.1)."""
        for beta in (self.trl.beta if self.trl else None, self.rl_beta, self.dpo_beta, self.orpo_alpha):
            if beta is not None:
                return beta
        return None

    @property
    def checkpoint_offload(self) -> bool:
        """Whether gradient checkpointing also keeps the saved layer inputs in CPU memory (offload, unsloth)."""
        return self.gradient_checkpointing in ("offload", "unsloth", "offload_disk")

    @property
    def attention_implementation(self) -> str | None:
        """The attention asked for, in transformers' names (axolotl's `xformers` kept); None: transformers' default.

        A name (attn_implementation, attention) wins over the boolean keys (flash_attention, ...), which are then
        ignored, as axolotl's model loader does (`ignored_attention_flags`); of several boolean keys, the first in
        axolotl's priority order wins (xformers, flex, flash, sdp, eager), as its config normalizer picks one.

        Raises:
            ValueError: an unknown name, or two names that ask for different implementations.
        """
        named, flags = self._attention_asks()
        if len(set(named.values())) > 1:
            raise ValueError("attention set more than one way: " + ", ".join(f"{k}: {v}" for k, v in named.items()))
        return next(iter((named or flags).values()), None)

    @property
    def attention_key(self) -> str | None:
        """The key whose attention is used (see attention_implementation); None when none is set."""
        named, flags = self._attention_asks()
        return next(iter(named or flags), None)

    @property
    def ignored_attention_flags(self) -> list[str]:
        """The boolean attention keys set beside the key that names the attention used (attention_key) and asking
        for another implementation: axolotl loads the one chosen and ignores them (empty when they agree)."""
        chosen = self.attention_implementation
        _, flags = self._attention_asks()
        return [key for key, name in flags.items() if key != self.attention_key and name != chosen]

    def _attention_asks(self) -> tuple[dict[str, str], dict[str, str]]:
        """The attention each key asks for, in transformers' names: the named keys', then the boolean keys'.

        Raises:
            ValueError: a name that is no attention implementation.
        """
        named: dict[str, str] = {}
        for key in ("attn_implementation", "attention"):
            name = getattr(self, key)
            if name is not None:
                if name not in ATTENTION_NAMES and not name.startswith("kernels-community/"):
                    known = ", ".join(sorted(set(ATTENTION_NAMES)))
                    raise ValueError(f"{key}: {name!r} is not an attention implementation here; known: {known}")
                named[key] = ATTENTION_NAMES.get(name, name)
        return named, {key: name for key, name in _ATTENTION_FLAGS.items() if getattr(self, key)}

    def save_every(self) -> int | float | None:
        """Checkpoint cadence in steps (a float < 1: a fraction of all steps), from save_steps or saves_per_epoch.

        saves_per_epoch follows axolotl: 1 / (saves_per_epoch x num_epochs) of all steps, unless that is a whole
        run or more (then checkpoints follow save_strategy, by default each epoch).
        """
        if self.save_steps is not None:
            return self.save_steps
        return _per_epoch(self.saves_per_epoch, self.num_epochs)

    def _check_saves_fall_on_evaluations(self) -> None:
        """transformers' rule for load_best_model_at_end (fractions scaled as it scales them), which it states of its
        own flags and internal fractions, once the data is prepared: said here of the config's keys.

        Raises:
            ValueError: a save that is no evaluation step.
        """
        save, evaluate = self.save_every(), self.eval_every()
        if not save or not evaluate:
            return
        keys = (
            f"save_steps: {self.save_steps:g}"
            if self.save_steps is not None
            else f"saves_per_epoch: {self.saves_per_epoch}",
            f"eval_steps: {self.eval_steps:g}"
            if self.eval_steps is not None
            else f"evals_per_epoch: {self.evals_per_epoch}",
        )
        why = (
            "load_best_model_at_end (and early_stopping_patience) publish a saved checkpoint, so every save must "
            "fall on an evaluation"
        )
        if (save < 1) != (evaluate < 1):
            raise ValueError(
                f"{keys[0]} and {keys[1]} mix a fraction of the run with a number of steps; {why}: give both as "
                "steps, or both per epoch"
            )
        if round(save * 1e6) % round(evaluate * 1e6):
            unit = "steps" if save >= 1 else "of the run"
            raise ValueError(
                f"{keys[0]} and {keys[1]}: a save every {save:g} {unit} is not a multiple of an evaluation every "
                f"{evaluate:g}; {why}"
            )

    def eval_every(self) -> int | float | None:
        """Evaluation cadence in steps, from eval_steps or evals_per_epoch (as `save_every`)."""
        if self.eval_steps is not None:
            return self.eval_steps
        return _per_epoch(self.evals_per_epoch, self.num_epochs)

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

    def weights_dtype(self, device: str | None = None, capability: tuple[int, int] | None = None) -> str:
        """The dtype the model's weights are loaded in, as axolotl loads them: the compute dtype, so that a full
        fine-tune under bf16 trains bfloat16 weights. `bfloat16`/`float16` name it outright. One exception: a full
        fine-tune under fp16 mixed precision keeps float32 master weights, because the gradient scaler cannot unscale
        float16 gradients (axolotl fails there).

        Args: as `compute_dtype`.
        """
        if self.bfloat16 or self.float16:
            return "bfloat16" if self.bfloat16 else "float16"
        dtype = self.compute_dtype(device, capability)
        return "float32" if self.adapter is None and dtype == "float16" else dtype

    def tf32_enabled(self, device: str | None = None) -> bool:
        """Whether TF32 matmuls are allowed: tf32 true, or "auto" on an Ampere-or-newer GPU."""
        if self.tf32 != "auto":
            return bool(self.tf32)
        return devices.is_cuda(device or devices.resolve_device()) and devices.ampere_or_newer()

    def resolved_target_modules(self, shape_or_model) -> list[str]:
        """Module names the adapter wraps: every linear layer but the output head with lora_target_linear (or an
        `all-linear` entry), plus the listed names, each checked against the model's modules by peft's rule.

        Args:
            shape_or_model: a `llmkit.core.shapes.ModelShape`, a loaded torch model, or None when the model's shape
                is unknown (then the names are returned unchecked, "all-linear" standing for every linear layer).
        """
        from llmkit.core.shapes import ModelShape

        if self.adapter is None or self.peft_method is PeftMethod.prompt_tuning:
            return []
        if isinstance(self.lora_target_modules, str):
            return self._regex_targets(shape_or_model)
        listed = [name for name in self.lora_target_modules or [] if name != "all-linear"]
        all_linear = self.lora_target_linear or len(listed) < len(self.lora_target_modules or [])
        if shape_or_model is None:
            return (["all-linear"] if all_linear else []) + listed
        shape = shape_or_model if isinstance(shape_or_model, ModelShape) else ModelShape.from_model(shape_or_model)
        missing = [name for name in listed if not shape.matching(name)]
        if missing and len(missing) == len(listed) and not all_linear:  # peft's own error: nothing to wrap
            raise ConfigError([_unknown_targets(missing, shape, listed)], self.source)
        listed = [name for name in listed if name not in missing]
        renamed = self._peft_renamed(shape)
        refused = [name for name in listed if name.rsplit(".", 1)[-1] in renamed]
        if refused:
            raise ConfigError([_renamed_targets(refused, shape)], self.source)
        chosen = [name for name in shape.linear_names() if name not in renamed] if all_linear else []
        targets = chosen + [name for name in listed if name not in chosen]
        self._check_not_saved_whole(targets, shape)
        if missing:  # peft wraps the names that match and skips the rest, so axolotl trains the subset
            self._notice(
                f"{_unknown_targets(missing, shape, missing + listed)}. peft skips them, as axolotl's training does: "
                f"the adapter wraps {targets}"
            )
        return targets

    def _notice(self, note: str) -> None:
        """A note found after loading (the model's shape known): shown with the plan's notes, warned once."""
        if note not in self._notices:
            self._notices.append(note)
            warnings.warn(note, ConfigWarning, stacklevel=3)

    def _check_not_saved_whole(self, targets: list[str], shape) -> None:
        """A module is adapted with LoRA or trained whole (lora_modules_to_save), not both: peft stopped training on
        it ("modules_to_save cannot be applied to modules of type lora.Linear"), after the data was prepared. On a
        model training keeps tied, saving the embeddings or the head saves both."""
        saved = {module.name for name in self.checked_modules_to_save(shape) for module in shape.matching(name)}
        ends = [*shape.embeddings[:1], *([shape.head] if shape.head else [])]
        tied = self.ties_saved_embeddings(shape.tie_word_embeddings) and bool(saved & {module.name for module in ends})
        if tied:
            saved |= {module.name for module in ends}
        both = sorted({module.leaf for name in targets for module in shape.matching(name) if module.name in saved})
        if both:
            why = " (on this tied model, saving the embeddings or the head saves both)" if tied else ""
            problem = (
                f"lora_target_modules: {both} also trained whole by lora_modules_to_save{why}: a module is adapted "
                "with LoRA or trained whole, not both; remove it from one of the two"
            )
            raise ConfigError([problem], self.source)

    def _peft_renamed(self, shape) -> frozenset[str]:
        """Linear layers' names peft renames to its MoE experts' fused parameters (ModelShape.peft_renamed): the
        plan would say the dense MLPs train while peft trains the experts. VeRA is not renamed."""
        return shape.peft_renamed if self.peft_method is PeftMethod.lora else frozenset()

    def _regex_targets(self, shape_or_model) -> list[str]:
        """lora_target_modules as one regular expression, as peft reads a string: the full names of the modules it
        matches whole (lora_target_linear's layers too, where set); unknown shape: the expression, unchecked."""
        from llmkit.core.shapes import ModelShape

        pattern = cast(str, self.lora_target_modules)
        if shape_or_model is None:
            return (["all-linear"] if self.lora_target_linear else []) + [pattern]
        shape = shape_or_model if isinstance(shape_or_model, ModelShape) else ModelShape.from_model(shape_or_model)
        names = [module.name for module in shape.targetable() if re.fullmatch(pattern, module.name)]
        if not names:
            example = shape.linear[0].name if shape.linear else shape.architecture
            raise ConfigError(
                [
                    f"lora_target_modules: the regular expression {pattern!r} matches no module of "
                    f"{shape.architecture} whole (peft matches it against full names, e.g. {example})"
                ],
                self.source,
            )
        renamed = self._peft_renamed(shape)
        chosen = [name for name in shape.linear_names() if name not in renamed] if self.lora_target_linear else []
        return chosen + names

    def checked_modules_to_save(self, shape_or_model) -> list[str]:
        """lora_modules_to_save, each checked to name a module of the model (peft would ignore one that names
        none); with added `tokens`, they must include the input embeddings and the output head
        (`check_new_tokens_trained`).

        Args: as `resolved_target_modules` (None: returned unchecked).
        """
        from llmkit.core.shapes import ModelShape

        names = list(self.lora_modules_to_save or [])  # a copy: peft edits the list it is given (weight tying)
        if shape_or_model is None or self.adapter is None:
            return names
        shape = shape_or_model if isinstance(shape_or_model, ModelShape) else ModelShape.from_model(shape_or_model)
        missing = [name for name in names if name.rsplit(".", 1)[-1] not in shape.module_leaves]
        if missing:
            hints = {name: suggest(name.rsplit(".", 1)[-1], sorted(shape.module_leaves)) for name in missing}
            hint = "; ".join(f"did you mean {match} for {name}" for name, match in hints.items() if match)
            problem = f"lora_modules_to_save: {missing} match no module of {shape.architecture}"
            raise ConfigError([problem + (f"; {hint}" if hint else "")], self.source)
        if self.tokens:
            self.check_new_tokens_trained(shape.token_rows)
        return names

    def check_new_tokens_trained(
        self, token_rows: list[str] | None, new: str | None = None, instead: str = ""
    ) -> None:
        """axolotl's rule for tokens new to the vocabulary: with an adapter, their new embedding rows stay untrained
        (a new EOS the model never learns to emit) unless lora_modules_to_save lists both the input embeddings and
        the output head, `token_rows` (`ModelShape.token_rows`: the model's own names; peft matches a name's end).
        None: the model's names are unknown (its config.json is not here), axolotl's are said, and only a config
        that lists no module at all is refused (it misses them whatever they are named; wte was refused for GPT-2).

        Args:
            new: the message's start, naming the key and the new token; default: the config's `tokens`, which
                axolotl holds to the rule whether or not the vocabulary has them.
            instead: another way out, the message's end.

        Raises:
            ConfigError: one of `token_rows` is not listed; the message names what is missing.
        """
        if self.adapter is None or not (new or self.tokens) or (token_rows is None and self.lora_modules_to_save):
            return
        token_rows = token_rows or list(AXOLOTL_TOKEN_ROWS)
        listed = {name.rsplit(".", 1)[-1] for name in self.lora_modules_to_save or []}
        missing = [name for name in token_rows if name not in listed]
        if not missing:
            return
        new = new or f"tokens: {self.tokens} get new embedding rows, which an adapter leaves untrained"
        raise ConfigError(
            [f"{new}; lora_modules_to_save must list {' and '.join(token_rows)} (as axolotl requires; "
             f"{', '.join(missing)} missing){instead}"],
            self.source,
        )  # fmt: skip

    def ties_saved_embeddings(self, tied: bool) -> bool:
        """Whether training keeps a tied model's head tied to the trained copy of its input embeddings (peft's
        `ensure_weight_tying`): LoRA with lora_modules_to_save. Listing the embeddings, the head or both, peft then
        trains one copy for both; VeRA, which has no such option, trains a copy of each listed."""
        return bool(tied) and self.peft_method is PeftMethod.lora and bool(self.lora_modules_to_save)


# axolotl's names of the input embeddings and the output head (Llama's), where the model's own are unknown
AXOLOTL_TOKEN_ROWS = ("embed_tokens", "lm_head")


# Layer names of common architectures: one of them missing from this model is no typo of a name it has (up_proj is
# Llama's MLP, not a misspelt v_proj), so spelling alone suggests nothing for it.
_KNOWN_LAYER_NAMES = frozenset(
    "q_proj k_proj v_proj o_proj qkv_proj gate_proj up_proj down_proj gate_up_proj out_proj dense dense_h_to_4h "
    "dense_4h_to_h query_key_value query key value c_attn c_proj c_fc fc1 fc2 fc_in fc_out w1 w2 w3 wq wk wv wo "
    "Wqkv in_proj x_proj dt_proj lm_head embed_tokens".split()
)


def _unknown_targets(missing: list[str], shape, listed: list[str]) -> str:
    """Which listed names wrap nothing, and what the model has instead: a MoE expert's MLP name points at
    lora_target_parameters, a projection fused into another layer at that layer, a typo at the nearest name."""
    others = [m.leaf for m in shape.embeddings] + ([shape.head.leaf] if shape.head else [])
    line = (
        f"lora_target_modules: {missing} match no module of {shape.architecture} an adapter can wrap; its linear "
        f"layers are {shape.linear_names()}" + (f", its embeddings and head {others}" if others else "")
    )
    if shape.expert_names:
        line += (
            f"; its MoE experts are fused parameters ({', '.join(shape.expert_names)}), not modules: "
            f"lora_target_linear covers attention only, and lora_target_parameters: {list(shape.expert_names)} "
            "trains the experts"
        )
    experts = dict(shape.expert_sources)
    fused_experts = {name.rsplit(".", 1)[-1]: name for name in shape.expert_names}

    def hint(name: str) -> str | None:
        leaf = name.rsplit(".", 1)[-1]
        expert = experts.get(leaf) or fused_experts.get(_fused_into(leaf, list(fused_experts)) or "")
        if expert:  # the experts' MLP (Llama's names on Mixtral): a parameter, not a module
            return f"lora_target_parameters: {expert}"
        if fused := _fused_into(name, shape.linear_names()):
            return fused
        if leaf in _KNOWN_LAYER_NAMES:
            return None
        typo = suggest(name, shape.linear_names() + others)
        return typo if typo not in listed else None

    hints = {name: text for name in missing if (text := hint(name))}
    if hints:
        line += "; did you mean " + ", ".join(f"{text} for {name}" for name, text in hints.items())
    return line


def _unknown_parameters(missing: list[str], others: list[str], shape) -> str:
    """Which lora_target_parameters entries name no fused expert parameter, and the model's candidates."""
    if shape.expert_names:
        example = shape.experts[0][0]
        candidates = (
            f"its fused 3-D MoE expert parameters are {list(shape.expert_names)} (full names such as {example}; "
            "any dotted suffix of a full name selects it)"
        )
    else:
        candidates = f"{shape.architecture} has no fused 3-D MoE expert parameters; lora_target_modules wraps layers"
    problems = [f"{missing} match no MoE expert parameter of {shape.architecture}"] if missing else []
    if others:
        problems.append(f"they also match parameters that are no fused experts ({', '.join(others[:3])})")
    return f"lora_target_parameters: {'; '.join(problems)}: {candidates}"


def _fused_into(name: str, linear: list[str]) -> str | None:
    """The fused layer that holds `name`'s projection (Phi-3: q_proj in qkv_proj, up_proj in gate_up_proj), where
    spelling alone would point elsewhere (up_proj is nearer o_proj)."""
    head, _, tail = name.rpartition("_")
    for candidate in linear:
        parts, _, candidate_tail = candidate.rpartition("_")
        if candidate_tail != tail or not head:
            continue
        if head in parts.split("_") or (len(head) == 1 and "_" not in parts and head in parts):
            return candidate
    return None


def _renamed_targets(names: list[str], shape) -> str:
    return (
        f"lora_target_modules: {names} cannot be trained on {shape.architecture}: peft renames every target of "
        f"that name to its MoE experts' fused parameters ({', '.join(shape.expert_names)}), so the experts would "
        "train instead of these layers; leave them out (lora_target_linear leaves them out on this model), and "
        f"list the experts in lora_target_parameters ({list(shape.expert_names)}) to train them"
    )


def _per_epoch(per_epoch: int | None, num_epochs: float) -> float | None:
    if not per_epoch:
        return None
    fraction = 1.0 / (per_epoch * num_epochs)
    return fraction if fraction < 1.0 else None


def _unread_sync_keys(cfg: AxolotlConfig) -> list[IgnoredKey]:
    """trl.ref_model_mixup_alpha and trl.ref_model_sync_steps without trl.sync_ref_model, which axolotl passes only
    with it (its own config dumps hold its defaults)."""
    if cfg.trl is None or cfg.trl.sync_ref_model:
        return []
    values = {key: getattr(cfg.trl, key) for key in GRPO_SYNC_DEFAULTS}
    note = "read only with trl.sync_ref_model: true"
    return [
        IgnoredKey(f"trl.{key}", value, known=True, note=note) for key, value in values.items() if value is not None
    ]


# A conversation's keys: read by the chat types alone (chat_template, sharegpt), as in axolotl, whose other SFT
# strategies take their fields from the row by their own names.
_CHAT_KEYS = ("field_messages", "message_property_mappings", "message_field_role", "message_field_content")


def _unread_chat_keys(cfg: AxolotlConfig) -> list[IgnoredKey]:
    """A conversation's keys on an SFT dataset of another type (type: alpaca with field_messages): they do nothing
    there, and passed silently, under strict too."""
    if cfg.rl is not None:  # preference types read some of them (chat_template.argilla_chat's roles)
        return []
    ignored = []
    for key, i, spec in cfg.dataset_entries():
        if not isinstance(spec.type, DatasetType) or spec.type in (DatasetType.chat_template, DatasetType.sharegpt):
            continue
        note = f"read only by type: chat_template (and sharegpt); type: {spec.type.value} does not read it"
        for field in _CHAT_KEYS:
            if (value := getattr(spec, field)) is not None:
                ignored.append(IgnoredKey(f"{key}[{i}].{field}", value, known=True, note=note))
    return ignored


# The preference types whose rows' tools axolotl reads from `field_tools` (its dpo chat_template strategies).
_TOOLS_TYPES = (PreferenceType.chat_template_default, PreferenceType.chat_template_argilla_chat)


def _unread_field_tools(cfg: AxolotlConfig) -> list[IgnoredKey]:
    """field_tools on a dataset whose type does not read it: said, as it changes nothing there."""
    ignored = []
    for key, i, spec in cfg.dataset_entries():
        if spec.field_tools is None or (cfg.rl is not None and cfg.rl.paired and spec.type in _TOOLS_TYPES):
            continue
        note = (
            "axolotl's loader never passes it on, so a row's tools are its `tools` column whatever this names, "
            "there as here"
            if cfg.rl is None and spec.type in (DatasetType.chat_template, DatasetType.sharegpt)
            else "read only by rl's chat_template.default and chat_template.argilla_chat (a row's tools column)"
        )
        ignored.append(IgnoredKey(f"{key}[{i}].field_tools", spec.field_tools, known=True, note=note))
    return ignored


def _unread_argilla_template(cfg: AxolotlConfig) -> list[IgnoredKey]:
    """A chat_template (chat_template_jinja) on an rl: orpo chat_template.argilla entry: axolotl's orpo argilla renders
    with the config's chat template (get_chat_template_from_config without the entry), and so does this; said, as the
    entry's key changes nothing."""
    if cfg.rl is not RLMethod.orpo:
        return []
    note = "rl: orpo's chat_template.argilla renders with the config's top-level chat_template, as axolotl's does"
    return [
        IgnoredKey(f"{key}[{i}].{field}", value, known=True, note=note)
        for key, i, spec in cfg.dataset_entries()
        if spec.type == PreferenceType.chat_template_argilla
        for field in ("chat_template", "chat_template_jinja")
        if (value := getattr(spec, field)) is not None
    ]


def _refused(key: IgnoredKey) -> bool:
    return key.path in REFUSED_KEYS and key.effective


def _gdpo_as_grpo(data: dict[str, Any]) -> dict[str, Any]:
    """rl: gdpo as axolotl runs it: its GRPO trainer, trl.multi_objective_aggregation normalize_then_sum where trl:
    leaves it unset (axolotl's setdefault), so the resolved config says rl: grpo with that aggregation."""
    if data.get("rl") != "gdpo":
        return data
    trl = data.get("trl")
    if trl is None:
        trl = {}
    if isinstance(trl, dict) and trl.get("multi_objective_aggregation") is None:
        trl = {**trl, "multi_objective_aggregation": GDPO_AGGREGATION}
    return {**data, "rl": "grpo", "trl": trl}  # a trl: that is no mapping: TrlSettings says so, naming it


def _migrate_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Older spellings read as the current keys; returns the data and a notice per spelling worth a warning.

    Raises:
        ValueError: an old and a new spelling that disagree, or `peft:` as a string that is no PEFT method.
    """
    notices = []
    for old, new in _RENAMED_KEYS.items():
        if old in data:
            value = data.pop(old)
            if data.get(new) not in (None, value):
                raise ValueError(f"{old} (older name of {new}): {value!r} and {new}: {data[new]!r} disagree")
            data[new] = value if value is not None else data.get(new)
    if isinstance(data.get("tokens"), dict):  # axolotl's first spelling of special_tokens
        tokens = data.pop("tokens")
        special = data.get("special_tokens") or {}
        if isinstance(special, dict) and any(special.get(k, v) != v for k, v in tokens.items()):
            raise ValueError("tokens (as a mapping, the older spelling of special_tokens) and special_tokens disagree")
        data["special_tokens"] = {**tokens, **special} if isinstance(special, dict) else special
    batch, micro = data.get("batch_size"), data.get("micro_batch_size") or 1
    if isinstance(batch, int) and isinstance(micro, int) and data.get("gradient_accumulation_steps") is None:
        # axolotl's older total batch: gradient_accumulation_steps = batch_size / micro_batch_size
        if batch % micro:
            raise ValueError(f"batch_size: {batch} is not a multiple of micro_batch_size: {micro}")
        data["gradient_accumulation_steps"] = batch // micro
    peft = data.get("peft")
    if isinstance(peft, str):
        if peft not in PeftMethod._value2member_map_:
            methods = ", ".join(PeftMethod._value2member_map_)
            raise ValueError(
                f"peft: {peft!r}: axolotl's peft: is a mapping ({{loftq_config: {{loftq_bits: 4}}}}); the PEFT "
                f"method is peft_method: {methods}"
            )
        if data.get("peft_method") not in (None, peft):
            raise ValueError(f"peft: {peft} (old spelling) and peft_method: {data['peft_method']} disagree")
        data["peft_method"] = data.pop("peft")
        notices.append(f"peft: {peft} is this project's old spelling; use peft_method: {peft}")
    return data, notices


def _unread_vllm_keys(data: dict) -> list[IgnoredKey]:
    """trl: keys of axolotl's vLLM generation, which it reads only with trl.use_vllm: true (refused here: the
    trainer generates): reported as ignored keys, as axolotl ignores them then."""
    trl = data.get("trl")
    if not isinstance(trl, dict) or trl.get("use_vllm"):
        return []  # not a mapping, or use_vllm: true: their own checks say what is wrong
    note = "read only with trl.use_vllm: true (GRPO's completions are generated in the trainer here)"
    return [IgnoredKey(f"trl.{key}", trl[key], known=True, note=note) for key in VLLM_TRL_KEYS if key in trl]


def _unimplemented_metrics(data: dict) -> list[IgnoredKey]:
    """eval_causal_lm_metrics it does not compute (axolotl's defaults: sacrebleu, comet, ter, chrf) change only what
    an evaluation logs: dropped from `data` and reported as an ignored key (an error under strict), as another
    key that changes no weight is; the config's own metrics stay."""
    listed = data.get("eval_causal_lm_metrics")
    if not listed:
        return []
    names = one_as_list(listed)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return []  # the field's own check says what is wrong with it
    unknown = [name for name in names if name not in CAUSAL_LM_METRICS]
    if unknown:
        data["eval_causal_lm_metrics"] = [name for name in names if name in CAUSAL_LM_METRICS] or None
    return [IgnoredKey("eval_causal_lm_metrics", unknown, known=True)] if unknown else []


def _sharegpt_notices(cfg: AxolotlConfig) -> list[str]:
    """`type: sharegpt` without `conversation:` renders with the template chat_template would: the old meaning is
    gone (axolotl before 0.5 used fastchat's vicuna_v1.1; current axolotl refuses sharegpt), so say which."""
    notices = []
    for key, i, spec in cfg.dataset_entries():
        if spec.type is DatasetType.sharegpt and not (
            spec.conversation or spec.chat_template or spec.chat_template_jinja
        ):
            choice = spec.template_choice(cfg.chat_template, cfg.chat_template_jinja)[0]
            notices.append(
                f"{key}[{i}].type: sharegpt without conversation: rendered with chat_template {choice}, as "
                "type: chat_template would be (axolotl before 0.5 used fastchat's vicuna_v1.1 here; current axolotl "
                "refuses sharegpt): write type: chat_template, or name the template with conversation:"
            )
    return notices


def _attention_notices(cfg: AxolotlConfig) -> list[str]:
    """A boolean attention key beside the one axolotl takes changes nothing: say so, and which won. A name wins
    without a word from axolotl's loader (gpt-oss's examples set flash_attention: true beside a hub kernel); of two
    boolean keys its config normalizer takes the first in its priority order (flash_attention over sdp_attention)."""
    key = cfg.attention_key
    if key in _ATTENTION_FLAGS:
        why = "the first of the boolean attention keys in axolotl's priority order (xformers, flex, flash, sdp, eager)"
        return [
            f"{flag}: true is ignored: {key}: true wins ({cfg.attention_implementation}), {why}"
            for flag in cfg.ignored_attention_flags
        ]
    return [
        f"{flag}: true is ignored: {key}: {getattr(cfg, key)} names the attention, as in axolotl, whose model "
        "loader takes a named attention over the boolean keys"
        for flag in cfg.ignored_attention_flags
    ]


def _resolve_local(path: str, base: Path) -> str:
    """A relative path that exists from the current directory (axolotl's rule) or else from `base`, made absolute."""
    candidate = user_path(path)
    if candidate.is_absolute():
        return path
    for root in (Path.cwd(), base):
        if (root / candidate).exists():
            return str((root / candidate).resolve())
    return path  # a hub id, or a file that doesn't exist yet (data's own error names it)


def _resolve_dataset_paths(raw: dict, base: Path) -> None:
    entries = [entry for key in DATASET_LISTS if isinstance(raw.get(key), list) for entry in raw[key]]
    for entry in entries:  # any other shape is the schema's error to name
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"].strip():  # "": empty
            entry["path"] = _resolve_local(entry["path"], base)
            files = entry.get("data_files")
            if not Path(entry["path"]).is_dir() and isinstance(files, (str, list)):
                entry["data_files"] = [_resolve_local(f, base) for f in ([files] if isinstance(files, str) else files)]


def duplicate_keys(text: str) -> list[str]:
    """Keys a YAML mapping gives twice, each with its lines: PyYAML (and so axolotl) keeps the last one silently,
    which is rarely what was meant (a second `learning_rate:` further down)."""
    found = []
    pending: list[tuple[yaml.Node, str]] = [(yaml.compose(text, Loader=yaml.SafeLoader), "")]
    seen = set()  # an alias is the node it names: each is looked at once
    while pending:
        node, where = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, list[int]] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines.setdefault(key.value, []).append(key.start_mark.line + 1)
                    pending.append((value, f"{where}{key.value}."))
            for key, at in lines.items():
                if len(at) > 1 and key != "<<":
                    times = "twice" if len(at) == 2 else f"{len(at)} times"
                    found.append(f"{where}{key} is given {times} (lines {', '.join(map(str, at))}): the last is used")
        elif isinstance(node, yaml.SequenceNode):
            pending += [(item, f"{where.removesuffix('.')}[{i}].") for i, item in enumerate(node.value)]
    return sorted(found)


MAX_CONFIG_VALUES = 100_000  # YAML aliases share one object; validating or printing one expands it in full


def _more_values_than(raw: object, limit: int) -> bool:
    """Whether `raw`, walked as validation walks it (each alias expanded), holds more than `limit` values."""
    pending, seen = [raw], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _named_missing(lines: list[str], err: ValidationError, raw: dict) -> list[str]:
    """`lines` where a required key's "Field required" names the key the file holds for it (`Base_Model:`, keys
    being case-sensitive, or a typo): an unknown key is reported only once the config loads, so the error said the
    key was missing and nothing of the one written."""
    others = [key for key in raw if isinstance(key, str) and key not in AxolotlConfig.model_fields]
    for error in err.errors(include_url=False):
        if error["type"] != "missing" or len(error["loc"]) != 1:
            continue
        name = str(error["loc"][0])
        written = next((key for key in others if key.lower() == name.lower()), None)
        if written := written or next((key for key in others if suggest(key, [name])), None):
            line = f"{name}: {error_message(error)}"
            lines = [f"{line} ({written} is set: did you mean {name}?)" if said == line else said for said in lines]
    return lines


def load_config(path: str | Path, overrides: dict | None = None, *, models_elsewhere: bool = False) -> AxolotlConfig:
    """Read, check and type an axolotl-style YAML file.

    Args:
        path: the YAML file.
        overrides: top-level keys replacing the file's (e.g. {"max_steps": 5, "output_dir": "/tmp/run"}).
        models_elsewhere: keep a local base_model, base_model_config or tokenizer_config path that is not on this
            machine (validate, which warns of it: machine.check_model_paths); else it is an error.

    Raises:
        ConfigError: unreadable YAML, or values that don't fit the schema; names the file and each key path.
    """
    path = Path(path)
    try:
        raw, text = read_mapping(path, "a config", "base_model: ...")
    except YamlFileError as err:
        if err.unreadable:  # the file's, not its keys': no "Invalid config" heading
            raise ConfigError([f"cannot read the config {path}: {err}"], path, invalid=False) from None
        raise ConfigError([err.problem], path) from None
    if _more_values_than(raw, MAX_CONFIG_VALUES):
        raise ConfigError(
            [f"holds more than {MAX_CONFIG_VALUES:,} values once its YAML aliases are expanded (anchors nested in "
             "anchors); a config is a few hundred"],
            path,
        )  # fmt: skip
    repeated = duplicate_keys(text)
    raw.update(overrides or {})
    _resolve_dataset_paths(raw, path.resolve().parent)
    try:
        with warnings.catch_warnings():  # re-issued below, pointing at the caller instead of pydantic's internals
            warnings.simplefilter("ignore", ConfigWarning)
            cfg = AxolotlConfig.model_validate(raw, context={MODELS_ELSEWHERE: models_elsewhere})
    except ValidationError as err:
        raise ConfigError(_named_missing(problems(err), err, raw), path) from None
    cfg._source = path
    cfg._notices += repeated  # after validation: a warning even under strict, as axolotl reads such a file
    if cfg.warning_message():
        warnings.warn(f"{path}: {cfg.warning_message()}", ConfigWarning, stacklevel=2)
    return cfg
