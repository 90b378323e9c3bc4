"""Check a config and print its plan without training: what `llmkit train` would do with it, its data tokenized as
training will tokenize it.

llmkit validate axolotl_configs/Llama-2-7b-03.yml [--strict] [--model-config path/to/config.json]
make validate CONFIG=axolotl_configs/Llama-2-7b-03.yml
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.config.plan import TrainingPlan, base_shape, hub_data_unchecked, plan
from llmkit.config.schema import AxolotlConfig, ConfigError, ConfigWarning, RLMethod, load_config
from llmkit.core.challenge import CONTEXT_TOKENS
from llmkit.core.memory import GIB
from llmkit.core.shapes import ModelConfigNotFound
from llmkit.data.grpo import reward_functions
from llmkit.data.tokenizer import (
    check_untokenized,
    count_training_tokens,
    tokenizer_problems,
    trained_tokenizer_size,
    validation_tokenizer,
)
from llmkit.train.machine import fallbacks_here, refusals_here, wandb_unavailable
from llmkit.train.resume import check_lora_model_dir, check_writable, resume_checkpoint

if TYPE_CHECKING:
    from rich.console import Console


def validate(
    path: str | Path,
    *,
    strict: bool = False,
    model_config: str | None = None,
    console=None,
) -> int:
    """Load `path`, plan it and print the plan; returns the exit status (1: the config is unusable).

    Args:
        path: the YAML config.
        strict: report unknown and unimplemented keys as errors, whatever the file's `strict:` says.
        model_config: the base model's config.json (or a folder with one), when llmkit cannot find it.
        console: a rich Console to print to (default: stdout, errors to stderr).
    """
    from rich.console import Console
    from rich.markup import escape

    out = console or Console()
    err = console or Console(stderr=True)
    cfg = None
    try:
        with warnings.catch_warnings():  # the plan lists the ignored keys itself
            warnings.simplefilter("ignore", ConfigWarning)
            # a model path not here is a warning (train would stop here), as a config is often checked on a laptop
            cfg = load_config(path, {"strict": True} if strict else None, models_elsewhere=True)
            missing = [
                f"{key}[{position}].path: {spec.path}: no such file or folder"
                for key, position, spec in cfg.dataset_entries()
                if spec.missing_local_path  # written as a local path: not a hub id the hub could serve
            ]
            if missing:
                raise ConfigError(missing, cfg.source)
            # as train checks it first: a file where a folder goes; no permission is this machine's (a warning)
            check_writable(Path(cfg.output_dir), cfg, NotADirectoryError)
            resume_checkpoint(cfg)
            lora_model_dir_note = check_lora_model_dir(cfg)
            if cfg.rl is RLMethod.grpo:
                reward_functions(cfg)  # as train checks them first
            # Before tokenizing (minutes): a --model-config that cannot be read, a base model train refuses (as train
            # does); the special-tokens rule reads the embeddings' names from this shape, the plan sizes it.
            base = base_shape(cfg, model_config)
            tokenizer = validation_tokenizer(cfg, base[0])  # loaded once for the three checks that read it
            split = count_training_tokens(cfg, tokenizer)  # bad data is the config's error (a ConfigError)
            untokenized = check_untokenized(cfg)  # no tokenizer here: the rows' fields alone
            size = trained_tokenizer_size(cfg, tokenizer)  # the embeddings the plan counts, added tokens included
            training_plan = plan(cfg, model_config=model_config, data=split, tokenizer_size=size, base=base)
            vocab_size = training_plan.shape.vocab_size if training_plan.shape else None
            problems = tokenizer_problems(cfg, vocab_size, tokenizer)
            if problems:
                raise ConfigError(problems, cfg.source)
    except ConfigError as error:
        # soft_wrap: the terminal wraps a long line; rich would break paths in two with newlines of its own
        said = str(error) if error.invalid else f"Error: {error}"  # no "Invalid config" heading: as other commands
        err.print(f"[red]{escape(said)}[/red]", highlight=False, soft_wrap=True)
        if cfg is not None:  # what train would also stop on here: both said in one run, not one per fix
            _machine_warnings(cfg, err)
        return 1
    except ModelConfigNotFound as error:  # only for the file given: a model's own config.json may be unknown
        err.print(f"Error: --model-config {error}", style="red", markup=False, highlight=False, soft_wrap=True)
        return 1
    out.print(render(training_plan))
    for note in (hub_data_unchecked(cfg), untokenized, wandb_unavailable(cfg), lora_model_dir_note):
        if note:
            err.print(f"[yellow]Warning: {escape(note)}[/yellow]", highlight=False, soft_wrap=True)  # a path: whole
    _machine_warnings(cfg, err)
    return 0


def _machine_warnings(cfg: AxolotlConfig, err: Console) -> None:
    """What train would stop on or substitute on this machine (a CUDA-only optimizer, tf32), as warnings: the
    config may be meant for another machine."""
    from rich.markup import escape

    for problem in refusals_here(cfg):
        said = f"Warning: on this machine, train would stop: {escape(problem)}"  # soft_wrap: a path kept whole
        err.print(f"[yellow]{said}[/yellow]", highlight=False, soft_wrap=True)
    for fallback in fallbacks_here(cfg):  # said here, not logged again by the check
        said = f"Warning: on this machine, train would substitute: {escape(fallback)}"
        err.print(f"[yellow]{said}[/yellow]", highlight=False)


def render(p: TrainingPlan):
    """The plan as rich tables (what `llmkit validate` prints); the config's text (paths, keys, names) is escaped,
    not read as rich markup."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    cfg = p.cfg
    title = escape(f"Training plan: {cfg.source or cfg.base_model}")
    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    if p.shape is None:
        summary.add_row("base model", f"{escape(cfg.base_model)} (size unknown)")
        summary.add_row("[yellow]memory plan[/yellow]", f"[yellow]{escape(p.shape_source)}[/yellow]")
    else:
        n_params = p.shape.num_params
        where = f"{n_params / 1e9:.2f}B parameters, {p.shape.architecture}; config.json: {p.shape_source}"
        summary.add_row("base model", escape(f"{cfg.base_model} ({where})"))
    summary.add_row("method", escape(p.method))
    if p.shape is not None and isinstance(p.shape.positions, int) and p.shape.positions < CONTEXT_TOKENS:
        summary.add_row(
            "[yellow]positions[/yellow]",
            f"[yellow]the model has {p.shape.positions:,} (max_position_embeddings), fewer than the challenge's "
            f"{CONTEXT_TOKENS:,}-token prompt and completion: the server answers a longer HELM prompt with a 422, "
            "and HELM stops that run[/yellow]",
        )
    if p.shape is not None and p.shape.expert_params and (cfg.load_in_4bit or cfg.load_in_8bit):
        summary.add_row(
            "[yellow]MoE experts[/yellow]",
            f"[yellow]{p.shape.expert_params / 1e9:.1f}B parameters held as fused 3-D tensors "
            f"({escape(', '.join(p.shape.expert_names))}): bitsandbytes quantizes only linear layers, so they stay "
            "unquantized (in fp32 once peft prepares the quantized base for training)[/yellow]",
        )
    summary.add_row("target modules", escape(", ".join(p.target_modules)) or "-")
    if p.target_parameters:
        summary.add_row("target parameters", escape(", ".join(p.target_parameters)))
    left_out = _renamed_left_out(p)
    if left_out:
        summary.add_row(
            "[yellow]not targeted[/yellow]",
            f"[yellow]{escape(', '.join(left_out))}: peft would rename them to the MoE experts' fused parameters and "
            "train the experts instead, so lora_target_linear leaves these layers untrained[/yellow]",
        )
    if p.total_params is not None and p.trainable_params is not None:
        share = p.trainable_params / p.total_params  # both of the model training builds (added tokens' rows too)
        # an adapter's share is of the base alone; peft's log at training counts the adapter into its total
        of = "the base's " if cfg.adapter is not None else ""
        summary.add_row("trainable parameters", f"{p.trainable_params:,} ({share:.2%} of {of}{p.total_params:,})")
    if p.rollout is not None:  # a GRPO row is a generated completion, not sequence_len tokens of the data
        batch = f"{cfg.micro_batch_size} x {cfg.gradient_accumulation_steps} accum x {p.world_size} GPU"
        unset = "" if cfg.trl and cfg.trl.max_completion_length else ", TRL's default: trl.max_completion_length unset"
        each = f"each its prompt and at most {p.rollout.completion_tokens:,} generated tokens{unset}"
        completions = p.rollout.sequences * p.world_size
        generated = f"generated {p.rollout.sequences:,} at once on each GPU, then trained"
        summary.add_row("completions per optimizer step", escape(f"{completions:,} ({batch}), {each}; {generated}"))
    else:
        batch = f"{cfg.micro_batch_size} x {cfg.gradient_accumulation_steps} accum x {cfg.sequence_len} tokens"
        summary.add_row("tokens per optimizer step", f"{p.tokens_per_step:,} ({batch} x {p.world_size} GPU)")
    summary.add_row("optimizer steps", _steps_text(p))
    for key in cfg.ignored_keys:
        if key.named_alone:
            summary.add_row("[yellow]ignored key[/yellow]", escape(key.describe()))
    for note in cfg.notices:  # old spellings read the new way, keys given twice
        summary.add_row("[yellow]note[/yellow]", escape(note))
    empty = [key.path for key in cfg.ignored_keys if not key.named_alone]
    if empty:
        summary.add_row("[dim]off, not implemented[/dim]", f"[dim]{escape(', '.join(empty))}[/dim]")
    summary.add_row("tokens to train", escape(f"{p.tokens:,} ({p.tokens_basis})" if p.tokens else p.tokens_basis))
    if not p.memory:
        return summary
    title = "Estimated training memory per GPU in GiB (trainable: + gradients and optimizer states)"
    memory = Table(title=title, title_justify="left")
    generates = any(m.generation for m in p.memory)
    columns = ("track", "memory", "weights", "trainable", "activations", "generation", "overhead", "total", "fits")
    for column in columns if generates else [c for c in columns if c != "generation"]:
        memory.add_column(column, justify="left" if column in ("track", "fits") else "right")
    for m in p.memory:
        fits = "[green]fits[/green]" if m.fits else "[red]too big[/red]"
        parts = (m.weights, m.trainable, m.activations, *([m.generation] if generates else []), m.overhead, m.total)
        memory.add_row(m.track.name, f"{m.track.memory_gib}", *(f"{x / GIB:.1f}" for x in parts), fits)
    if generates and p.rollout is not None:
        memory.caption = escape(
            f"rl: grpo: a micro-batch place is a prompt at its longest ({p.rollout.longest_basis}) and a completion "
            f"of {p.rollout.completion_tokens:,} tokens; generation: the KV cache of {p.rollout.sequences:,} such "
            "sequences and their prompts' prefill, a layer at a time. Generation and training's activations are not "
            "live at once: the total counts the larger."
        )
    if not p.training_time:
        return Group(summary, memory)
    return Group(summary, memory, training_time_table(p))


