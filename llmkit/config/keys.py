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
# default_system_message and the dataset keys, because the data stage owns them; or they only tune a method that is
# refused here: an optimizer's, ReLoRA's, PoSE's, the reward model's, QA-LoRA's; mean_resizing_embeddings: new
# embedding rows always start at the others' mean, transformers' default, so that training, merging and serving resize
# alike; float32: the training dtype follows bf16 and fp16, as axolotl's does; base_model_ignore_patterns: which hub
# files axolotl downloads, where from_pretrained reads the same weights from the safetensors files first).
# A key here is reported by name as ignored; any other unknown key is reported as unknown, with a "did you mean".
UNIMPLEMENTED_KEYS = frozenset(
    """
    is_llama_derived_model is_mistral_derived_model is_falcon_derived_model is_qwen_derived_model
    lora_on_cpu flash_attn_cross_entropy flash_attn_rms_norm flash_attn_fuse_qkv flash_attn_fuse_mlp flash_optimum
    local_rank debug deepspeed fsdp fsdp_config
    eval_table_size eval_table_max_new_tokens do_bench_eval eval_batch_size
    merge_lora default_system_message dataset_processes
    push_dataset_to_hub hf_use_auth_token
    sample_packing_eff_est total_num_tokens max_packed_sequence_len save_safetensors hub_strategy torch_compile
    torch_compile_backend ddp_timeout ddp_bucket_cap_mb ddp_broadcast_buffers lr_div_factor
    auto_resume_from_checkpoints loss_watchdog_threshold loss_watchdog_patience
    low_cpu_mem_usage resize_token_embeddings_to_32x use_wandb wandb_mode mlflow_tracking_uri mlflow_experiment_name
    gpu_memory_limit torchdistx_path plugins model_config_type tokenizer_use_fast gptq_groupsize gptq_model_v1
    dpo_use_logits_to_keep dpo_padding_free dpo_use_liger_kernel dpo_generate_during_eval
    ddp_find_unused_parameters moe_kernels lora_mlp_kernel lora_qkv_kernel lora_o_kernel cut_cross_entropy
    liger_rope liger_rms_norm liger_glu_activation liger_swiglu liger_layer_norm liger_cross_entropy
    liger_fused_linear_cross_entropy
    save_first_step include_tokens_per_second dataloader_num_workers dataloader_pin_memory dataloader_prefetch_factor
    remove_unused_columns chunked_cross_entropy tiled_mlp activation_offloading use_kernels use_scattermoe
    experts_implementation expert_parallel_size sequence_parallel_degree context_parallel_size tensor_parallel_size
    dp_shard_size dp_replicate_size fsdp_version flex_attn_compile_kwargs accelerator_config skip_prepare_dataset
    freeze_mm_modules ddp experimental_skip_move_to_device
    sample_packing_sequentially sample_packing_bin_size sample_packing_group_size sample_packing_mp_start_method
    processor_type lisa_n_layers lisa_step_interval lisa_layers_attribute
    auto_find_batch_size axolotl_config_path batch_flattening bench_dataset bench_split capabilities env_capabilities
    chunked_cross_entropy_num_chunks use_comet comet_api_key comet_experiment_config comet_experiment_key comet_mode
    comet_online comet_project_name comet_workspace dataloader_drop_last dataset_keep_in_memory dataset_num_proc
    deepcompile device device_map max_memory dynamic_checkpoint embeddings_skip_upcast
    fp8_enable_fsdp_float8_all_gather fsdp_final_state_dict_type gc_steps gemma4_hybrid_attn_impl generate_samples
    generation_do_sample generation_max_new_tokens generation_prompt_ratio generation_temperature generation_top_k
    generation_top_p num_generation_samples gradio_max_new_tokens gradio_server_name gradio_server_port gradio_share
    gradio_temperature gradio_title heads_k_stride ring_attn_func hf_mlflow_log_artifacts use_mlflow mlflow_run_name
    hub_revision include_tkps is_preprocess preprocess_iterable layer_offloading lora_embedding_kernel merge_method
    multipack_real_batches num_dataset_shards_to_save use_otel_metrics otel_metrics_host otel_metrics_port
    peft_autocast_adapter_dtype pretrain_multipack_buffer_size streaming_multipack_buffer_size streaming
    profiler_steps profiler_steps_start qlora_sharded_model_loading use_ray ray_num_workers ray_run_name
    resources_per_worker save_only_model tiled_mlp_num_shards tiled_mlp_use_original_mlp tokenizer_save_jinja_files
    torch_compile_mode total_supervised_tokens use_trackio trackio_project_name trackio_run_name trackio_space_id
    use_tensorboard world_size precompute_ref_log_probs eval_sequence_len pad_to_multiple_of num_labels
    cls_model_config sage_attention image_size image_resize_algorithm processor_kwargs
    adam_beta3 adam_epsilon2 dion_lr dion_momentum dion_rank_fraction dion_rank_multiple_of qgalore_cos_threshold
    qgalore_gamma_proj qgalore_proj_bits qgalore_proj_group_size qgalore_proj_quant qgalore_proj_type
    qgalore_queue_size qgalore_rank qgalore_scale qgalore_update_proj_gap center_rewards_coefficient eaft_alpha eaft_k
    pose_max_context_len pose_num_chunks pose_split_on_token_ids pretrain_multipack_attn
    pretraining_sample_concatenation relora_cpu_offload relora_prune_method relora_prune_ratio scaling_softmax_bias
    scaling_softmax_factor model_quantization_config_kwargs vllm mean_resizing_embeddings
    float32 unsloth_cross_entropy_loss unsloth_lora_mlp unsloth_lora_qkv unsloth_lora_o unsloth_rms_norm unsloth_rope
    fused_attn_kernel base_model_ignore_patterns qalora_group_size rl_adapter_ref_model max_prompt_len
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
    "reward_model": "reward-model training (a scalar head on preference pairs) is not implemented",
    "process_reward_model": "reward-model training (a scalar head on preference pairs) is not implemented",
    "qat": "quantization-aware training is not implemented; QLoRA here trains on a bitsandbytes NF4 base",
    "llmcompressor": "sparsity-preserving fine-tuning (an llmcompressor recipe) is not implemented",
    "gkd_trainer": "GKD (distillation from a teacher model's generations) is not implemented",
    "quantize_moe_experts": "quantizing fused MoE experts is not implemented: bitsandbytes leaves them in 16 bits",
    "lora_rank_pattern": "per-module LoRA ranks are not implemented: every targeted module gets lora_r",
    "lora_alpha_pattern": "per-module LoRA alphas are not implemented: every targeted module gets lora_alpha",
    "lora_exclude_modules": "excluding modules from the targets is not implemented; list the targets in "
    "lora_target_modules instead of lora_target_linear",
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
    "added_tokens_overrides": "renaming the tokenizer's reserved tokens is not implemented; add tokens with tokens:",
    "fix_untrained_tokens": "setting untrained tokens' embeddings to the mean is not implemented",
    "shrink_embeddings": "shrinking the embeddings to the tokenizer's length is not implemented",
    "peft_layer_replication": "LoRA layer replication (a deeper model from repeated layers) is not implemented",
    "peft_trainable_token_indices": "training single tokens' embeddings is not implemented; lora_modules_to_save "
    "trains the whole embedding",
    "peft_ensure_weight_tying": "tying adapter weights across tied embeddings is not implemented",
    "use_pose": "PoSE context extension (skipped position ids) is not implemented",
    "fp8": "FP8 mixed-precision training is not implemented",
    "use_eaft": "the entropy-aware focal loss (EAFT) is not implemented",
    "ebft": "energy-based fine-tuning (EBFT) is not implemented",
    "jagged_restart_steps": "jagged learning-rate restarts are not implemented",
    "jagged_restart_warmup_steps": "jagged learning-rate restarts are not implemented",
    "jagged_restart_anneal_steps": "jagged learning-rate restarts are not implemented",
    "model_quantization_config": "a quantization backend other than bitsandbytes (load_in_4bit/load_in_8bit) is not "
    "implemented",
    "quantization": "post-training quantization of the trained model is not implemented",
    "reinit_weights": "training from randomly initialised weights is not implemented",
    "trainer_cls": "a custom trainer class is not implemented",
    "overrides_of_model_kwargs": "extra from_pretrained arguments are not implemented; overrides_of_model_config is",
    "model_kwargs": "extra from_pretrained arguments are not implemented; overrides_of_model_config is",
    "llama4_linearized_experts": "Llama 4 with linearized experts is not implemented: axolotl patches transformers' "
    "Llama 4 to hold each expert as its own linear layers, the layout of a linearized checkpoint such as "
    "axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16, which transformers' fused experts do not load; "
    "use a base in transformers' own Llama 4 layout",
    "tokenizer_use_mistral_common": "the mistral-common tokenizer (Magistral, Devstral), which encodes a "
    "conversation in Mistral's own request format, is not implemented: the base's Hugging Face tokenizer and chat "
    "template can give other token ids",
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


# Dataset entry keys of axolotl's this project does not act on: of the data stage's own choosing, or of entry kinds
# refused here anyway (pretraining, stepwise-supervised and synthetic datasets).
DATASET_UNIMPLEMENTED_KEYS = frozenset(
    """
    preprocess_shards train_on_split trust_remote_code input_transform input_format
    field_human field_model logprobs_field temperature
    skip text_column step_separator train_on_last_step_only max_completion_length
    length seed sequence_length min_input_id max_input_id
    """.split()
)

# Ignored keys said in their own words instead of "not implemented here", which would mislead: a behaviour fixed
# here, or the key that does the same.
FIXED_BEHAVIOUR = {
    "auto_resume_from_checkpoints": "always on here: a rerun resumes from output_dir's newest checkpoint "
    "(--fresh starts from step 0)",
    "max_packed_sequence_len": "axolotl's packing of 2023, which it now refuses: sample_packing: true packs rows "
    "up to sequence_len",
    "eval_causal_lm_metrics": "metrics not computed here (exact_match is; they change only what an evaluation logs)",
    # axolotl's train code reads it (true: load a second copy of the base as the reference), but its schema does not
    # declare it, so its validated config has dropped it by then: axolotl too keeps an adapter's reference in place.
    # What it is said to do under other settings: `_reference_note`.
    "rl_adapter_ref_model": "an adapter's reference here is the model before training (TRL's frozen copy of the "
    "adapter), the weights a second copy of the base would hold, without that copy's memory (axolotl's schema drops "
    "the key, so axolotl runs the same)",
    # axolotl's schema keeps it, but its trainer builder no longer passes it to TRL: DPO gets max_length alone, and
    # KTO, ORPO and SimPO strip max_prompt_length from their arguments.
    "max_prompt_len": "axolotl no longer passes it to TRL (DPO cuts a row at max_length alone; KTO, ORPO and SimPO "
    "drop it), so it changes nothing there either; rows are cut at sequence_len",
    "save_safetensors": "the model is saved as safetensors only here (false asks axolotl for pytorch_model.bin files)",
    # train's report_to always holds tensorboard (train/run.py _report_to)
    "use_tensorboard": "TensorBoard logs are always written here, under output_dir/runs/ (false does not stop them)",
}
# Keys whose value is what this project always does: dropped without a word ("ignored" would mislead).
AS_HERE = {"save_safetensors": True, "use_tensorboard": True}
# Unimplemented keys whose axolotl default is true: `false` asks axolotl for something else, so it is said on a line
# of its own (an error under strict), not listed as changing nothing (axolotl's schema: utils/schemas/model.py).
DEFAULT_TRUE_KEYS = {
    "tokenizer_use_fast": "axolotl's default is true; false loads the slow (Python) tokenizer, which can give other "
    "token ids; transformers 5 has no slow tokenizers (AutoTokenizer drops use_fast), so the fast one is loaded here",
    "tokenizer_save_jinja_files": "axolotl's default is true; false keeps the chat template inside "
    "tokenizer_config.json instead of a chat_template.jinja file; transformers' default file layout is written here",
    "experimental_skip_move_to_device": "axolotl's default is true; false moves the model to the device before "
    "sharding (its legacy behaviour); the model is placed as loaded here",
}

EMPTY_VALUES = (None, False, "", [], {})  # an unimplemented key set to one of these changes nothing


# Top-level keys users write for an axolotl key that spelling alone does not reach (val_datasets is nearer datasets).
MISNAMED_KEYS = {"val_datasets": "test_datasets", "val_dataset": "test_datasets"}


def suggest(key: str, candidates: list[str]) -> str | None:
    """The known key a typo most likely meant, or None."""
    match = get_close_matches(key, candidates, n=1, cutoff=0.75)
    return match[0] if match else None


def _reference_note(data: dict) -> str:
    """What rl_adapter_ref_model means under the config's rl and adapter: it chooses an adapter's reference model
    in axolotl's code, so without rl, with a method that has no reference, or on a full fine-tune it chooses
    nothing."""
    rl = str(data.get("rl") or "").lower()
    if not rl:
        return "read only with rl (an adapter's reference model in preference training); without rl it does nothing"
    if rl in ("orpo", "simpo"):
        return f"rl: {rl} trains without a reference model, so it does nothing"
    trl = data.get("trl") if isinstance(data.get("trl"), dict) else {}
    if rl == "grpo" and not (trl.get("beta") or data.get("rl_beta") or data.get("dpo_beta")):
        return "rl: grpo without a KL penalty (trl.beta 0, TRL's default) has no reference model, so it does nothing"
    if not data.get("adapter"):
        return (
            "it chooses an adapter's reference; a full fine-tune's reference is TRL's frozen copy of the model before "
            "training whatever it says (axolotl loads that second copy too)"
        )
    return FIXED_BEHAVIOUR["rl_adapter_ref_model"]


@dataclass(frozen=True)
class IgnoredKey:
    path: str  # `debug`, `datasets[0].shards`
    value: Any
    known: bool  # an axolotl key this project does not implement (False: unknown, likely a typo)
    suggestion: str | None = None
    note: str | None = None  # what the key does here under this config, where that differs from FIXED_BEHAVIOUR's

    @property
    def effective(self) -> bool:
        """Whether the value would have changed anything (empty and false values change nothing)."""
        if self.value is False and self.path in DEFAULT_TRUE_KEYS:  # false is not axolotl's default here
            return True
        return not any(self.value == empty and type(self.value) is type(empty) for empty in EMPTY_VALUES)

    @property
    def named_alone(self) -> bool:
        """Said on a line of its own: unknown (a typo?), set to something, or of a behaviour fixed here (any value
        of auto_resume_from_checkpoints tells something); else listed among the keys left empty or false."""
        return not self.known or self.effective or self.path in FIXED_BEHAVIOUR

    def describe(self) -> str:
        hint = f" (did you mean {self.suggestion}?)" if self.suggestion else ""
        fixed = DEFAULT_TRUE_KEYS.get(self.path) if self.value is False else None
        fixed = fixed or FIXED_BEHAVIOUR.get(self.path, "not implemented here")
        kind = (self.note or fixed) if self.known else "unknown key"
        shown = short_repr(self.value)
        value = f"={shown}" if self.named_alone else f" ({shown}: no effect)"
        return f"{self.path}{value}: {kind}{hint}"


def split_keys(data: dict, fields: list[str], unimplemented: frozenset, prefix: str) -> tuple[dict, list]:
    """Drop empty values and keys the model doesn't declare; return the rest and the dropped keys."""
    kept, ignored = {}, []
    for key, value in data.items():
        if key in fields:
            if value is not None:  # empty means unset: the field's default applies
                kept[key] = value
        elif not prefix and key in AS_HERE and value == AS_HERE[key] and type(value) is type(AS_HERE[key]):
            continue
        else:
            known = key in unimplemented
            hint = None if known else (not prefix and MISNAMED_KEYS.get(key)) or suggest(str(key), fields)
            note = _reference_note(data) if not prefix and key == "rl_adapter_ref_model" else None
            ignored.append(IgnoredKey(f"{prefix}{key}", value, known, hint, note))
    return kept, ignored


def ignored_message(ignored: list[IgnoredKey]) -> str:
    """Unknown or set keys one by one; known keys left empty or false (no effect either way) as one list."""
    named = [key.describe() for key in ignored if key.named_alone]
    empty = [key.path for key in ignored if not key.named_alone]
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
