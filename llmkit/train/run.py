"""Fine-tune a base model from an axolotl-style config with transformers' Trainer (TRL's for `rl:`).

    llmkit train axolotl_configs/smollm2-135m-qlora.yml              # one process (GPU if present, else CPU)
    make train CONFIG=axolotl_configs/smollm2-135m-qlora.yml NPROC=2  # DDP: one process per device (torchrun)

`train` reads top to bottom: a finished run (nothing to do), base model and optimizer checks, training arguments,
what output_dir holds, tokenizer, data, model + peft, trainer, train, publish. Running the same command again after
an interruption resumes from the newest complete `checkpoint-*` in output_dir (or from `resume_from_checkpoint`);
after a finished run it does nothing, whatever this machine could train (llmkit/train/resume.py). The final
adapter, tokenizer, `config.resolved.yml`, `trainer_state.json` and `loss_curve.png` are written to a temporary
folder and moved into output_dir with the adapter's config last, so output_dir never looks finished while it is
not. Preference training (`rl: dpo|ipo|orpo|simpo|kto`) takes the same path with preference pairs, or KTO's rows
(`llmkit.data.preference`), and TRL's DPOTrainer (ORPOTrainer for orpo, CPOTrainer for simpo, KTOTrainer for kto);
`rl: grpo` with prompts and the user's reward functions (`llmkit.data.grpo`) and TRL's GRPOTrainer, which generates
the completions it trains on.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from peft import PeftModel
from transformers import (
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.utils.logging import is_progress_bar_enabled

from llmkit.config.plan import logging_steps, optimizer_steps, warmup_steps
from llmkit.config.schema import RESOLVED_CONFIG, AxolotlConfig, ConfigError, RLMethod
from llmkit.config.sections import NORMALISED_DPO_LOSSES, optim_args_text
from llmkit.core import devices
from llmkit.core.errors import headline
from llmkit.core.files import clean_stale, staging_dir, swap_in
from llmkit.core.models import stop_at_turn_ends
from llmkit.data.grpo import reward_functions
from llmkit.data.pipeline import PreparedData, build_datasets, make_collator
from llmkit.data.preference import PreferenceData, build_preference_datasets
from llmkit.data.sources import steps_said
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.causal_lm_eval import CausalLMEval, held_out_answers
from llmkit.train.dft import dft_loss
from llmkit.train.machine import check_loftq, check_tf32, wandb_unavailable
from llmkit.train.modeling import (
    build_peft_model,
    check_base_model,
    gradient_checkpointing_kwargs,
    load_base_model,
)
from llmkit.train.optimizers import loraplus_optimizer, optimizer_for_machine
from llmkit.train.report import LOSS_CURVE, TRAINER_STATE, plot_loss_curve, published_best
from llmkit.train.resume import (
    COMPLETION_MARKERS,
    check_lora_model_dir,
    hold_output_dir,
    is_finished,
    plan_run,
    start_fresh,
    unpublish,
    write_record,
)

LOG = logging.getLogger(__name__)


def train(cfg: AxolotlConfig, *, cpu_fallback: bool = False, fresh: bool = False) -> Path:
    """Train the configured adapter (or the full model) and write it to `cfg.output_dir`; returns that folder.

    Args:
        cfg: the validated config.
        cpu_fallback: on a machine without CUDA, replace a paged optimizer by its plain variant instead of failing.
        fresh: remove a previous run's checkpoints in output_dir and start from step 0.

    Raises:
        ConfigError: a setting this machine cannot run (an optimizer's package or CUDA, tf32 without CUDA, W&B not
            installed), trainer settings that contradict each other, or an output_dir holding a run of another
            config (without `fresh`), a base model llmkit cannot train on (`base_model_refusal`), or a lora_model_dir
            that is not an adapter (`check_lora_model_dir`).
    """
    output_dir = Path(cfg.output_dir)
    if not fresh and is_finished(cfg, output_dir):
        # Before the checks below, which are about training on this machine: packaging a run finished elsewhere (or
        # with --cpu-fallback) must not trip on this machine's optimizer support.
        return _already_complete(output_dir)
    check_base_model(cfg)
    check_lora_model_dir(cfg)  # before the data and the base: peft would say it in a traceback once both are loaded
    check_loftq(cfg)  # before the data: the peft model that needs it is built after
    if cfg.rl is RLMethod.grpo:
        reward_functions(cfg)  # a missing file or function: said before the data and the model load
    args = training_arguments(cfg, optimizer_for_machine(cfg, cpu_fallback))
    is_main = args.process_index == 0
    with hold_output_dir(cfg, output_dir) if is_main else nullcontext():
        return _train(cfg, args, output_dir, fresh=fresh, is_main=is_main)


def _train(cfg: AxolotlConfig, args: TrainingArguments, output_dir: Path, *, fresh: bool, is_main: bool) -> Path:
    with args.main_process_first(desc="checking output_dir"):  # rank 0 cleans up before the others look
        plan = plan_run(cfg, output_dir, is_main=is_main, fresh=fresh)
    if plan.done:  # published since `train` looked (another process)
        return _already_complete(output_dir)
    if plan.checkpoint and _evaluated_at_its_step(plan.checkpoint):
        args.eval_on_start = False  # the curve has this point: evaluating the same weights again costs a full pass
    set_seed(cfg.seed)  # before the adapter exists: its initialisation is part of the run
    tokenizer = load_tokenizer(cfg)
    # rank 0 fills dataset_prepared_path first; under DDP each process prepares the same data: one set of lines
    with args.main_process_first(desc="dataset preparation"), steps_said(is_main):
        data = build_preference_datasets(cfg, tokenizer) if cfg.rl else build_datasets(cfg, tokenizer)
    if is_main:  # under DDP each process holds the same data: one line for the run
        _log_data(cfg, data)
    # axolotl's default warmup (3% of the run) and logging cadence: the run's length is known once the data is
    total_steps = optimizer_steps(cfg, len(data.train), args.world_size)
    args.warmup_steps = warmup_steps(cfg, total_steps)
    args.logging_steps = logging_steps(cfg, total_steps)
    model = build_peft_model(cfg, load_base_model(cfg), tokenizer)
    try:
        trainer = _trainer(cfg, args, model, tokenizer, data)  # with hub_model_id: creates the hub repo
    except Exception as err:  # offline mode, no network, a refused token: not the data's or the model's fault
        network = isinstance(err, OSError) or type(err).__module__.startswith(("httpx", "httpcore", "huggingface_hub"))
        if not (cfg.hub_model_id and network):
            raise
        raise ConfigError(
            [f"hub_model_id: {cfg.hub_model_id}: the hub repo cannot be reached or made ({headline(err)}); log in "
             "(hf auth login), or remove hub_model_id to train without publishing"],
            cfg.source,
        ) from None  # fmt: skip
    if is_main:
        # Only now, with the data prepared and the model built: an error in either leaves the previous run (its
        # checkpoints, its published adapter) as it was, which --fresh would otherwise have deleted already.
        if fresh:
            start_fresh(output_dir)
        write_record(cfg, output_dir)
        unpublish(output_dir)
    trainer.accelerator.wait_for_everyone()
    with _checkpoint_fits(cfg, plan.checkpoint):
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


def _already_complete(output_dir: Path) -> Path:
    state = json.loads((output_dir / TRAINER_STATE).read_text())
    LOG.info(
        "Training already complete: %s holds this config's finished run (step %d of %d); nothing to do "
        "(--fresh trains it again)",
        output_dir,
        state["global_step"],
        state["max_steps"],
    )
    return output_dir


def _evaluated_at_its_step(checkpoint: Path) -> bool:
    """Whether the checkpoint's own log holds an evaluation at the step it was saved at."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    return any("eval_loss" in entry and entry["step"] == state["global_step"] for entry in state["log_history"])