def training_time_table(p: TrainingPlan):
    """The projected training time per track against the challenge's 24-hour reproduction limit."""
    from rich.markup import escape
    from rich.table import Table

    time = Table(title="Projected training time on one GPU (the challenge re-runs training within 24 h)")
    for column in ("track", "tokens/s", "time", "verdict"):
        time.add_column(column, justify="right" if column == "tokens/s" else "left")
    for t in p.training_time:
        verdict = (
            "[green]fits[/green]"
            if t.fits
            else "[yellow]unknown[/yellow]"
            if t.fits is None
            else "[red]over 24 h[/red]"
        )
        time.add_row(t.track.value, f"{t.tokens_per_s:,.0f}", escape(t.verdict()), verdict)
    time.caption = (
        f"Tokens/s: {escape(p.training_time[0].throughput_basis.split(', x ')[0])}; scaled per track and model size."
    )
    if p.rollout is not None:
        generation = [f"{t.track.value}: {t.generation_basis.removeprefix('generation: ')}" for t in p.training_time]
        time.caption += escape(
            f"\nGeneration (rl: grpo): {'; '.join(generation)}. A floor: each decode "
            "step is timed by the bytes it reads at the card's memory bandwidth, and transformers' generate also "
            "spends time launching each layer's kernels, most of a step for a small model."
        )
    return time


