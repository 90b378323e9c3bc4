"""What a config will do, without loading weights or data: `llmkit validate CONFIG` prints `plan(cfg)`.

    llmkit validate axolotl_configs/Mistral-01.yml

The model's shape comes from its config.json (`llmkit.core.shapes.find_model_config` says where it looks: a local
folder, the Hugging Face cache, the files llmkit ships for common bases, the hub). Without one, the plan still
checks the config and says that the memory plan is unknown and how to give the config.json (`--model-config`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmkit.config.schema import Adapter, AxolotlConfig, ConfigError, DatasetSpec, PeftMethod, RLMethod
from llmkit.config.sections import COMPRESSIONS, UNREADABLE, data_file_builder, local_data_files
from llmkit.core.challenge import TRACKS, Decoding, Loading, Track, TrainingProjection, project_training
from llmkit.core.files import user_path
from llmkit.core.memory import TrainingMemory, TrainingSetup, estimate_training, model_bytes
from llmkit.core.shapes import (
    ModelConfigNotFound,
    ModelShape,
    Module,
    base_model_refusal,
    find_model_config,
    shape_from_config,
)

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_COUNTED_BUILDERS = ("json", "csv", "parquet", "text")  # the `datasets` builders whose files' rows the plan counts


@dataclass(frozen=True)
class TokenizedSplit:
    """One epoch of the training split as training prepares it (llmkit.data.tokenizer.count_training_tokens)."""

    tokens: int  # preference pairs: the longer sequence of each pair
    sequences: int  # what training batches: packed sequences, rows, or preference pairs, after dropping
    longest: int | None = None  # preference pairs, KTO rows, GRPO prompts: the longest one's tokens, as measured


@dataclass(frozen=True)
class Rollout:
    """rl: grpo's generation as TRL's GRPOTrainer runs it (generation_batch_size and steps_per_generation unset):
    each GPU decodes its `sequences` completions of a step (its micro-batches) in one generate() call, then trains on
    them, prompt and completion, `iterations` (trl.num_iterations) optimizer steps in a row."""

    calls: int | None  # generate() calls on all GPUs: optimizer steps / iterations x GPUs (None: steps unknown)
    sequences: int  # completions one call decodes at once: micro_batch_size x gradient_accumulation_steps
    prompt_tokens: float  # a prompt's tokens: the tokenized prompts' mean, or sequence_len (at most) without them
    prompt_basis: str
    # a prompt at its longest, which a micro-batch and a generation batch pad to (memory): the longest tokenized
    # training prompt (longer than sequence_len where such prompts are kept), or sequence_len without them
    longest_prompt: int
    longest_basis: str
    completion_tokens: int  # trl.max_completion_length: every completion at its longest, an upper bound
    iterations: int = 1  # optimizer steps trained on each generation (trl.num_iterations)


@dataclass(frozen=True)
class TrainingPlan:
    cfg: AxolotlConfig
    shape: ModelShape | None  # None: no config.json was found, so sizes and memory are unknown
    shape_source: str  # where config.json came from, or why the shape is unknown
    method: str
    target_modules: list[str]  # as resolved against the model; the listed names when the shape is unknown
    target_parameters: list[str]  # lora_target_parameters, checked against the model's fused MoE experts
    trainable_params: int | None
    total_params: int | None  # of the model training builds: the base with embeddings grown for added tokens
    world_size: int
    tokens_per_step: int
    rows: int | None  # rows of all local datasets; None when a dataset is on the hub
    sequences: int | None  # what training batches, when the data was tokenized (TokenizedSplit.sequences)
    steps: int | None
    steps_per_1k_rows: float  # over all epochs
    memory: list[TrainingMemory]  # one per track; empty when the shape is unknown
    tokens: int | None  # tokens the run trains on, over all epochs; None when the data cannot be counted
    tokens_basis: str  # where `tokens` comes from, or why it is unknown
    training_time: list[TrainingProjection]  # one per track, on one GPU; empty when the shape is unknown
    rollout: Rollout | None = None  # rl: grpo's generation


def plan(
    cfg: AxolotlConfig,
    world_size: int | None = None,
    model_config: str | None = None,
    data: TokenizedSplit | None = None,
    tokenizer_size: int | None = None,
    base: tuple[ModelShape | None, str] | None = None,
) -> TrainingPlan:
    """Resolve a config into what training will do: targets, parameter counts, steps, memory and time per track.

    Args:
        cfg: the validated config.
        world_size: GPUs in data parallel; default `WORLD_SIZE` from the environment, else 1.
        model_config: a config.json (or a folder with one) to size the base model from, wherever it is.
        data: the training split as training prepares it (count_training_tokens): its tokens, and the sequences
            the steps are counted from (rows merged by packing, rows and pairs training drops left out).
        tokenizer_size: the tokens of the tokenizer training uses, `tokens` and `special_tokens` added
            (trained_tokenizer_size); where it is larger than the base's embeddings, training grows them (and their
            trained copies) to it. None: no added tokens, or the tokenizer is not here, and they stay as they are.
        base: the base model's shape and where its config.json came from (`base_shape`), where the caller has it
            already (validate, whose tokenizer checks read it first); None: found here, from `model_config` or the
            config.

    Raises:
        ConfigError: target modules the model lacks, a base model llmkit cannot train on (`base_model_refusal`), or
            a local data file that cannot be read or decompressed.
        ModelConfigNotFound: `model_config` is no file or folder, or not a transformers config.json.
    """
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    shape, source = base or base_shape(cfg, model_config)
    parameters = cfg.resolved_target_parameters(shape)
    rows = _count_all_rows(cfg)
    step_rows = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size
    if data is not None:
        steps = optimizer_steps(cfg, data.sequences, world_size)
    elif rows is not None:
        steps = optimizer_steps(cfg, rows - cfg.held_out_rows(rows), world_size)
    else:
        steps = cfg.max_steps
    rollout = _rollout(cfg, steps, world_size, data) if cfg.rl is RLMethod.grpo else None
    if rollout is None:
        tokens_per_step = cfg.micro_batch_size * cfg.sequence_len * cfg.gradient_accumulation_steps * world_size
        tokens, tokens_basis = training_tokens(cfg, rows, tokens_per_step, data.tokens if data else None)
    else:  # a completion and its prompt, each at its longest, in each place of a micro-batch
        tokens_per_step = step_rows * (rollout.longest_prompt + rollout.completion_tokens)
        tokens, tokens_basis = _rollout_tokens(cfg, rollout)
    if shape is None:
        targets = cfg.resolved_target_modules(None)
        trainable, total, memory, projections = None, None, [], []
        cfg.check_new_tokens_trained(None)  # as the shape's check below, as far as it goes without the model's names
    else:
        targets = cfg.resolved_target_modules(shape)
        check_layers_to_transform(cfg, shape)
        check_unfrozen_parameters(cfg, [name for name, _ in shape.parameters])
        trained = shape.with_vocabulary(tokenizer_size) if tokenizer_size else shape
        trainable, total = trainable_params(cfg, trained, targets, parameters), trained.num_params
        setups = {
            track: training_setup(cfg, trained, targets, trainable, track, parameters, rollout) for track in Track
        }
        memory = [estimate_training(trained, setups[track], track) for track in Track]
        projections = [
            training_time(cfg, shape, tokens, tokens_basis, track, rollout, model_bytes(trained, setups[track]))
            for track in Track
        ]
    return TrainingPlan(
        cfg=cfg,
        shape=shape,
        shape_source=source,
        method=_describe_method(cfg),
        target_modules=targets,
        target_parameters=parameters,
        trainable_params=trainable,
        total_params=total,
        world_size=world_size,
        tokens_per_step=tokens_per_step,
        rows=rows,
        sequences=data.sequences if data else None,
        steps=steps,
        steps_per_1k_rows=(1000 - cfg.held_out_rows(1000)) * cfg.num_epochs / step_rows,
        memory=memory,
        tokens=tokens,
        tokens_basis=tokens_basis,
        training_time=projections,
        rollout=rollout,
    )


def _rollout(cfg: AxolotlConfig, steps: int | None, world_size: int, data: TokenizedSplit | None) -> Rollout:
    """rl: grpo's generation over the run (`Rollout`)."""
    if data is not None and data.sequences:
        prompt = data.tokens / data.sequences
        basis = f"{prompt:,.1f} tokens on average, of the {data.sequences:,} tokenized training prompts"
    else:  # a longer prompt is kept (llmkit.data.grpo), so sequence_len bounds none: an estimate
        prompt, basis = cfg.sequence_len, f"sequence_len {cfg.sequence_len} tokens each (prompts not tokenized)"
    if data is not None and data.sequences and data.longest is not None:
        longest, longest_basis = data.longest, f"{data.longest:,} tokens, the longest tokenized training prompt"
    else:
        longest = cfg.sequence_len
        longest_basis = f"sequence_len {cfg.sequence_len} tokens (prompts not tokenized: an estimate)"
    return Rollout(
        calls=None if steps is None else math.ceil(steps / cfg.grpo_iterations) * world_size,
        sequences=cfg.micro_batch_size * cfg.gradient_accumulation_steps,
        prompt_tokens=prompt,
        prompt_basis=basis,
        longest_prompt=longest,
        longest_basis=longest_basis,
        completion_tokens=cfg.grpo_completion_tokens,
        iterations=cfg.grpo_iterations,
    )