@contextmanager
def _checkpoint_fits(cfg: AxolotlConfig, checkpoint: Path | None) -> Iterator[None]:
    """A checkpoint of another model (another base, rank or targets) fails in torch's load_state_dict with pages of
    size mismatches: one line naming the checkpoint and the first mismatch instead."""
    try:
        yield
    except RuntimeError as err:
        mismatch = re.search(r"size mismatch for [^\n]*", str(err))
        if checkpoint is None or not (mismatch or "Error(s) in loading state_dict" in str(err)):
            raise
        key = "resume_from_checkpoint" if cfg.resume_from_checkpoint else "output_dir"
        found = mismatch.group(0) if mismatch else str(err).splitlines()[0]
        problem = f"{key}: {checkpoint} does not fit this config's model ({found}); --fresh starts over"
        raise ConfigError([problem], cfg.source) from None


def _log_data(cfg: AxolotlConfig, data: PreparedData | PreferenceData) -> None:
    held_out = len(data.eval) if data.eval is not None else 0
    if isinstance(data, PreferenceData) and cfg.rl:
        LOG.info("Data: %d training %s, %d held out", len(data.train), cfg.rl.rows_noun, held_out)
        return
    LOG.info(
        "Data: %d training rows -> %d sequences, %d eval rows",
        data.stats.train_rows,
        data.stats.train_sequences,
        data.stats.eval_rows,
    )


