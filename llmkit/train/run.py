"""Fine-tune a base model from an axolotl-style config with transformers' Trainer.

    llmkit train axolotl_configs/smollm2-135m-qlora.yml              # one process (GPU if present, else CPU)
    make train CONFIG=axolotl_configs/smollm2-135m-qlora.yml NPROC=2  # DDP: one process per device (torchrun)

`train` reads top to bottom: optimizer check, TrainingArguments, what output_dir holds, tokenizer, data,
model + peft, Trainer, train, publish. Running the same command again after an interruption resumes from the
newest complete `checkpoint-*` in output_dir (or from `resume_from_checkpoint`); after a finished run it does
nothing (llmkit/train/resume.py). The final adapter, tokenizer, `config.resolved.yml`, `trainer_state.json` and
`loss_curve.png` are written to a temporary folder and moved into output_dir with the adapter's config last, so
output_dir never looks finished while it is not.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import yaml
from peft import PeftModel
from transformers import Trainer, TrainerState, TrainingArguments, set_seed

from llmkit.config.schema import RESOLVED_CONFIG, AxolotlConfig, ConfigError
from llmkit.core import devices
from llmkit.core.files import clean_stale, staging_dir, swap_in
from llmkit.data.pipeline import build_datasets, make_collator
from llmkit.train.modeling import build_peft_model, gradient_checkpointing_kwargs, load_base_model, load_tokenizer
from llmkit.train.report import LOSS_CURVE, TRAINER_STATE, plot_loss_curve
from llmkit.train.resume import COMPLETION_MARKERS, plan_run, start_fresh, unpublish, write_record

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


def train(cfg: AxolotlConfig, *, cpu_fallback: bool = False, fresh: bool = False) -> Path:
    """Train the configured adapter (or the full model) and write it to `cfg.output_dir`; returns that folder.

    Args:
        cfg: the validated config.
        cpu_fallback: on a machine without CUDA, replace a paged optimizer by its plain variant instead of failing.
        fresh: remove a previous run's checkpoints in output_dir and start from step 0.

    Raises:
        ConfigError: a setting this machine cannot run (paged optimizer or tf32 without CUDA, W&B not installed),
            or an output_dir holding a run of another config (without `fresh`).
    """
    output_dir = Path(cfg.output_dir)
    args = _training_arguments(cfg, _optimizer_name(cfg, cpu_fallback))
    is_main = args.process_index == 0
    with args.main_process_first(desc="checking output_dir"):  # rank 0 cleans up before the others look
        if fresh and is_main:
            start_fresh(output_dir)
        plan = plan_run(cfg, output_dir, is_main=is_main)
    if plan.done:
        state = json.loads((output_dir / TRAINER_STATE).read_text())
        LOG.info(
            "Training already complete: %s holds this config's finished run (step %d of %d); nothing to do "
            "(--fresh trains it again)",
            output_dir,
            state["global_step"],
            state["max_steps"],
        )
        return output_dir
    if is_main:
        write_record(cfg, output_dir)
        unpublish(output_dir)
    set_seed(cfg.seed)  # before the adapter exists: its initialisation is part of the run
    tokenizer = load_tokenizer(cfg)
    with args.main_process_first(desc="dataset preparation"):  # rank 0 fills dataset_prepared_path first
        data = build_datasets(cfg, tokenizer)
    LOG.info(
        "Data: %d training rows -> %d sequences, %d eval rows",
        data.stats.train_rows,
        data.stats.train_sequences,
        data.stats.eval_rows,
    )
    model = build_peft_model(cfg, load_base_model(cfg), tokenizer)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=make_collator(cfg, tokenizer),
        processing_class=tokenizer,
    )
    if plan.finished_checkpoint:  # killed after the last step, before publishing: one more step would overshoot
        LOG.info("%s is at the end of the schedule; publishing it without training", plan.checkpoint)
        trainer._load_from_checkpoint(str(plan.checkpoint))
        trainer.state = TrainerState.load_from_json(str(plan.checkpoint / TRAINER_STATE))
    else:
        trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
    evaluated = [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]
    if data.eval is not None and evaluated[-1:] != [trainer.state.global_step]:
        trainer.evaluate()  # the final model's held-out loss, for the curve and the summary
    if trainer.is_world_process_zero():
        _publish(trainer, cfg, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _optimizer_name(cfg: AxolotlConfig, cpu_fallback: bool) -> str:
    name = cfg.optimizer.value
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


def _training_arguments(cfg: AxolotlConfig, optimizer: str) -> TrainingArguments:
    """The config's trainer keys in transformers' terms; "auto" precision resolved for this machine."""
    device = devices.resolve_device()
    cuda = device == "cuda"
    if cfg.tf32 is True and not cuda:
        raise ConfigError(["tf32: true needs an Ampere-or-newer CUDA GPU; set tf32: auto or false"], cfg.source)
    dtype = cfg.compute_dtype(device)
    has_eval = cfg.val_set_size > 0
    return TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,  # wins over num_epochs when set
        optim=optimizer,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler.value,
        warmup_steps=cfg.warmup_ratio if cfg.warmup_ratio is not None else (cfg.warmup_steps or 0),  # <1: ratio
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        tf32=cfg.tf32_enabled(device) if cuda else None,
        use_cpu=not cuda,  # transformers allows bf16 autocast on the CPU only when told it is the CPU
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs=gradient_checkpointing_kwargs(cfg),
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        eval_strategy=("steps" if cfg.eval_steps else "epoch") if has_eval else "no",
        eval_steps=cfg.eval_steps,
        eval_on_start=has_eval,  # the held-out loss where the curve starts (the untrained model, or the resumed one)
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,  # unused with save_strategy epoch
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps or 10,
        logging_first_step=True,  # the curve starts at the untrained model
        seed=cfg.seed,
        report_to=_report_to(cfg),
        run_name=cfg.wandb_name,
        remove_unused_columns=False,  # the collator builds exactly the model's inputs (position_ids, use_cache)
        ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient; searching costs a pass
        push_to_hub=bool(cfg.hub_model_id),
        hub_model_id=cfg.hub_model_id,
        hub_strategy="end",
    )


def _report_to(cfg: AxolotlConfig) -> list[str]:
    if not cfg.wandb_project:
        return ["tensorboard"]  # logs under output_dir/runs/
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            ["wandb_project: set, but the wandb package is not installed (pip install wandb)"], cfg.source
        )
    # transformers' W&B callback reads its settings from the environment.
    wandb_env = {
        "WANDB_PROJECT": cfg.wandb_project,
        "WANDB_ENTITY": cfg.wandb_entity,
        "WANDB_WATCH": cfg.wandb_watch,
        "WANDB_RUN_ID": cfg.wandb_run_id,
        "WANDB_LOG_MODEL": cfg.wandb_log_model,
    }
    os.environ.update({key: value for key, value in wandb_env.items() if value})
    return ["tensorboard", "wandb"]


def _publish(trainer: Trainer, cfg: AxolotlConfig, output_dir: Path) -> None:
    """Write the final artefacts to a temporary folder inside output_dir, then move them in, markers last."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / "final"  # only names the staging folder (`.final.publish-<pid>-*`) so it can be cleaned
    clean_stale(final)
    with staging_dir(final, "publish") as staging:
        trainer.save_model(str(staging))  # peft adapter (or the full model) + tokenizer
        trainer.state.save_to_json(str(staging / TRAINER_STATE))
        _write_resolved_config(cfg, trainer, staging / RESOLVED_CONFIG)
        plot_loss_curve(trainer.state.log_history, staging / LOSS_CURVE, title=f"{cfg.base_model} ({_method(cfg)})")
        for path in sorted(staging.iterdir(), key=lambda p: p.name in COMPLETION_MARKERS):
            clean_stale(output_dir / path.name)  # a folder a killed publish had moved aside
            swap_in(path, output_dir / path.name)


def _method(cfg: AxolotlConfig) -> str:
    if cfg.adapter is None:
        return "full fine-tune"
    return f"{cfg.adapter.value}, {cfg.peft.value}"


def _write_resolved_config(cfg: AxolotlConfig, trainer: Trainer, path: Path) -> None:
    """The config as it ran: "auto" settings and target modules resolved, the optimizer actually used."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    args = trainer.args
    resolved = cfg.model_dump(mode="json", exclude_none=True)
    resolved.update(bf16=args.bf16, fp16=args.fp16, tf32=bool(args.tf32), optimizer=args.optim.value)
    if isinstance(model, PeftModel) and getattr(model.peft_config["default"], "target_modules", None):
        resolved["lora_target_modules"] = sorted(model.peft_config["default"].target_modules)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    header = (
        f"# Resolved by `llmkit train` at {when} from {cfg.source or 'a config built in code'}\n"
        f"# base_model loaded from {base.config.name_or_path}; {args.device.type}, {args.world_size} process(es)\n"
    )
    path.write_text(header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