def _rollout_tokens(cfg: AxolotlConfig, rollout: Rollout) -> tuple[int | None, str]:
    """The tokens rl: grpo trains on: each completion with its prompt, every completion at its longest."""
    if rollout.calls is None:
        return None, _uncounted(cfg)
    completions = rollout.calls * rollout.sequences * rollout.iterations
    each = rollout.prompt_tokens + rollout.completion_tokens
    trained = f", each trained {rollout.iterations} times (trl.num_iterations)" if rollout.iterations > 1 else ""
    basis = (
        f"{completions:,} completions ({rollout.calls:,} generation batches of {rollout.sequences:,}{trained}), "
        f"each a prompt ({rollout.prompt_basis}) and {rollout.completion_tokens:,} generated tokens "
        "(trl.max_completion_length: every completion at its longest, an upper bound)"
    )
    return math.ceil(completions * each), basis


def training_tokens(
    cfg: AxolotlConfig, rows: int | None, tokens_per_step: int, data_tokens: int | None
) -> tuple[int | None, str]:
    """Tokens the run trains on over all its steps, and where the count comes from (or why there is none).

    max_steps bounds the run at max_steps full steps; else the tokenized data times the epochs, or, without it, the
    rows times sequence_len (every row at its longest: an upper bound). Preference pairs count twice (chosen and
    rejected both go through the model, padded to the longer: `data_tokens` counts a pair's longer sequence); a KTO
    row once. The passes without gradients (`_forward_only_sequences`) are not tokens trained: the projection
    (`training_time`) counts their cost.
    """
    pairs = _trained_sequences(cfg)
    twice = " x 2 (preference pairs)" if pairs == 2 else ""
    if cfg.max_steps:
        basis = f"at most max_steps {cfg.max_steps} x {tokens_per_step:,} tokens per step"
        return cfg.max_steps * tokens_per_step * pairs, basis + twice
    epochs = f"{cfg.num_epochs:g} epoch(s)"
    if data_tokens is not None:
        basis = f"{data_tokens:,} tokens of the tokenized training split x {epochs}"
        return math.ceil(data_tokens * cfg.num_epochs) * pairs, basis + twice
    if rows is None:
        return None, _uncounted(cfg)
    train_rows = rows - cfg.held_out_rows(rows)
    tokens = math.ceil(train_rows * cfg.sequence_len * cfg.num_epochs) * pairs
    return tokens, f"at most {train_rows:,} rows x sequence_len {cfg.sequence_len} x {epochs} (data not tokenized)"