class LogLastStep(TrainerCallback):
    """Log the loss at the last step too, not only every `logging_steps`: the summary's and the curve's last train
    loss is then the run's own, not the one of an earlier step (a 2-step run logged step 1 only)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True


class ConfigCadence(TrainerCallback):
    """A resumed run logs, evaluates and saves as the config now says: the Trainer restores the checkpoint's
    logging_steps, eval_steps and save_steps, so that changing them after a crash (allowed: they are not what is
    trained) did nothing."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


def _trainer(
    cfg: AxolotlConfig, args: TrainingArguments, model: Any, tokenizer: Any, data: PreparedData | PreferenceData
) -> Trainer:
    """transformers' Trainer over the prepared rows, or TRL's DPOTrainer (ORPOTrainer for ORPO, CPOTrainer for SimPO)
    over preference pairs, KTOTrainer over KTO's rows, GRPOTrainer over prompts, for `rl:`."""
    callbacks: list[TrainerCallback] = [LogLastStep(), ConfigCadence()]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience))
    if cfg.rl:
        _, trainer_class = _trl_classes(cfg.rl)
        # GRPO's completions are scored by the user's functions (TRL's positional second argument)
        rewards = {"reward_funcs": reward_functions(cfg)} if cfg.rl is RLMethod.grpo else {}
        trainer: Trainer = trainer_class(
            **rewards,
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    else:
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=make_collator(cfg, tokenizer, model.config._attn_implementation),
            processing_class=tokenizer,
            callbacks=callbacks,
            compute_loss_func=dft_loss if cfg.use_dynamic_finetuning else None,  # None: the model's cross-entropy
        )
    if cfg.do_causal_lm_eval and data.eval is not None:
        answers = CausalLMEval(
            held_out_answers(data.eval), tokenizer, cfg.eval_causal_lm_metrics, cfg.eval_max_new_tokens
        )
        answers.trainer = trainer
        trainer.add_callback(answers)
    if cfg.loraplus_lr_ratio:
        trainer.optimizer = loraplus_optimizer(trainer, cfg)  # the Trainer builds an optimizer only when it has none
    return trainer


def _trl_classes(method: RLMethod) -> tuple[type[TrainingArguments], type[Trainer]]:
    """TRL's settings and trainer classes for `rl:`, imported only where they are used. DPO's reference policy is the
    model before training (TRL keeps a copy of the new adapter as "ref"); ORPO (the model's own NLL of the chosen
    answer and the pair's odds ratio) and SimPO (CPO's trainer with its simpo loss, as axolotl runs it) have none.
    KTO's reference is DPO's (the frozen "ref" adapter, or a second copy of a fully fine-tuned model)."""
    if method in (RLMethod.orpo, RLMethod.simpo):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO and CPO live in trl.experimental, which warns
    if method is RLMethod.orpo:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    if method is RLMethod.simpo:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOConfig, CPOTrainer
    if method is RLMethod.kto:
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if method is RLMethod.grpo:
        from trl import GRPOConfig, GRPOTrainer

        return GRPOConfig, GRPOTrainer
    from trl import DPOConfig, DPOTrainer

    return DPOConfig, DPOTrainer


