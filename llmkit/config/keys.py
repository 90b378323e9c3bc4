"""Which keys a config may carry: axolotl keys this project knows but does not implement, and the key table.

`llmkit config-keys` prints `key_table()`: the README's "Configs" table is that output, never a hand copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import get_close_matches
from enum import Enum
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from llmkit.core.errors import short_repr

# axolotl keys that real configs (the team's included) carry and this project does not act on, because they
# change how fast or where a run goes, what it logs or evaluates, not the weights it trains (or, for chat_template,
# default_system_message and the dataset keys, because the data stage owns them). A key here is reported by name
# as ignored; any other unknown key is reported as unknown, with a "did you mean".
UNIMPLEMENTED_KEYS = frozenset(
    """
    is_llama_derived_model is_mistral_derived_model is_falcon_derived_model is_qwen_derived_model
    lora_on_cpu flash_attn_cross_entropy flash_attn_rms_norm flash_attn_fuse_qkv flash_attn_fuse_mlp flash_optimum
    local_rank debug deepspeed fsdp fsdp_config
    eval_table_size eval_table_max_new_tokens do_bench_eval eval_batch_size
    merge_lora default_system_message dataset_processes
    push_dataset_to_hub hf_use_auth_token eval_sample_packing
    sample_packing_eff_est total_num_tokens max_packed_sequence_len save_safetensors hub_strategy torch_compile
    torch_compile_backend ddp_timeout ddp_bucket_cap_mb ddp_broadcast_buffers lr_div_factor
    auto_resume_from_checkpoints loss_watchdog_threshold loss_watchdog_patience
    low_cpu_mem_usage resize_token_embeddings_to_32x use_wandb wandb_mode mlflow_tracking_uri mlflow_experiment_name
    gpu_memory_limit torchdistx_path plugins model_config_type tokenizer_use_fast gptq_groupsize gptq_model_v1
    dpo_use_logits_to_keep dpo_padding_free dpo_use_liger_kernel dpo_generate_during_eval
    orpo_alpha simpo_gamma cpo_alpha kto_desirable_weight kto_undesirable_weight
    ddp_find_unused_parameters moe_kernels lora_mlp_kernel lora_qkv_kernel lora_o_kernel cut_cross_entropy
    liger_rope liger_rms_norm liger_glu_activation liger_layer_norm liger_fused_linear_cross_entropy
    save_first_step include_tokens_per_second dataloader_num_workers dataloader_pin_memory dataloader_prefetch_factor
    remove_unused_columns chunked_cross_entropy tiled_mlp activation_offloading use_kernels use_scattermoe
    experts_implementation expert_parallel_size sequence_parallel_degree context_parallel_size tensor_parallel_size
    dp_shard_size dp_replicate_size fsdp_version flex_attn_compile_kwargs accelerator_config skip_prepare_dataset
    tokenizer_use_mistral_common freeze_mm_modules ddp experimental_skip_move_to_device
    sample_packing_sequentially sample_packing_bin_size sample_packing_group_size sample_packing_mp_start_method
    processor_type lisa_n_layers lisa_step_interval lisa_layers_attribute
    """.split()
)
# axolotl keys that would change what is trained and that this project does not implement: a value other than
# empty or false is a ConfigError naming the key, with or without `strict`.
REFUSED_KEYS = {
    "s2_attention": "shifted-sparse attention (LongLoRA) changes the attention itself; not implemented",
    "gptq": "training on a GPTQ-quantized base is not implemented; use load_in_4bit (bitsandbytes NF4)",
    "relora": "ReLoRA (merge and restart the adapter) is not implemented",
    "relora_steps": "ReLoRA (merge and restart the adapter) is not implemented",
    "relora_warmup_steps": "ReLoRA (merge and restart the adapter) is not implemented",
    "lr_quadratic_warmup": "quadratic warmup is not implemented; warmup here is linear",
    "pretraining_dataset": "streamed pretraining data is not implemented; use datasets: with type: completion",
    "dataset_shard_num": "training on one shard of the data is not implemented",
    "dataset_shard_idx": "training on one shard of the data is not implemented",
    "max_prompt_len": "TRL 1.16's DPOTrainer no longer cuts prompts on their own; rows are cut at sequence_len",
    "dpo_norm_loss": "length-normalised DPO loss is not implemented",
    "reward_model": "reward-model training (a scalar head on preference pairs) is not implemented",
    "process_reward_model": "reward-model training (a scalar head on preference pairs) is not implemented",
    "qat": "quantization-aware training is not implemented; QLoRA here trains on a bitsandbytes NF4 base",
    "llmcompressor": "sparsity-preserving fine-tuning (an llmcompressor recipe) is not implemented",
    "gkd_trainer": "GKD (distillation from a teacher model's generations) is not implemented",
    "quantize_moe_experts": "quantizing fused MoE experts is not implemented: bitsandbytes leaves them in 16 bits",
    "lora_target_parameters": "LoRA on parameters (fused MoE experts) is not implemented; lora_target_modules "
    "covers linear layers",
    "use_onebitllms": "training a 1.58-bit (BitNet) model is not implemented",
    "scaling_softmax": "scaled-softmax attention changes the attention itself; not implemented",
    "cosine_constant_lr_ratio": "the cosine schedule held constant at a ratio is not implemented; "
    "cosine_min_lr_ratio is",
    "lr_scheduler_kwargs": "extra scheduler arguments are not implemented; lr_scheduler, warmup_steps/warmup_ratio "
    "and cosine_min_lr_ratio are",
    "lr_groups": "per-module learning rates are not implemented (loraplus_lr_ratio is)",
    "embedding_lr": "a separate embedding learning rate is not implemented (loraplus_lr_embedding is)",
    "embedding_lr_scale": "a separate embedding learning rate is not implemented (loraplus_lr_embedding is)",
    "curriculum_sampling": "sequential (curriculum) sampling is not implemented: the Trainer shuffles rows each epoch",
    "chat_template_kwargs": "extra chat template arguments are not implemented; write them into chat_template_jinja",
    "min_sample_len": "a minimum row length is not implemented; rows with no trained token are dropped",
}
# Keys that change what is trained only together, as axolotl reads them: refused when every one is set; one alone is
# an ignored key. LISA runs `if cfg.lisa_step_interval and cfg.lisa_n_layers` (lisa_layers_attribute has a default);
# processor_type alone loads no processor (axolotl's multimodal path follows the model, not this key).
REFUSED_TOGETHER = {
    ("lisa_n_layers", "lisa_step_interval"): "LISA (training a few randomly chosen layers at a time) is not "
    "implemented",
}
# axolotl plugins that change only speed, memory or logging (any other plugin is refused: it may change training).
SPEED_ONLY_PLUGINS = frozenset(
    "CutCrossEntropyPlugin LigerPlugin KernelsPlugin ExpertParallelPlugin SwanLabPlugin LMEvalPlugin".split()
)


def refused_plugins(value: object) -> list[str]:
    """The `plugins:` entries that may change what is trained (all but SPEED_ONLY_PLUGINS)."""
    names = value if isinstance(value, list) else [value] if value else []
    return [str(name) for name in names if str(name).rsplit(".", 1)[-1] not in SPEED_ONLY_PLUGINS]


DATASET_UNIMPLEMENTED_KEYS = frozenset(
    """
    preprocess_shards train_on_split trust_remote_code input_transform input_format
    message_field_training_detail field_thinking template_thinking_key split_thinking field_tools
    field_human field_model logprobs_field temperature
    """.split()
)

EMPTY_VALUES = (None, False, "", [], {})  # an unimplemented key set to one of these changes nothing


def suggest(key: str, candidates: list[str]) -> str | None:
    """The known key a typo most likely meant, or None."""
    match = get_close_matches(key, candidates, n=1, cutoff=0.75)
    return match[0] if match else None


@dataclass(frozen=True)
class IgnoredKey:
    path: str  # `debug`, `datasets[0].shards`
    value: Any
    known: bool  # an axolotl key this project does not implement (False: unknown, likely a typo)
    suggestion: str | None = None

    @property
    def effective(self) -> bool:
        """Whether the value would have changed anything (empty and false values change nothing)."""
        return not any(self.value == empty and type(self.value) is type(empty) for empty in EMPTY_VALUES)

    def describe(self) -> str:
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        kind = "not implemented here" if self.known else "unknown key"
        shown = short_repr(self.value)
        value = f"={shown}" if self.effective else f" ({shown}: no effect)"
        return f"{self.path}{value}: {kind}{hint}"


def split_keys(data: dict, fields: list[str], unimplemented: frozenset, prefix: str) -> tuple[dict, list]:
    """Drop empty values and keys the model doesn't declare; return the rest and the dropped keys."""
    kept, ignored = {}, []
    for key, value in data.items():
        if key in fields:
            if value is not None:  # empty means unset: the field's default applies
                kept[key] = value
        else:
            known = key in unimplemented
            hint = None if known else suggest(str(key), fields)
            ignored.append(IgnoredKey(f"{prefix}{key}", value, known, hint))
    return kept, ignored