def _uncounted(cfg: AxolotlConfig) -> str:
    """Why the rows cannot be counted here."""
    missing = [f"datasets[{i}].path {spec.path}" for i, spec in enumerate(cfg.datasets) if spec.missing_local_path]
    if missing:
        return f"unknown: no such file or folder here: {', '.join(missing)}"
    return "unknown: a dataset is on the hub, so its rows cannot be counted offline"


def _trained_sequences(cfg: AxolotlConfig) -> int:
    """Sequences per row that go through the model with gradients: a pair's chosen and rejected (DPO, ORPO, SimPO);
    one for a KTO row or an SFT row (KTO's mismatched KL sequence runs without gradients, as every reference pass)."""
    return 2 if cfg.rl is not None and cfg.rl.paired else 1


def _forward_only_sequences(cfg: AxolotlConfig, rollout: Rollout | None = None) -> float:
    """Sequences per trained sequence that go through a model without gradients (TRL's trainers): DPO's and IPO's
    reference model over chosen and rejected (one each); for a KTO row, the model over its KL sequence (the row's
    prompt with another row's answer) and the reference over both (three); for a GRPO completion, the reference
    over it and its prompt under a KL penalty (one), and, once per generation (trained trl.num_iterations times),
    generation's prefill of its prompt (the prompt's share of the sequence) and, where it is trained more than once,
    TRL's pass for the log-probabilities it had when generated. ORPO, SimPO and SFT run none. An adapter's
    reference (TRL's frozen copy of the adapter, or the model with its adapter disabled) is a pass of the model all
    the same."""
    if cfg.rl is None:
        return 0
    reference = 1 if cfg.has_reference_model else 0
    if cfg.rl is RLMethod.grpo:
        if rollout is None:
            return reference
        prefill = rollout.prompt_tokens / (rollout.prompt_tokens + rollout.completion_tokens)
        generated = 1 if rollout.iterations > 1 else 0  # TRL's old_per_token_logps
        return reference + (prefill + generated) / rollout.iterations
    return reference if cfg.rl.paired else 1 + 2 * reference


def training_time(
    cfg: AxolotlConfig,
    shape: ModelShape,
    tokens: int | None,
    basis: str,
    track: Track,
    rollout: Rollout | None = None,
    weights: float = 0,
) -> TrainingProjection:
    """The run's duration on one GPU of `track` (llmkit.core.challenge.project_training) against the 24 hours;
    rl: grpo's with its generation (`rollout`), each decode step reading the model's `weights` (bytes, as training
    holds them) and its sequences' KV cache so far (on average each prompt and half its completion)."""
    if cfg.adapter is None:
        method = "full"
    else:
        method = "qlora" if cfg.load_in_4bit or cfg.load_in_8bit else "lora"
    decoding = None
    if rollout is not None and rollout.calls is not None:
        context = rollout.prompt_tokens + (rollout.completion_tokens - 1) / 2  # the cache a step reads, on average
        kv = rollout.sequences * context * shape.kv_cache_bytes_per_token(_DTYPE_BYTES[_compute_dtype(cfg, track)])
        decoding = Decoding(rollout.calls, rollout.sequences, rollout.completion_tokens, weights + kv)
    projection = project_training(
        track,
        tokens=tokens,
        tokens_basis=basis,
        params=shape.num_params,
        method=method,
        forward_only=_forward_only_sequences(cfg, rollout),
        decoding=decoding,
    )
    if rollout is not None and decoding is None:
        return projection.model_copy(update={"generation_basis": "generation unknown: the steps are unknown"})
    return projection