def training_arguments(cfg: AxolotlConfig, optimizer: str) -> TrainingArguments:
    """The config's trainer keys in transformers' terms ("auto" precision resolved for this machine); a DPOConfig,
    ORPOConfig, CPOConfig, KTOConfig or GRPOConfig (TrainingArguments plus the loss's settings) for `rl:`.

    Raises:
        ConfigError: tf32 without CUDA, or settings transformers refuses together (e.g. load_best_model_at_end
            with save and eval cadences that do not match).
    """
    device = devices.resolve_device()
    cuda = device == "cuda"
    check_tf32(cfg)
    dtype = cfg.compute_dtype(device)
    has_eval = cfg.has_eval
    save_every, eval_every = cfg.save_every(), cfg.eval_every()
    eval_strategy = (cfg.eval_strategy or ("steps" if eval_every else "epoch")) if has_eval else "no"
    picks_best = cfg.load_best_model_at_end or bool(cfg.early_stopping_patience)
    options: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,  # wins over num_epochs when set
        optim=optimizer,
        optim_args=optim_args_text(cfg.optim_args),
        optim_target_modules=cfg.optim_target_modules,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",  # transformers 5's name
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        tf32=cfg.tf32_enabled(device) if cuda else None,
        use_cpu=not cuda,  # transformers allows bf16 autocast on the CPU only when told it is the CPU
        activation_checkpointing=bool(cfg.gradient_checkpointing),  # transformers 5's name for it
        activation_checkpointing_kwargs=_checkpointing_options(cfg),
        neftune_noise_alpha=cfg.neftune_alpha,
        eval_strategy=eval_strategy,
        eval_steps=eval_every,
        eval_on_start=eval_strategy != "no",  # the held-out loss where the curve starts (untrained, or resumed)
        save_strategy=cfg.save_strategy or ("steps" if save_every else "epoch"),
        save_steps=save_every or 500,  # unused with save_strategy epoch
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=picks_best,
        # early stopping and the best checkpoint compare eval_loss unless told otherwise
        metric_for_best_model=cfg.metric_for_best_model or ("eval_loss" if picks_best else None),
        greater_is_better=cfg.greater_is_better,
        logging_steps=cfg.logging_steps or 10,  # without it, set from the run's length in _train
        logging_first_step=True,  # the curve starts at the untrained model
        # without transformers' bars (HF_HUB_DISABLE_PROGRESS_BARS: the CLI piped), each log a line, not a bar
        disable_tqdm=not is_progress_bar_enabled(),
        seed=cfg.seed,
        report_to=_report_to(cfg),
        run_name=cfg.wandb_name,
        ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient; searching costs a pass
        push_to_hub=bool(cfg.hub_model_id),
        hub_model_id=cfg.hub_model_id,
        hub_strategy="end",
        **_schedule(cfg),
        **_adam(cfg),
    )
    try:
        if cfg.rl:
            settings_class, _ = _trl_classes(cfg.rl)
            return settings_class(**(options | _preference_loss(cfg)))
        # the collator builds exactly the model's inputs (position_ids, use_cache): keep every column
        return TrainingArguments(**options, remove_unused_columns=False)
    except ValueError as err:  # transformers checks the combination (cadences, best-model metric, ...)
        raise ConfigError([f"trainer settings: {err}"], cfg.source) from None


