"""The sections of an axolotl-style config, one pydantic model per concern; `llmkit.config.schema` unites them.

Key names are axolotl's own, so that a file written for axolotl loads here unchanged. Every field carries a
description: `llmkit config-keys` prints them as the README's table.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Keys may be repeated as empty (`wandb_project:`) in axolotl's templates; the root treats null as "not set".
_SECTION = ConfigDict(extra="forbid", use_enum_values=False, validate_default=True)


def one_as_list(value: object) -> object:
    """axolotl takes a single string where a list is expected (`lora_target_modules: q_proj`)."""
    return [value] if isinstance(value, str) else value


class Adapter(str, Enum):
    lora = "lora"  # adapter on a 16-bit (or 8-bit) base
    qlora = "qlora"  # adapter on a 4-bit NF4 base; requires load_in_4bit


class PeftMethod(str, Enum):
    lora = "lora"  # LoRA (optionally DoRA / rsLoRA through peft_use_dora / peft_use_rslora)
    vera = "vera"  # VeRA: frozen shared random A/B, trained scaling vectors
    prompt_tuning = "prompt_tuning"  # trained virtual-token embeddings, base untouched


class DatasetType(str, Enum):
    alpaca = "alpaca"  # {instruction, input, output}
    completion = "completion"  # {text}: every token trained
    chat_template = "chat_template"  # {messages: [{role, content}]}: assistant turns trained
    sharegpt = "sharegpt"  # axolotl's older name for chat_template
    input_output = "input_output"  # {segments: [{label, text}]}
    oasst = "oasst"  # {INSTRUCTION, RESPONSE}: alpaca prompt
    gpteacher = "gpteacher"  # {instruction, input, response}: alpaca prompt
    gpt4all = "gpt4all"  # {prompt, response}: alpaca prompt (alpaca_lora_4bit's ds_type)


class DsType(str, Enum):
    json = "json"  # .json or .jsonl
    csv = "csv"
    parquet = "parquet"
    arrow = "arrow"
    text = "text"


class Optimizer(str, Enum):
    """transformers' optimizer names that need no package beyond torch and bitsandbytes."""

    adamw_torch = "adamw_torch"
    adamw_torch_fused = "adamw_torch_fused"
    adamw_bnb_8bit = "adamw_bnb_8bit"
    adamw_8bit = "adamw_8bit"
    paged_adamw_32bit = "paged_adamw_32bit"
    paged_adamw_8bit = "paged_adamw_8bit"
    ademamix = "ademamix"
    ademamix_8bit = "ademamix_8bit"
    paged_ademamix_32bit = "paged_ademamix_32bit"
    paged_ademamix_8bit = "paged_ademamix_8bit"
    lion_32bit = "lion_32bit"
    lion_8bit = "lion_8bit"
    paged_lion_32bit = "paged_lion_32bit"
    paged_lion_8bit = "paged_lion_8bit"
    adafactor = "adafactor"
    sgd = "sgd"
    adagrad = "adagrad"
    rmsprop = "rmsprop"


class LrScheduler(str, Enum):
    """transformers' scheduler names (SchedulerType)."""

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    cosine_with_min_lr = "cosine_with_min_lr"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"
    warmup_stable_decay = "warmup_stable_decay"


Auto = Literal["auto"]


class SpecialTokens(BaseModel):
    model_config = _SECTION

    bos_token: str | None = Field(None, description="Beginning-of-sequence token.")
    eos_token: str | None = Field(None, description="End-of-sequence token (appended after each response).")
    pad_token: str | None = Field(None, description="Padding token; the EOS token is used when none is set.")
    unk_token: str | None = Field(None, description="Unknown token.")


class BnbConfigKwargs(BaseModel):
    model_config = _SECTION

    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (NF4 for QLoRA).")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the 4-bit block scales too (~0.4 bit/param).")
    llm_int8_has_fp16_weight: bool = Field(False, description="8-bit: keep a 16-bit copy of the weights.")