def _compute_dtype(cfg: AxolotlConfig, track: Track) -> str:
    return cfg.compute_dtype("cuda", capability=TRACKS[track].capability)


def tokens_countable_here(cfg: AxolotlConfig) -> bool:
    """Whether the training data can be tokenized offline to count its tokens
    (llmkit.data.tokenizer.count_training_tokens): local datasets only (test_datasets too), a local tokenizer (the
    embedded default's, or a model folder). Local rows the plan cannot count (an empty folder, a data_files entry
    that names nothing, a split a file lacks) are read too: training's refusal of them is validate's."""
    return all(spec.read_here for _, _, spec in cfg.dataset_entries()) and tokenizer_here(cfg)


def hub_data_unchecked(cfg: AxolotlConfig) -> str | None:
    """What `llmkit validate` leaves unchecked for the datasets on the hub, which it never downloads: their rows,
    and what needs every dataset's rows (the held-out split, packing, the steps and tokens); the local datasets
    beside them are checked one by one (`check_local_datasets`, `check_local_rows`). None where all data is local.
    Said: the plan's unknown token count alone did not say that val_set_size's split or packing went unchecked."""
    hub = [f"{key}[{position}] ({spec.path})" for key, position, spec in cfg.dataset_entries() if not spec.read_here]
    if not hub:
        return None
    local = [f"{key}[{position}]" for key, position, spec in cfg.dataset_entries() if spec.read_here]
    held_out = cfg.val_set_size and not cfg.test_datasets
    whole = [f"val_set_size {cfg.val_set_size:g}'s held-out split"] if held_out else []
    whole += ["sample_packing's packed sequences"] if cfg.sample_packing and not cfg.rl else []
    whole += ["the steps and tokens to train"]
    checked = f"; {', '.join(local)} {'was' if len(local) == 1 else 'were'} read and checked alone" if local else ""
    return (
        f"{', '.join(hub)} {'is' if len(hub) == 1 else 'are'} on the hub, which validate does not download: "
        f"{'its' if len(hub) == 1 else 'their'} rows are unchecked, and so is what needs every dataset's rows: "
        f"{', '.join(whole)}{checked}; training checks them once it has downloaded the data"
    )


def tokenizer_here(cfg: AxolotlConfig) -> bool:
    """Whether the tokenizer can be loaded offline: the embedded default's, or a model folder."""
    from llmkit.core.models import DEFAULT_MODEL_ID

    return cfg.tokenizer_source == DEFAULT_MODEL_ID or user_path(cfg.tokenizer_source).is_dir()


def base_shape(cfg: AxolotlConfig, model_config: str | None) -> tuple[ModelShape | None, str]:
    """The base model's shape and where its config.json came from; (None, why) when it cannot be had.

    Raises:
        ConfigError: a base model llmkit cannot train on (`base_model_refusal`).
        ModelConfigNotFound: `model_config` is no file or folder, or not a transformers config.json.
    """
    name = cfg.base_model_config or cfg.base_model
    try:
        found = find_model_config(name, cfg.revision_of_model, model_config)
    except ModelConfigNotFound as err:
        if model_config:  # a file the user named that cannot be read is their mistake, not a model to size later
            raise
        return None, f"unknown: {err}"
    if problem := base_model_refusal(
        found.config, name, "base_model_config" if cfg.base_model_config else "base_model"
    ):
        raise ConfigError([problem], cfg.source)  # train, merge and serve would each fail on it: say so now
    check_model_overrides(cfg, found.config)  # as train checks them before loading the model
    try:  # the model train builds: the config.json with overrides_of_model_config over it (modeling.model_config)
        shape = shape_from_config({**found.config, **(cfg.overrides_of_model_config or {})})
    except ValueError as err:  # not a causal LM transformers can build: the rest of the plan still holds
        return None, f"unknown: the config.json ({found.where}) cannot be built here: {err}"
    check_sequence_len(cfg, shape.learned_positions, shape.architecture)
    return shape, found.where


