"""Load the base model (16-bit, 8-bit or 4-bit NF4 through bitsandbytes) and wrap it in the configured peft method.

`llmkit train CONFIG` calls `load_tokenizer`, `load_base_model` and `build_peft_model` in that order; the
benchmark uses `load_base_model(cfg, for_training=False)` to compare the 4-bit model's memory with the 16-bit one.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
import transformers
from peft import (
    LoraConfig,
    PromptTuningConfig,
    PromptTuningInit,
    VeraConfig,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from transformers import BitsAndBytesConfig, PreTrainedModel

from llmkit.config.schema import AxolotlConfig, ConfigError
from llmkit.config.sections import BnbConfigKwargs
from llmkit.core import devices
from llmkit.core.models import resolve_model

LOG = logging.getLogger(__name__)

# bitsandbytes' 8-bit matmul warns on every call that it casts float32 inputs to float16; once is enough.
warnings.filterwarnings("once", message="MatMul8bitLt: inputs will be cast")


def torch_dtype(cfg: AxolotlConfig) -> torch.dtype:
    """The compute dtype (`bf16`/`fp16` "auto" resolved for this machine) as a torch dtype."""
    return devices.torch_dtype(cfg.compute_dtype())


def quantization_config(cfg: AxolotlConfig) -> BitsAndBytesConfig | None:
    """bitsandbytes settings: NF4 + double quantization + compute dtype for load_in_4bit, LLM.int8() for 8-bit."""
    options = cfg.bnb_config_kwargs or BnbConfigKwargs()
    if cfg.load_in_4bit:
        quantization = options.bnb_4bit_quant_type  # the 4-bit data type names the quantization: nf4 or fp4
    else:
        quantization = "int8" if cfg.load_in_8bit else "none"
    return devices.bnb_config(
        quantization,
        torch_dtype(cfg),
        double_quant=options.bnb_4bit_use_double_quant,
        int8_has_fp16_weight=options.llm_int8_has_fp16_weight,
    )


def load_tokenizer(cfg: AxolotlConfig) -> Any:
    """The base model's tokenizer with the config's special tokens; a pad token is always set (EOS if none)."""
    source = resolve_model(cfg.tokenizer_config or cfg.base_model, cfg.revision_of_model).path
    tokenizer_cls = getattr(transformers, cfg.tokenizer_type or "AutoTokenizer")
    tokenizer = tokenizer_cls.from_pretrained(source)
    if cfg.special_tokens:
        tokens = {k: v for k, v in cfg.special_tokens.model_dump().items() if v is not None}
        tokenizer.add_special_tokens(tokens)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _device_map() -> dict[str, int] | None:
    # Under DDP each process holds the whole model on its own GPU; bitsandbytes needs the weights placed at load.
    if devices.resolve_device() == "cuda":
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return None


def _attn_implementation(cfg: AxolotlConfig) -> str:
    if not cfg.flash_attention:
        return "sdpa"
    if devices.resolve_device() != "cuda":
        LOG.warning("flash_attention: true needs CUDA; using sdpa attention on this machine")
        return "sdpa"
    return "flash_attention_2"


def load_base_model(cfg: AxolotlConfig, *, for_training: bool = True) -> PreTrainedModel:
    """The base model as the config asks for it: quantized or not, on the GPU where there is one.

    Args:
        cfg: the validated config.
        for_training: prepare a quantized model for training (norms in float32, input gradients, gradient
            checkpointing) and turn the KV cache off.
    """
    resolved = resolve_model(cfg.base_model, cfg.revision_of_model)
    quantization = quantization_config(cfg)
    # A full fine-tune keeps float32 master weights (the Trainer's autocast computes in the 16-bit dtype);
    # an adapter's frozen base is stored in the compute dtype to halve its memory.
    dtype = torch.float32 if cfg.adapter is None else torch_dtype(cfg)
    model_cls = getattr(transformers, cfg.model_type or "AutoModelForCausalLM")
    model = model_cls.from_pretrained(
        resolved.path,
        dtype=dtype,
        quantization_config=quantization,
        device_map=_device_map(),
        attn_implementation=_attn_implementation(cfg),
    )
    if not for_training:
        return model
    model.config.use_cache = False  # a KV cache is useless in training and breaks packed-sequence masking
    if cfg.load_in_4bit:
        _keep_4bit_weights_trainable(model)
    if quantization is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs(cfg),
        )
    return model


def _keep_4bit_weights_trainable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel during evaluation.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight the first time it runs in eval mode
    without gradients, and every later forward uses a kernel without a backward: after the first evaluation no
    gradient flows through the base layers, so the layers below get almost none. Measured here on the default
    config: the first step's gradient norm fell from 11.5 to 3.0 after one evaluation and the loss stopped falling.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def gradient_checkpointing_kwargs(cfg: AxolotlConfig) -> dict[str, bool]:
    # Non-reentrant by default: the reentrant variant fails under DDP ("mark a variable ready only once").
    options = cfg.gradient_checkpointing_kwargs
    return {"use_reentrant": options.use_reentrant if options else False}


def build_peft_model(cfg: AxolotlConfig, model: PreTrainedModel, tokenizer: Any = None) -> PreTrainedModel:
    """Wrap the model in the configured peft method; `adapter: none` returns it as is (full fine-tune).

    Args:
        cfg: the validated config (`adapter`, `peft` and the lora_*/peft_* keys).
        model: the base model from `load_base_model`.
        tokenizer: needed only to initialise prompt tuning from `peft_prompt_tuning_init_text`.
    """
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # special_tokens added tokens the base does not know
    if cfg.adapter is None:
        return model
    method = cfg.peft.value
    if method == "lora":
        peft_config = _lora_config(cfg, model)
    elif method == "vera":
        peft_config = VeraConfig(
            r=cfg.peft_vera_r,
            target_modules=cfg.resolved_target_modules(model),
            vera_dropout=cfg.lora_dropout,
            d_initial=cfg.peft_vera_d_initial,
            modules_to_save=cfg.lora_modules_to_save,
            task_type="CAUSAL_LM",
        )
    else:
        peft_config = _prompt_tuning_config(cfg, tokenizer)
    peft_model = get_peft_model(model, peft_config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    LOG.info(
        "peft %s: %s of %s parameters trainable (%.2f%%)",
        method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return peft_model


def _lora_config(cfg: AxolotlConfig, model: PreTrainedModel) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.resolved_target_modules(model),
        modules_to_save=cfg.lora_modules_to_save,
        # A tied model (SmolLM2) that trains embed_tokens in full must keep lm_head tied to the trained copy.
        ensure_weight_tying=bool(cfg.lora_modules_to_save and model.config.tie_word_embeddings),
        use_dora=cfg.peft_use_dora,
        use_rslora=cfg.peft_use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _prompt_tuning_config(cfg: AxolotlConfig, tokenizer: Any) -> PromptTuningConfig:
    if cfg.sample_packing:
        # peft drops position_ids for prompt tuning, so packed rows would attend to each other.
        problem = "peft: prompt_tuning ignores position_ids, so packed rows would attend to each other"
        raise ConfigError([f"sample_packing: {problem}; set sample_packing: false"], cfg.source)
    init_text = cfg.peft_prompt_tuning_init_text
    return PromptTuningConfig(
        num_virtual_tokens=cfg.peft_num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=init_text,
        tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None) if init_text else None,
        task_type="CAUSAL_LM",
    )
