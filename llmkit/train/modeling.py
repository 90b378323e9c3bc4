"""Load the base model (16-bit, 8-bit or 4-bit NF4 through bitsandbytes) and wrap it in the configured peft method.

`llmkit train CONFIG` calls `load_base_model`, then `build_peft_model` with the tokenizer of
`llmkit.data.tokenizer.load_tokenizer`; the benchmark uses `load_base_model(cfg, for_training=False)` to compare
the 4-bit model's memory with the 16-bit one.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import transformers
from peft import (
    LoftQConfig,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PromptTuningConfig,
    PromptTuningInit,
    VeraConfig,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from transformers import AutoConfig, BitsAndBytesConfig, PretrainedConfig, PreTrainedModel
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from llmkit.config.schema import AxolotlConfig, ConfigError, PeftMethod
from llmkit.core import devices
from llmkit.core.bnb_kernels import dequantizing_4bit_kernel
from llmkit.core.errors import headline
from llmkit.core.files import user_path
from llmkit.core.models import apply_adapter, hub_tries_held, resolve_model
from llmkit.core.shapes import ModelShape, learned_positions

LOG = logging.getLogger(__name__)


class _OnceEach(logging.Filter):
    """Lets each message through the first time only."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


# bitsandbytes' 8-bit matmul logs on every call that it casts float32 inputs to float16 (a 2-step load_in_8bit run
# printed it 48 times): once is enough.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(_OnceEach())


def compute_torch_dtype(cfg: AxolotlConfig) -> torch.dtype:
    """The compute dtype (`bf16`/`fp16` "auto" resolved for this machine) as a torch dtype."""
    return devices.torch_dtype(cfg.compute_dtype())


def quantization_config(cfg: AxolotlConfig) -> BitsAndBytesConfig | None:
    """bitsandbytes settings: 4-bit (`cfg.quantization_options`) with the compute dtype, or LLM.int8() for 8-bit."""
    options = cfg.quantization_options
    if cfg.load_in_4bit:
        quantization = options.bnb_4bit_quant_type  # the 4-bit data type names the quantization: nf4 or fp4
    else:
        quantization = "int8" if cfg.load_in_8bit else "none"
    return devices.bnb_config(
        quantization,
        compute_torch_dtype(cfg),
        double_quant=options.bnb_4bit_use_double_quant,
        int8_has_fp16_weight=options.llm_int8_has_fp16_weight,
    )


def check_base_model(cfg: AxolotlConfig) -> None:
    """Refuse, before any data is prepared, a base model llmkit cannot train on (one that needs its repository's own
    code, which llmkit never runs, or one stored quantized), and adapter targets it lacks or peft cannot train as
    listed (checked on its meta-device shape, as validate checks them)."""
    from llmkit.config.plan import check_layers_to_transform
    from llmkit.core.shapes import base_model_refusal, find_model_config, shape_from_config

    path = str(resolve_model(cfg.base_model, cfg.revision_of_model).path)
    config = find_model_config(path).config
    if problem := base_model_refusal(config, cfg.base_model):
        raise ConfigError([problem], cfg.source)
    model_config(cfg, path)  # raises ConfigError naming an override the model's config cannot take
    try:
        shape = shape_from_config(config)
    except ValueError:  # not buildable on the meta device: the model's own load says why
        return
    cfg.resolved_target_modules(shape)  # raises ConfigError, naming the key
    check_layers_to_transform(cfg, shape)
    cfg.resolved_target_parameters(shape)


def _device_map() -> dict[str, int] | None:
    # Under DDP each process holds the whole model on its own GPU; bitsandbytes needs the weights placed at load.
    if devices.resolve_device() == "cuda":
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return None


def attn_implementation(cfg: AxolotlConfig) -> str | None:
    """The attention to load the model with: the config's where this machine runs it, else transformers' default.

    None is transformers' default: sdpa where the architecture supports it, else eager (Gemma-2's soft-capping).

    Raises:
        ConfigError: the asked attention cannot run here and the config is `strict`.
    """
    problem = attention_problem(cfg)
    if problem is None:
        return cfg.attention_implementation
    if cfg.strict:
        raise ConfigError([f"{problem}; strict: true does not substitute another attention"], cfg.source)
    LOG.warning("%s; %s", problem, ATTENTION_FALLBACK)
    return None