def check_sequence_len(cfg: AxolotlConfig, learned_positions: int | None, architecture: str) -> None:
    """Refuse a sequence_len over a learned position table's rows (GPT-2's 1,024, `shapes.learned_positions`): a
    packed or long sequence indexed past it, and training stopped on torch's IndexError. Validate asks as it sizes
    the model, train once it is loaded.

    Raises:
        ConfigError: sequence_len is over the model's learned positions.
    """
    if learned_positions is not None and cfg.sequence_len > learned_positions:
        raise ConfigError(
            [
                f"sequence_len: {cfg.sequence_len} is over the {learned_positions} positions of {architecture}'s "
                f"learned position table (max_position_embeddings): no sequence can be longer; write sequence_len: "
                f"{learned_positions} or less"
            ],
            cfg.source,
        )


def trainable_params(cfg: AxolotlConfig, shape: ModelShape, targets: list[str], parameters: list[str] = ()) -> int:
    """Trainable parameters, counted over the modules and expert parameters (`parameters`) peft wraps, the way it
    creates them."""
    if cfg.adapter is None:
        patterns = cfg.unfrozen_patterns
        if not patterns:
            return shape.num_params
        return sum(size for name, size in shape.parameters if any(pattern.matches(name) for pattern in patterns))
    if cfg.peft_method is PeftMethod.prompt_tuning:  # wraps no module: its virtual tokens' embeddings
        return cfg.peft_num_virtual_tokens * shape.hidden_size
    per_module = _PARAMS_PER_MODULE[cfg.peft_method]
    saved = _saved_modules(cfg, shape)
    # peft trains a module it saves whole, and wraps no adapter around it
    wrapped = [module for module in _adapted(cfg, shape, targets) if module.name not in saved]
    modules = sum(per_module(cfg, module) for module in wrapped) + sum(module.params for module in saved.values())
    return modules + sum(_expert_lora_params(cfg, size) for _, size, _ in _wrapped_experts(shape, parameters))


def _expert_lora_params(cfg: AxolotlConfig, size: tuple[int, ...]) -> int:
    """peft's ParamWrapper on a fused (experts, rows, columns) parameter: one LoRA of rank r per expert, held as an
    A of (r x experts, in) and a B of (out, r x experts)."""
    experts, rows, columns = size
    return cfg.lora_r * experts * (rows + columns)


def _wrapped_experts(shape: ModelShape, names: list[str]) -> list[tuple[str, tuple[int, ...], int]]:
    """Each fused expert parameter one of `names` matches, once: (name, shape, input width)."""
    return list({expert[0]: expert for target in names for expert in shape.matching_experts(target)}.values())


def _lora_params(cfg: AxolotlConfig, module: Module) -> int:  # A: r x in, B: out x r; DoRA: a magnitude per output
    return cfg.lora_r * (module.fan_in + module.fan_out) + (module.fan_out if cfg.peft_use_dora else 0)


def _vera_params(cfg: AxolotlConfig, module: Module) -> int:  # A and B shared, frozen; lambda_d (r), lambda_b (out)
    return cfg.peft_vera_r + module.fan_out


# peft_method -> the parameters it trains in each module it wraps
_PARAMS_PER_MODULE: dict[PeftMethod, Callable[[AxolotlConfig, Module], int]] = {
    PeftMethod.lora: _lora_params,
    PeftMethod.vera: _vera_params,
}


def _saved_modules(cfg: AxolotlConfig, shape: ModelShape) -> dict[str, Module]:
    """The modules lora_modules_to_save trains a copy of, by name: one copy of the input embeddings for the head and
    them both where training keeps a tied model tied (`AxolotlConfig.ties_saved_embeddings`)."""
    saved = {module.name: module for module in _wrapped(shape, cfg.checked_modules_to_save(shape))}
    head = shape.head
    if head and head.name in saved and cfg.ties_saved_embeddings(shape.tie_word_embeddings):
        del saved[head.name]
        saved[shape.embeddings[0].name] = shape.embeddings[0]
    return saved


def _wrapped(shape: ModelShape, names: list[str]) -> list[Module]:
    """Each module that one of `names` matches, once."""
    return list({module.name: module for name in names for module in shape.matching(name)}.values())