def _renamed_left_out(p: TrainingPlan) -> list[str]:
    """Linear layers lora_target_linear skips because peft renames them (AxolotlConfig.resolved_target_modules)."""
    if p.shape is None or not p.target_modules or not p.cfg.lora_target_linear:
        return []  # a list alone: what it does not name it never asked for
    return [name for name in p.shape.linear_names() if name in p.shape.peft_renamed and name not in p.target_modules]


def _steps_text(p: TrainingPlan) -> str:
    cfg = p.cfg
    if cfg.max_steps:
        return f"{cfg.max_steps} (max_steps)"
    epochs = f"{cfg.num_epochs:g} epoch{'' if cfg.num_epochs == 1 else 's'}"
    per_1k = f"{p.steps_per_1k_rows:.1f} steps per 1k rows over {epochs}"
    if cfg.sample_packing:  # counted one row per sequence: packing merges rows, into many times fewer when short
        per_1k = f"at most {per_1k}, one row per sequence (packed rows make fewer)"
    if p.steps is None:
        return f"needs the dataset to count its rows: {per_1k}"
    held_out = cfg.held_out_rows(p.rows) if p.rows is not None else 0
    rows = f"{p.rows - held_out:,} training rows ({held_out:,} held out)" if held_out else f"{p.rows:,} rows"
    if p.sequences is not None:  # counted from the tokenized split: packing and dropped rows are in it
        batched = cfg.rl.rows_noun if cfg.rl else "packed sequences" if cfg.sample_packing else "training rows"
        return f"{p.steps:,} ({p.sequences:,} {batched} from {rows}, over {epochs})"
    bound = "at most " if cfg.sample_packing else ""  # packing merges rows into fewer sequences
    return f"{bound}{p.steps:,} ({rows}; {per_1k})"