class GradientCheckpointingKwargs(BaseModel):
    model_config = _SECTION

    use_reentrant: bool = Field(
        False, description="Reentrant checkpointing; false is required for DDP with QLoRA (see docs/axolotl.md)."
    )


class DatasetSpec(BaseModel):
    """One entry of `datasets:`; axolotl's keys. A relative local `path` is resolved by `load_config`."""

    model_config = _SECTION

    path: str = Field(description="Hub dataset id, or a local file or folder.")
    type: DatasetType = Field(description="Prompt format of the rows.")
    ds_type: DsType | None = Field(None, description="File format of local files; guessed from the suffix if unset.")
    data_files: list[str] | None = Field(None, description="Files to read inside `path` (hub repo or local folder).")
    split: str = Field("train", description="Split to train on.")
    name: str | None = Field(None, description="Hub dataset configuration name.")
    conversation: str | None = Field(None, description="Conversation template name (chat formats).")
    chat_template: str | None = Field(None, description="chat_template type: 'tokenizer_default' or a Jinja string.")
    field: str | None = Field(None, description="completion: the text field (default `text`).")
    field_instruction: str | None = Field(None, description="alpaca-style: field holding the instruction.")
    field_input: str | None = Field(None, description="alpaca-style: field holding the input.")
    field_output: str | None = Field(None, description="alpaca-style: field holding the response.")
    field_system: str | None = Field(None, description="Field holding a system prompt.")
    field_messages: str | None = Field(None, description="chat_template: field holding the message list.")
    message_field_role: str | None = Field(None, description="chat_template: role key inside a message.")
    message_field_content: str | None = Field(None, description="chat_template: content key inside a message.")
    roles_to_train: list[str] | None = Field(None, description="chat_template: roles whose turns are trained.")

    _lists = field_validator("data_files", "roles_to_train", mode="before")(one_as_list)


class ModelSection(BaseModel):
    model_config = _SECTION

    base_model: str = Field(description="Hub id or local path of the model to fine-tune.")
    base_model_config: str | None = Field(None, description="Where config.json comes from; default base_model.")
    revision_of_model: str | None = Field(None, description="Hub revision (branch, tag or commit) of base_model.")
    model_type: str | None = Field(None, description="transformers model class, e.g. LlamaForCausalLM; default Auto.")
    tokenizer_type: str | None = Field(None, description="transformers tokenizer class; default AutoTokenizer.")
    tokenizer_config: str | None = Field(None, description="Where the tokenizer comes from; default base_model.")
    special_tokens: SpecialTokens | None = Field(None, description="Tokens to set on the tokenizer.")
    flash_attention: bool = Field(False, description="attn_implementation flash_attention_2 (deprecated key).")


class LoraSection(BaseModel):
    model_config = _SECTION

    load_in_8bit: bool = Field(False, description="Load the base in 8-bit (bitsandbytes LLM.int8()).")
    load_in_4bit: bool = Field(False, description="Load the base in 4-bit (bitsandbytes NF4, double quantized).")
    bnb_config_kwargs: BnbConfigKwargs | None = Field(None, description="bitsandbytes options for 4/8-bit loading.")
    adapter: Adapter | None = Field(None, description="lora, qlora, or none/empty for a full fine-tune.")
    peft: PeftMethod = Field(
        PeftMethod.lora, description="PEFT method trained by the adapter: lora, vera or prompt_tuning."
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scale numerator: scale = alpha/r (alpha/sqrt(r), rsLoRA).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    lora_target_modules: list[str] | None = Field(None, description="Module names to wrap (q_proj, v_proj, ...).")
    lora_target_linear: bool = Field(False, description="Wrap every linear layer except lm_head, plus the list.")
    lora_modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full (embed_tokens, lm_head)."
    )
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (adds a magnitude vector).")
    peft_use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale alpha/sqrt(r).")
    peft_vera_r: int = Field(256, gt=0, description="peft: vera: rank of the shared random projections.")
    peft_vera_d_initial: float = Field(0.1, gt=0, description="peft: vera: initial value of the d vector.")
    peft_num_virtual_tokens: int = Field(20, gt=0, description="peft: prompt_tuning: number of virtual tokens.")
    peft_prompt_tuning_init_text: str | None = Field(
        None, description="peft: prompt_tuning: initialise the virtual tokens from this text (random if unset)."
    )

    @field_validator("adapter", mode="before")
    @classmethod
    def _none_means_full(cls, value):
        return None if isinstance(value, str) and value.lower() in ("none", "") else value

    _lists = field_validator("lora_target_modules", "lora_modules_to_save", mode="before")(one_as_list)