def _adapted(cfg: AxolotlConfig, shape: ModelShape, targets: list[str]) -> list[Module]:
    """The modules peft wraps an adapter around: those `targets` match, in the layers peft_layers_to_transform lists
    (peft's rule in check_target_module_exists: the first numbered name part after peft_layers_pattern, or after
    any part without it; a module in no such layer, as lm_head, is left out). The plan counted every layer's."""
    wrapped = _wrapped(shape, targets)
    layers = cfg.peft_layers_to_transform
    if not layers:  # None or [], as peft reads an empty list: every layer
        return wrapped
    patterns = cfg.peft_layers_pattern or []
    regexes = [rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\." for pattern in patterns] or [r".*?\.[^.]*\.(?P<idx>\d+)\."]
    kept = []
    for module in wrapped:
        if module.name in targets:  # named in full: peft wraps it whatever its layer
            kept.append(module)
            continue
        match = next((found for regex in regexes if (found := re.match(regex, module.name))), None)
        if match and int(match["idx"]) in layers:
            kept.append(module)
    return kept


def check_layers_to_transform(cfg: AxolotlConfig, shape: ModelShape) -> None:
    """Refuse peft_layers_to_transform indices the model has no layer for: peft wrapped nothing there, and train
    stopped on its NoMatchingPeftModuleError traceback (or trained fewer layers than listed) after validate passed.

    Raises:
        ConfigError: an index below 0 or at or above the model's layer count.
    """
    outside = [index for index in cfg.peft_layers_to_transform or [] if not 0 <= index < shape.num_layers]
    if outside and cfg.adapter is not None:
        raise ConfigError(
            [
                f"peft_layers_to_transform: {outside} not among the model's layers: it has {shape.num_layers}, "
                f"numbered 0 to {shape.num_layers - 1}"
            ],
            cfg.source,
        )


def check_unfrozen_parameters(cfg: AxolotlConfig, names: list[str]) -> None:
    """Refuse unfrozen_parameters that match none of the model's parameter `names` (a full fine-tune that would
    train nothing): train checks the loaded model's names, validate the shape's (`ModelShape.parameters`), where it
    had passed the config and train stopped on it once the data was prepared.

    Raises:
        ConfigError: no pattern matches a name.
    """
    patterns = cfg.unfrozen_patterns
    if cfg.adapter is not None or not patterns or any(p.matches(name) for p in patterns for name in names):
        return
    example = names[0] if names else "none"
    raise ConfigError(
        [f"unfrozen_parameters: {cfg.unfrozen_parameters} match no parameter name (e.g. {example})"], cfg.source
    )


def check_model_overrides(cfg: AxolotlConfig, config: dict) -> None:
    """Refuse, naming the key, an overrides_of_model_config value the base's config.json (`config`) cannot take:
    transformers' own checks (a string for hidden_size, a count of heads that leaves no head size) raised tracebacks,
    and a size or count not above 0 (a model of -5 layers) built a model without layers that peft then found no
    module in. Training asks before it loads the model, validate as it sizes it.

    Raises:
        ConfigError: the first override the config cannot take.
    """
    from transformers import AutoConfig

    for key, value in (cfg.overrides_of_model_config or {}).items():
        current = config.get(key)
        counted = key.startswith("num_") or key.endswith(("_size", "_dim", "_embeddings"))
        positive = isinstance(current, int) and not isinstance(current, bool) and current > 0
        if counted and positive and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            problem = f"{value!r}: a size or count, {current} in the model's config.json; give a whole number above 0"
            raise ConfigError([f"overrides_of_model_config.{key}: {problem}"], cfg.source)
        try:
            AutoConfig.for_model(**{**config, key: value})
        except Exception as err:
            said = str(err).strip().splitlines()[-1].strip() or type(err).__name__
            raise ConfigError([f"overrides_of_model_config.{key}: {value!r}: {said}"], cfg.source) from None


def training_setup(
    cfg: AxolotlConfig,
    shape: ModelShape,
    targets: list[str],
    trainable: int,
    track: Track,
    parameters: list[str] = (),
    rollout: Rollout | None = None,
) -> TrainingSetup:
    """What one training process of the config holds on one GPU of `track` (`llmkit.core.memory.TrainingSetup`; its
    peak memory is `estimate_training`'s, whose docstring has the formulas).
    rl: grpo: a micro-batch place is a completion with its prompt, each at its longest (`rollout.longest_prompt`:
    the longest tokenized prompt, or sequence_len without them; and trl.max_completion_length), whose logits TRL
    computes over the completion alone; its generation decodes a step's micro-batches at once (TRL's generation
    batch), prompts padded to the longest."""
    dtype = _compute_dtype(cfg, track)
    weights = cfg.weights_dtype("cuda", capability=TRACKS[track].capability)
    dropout = cfg.adapter is not None and cfg.lora_dropout > 0
    adapted = [module for module in _adapted(cfg, shape, targets) if module in shape.linear]
    experts = _wrapped_experts(shape, parameters)
    grpo = cfg.rl is RLMethod.grpo
    made = cfg.grpo_completion_tokens if grpo else 0
    # GRPO keeps prompts longer than sequence_len (llmkit.data.grpo): the longest measured one is what pads
    length = rollout.longest_prompt if grpo and rollout is not None else cfg.sequence_len
    return TrainingSetup(
        loading=Loading.nf4 if cfg.load_in_4bit else Loading.int8 if cfg.load_in_8bit else Loading.bf16,
        dtype_bytes=_DTYPE_BYTES[dtype],
        trainable_params=trainable,
        optimizer=cfg.optimizer.value,
        tokens=cfg.micro_batch_size * (length + made) * _trained_sequences(cfg),
        logits_tokens=cfg.micro_batch_size * made if grpo else None,
        gradient_checkpointing=cfg.gradient_checkpointing,
        full_fine_tune=cfg.adapter is None,
        trained_bytes=_DTYPE_BYTES[weights] if cfg.adapter is None else 4,  # adapters train in float32
        double_quant=cfg.quantization_options.bnb_4bit_use_double_quant,
        # DPO's, KTO's and GRPO's (beta > 0) full fine-tune keeps a frozen copy of the model (an adapter's reference
        # is the base: GRPOTrainer disables the adapter)
        reference_model=cfg.has_reference_model and cfg.adapter is None,
        # per layer: dropout keeps a copy of each adapted layer's input
        dropout_width=sum(module.fan_in for module in adapted) // shape.num_layers if dropout else 0,
        rebuilt_params=sum(math.prod(size) for _, size, _ in experts),
        # per layer: each token's input to each of its experts' targeted matmuls, which now have a weight to train
        expert_input_width=sum(shape.active_experts * width for _, _, width in experts) // shape.num_layers,
        generated_sequences=cfg.micro_batch_size * cfg.gradient_accumulation_steps if grpo else 0,
        generated_context=length + made if grpo else 0,
        generated_prompt=length if grpo else 0,
    )


def _describe_method(cfg: AxolotlConfig) -> str:
    if not cfg.rl:
        dft = "; DFT loss (each target token's cross-entropy times its probability)"
        return _describe_weights(cfg) + (dft if cfg.use_dynamic_finetuning else "")
    if cfg.rl is RLMethod.grpo:
        beta = cfg.preference_beta or 0.0  # TRL's default: no KL penalty, no reference pass
        rewards = ", ".join(cfg.trl.reward_funcs or []) if cfg.trl else ""
        return (
            f"{_describe_weights(cfg)}; GRPO (TRL), {cfg.grpo_generations} completions per prompt scored by "
            f"{rewards}, beta {beta:g}"
        )
    beta = cfg.preference_beta if cfg.preference_beta is not None else 0.1  # TRL's default
    return f"{_describe_weights(cfg)}; preference training: {cfg.rl.title} (TRL), beta {beta:g}"


def _describe_weights(cfg: AxolotlConfig) -> str:
    if cfg.adapter is None:
        trained = "the weights unfrozen_parameters matches" if cfg.unfrozen_parameters else "every weight"
        return f"full fine-tune ({trained} trained, {_full_weights(cfg)})"
    quant = cfg.quantization_options
    double = " (double quantized)" if quant.bnb_4bit_use_double_quant else ""
    four_bit = f"4-bit {quant.bnb_4bit_quant_type.upper()} base{double}"
    base = four_bit if cfg.load_in_4bit else "8-bit base" if cfg.load_in_8bit else "16-bit base"
    return _METHOD_DESCRIPTIONS[cfg.peft_method](cfg, base)


def _describe_prompt_tuning(cfg: AxolotlConfig, base: str) -> str:
    return f"{cfg.adapter.value}: prompt tuning, {cfg.peft_num_virtual_tokens} virtual tokens, on a {base}"


def _describe_vera(cfg: AxolotlConfig, base: str) -> str:
    return f"{cfg.adapter.value}: VeRA r={cfg.peft_vera_r}, on a {base}"


def _describe_lora(cfg: AxolotlConfig, base: str) -> str:
    scale = cfg.lora_alpha / (math.sqrt(cfg.lora_r) if cfg.peft_use_rslora else cfg.lora_r)
    loftq = f"LoftQ {cfg.loftq_bits}-bit init" if cfg.loftq_bits else None
    extras = [name for name, on in (("DoRA", cfg.peft_use_dora), ("rsLoRA", cfg.peft_use_rslora)) if on]
    extras += [loftq] if loftq else []
    kind = "QLoRA" if cfg.adapter is Adapter.qlora else "LoRA"
    extra = f" + {' + '.join(extras)}" if extras else ""
    lora = f"r={cfg.lora_r} alpha={cfg.lora_alpha} (scale {scale:.3g}), dropout {cfg.lora_dropout}"
    return f"{kind}{extra} {lora}, on a {base}"


# peft_method -> the plan's line for the adapter it trains, on `base` (the base model's loading)
_METHOD_DESCRIPTIONS: dict[PeftMethod, Callable[[AxolotlConfig, str], str]] = {
    PeftMethod.lora: _describe_lora,
    PeftMethod.vera: _describe_vera,
    PeftMethod.prompt_tuning: _describe_prompt_tuning,
}


def _full_weights(cfg: AxolotlConfig) -> str:
    dtype = cfg.weights_dtype("cuda", capability=TRACKS[Track.rtx4090].capability)  # both tracks have bfloat16
    if dtype != "float32":
        return f"{dtype} weights"
    compute = cfg.compute_dtype("cuda", capability=TRACKS[Track.rtx4090].capability)
    return "float32 master weights" + (f", {compute} autocast" if compute != "float32" else "")


def optimizer_steps(cfg: AxolotlConfig, train_rows: int, world_size: int) -> int:
    """Optimizer steps of a run over `train_rows` training rows (or packed sequences, or GRPO prompts), as
    transformers' Trainer counts them: max_steps when set. GRPO trains each generation batch num_iterations times
    (TRL's sampler repeats it)."""
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.rl is RLMethod.grpo:
        batches = max(train_rows // grpo_step_prompts(cfg, world_size), 1)
        return math.ceil(cfg.num_epochs * batches * cfg.grpo_iterations)
    batches = math.ceil(train_rows / (cfg.micro_batch_size * world_size))
    per_epoch = max(math.ceil(batches / cfg.gradient_accumulation_steps), 1)
    return math.ceil(cfg.num_epochs * per_epoch)


def grpo_step_prompts(cfg: AxolotlConfig, world_size: int) -> int:
    """rl: grpo: the prompts of one optimizer step. TRL's GRPOTrainer (generation_batch_size and
    steps_per_generation unset, num_iterations 1) generates once a step, micro_batch_size x accumulation x GPUs
    completions, num_generations of each prompt; its RepeatSampler hands out only whole generation batches, so the
    prompts left over at an epoch's end that do not fill one are not trained."""
    return cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size // cfg.grpo_generations


def warmup_steps(cfg: AxolotlConfig, total_steps: int) -> int:
    """axolotl's warmup: warmup_steps as given; else warmup_ratio x the run's steps, rounded down; else 3% of them,
    at most 100; 1 becomes 2."""
    if cfg.warmup_steps is not None:
        steps = cfg.warmup_steps
    elif cfg.warmup_ratio is not None:
        steps = int(cfg.warmup_ratio * total_steps)
    else:
        steps = min(int(0.03 * total_steps), 100)
    return 2 if steps == 1 else steps


def logging_steps(cfg: AxolotlConfig, total_steps: int) -> int:
    """axolotl's logging cadence: logging_steps as given; else every 0.5% of the run's steps, between 1 and 10."""
    if cfg.logging_steps is not None:
        return cfg.logging_steps
    return max(min(int(0.005 * total_steps), 10), 1)


def _count_all_rows(cfg: AxolotlConfig) -> int | None:
    counts = [_count_rows(spec, cfg.source) for spec in cfg.datasets]
    return None if None in counts else sum(counts)


def _count_rows(spec: DatasetSpec, source: str | Path | None) -> int | None:
    """Rows of a local dataset (file, folder, or data_files; compressed or not) that the spec's split and shard
    select; None for a hub dataset. `source`: the config's file, which an unreadable data file's error names."""
    path = user_path(spec.path)
    if path.is_dir():
        files = local_data_files(spec.data_files, path) if spec.data_files else sorted(path.iterdir())
    elif path.is_file():
        files = [path]
    elif spec.data_files and all(user_path(f).is_file() for f in spec.data_files):
        files = [user_path(f) for f in spec.data_files]  # `path: json` with local data_files
    else:
        return None
    counts = [_rows_in_file(f, source) for f in files if data_file_builder(f.name) in _COUNTED_BUILDERS]
    if not counts or None in counts:
        return None
    return _selected(spec, sum(counts))


def _selected(spec: DatasetSpec, rows: int) -> int | None:
    """Of a local dataset's `rows`, how many its `split` (`train[:25%]`; a local file's only split is `train`) and
    its shard (datasets' `shard`: the first `rows % shards` shards hold one more) keep; None for a split the data
    stage refuses."""
    from datasets import ReadInstruction

    if spec.split != "train":
        try:
            wanted = ReadInstruction.from_spec(spec.split).to_absolute({"train": rows})
        except (ValueError, KeyError, AssertionError):  # another split, or not datasets' syntax: preparing says so
            return None
        rows = sum(part.to - part.from_ for part in wanted)
    return len(range(spec.shards_idx, rows, spec.shards)) if spec.shards else rows


def _rows_in_file(path: Path, source: str | Path | None) -> int:
    """Rows of a local data file; a compressed one (rows.jsonl.gz) is counted as the file inside it, opened with the
    opener the data stage reads it with (config.sections.COMPRESSIONS).

    Raises:
        ConfigError: the file cannot be read or decompressed (training would stop on it; the data stage's message),
            naming the config (`source`) and the file.
    """
    try:
        return _count_file_rows(path)
    except UNREADABLE as err:
        raise ConfigError([f"{path}: cannot be read: {type(err).__name__}: {err}"], source) from None


def _count_file_rows(path: Path) -> int:
    kind, opener = data_file_builder(path.name), COMPRESSIONS.get(path.suffix.lower(), open)
    if kind == "parquet":
        import pyarrow.parquet as pq

        with opener(path, "rb") as file:
            return pq.ParquetFile(file).metadata.num_rows
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as file:
        if kind == "csv":
            return max(sum(1 for _ in csv.reader(file)) - 1, 0)
        if kind == "text":
            return sum(1 for _ in file)
        text = file.read()
    if text.lstrip().startswith("["):  # one JSON array of rows (datasets reads either suffix either way)
        with contextlib.suppress(json.JSONDecodeError):  # else JSON lines, or bad JSON: the data stage names the row
            return len(json.loads(text))
    return sum(1 for line in text.split("\n") if line.strip())  # split as the data stage splits JSON lines