ATTENTION_FALLBACK = "using the default attention (sdpa where the model supports it) instead"


def attention_problem(cfg: AxolotlConfig) -> str | None:
    """Why this machine cannot run the config's attention (`attention <name>: why`); None when it can, or none is
    asked."""
    asked = cfg.attention_implementation
    missing = _attention_missing(asked) if asked else None
    return None if missing is None else f"attention {asked}: {missing}"


def _attention_missing(name: str) -> str | None:
    """Why this machine cannot run attention `name`, or None when it can."""
    if name == "xformers":
        return "axolotl patches in the xformers kernel, which transformers has no attention for"
    flash = {"flash_attention_2": is_flash_attn_2_available, "flash_attention_3": is_flash_attn_3_available}
    if name in flash:
        if devices.resolve_device() != "cuda":
            return "needs a CUDA GPU, which this machine lacks"
        if not flash[name]():
            package = "flash-attn" if name == "flash_attention_2" else "flash-attn 3 (flash_attn_interface)"
            return f"needs the {package} package, which is not installed (pip install flash-attn)"
    if name.startswith("kernels-community/"):
        # transformers fetches the kernel's build for this machine from the hub; its attention kernels are GPU builds
        if devices.resolve_device() != "cuda":
            return "a hub attention kernel runs on a GPU, and this machine has no CUDA GPU"
        if importlib.util.find_spec("kernels") is None:
            return "a hub kernel needs the kernels package, which is not installed (pip install kernels)"
    return None


def model_config(cfg: AxolotlConfig, path: str) -> PretrainedConfig | None:
    """The base's config.json with overrides_of_model_config and rope_scaling applied; None when there are none."""
    overrides = dict(cfg.overrides_of_model_config or {})
    if cfg.rope_scaling is None and not overrides:
        return None
    from llmkit.config.plan import check_model_overrides

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    check_model_overrides(cfg, config.to_dict())
    if cfg.rope_scaling is not None:
        scaling = dict(cfg.rope_scaling)
        rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None)
        if isinstance(getattr(config, "rope_parameters", None), dict):
            # transformers 5 keeps rope_theta in the same dict: setting rope_scaling alone would drop it
            overrides["rope_parameters"] = {**config.rope_parameters, **scaling, "rope_type": rope_type}
        else:
            overrides["rope_scaling"] = {**scaling, "type": rope_type}
    return type(config).from_dict({**config.to_dict(), **overrides})


def _model_class(cfg: AxolotlConfig) -> Any:
    name = cfg.model_type or "AutoModelForCausalLM"
    model_cls = getattr(transformers, name, None)
    if model_cls is None:  # axolotl's examples also write a config type here (model_type: qwen)
        LOG.warning("model_type: %s is not a transformers class; loading with AutoModelForCausalLM", name)
        return transformers.AutoModelForCausalLM
    return model_cls


def load_base_model(cfg: AxolotlConfig, *, for_training: bool = True) -> PreTrainedModel:
    """The base model as the config asks for it: quantized or not, on the GPU where there is one.

    Args:
        cfg: the validated config.
        for_training: prepare a quantized model for training (norms in float32, input gradients, gradient
            checkpointing) and turn the KV cache off.
    """
    resolved = resolve_model(cfg.base_model, cfg.revision_of_model)
    quantization = quantization_config(cfg)
    options: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    config = model_config(cfg, str(resolved.path))
    if config is not None:
        options["config"] = config
    model = _model_class(cfg).from_pretrained(
        resolved.path,
        dtype=devices.torch_dtype(cfg.weights_dtype()),
        quantization_config=quantization,
        device_map=_device_map(),
        attn_implementation=attn_implementation(cfg),
        **options,
    )
    from llmkit.config.plan import check_sequence_len

    # validate asks as it sizes the model; a config.json found only here is asked now
    check_sequence_len(cfg, learned_positions(model), type(model).__name__)
    if quantization is not None:
        _warn_unquantized(model)
    if not for_training:
        return model
    model.config.use_cache = False  # a KV cache is useless in training and breaks packed-sequence masking
    if cfg.load_in_4bit:
        dequantizing_4bit_kernel(model)  # see there: without it, no gradient after the first evaluation
    if quantization is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(cfg.gradient_checkpointing),
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs(cfg),
        )
    return model