class DataSection(BaseModel):
    model_config = _SECTION

    datasets: list[DatasetSpec] = Field(min_length=1, description="Training data, concatenated.")
    dataset_prepared_path: str | None = Field(None, description="Cache folder for the tokenized dataset.")
    val_set_size: float = Field(0.0, ge=0, lt=1, description="Fraction of rows held out for evaluation.")
    sequence_len: int = Field(512, gt=0, description="Maximum tokens per row; longer rows are dropped.")
    sample_packing: bool = Field(False, description="Pack several rows per sequence, without cross-attention.")
    pad_to_sequence_len: bool = Field(False, description="Pad every batch to sequence_len (steady memory).")
    train_on_inputs: bool = Field(False, description="Train on prompt tokens too; false masks them (label -100).")


class TrainingSection(BaseModel):
    model_config = _SECTION

    micro_batch_size: int = Field(1, gt=0, description="Rows (or packed sequences) per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; wins over num_epochs.")
    optimizer: Optimizer = Field(Optimizer.adamw_torch, description="transformers optimizer name.")
    lr_scheduler: LrScheduler = Field(LrScheduler.cosine, description="transformers learning-rate schedule.")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    warmup_steps: int | None = Field(None, ge=0, description="Linear warmup steps (exclusive with warmup_ratio).")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warmup as a fraction of all steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    bf16: bool | Auto = Field("auto", description="bfloat16 mixed precision; auto: where the GPU supports it.")
    fp16: bool | Auto = Field("auto", description="float16 mixed precision; auto: on GPUs without bfloat16.")
    tf32: bool | Auto = Field(False, description="Allow TF32 matmuls on Ampere or newer; auto: where supported.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    gradient_checkpointing_kwargs: GradientCheckpointingKwargs | None = Field(
        None, description="Options for gradient checkpointing."
    )
    neftune_noise_alpha: float | None = Field(None, gt=0, description="NEFTune noise scale on input embeddings.")
    output_dir: str = Field("./model-out", description="Adapter, checkpoints and logs.")
    save_steps: int | float | None = Field(
        None, gt=0, description="Checkpoint every N steps (a fraction < 1: of all)."
    )
    save_total_limit: int | None = Field(None, gt=0, description="Keep at most this many checkpoints.")
    eval_steps: int | float | None = Field(None, gt=0, description="Evaluate every N steps (a fraction < 1: of all).")
    logging_steps: int | None = Field(None, gt=0, description="Log the loss every N steps.")
    seed: int = Field(42, description="Seed for shuffling, initialisation and dropout.")
    resume_from_checkpoint: str | None = Field(None, description="Checkpoint folder to resume training from.")
    hub_model_id: str | None = Field(None, description="Push the adapter to this hub repo after training.")
    wandb_project: str | None = Field(None, description="Weights & Biases project; empty: no W&B logging.")
    wandb_entity: str | None = Field(None, description="Weights & Biases team or user.")
    wandb_watch: str | None = Field(None, description="W&B model watching: gradients, parameters, all.")
    wandb_name: str | None = Field(None, description="W&B run name.")
    wandb_run_id: str | None = Field(None, description="W&B run id (to resume a run).")
    wandb_log_model: str | None = Field(None, description="W&B: upload checkpoints (checkpoint, end).")