def _checkpointing_options(cfg: AxolotlConfig) -> dict[str, bool]:
    """torch's checkpoint options, and `offload` (the checkpointed layers' saved inputs wait in pinned CPU memory
    for the backward pass) for gradient_checkpointing: offload."""
    options = gradient_checkpointing_kwargs(cfg)
    if not cfg.checkpoint_offload:
        return options
    if not devices.is_cuda(devices.resolve_device()):
        LOG.info("gradient_checkpointing: %s: the activations are in CPU memory already", cfg.gradient_checkpointing)
    elif cfg.rl:
        # TRL turns checkpointing off for each reference pass and back on with these options, passing `offload` on
        # to torch's checkpoint function, which does not know it.
        LOG.warning(
            "gradient_checkpointing: %s: with rl, plain checkpointing (no CPU offload)", cfg.gradient_checkpointing
        )
    else:
        options["offload"] = True
    return options


def _schedule(cfg: AxolotlConfig) -> dict[str, Any]:
    if cfg.cosine_min_lr_ratio is None:
        return {"lr_scheduler_type": cfg.lr_scheduler.value}
    # axolotl's cosine with a floor is transformers' cosine_with_min_lr
    return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": cfg.cosine_min_lr_ratio}}


def _adam(cfg: AxolotlConfig) -> dict[str, float]:
    values = {"adam_beta1": cfg.adam_beta1, "adam_beta2": cfg.adam_beta2, "adam_epsilon": cfg.adam_epsilon}
    return {key: value for key, value in values.items() if value is not None}  # unset: transformers' defaults


def _preference_loss(cfg: AxolotlConfig) -> dict[str, Any]:
    """TRL's settings of the `rl:` loss: max_length and beta (unset: TRL's), and DPO's losses (dpo_loss_type, default
    sigmoid, and dpo_loss_weights; ipo; plus the chosen answers' NLL with rpo_alpha) and label smoothing, ORPO's
    lambda (axolotl passes orpo_alpha, the odds-ratio loss's weight, as TRL's beta), SimPO's gamma and cpo_alpha
    (unset: TRL's 1.0, as axolotl) or KTO's weights (unset: 1.0, as axolotl) and its sequential order; GRPO's
    generation, rewards and loss (TrlSettings.grpo_settings). The one place the config's rl keys become TRL's
    settings."""
    beta = {} if cfg.preference_beta is None else {"beta": cfg.preference_beta}
    if cfg.rl is RLMethod.grpo:
        assert cfg.trl is not None  # rl: grpo requires trl.reward_funcs
        return beta | cfg.trl.grpo_settings()
    settings: dict[str, Any] = {"max_length": cfg.sequence_len, **beta}
    if cfg.rl is RLMethod.orpo:
        return settings
    if cfg.rl is RLMethod.kto:
        settings["desirable_weight"] = cfg.kto_desirable_weight or 1.0
        settings["undesirable_weight"] = cfg.kto_undesirable_weight or 1.0
        # TRL's KL estimate pairs each row's prompt with the previous row's answer in the batch as the dataset orders
        # them, which a random sampler would break (KTOTrainer refuses it); the rows were shuffled once (seed)
        return settings | {"train_sampling_strategy": "sequential"}
    if cfg.rl is RLMethod.simpo:
        settings.update(loss_type="simpo", simpo_gamma=cfg.simpo_gamma)
        return settings | ({} if cfg.cpo_alpha is None else {"cpo_alpha": cfg.cpo_alpha})
    # rl: dpo: dpo_loss_type and its weights, as axolotl passes them (rl: ipo: TRL's ipo alone)
    losses = ["ipo"] if cfg.rl is RLMethod.ipo else list(cfg.dpo_loss_type or ["sigmoid"])
    if cfg.dpo_norm_loss:  # the log-probabilities averaged over each answer's tokens (ipo's already are)
        losses = [NORMALISED_DPO_LOSSES[loss] for loss in losses]
    weights = list(cfg.dpo_loss_weights) if cfg.dpo_loss_weights else None
    if cfg.rpo_alpha:  # 0: no NLL term, as axolotl's TRL adds 0 x it
        # RPO: the losses + rpo_alpha x the negative log-likelihood of the chosen answers
        weights = [*(weights or [1.0] * len(losses)), cfg.rpo_alpha]
        losses.append("sft")
    return settings | {
        "loss_type": losses,
        "loss_weights": weights,
        "use_weighting": cfg.dpo_use_weighting,
        "label_smoothing": cfg.dpo_label_smoothing,
    }