def _warn_unquantized(model: PreTrainedModel) -> None:
    # transformers hands bitsandbytes only modules whose type is exactly nn.Linear (or Conv1D): a subclass such as
    # Falcon's FalconLinear stays in 16 bits, and "QLoRA" on it is plain LoRA with the memory of a 16-bit base.
    kept = ModelShape.from_model(model).linear
    names = sorted({module.leaf for module in kept if not module.quantizable})
    if names:
        LOG.warning(
            "%s: transformers left %d linear layers unquantized (%s): they are not nn.Linear itself, so "
            "bitsandbytes never sees them; they train and take memory as 16-bit weights",
            type(model).__name__,
            sum(not module.quantizable for module in kept),
            ", ".join(names),
        )


def gradient_checkpointing_kwargs(cfg: AxolotlConfig) -> dict[str, bool]:
    """Keyword arguments of torch's checkpoint function (the Trainer adds `offload` for gradient_checkpointing:
    offload)."""
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
        model.resize_token_embeddings(len(tokenizer))  # special_tokens/tokens added tokens the base does not know
    if cfg.adapter is None:
        if cfg.unfrozen_parameters:
            _train_only(model, cfg)
        return model
    if cfg.lora_model_dir:
        # The trained adapter's own adapter_config.json decides its method, rank and targets.
        peft_model = _trained_adapter(cfg, model)
    else:
        peft_model = get_peft_model(model, peft_config(cfg, model, tokenizer))
    _save_trained_embeddings_once(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    LOG.info(
        "peft %s: %s of %s parameters trainable (%.2f%%; the base's and the adapter's)",
        peft_model.peft_config["default"].peft_type.value.lower(),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return peft_model


def _trained_adapter(cfg: AxolotlConfig, model: PreTrainedModel) -> PeftModel:
    """The model with the adapter of `lora_model_dir` (`check_lora_model_dir` checked a folder here), to train on.

    Raises:
        ConfigError: a folder whose adapter does not fit the base model (another model's: peft's traceback, or its
            weights put nowhere and the adapter trained from its fresh initialisation, silently), or a hub id that
            is no folder here, which the hub cannot give (none there, or offline).
    """
    path = cfg.lora_model_dir
    if user_path(path).is_dir():
        try:
            return apply_adapter(model, path, None, trainable=True)
        except (OSError, ValueError) as err:
            raise ConfigError([f"lora_model_dir: {err}"], cfg.source) from None
    with hub_tries_held() as failed_tries:
        try:
            return PeftModel.from_pretrained(model, path, is_trainable=True)
        except (OSError, ValueError) as err:
            # peft's ValueError ("Can't find 'adapter_config.json'") hides the hub's reason in its context
            reason = headline(err.__context__ or err)
            if failed_tries:  # the hub's reason is "check your connection": what the connection said is the cause
                reason += f" ({len(failed_tries)} tries, the last: {failed_tries[-1]})"
            raise ConfigError(
                [f"lora_model_dir: {path}: no folder here, and the hub cannot give it as a hub id: {reason}"],
                cfg.source,
            ) from None


def _save_trained_embeddings_once(peft_model: PeftModel) -> None:
    """Save only the trained copies of embeddings that modules_to_save trains in full.

    With a grown vocabulary peft's save_pretrained (save_embedding_layers="auto") also saves every tensor under the
    embedding modules: each wrapper's trained copy a second time and the untrained original, three full matrices
    per layer where one is used. When both the input embeddings and the head are trained copies (or the head is
    none), the copies the wrappers save are all the adapter needs; otherwise a resized, untrained layer must be saved
    whole and "auto" stays.
    """
    from peft.utils.other import ModulesToSaveWrapper

    layers = [peft_model.get_input_embeddings(), peft_model.get_output_embeddings()]
    if all(layer is None or isinstance(layer, ModulesToSaveWrapper) for layer in layers):
        # Trainer.save_model and its checkpoints call save_pretrained without this argument
        peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)


def peft_config(cfg: AxolotlConfig, model: PreTrainedModel, tokenizer: Any = None) -> PeftConfig:
    """The peft config of the configured method (`peft_method` and the lora_*/peft_* keys)."""
    return PEFT_CONFIGS[cfg.peft_method](cfg, model, tokenizer)


def _lora_config(cfg: AxolotlConfig, model: PreTrainedModel, tokenizer: Any = None) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.resolved_target_modules(model),
        # LoRA on the fused MoE experts (peft's ParamWrapper); None leaves them to target_modules alone
        target_parameters=cfg.resolved_target_parameters(model) or None,
        modules_to_save=cfg.checked_modules_to_save(model),
        # A tied model (SmolLM2) that trains embed_tokens in full must keep lm_head tied to the trained copy.
        ensure_weight_tying=cfg.ties_saved_embeddings(model.config.tie_word_embeddings),
        use_dora=cfg.peft_use_dora,
        use_rslora=cfg.peft_use_rslora,
        fan_in_fan_out=cfg.lora_fan_in_fan_out,
        layers_to_transform=cfg.peft_layers_to_transform,
        layers_pattern=cfg.peft_layers_pattern,
        bias="none",
        task_type="CAUSAL_LM",
        **_lora_init(cfg),
    )