def ignored_message(ignored: list[IgnoredKey]) -> str:
    """Unknown or set keys one by one; known keys left empty or false (no effect either way) as one list."""
    named = [key.describe() for key in ignored if not key.known or key.effective]
    empty = [key.path for key in ignored if key.known and not key.effective]
    if empty:
        named.append(f"left empty or false, not implemented here either way: {', '.join(empty)}")
    return "config keys ignored here (this run is trained as if they were absent): " + "; ".join(named)


def describe_type(annotation) -> str:
    """A short human form of a field's type: `int`, `lora | qlora`, `list[str]`, `bool | "auto"`."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(member.value for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "{" + ", ".join(annotation.model_fields) + "}"
    if get_origin(annotation) is Literal:
        return " | ".join(f'"{arg}"' for arg in get_args(annotation))
    if get_origin(annotation) is Annotated:  # a type with validators (`Folder`): the type it validates
        return describe_type(get_args(annotation)[0])
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is dict:
        return "mapping"
    if get_origin(annotation) is list:
        return f"list[{describe_type(args[0])}]"
    if args:
        return " | ".join(describe_type(arg) for arg in args)
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    default = field.get_default(call_default_factory=True)
    return "" if default is None else f"`{default.value if isinstance(default, Enum) else default}`"


def key_table(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Markdown rows `| key | type | default | meaning |` for every field of `model` (and `datasets[]` entries)."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        kind = describe_type(annotation).replace("|", "\\|")  # a bare | would split the Markdown cell
        rows.append(f"| `{prefix}{name}` | {kind} | {_default(field)} | {field.description} |")
        item = get_args(annotation)[0] if get_origin(annotation) is list else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            rows.extend(key_table(item, prefix=f"{prefix}{name}[]."))
    return rows


def markdown_table(model: type[BaseModel]) -> str:
    header = ["| key | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join(header + key_table(model))