def _report_to(cfg: AxolotlConfig) -> list[str]:
    if not cfg.wandb_project:
        return ["tensorboard"]  # logs under output_dir/runs/
    if note := wandb_unavailable(cfg):
        LOG.warning(note)
        return ["tensorboard"]
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
    _drop_reference_adapters(trainer)
    final = output_dir / "final"  # only names the staging folder (`.final.publish-<pid>-*`) so it can be cleaned
    clean_stale(final)
    with staging_dir(final, "publish") as staging:
        trainer.save_model(str(staging))  # peft adapter (or the full model) + tokenizer
        _write_turn_ends(cfg, trainer, staging)
        trainer.state.save_to_json(str(staging / TRAINER_STATE))
        _write_resolved_config(cfg, trainer, staging / RESOLVED_CONFIG)
        loss = f"{cfg.rl.title} loss" if cfg.rl else _sft_loss(cfg)
        title = f"{cfg.base_model} ({_method(cfg)})"
        best = published_best(vars(trainer.state), trainer.args.load_best_model_at_end)
        published = best[0] if best else None
        plot_loss_curve(
            trainer.state.log_history, staging / LOSS_CURVE, title=title, ylabel=loss, published_step=published
        )
        for path in sorted(staging.iterdir(), key=lambda p: p.name in COMPLETION_MARKERS):
            clean_stale(output_dir / path.name)  # a folder a killed publish had moved aside
            swap_in(path, output_dir / path.name)


def _write_turn_ends(cfg: AxolotlConfig, trainer: Trainer, folder: Path) -> None:
    """With eot_tokens, the base's generation config that also ends at them, in the published folder: the adapter
    served unmerged (its folder's generation_config.json) or the fully fine-tuned model stops where training taught
    it to, as a merged one does."""
    if not cfg.eot_tokens:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    generation = copy.deepcopy(base.generation_config)
    stop_at_turn_ends(generation, trainer.processing_class, cfg.eot_tokens)
    generation.save_pretrained(folder)


def _drop_reference_adapters(trainer: Trainer) -> None:
    # DPO's frozen copy of the initial adapter ("ref") is the reference policy; the published adapter is "default".
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel):
        for name in [name for name in model.peft_config if name != "default"]:
            model.delete_adapter(name)


def _sft_loss(cfg: AxolotlConfig) -> str:
    return "DFT loss" if cfg.use_dynamic_finetuning else "cross-entropy loss"


def _method(cfg: AxolotlConfig) -> str:
    method = "full fine-tune" if cfg.adapter is None else f"{cfg.adapter.value}, {cfg.peft_method.value}"
    return f"{method}, {cfg.rl.value}" if cfg.rl else method


def _write_resolved_config(cfg: AxolotlConfig, trainer: Trainer, path: Path) -> None:
    """The config as it ran: "auto" settings and target modules resolved, the optimizer actually used, the warmup
    and logging cadence axolotl's defaults and rules gave."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    args = trainer.args
    resolved = cfg.model_dump(mode="json", exclude_none=True)
    resolved.update(bf16=args.bf16, fp16=args.fp16, tf32=bool(args.tf32), optimizer=args.optim.value)
    resolved.pop("warmup_ratio", None)  # given as steps below: setting both is an error
    resolved.update(warmup_steps=args.warmup_steps, logging_steps=args.logging_steps)
    if isinstance(model, PeftModel) and getattr(model.peft_config["default"], "target_modules", None):
        resolved["lora_target_modules"] = sorted(model.peft_config["default"].target_modules)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    header = (
        f"# Resolved by `llmkit train` at {when} from {cfg.source or 'a config built in code'}\n"
        f"# base_model loaded from {base.config.name_or_path}; {args.device.type}, {args.world_size} process(es)\n"
    )
    path.write_text(header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