def _lora_init(cfg: AxolotlConfig) -> dict[str, Any]:
    """init_lora_weights (and LoftQ's settings): peft_init_lora_weights, or loftq with peft.loftq_config (whose
    machine `train` checked before the data: machine.check_loftq)."""
    if cfg.loftq_bits is None:
        init = cfg.peft_init_lora_weights
        return {} if init is None else {"init_lora_weights": init}
    return {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(loftq_bits=cfg.loftq_bits)}


def _train_only(model: PreTrainedModel, cfg: AxolotlConfig) -> None:
    """unfrozen_parameters: freeze every parameter no pattern matches; patterns with a row range limit its gradient
    to those rows of dim 0 (as axolotl does: a hook zeroes the other rows' gradient)."""
    from llmkit.config.plan import check_unfrozen_parameters

    patterns = cfg.unfrozen_patterns
    for name, parameter in model.named_parameters():
        matched = [pattern for pattern in patterns if pattern.matches(name)]
        parameter.requires_grad = bool(matched)
        ranged = [pattern for pattern in matched if pattern.rows]
        if ranged:  # as in axolotl, a match without a range does not lift another's
            trained = torch.zeros(parameter.shape[0], dtype=torch.bool)
            for pattern in ranged:
                start, end = pattern.rows
                if start >= parameter.shape[0] or (end or 0) > parameter.shape[0]:
                    raise ConfigError(
                        [f"unfrozen_parameters: {pattern.text}: {name} has {parameter.shape[0]} rows"], cfg.source
                    )
                trained[start:end] = True
            parameter.register_hook(_zero_rows_hook(~trained))
    check_unfrozen_parameters(cfg, [name for name, _ in model.named_parameters()])


def _zero_rows_hook(frozen: torch.Tensor):
    def hook(gradient: torch.Tensor) -> torch.Tensor:
        return gradient.masked_fill(frozen.to(gradient.device).view(-1, *([1] * (gradient.dim() - 1))), 0)

    return hook


def _vera_config(cfg: AxolotlConfig, model: PreTrainedModel, tokenizer: Any = None) -> VeraConfig:
    return VeraConfig(
        r=cfg.peft_vera_r,
        target_modules=cfg.resolved_target_modules(model),
        vera_dropout=cfg.lora_dropout,
        d_initial=cfg.peft_vera_d_initial,
        modules_to_save=cfg.checked_modules_to_save(model),
        task_type="CAUSAL_LM",
    )


def _prompt_tuning_config(cfg: AxolotlConfig, model: PreTrainedModel, tokenizer: Any) -> PromptTuningConfig:
    if cfg.sample_packing:
        # peft drops position_ids for prompt tuning, so packed rows would attend to each other.
        problem = "peft_method: prompt_tuning ignores position_ids, so packed rows would attend to each other"
        raise ConfigError([f"sample_packing: {problem}; set sample_packing: false"], cfg.source)
    init_text = cfg.peft_prompt_tuning_init_text
    return PromptTuningConfig(
        num_virtual_tokens=cfg.peft_num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=init_text,
        tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None) if init_text else None,
        task_type="CAUSAL_LM",
    )


# peft_method -> its peft config, as peft registers one config class per method (PeftMethod lists the names).
PEFT_CONFIGS: dict[PeftMethod, Callable[[AxolotlConfig, PreTrainedModel, Any], PeftConfig]] = {
    PeftMethod.lora: _lora_config,
    PeftMethod.vera: _vera_config,
    PeftMethod.prompt_tuning: _prompt_tuning_config,
}
