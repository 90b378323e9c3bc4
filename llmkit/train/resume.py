"""Where a training run stands in its output_dir: finished, resumable from a checkpoint, or another run's.

A run writes `llmkit_run.json` (what it trains: the config's training keys and its data files' hashes) into
output_dir before its first step. Rerunning the same command then either does nothing (the run is published),
publishes the newest checkpoint (killed after its last step, before publishing), resumes from the newest
checkpoint (killed midway), or refuses (output_dir holds a run of another config; `--fresh` starts over), so a
finished schedule is never extended by a step and two configs never mix in one set of checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from llmkit.config.schema import AxolotlConfig, ConfigError, DatasetSpec
from llmkit.core.files import check_folder_target, check_replaceable, user_path, write_atomic
from llmkit.data.cache import dataset_identity
from llmkit.train.report import TRAINER_STATE

LOG = logging.getLogger(__name__)

RUN_RECORD = "llmkit_run.json"
LOCK = ".llmkit_train.lock"  # held (flock) by the run training in output_dir; holds its pid
# What the later stages (merge, serve) look for; moved into output_dir last and removed first on a new run.
COMPLETION_MARKERS = ("adapter_config.json", "config.json")
# Keys that change where things go, who is told or how often, not the weights a run produces.
_NOT_TRAINING = frozenset(
    {
        "output_dir",
        "dataset_prepared_path",
        "resume_from_checkpoint",
        "hub_model_id",
        "save_total_limit",
        "strict",
        "logging_steps",  # how often the loss is logged, and
        "save_steps",  # how often a checkpoint is saved: changing either after a crash must not force --fresh
        "test_datasets",  # evaluated, not trained on
        "saves_per_epoch",  # save_steps' other spelling
    }
)
# How often the run evaluates: not what is trained, unless an evaluation picks the published checkpoint or stops the
# run (load_best_model_at_end, early_stopping_patience).
_EVALUATION_CADENCE = frozenset({"eval_steps", "evals_per_epoch", "eval_strategy"})


@dataclass(frozen=True)
class RunPlan:
    """What `train` does with output_dir: `done` (nothing), or train/publish from `checkpoint` (None: step 0)."""

    done: bool
    checkpoint: Path | None = None
    finished_checkpoint: bool = False  # the checkpoint is at the schedule's end: publish it without training


def run_identity(cfg: AxolotlConfig) -> dict[str, Any]:
    """The config's training keys, with the hashes of its local data files."""
    keys = cfg.model_dump(mode="json", exclude_none=True)
    identity = {k: v for k, v in keys.items() if k not in _NOT_TRAINING and not k.startswith("wandb_")}
    identity["datasets"] = [dataset_identity(spec) for spec in cfg.datasets]
    return json.loads(json.dumps(identity, default=str))  # as it reads back from RUN_RECORD


def resume_checkpoint(cfg: AxolotlConfig) -> Path | None:
    """The config's `resume_from_checkpoint`, checked (checked by `validate` as well as by `train`).

    Raises:
        ConfigError: it is not a complete Trainer checkpoint.
    """
    if not cfg.resume_from_checkpoint:
        return None
    path = Path(cfg.resume_from_checkpoint)
    if not path.is_dir():
        raise ConfigError([f"resume_from_checkpoint: {path}: no such folder"], cfg.source)
    if not is_complete_checkpoint(path):
        raise ConfigError(
            [f"resume_from_checkpoint: {path} is not a complete Trainer checkpoint (no readable {TRAINER_STATE})"],
            cfg.source,
        )
    return path


def check_lora_model_dir(cfg: AxolotlConfig) -> str | None:
    """The config's `lora_model_dir`, checked (by `validate` as well as by `train`): a folder here that holds a peft
    adapter, or a hub id (axolotl takes one) for peft to download.

    Returns:
        What `validate` warns of where it is a hub id, no folder here (`outs/run1` is one too): None for a folder.

    Raises:
        ConfigError: it is written as a local path (./, /, ~, or more than owner/name) that is not there, or names
            a folder that holds no adapter (its adapter_config.json and readable weights); peft said either in a
            traceback, once the base model was loaded.
    """
    from llmkit.core.models import (
        ADAPTER_WEIGHTS,
        adapter_config,
        adapter_weight_shapes,
        adapter_weights_file,
        is_hub_id,
    )

    path = cfg.lora_model_dir
    if not path:
        return None
    folder = user_path(path)  # the folder read; `path` is said as the config wrote it
    if not folder.exists():
        if is_hub_id(path):
            return f"lora_model_dir: {path}: no folder here, so train loads it from the hub as a hub id (owner/name)"
        raise ConfigError([f"lora_model_dir: {path}: no such folder here, and not a hub id (owner/name)"], cfg.source)
    try:
        adapter_config(folder)
    except (OSError, ValueError) as err:
        raise ConfigError([f"lora_model_dir: {err}"], cfg.source) from None
    if adapter_weights_file(folder) is None:
        # peft then took the folder for a hub id and said so in a traceback, once the base model was loaded
        raise ConfigError(
            [f"lora_model_dir: {folder} holds no {' or '.join(ADAPTER_WEIGHTS)}: an adapter's config alone"],
            cfg.source,
        )
    try:  # the header alone (the file may be GBs): one cut short stopped train in safetensors' traceback
        adapter_weight_shapes(folder)
    except ValueError as err:
        raise ConfigError([f"lora_model_dir: {err}"], cfg.source) from None
    return None


def plan_run(cfg: AxolotlConfig, output_dir: Path, *, is_main: bool, fresh: bool = False) -> RunPlan:
    """Decide what the run does with output_dir; remove checkpoints written only in part (main process). With `fresh`
    the run starts from step 0 over whatever run output_dir holds; `start_fresh` removes that run later, once the
    new one is ready to train.

    Raises:
        ConfigError: output_dir cannot be a folder to write in, holds a run of another config (without `fresh`), or
            `resume_from_checkpoint` is not a checkpoint.
    """
    check_writable(output_dir, cfg)
    if path := resume_checkpoint(cfg):
        if fresh and path.resolve().is_relative_to(output_dir.resolve()):
            raise ConfigError(
                [f"resume_from_checkpoint: {path} is in output_dir, whose checkpoints --fresh deletes"], cfg.source
            )
        if is_main:  # under DDP, one line for the run, not one a process
            LOG.info("Resuming from %s (resume_from_checkpoint)", path)
        return RunPlan(done=False, checkpoint=path, finished_checkpoint=_at_end(path))
    if fresh:
        return RunPlan(done=False)
    checkpoints = _checkpoints(output_dir, remove_partial=is_main)
    published = _published(output_dir)
    if not checkpoints and not published:
        if is_main and (output_dir / RUN_RECORD).is_file():  # started before, stopped before its first checkpoint
            LOG.info("%s holds an earlier run that saved no checkpoint: starting from step 0 over it", output_dir)
        return RunPlan(done=False)
    _check_same_run(cfg, output_dir)
    newest = checkpoints[-1] if checkpoints else None
    if published:
        return RunPlan(done=True)
    if newest is not None and is_main:
        LOG.info("Resuming from %s; pass --fresh to start from step 0", newest)
    return RunPlan(done=False, checkpoint=newest, finished_checkpoint=newest is not None and _at_end(newest))


def is_finished(cfg: AxolotlConfig, output_dir: Path) -> bool:
    """Whether output_dir holds this config's published run, as `plan_run` would find it done. Read only (no lock,
    nothing removed or logged, nothing refused: training's own path says what is wrong with any other folder), so
    that `train` can ask before the checks that only training needs."""
    if cfg.resume_from_checkpoint:  # it trains from that checkpoint, published run or not
        return False
    return _published(output_dir) and _other_run(cfg, output_dir) is None


def _published(output_dir: Path) -> bool:
    return any((output_dir / name).exists() for name in COMPLETION_MARKERS)


@contextmanager
def hold_output_dir(cfg: AxolotlConfig, output_dir: Path) -> Iterator[None]:
    """Hold output_dir for this run, so that a second `train` into it (another terminal, a scheduler's retry) is
    refused instead of writing the same checkpoints and records. An flock: the kernel lets go of it when the process
    ends, however it ends, so a killed run never leaves the folder locked."""
    _check_ours(output_dir, cfg)
    check_writable(output_dir, cfg)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(cfg, output_dir):
            yield
    finally:
        # A run that stopped before writing more than its record (bad data, a refused option) leaves no folder of
        # its own: the record alone resumes nothing. A run that trained always writes more.
        if created and {path.name for path in output_dir.iterdir()} <= {RUN_RECORD}:
            with contextlib.suppress(OSError):
                (output_dir / RUN_RECORD).unlink(missing_ok=True)
                output_dir.rmdir()


@contextmanager
def _locked(cfg: AxolotlConfig, output_dir: Path) -> Iterator[None]:
    with open(output_dir / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise ConfigError(
                [
                    f"output_dir: another `llmkit train` (pid {holder}) is training in {output_dir}; wait for it to "
                    "end, or train into another folder"
                ],
                cfg.source,
                invalid=False,  # the folder is busy, the config is fine
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            (output_dir / LOCK).unlink(missing_ok=True)  # still held: nobody else can be holding it


def check_writable(output_dir: Path, cfg: AxolotlConfig, refused: type[OSError] = OSError) -> None:
    """Before the model loads and anything is written: output_dir and dataset_prepared_path are, or can be made,
    folders this process may write in (checked by `validate` as well as by `train`, which names its output_dir:
    the config's, or --output-dir). `refused`: which of check_folder_target's errors are raised; train refuses
    them all, validate a file where a folder goes (NotADirectoryError) and, apart, as a warning of what train would
    stop on here (machine.refusals_here), a folder it may not write in (PermissionError): validate refused
    `output_dir: /workspace/out` on a laptop, where / is not writable, for a config trained on a cluster."""
    folders = {"output_dir": output_dir}
    if cfg.dataset_prepared_path:
        folders["dataset_prepared_path"] = user_path(cfg.dataset_prepared_path)
    for key, folder in folders.items():
        try:
            check_folder_target(folder)
        except refused as err:
            raise ConfigError([f"{key}: {err}"], cfg.source) from None
        except OSError:  # not `refused`: the caller checks it apart
            continue


def _check_ours(output_dir: Path, cfg: AxolotlConfig) -> None:
    """Before anything in output_dir is removed (a checkpoint saved in part, --fresh): it is new, empty, or a
    training run's (it holds RUN_RECORD, written before the first step). Another folder is refused untouched."""
    prepared = [user_path(cfg.dataset_prepared_path)] if cfg.dataset_prepared_path else []
    try:
        check_replaceable(output_dir, RUN_RECORD, "a training run", ignore=[output_dir / LOCK, *prepared])
    except OSError as err:
        raise ConfigError([f"output_dir: {err}"], cfg.source) from None


def _check_same_run(cfg: AxolotlConfig, output_dir: Path) -> None:
    if (what := _other_run(cfg, output_dir)) is None:
        return
    raise ConfigError(
        [
            f"output_dir: {output_dir} holds {what}. Resuming would mix the two runs. To start from step 0, rerun "
            f"with --fresh (make train ... ARGS=--fresh), delete {output_dir}, or set another output_dir"
        ],
        cfg.source,
    )


def _other_run(cfg: AxolotlConfig, output_dir: Path) -> str | None:
    """What output_dir's run record says it holds when that is not this config's run (None: it is)."""
    record = output_dir / RUN_RECORD
    try:
        previous = json.loads(record.read_text())
    except (OSError, ValueError):
        previous = None
    # the evaluation cadence is compared only where an evaluation picks the published checkpoint or stops the run;
    # _NOT_TRAINING again: a record written by an earlier version may hold a key it has since gained
    cadence = set() if cfg.load_best_model_at_end or cfg.early_stopping_patience else _EVALUATION_CADENCE
    ignored = _NOT_TRAINING | cadence
    current = {k: v for k, v in _without_defaults(run_identity(cfg)).items() if k not in ignored}
    if previous is not None:
        previous = {k: v for k, v in _without_defaults(previous).items() if k not in ignored}
        if previous == current:
            return None
    if previous is None:
        return f"a run this version cannot identify (no readable {RUN_RECORD})"
    return "a run of another config (changed: " + ", ".join(_changes(previous, current)) + ")"


def _default(model: type[BaseModel], key: str) -> Any:
    """A field's default as it reads in a run record (JSON); None for a required or unknown key."""
    field = model.model_fields.get(key)
    if field is None or field.is_required():
        return None
    return to_jsonable_python(field.get_default(call_default_factory=True))


def _without_defaults(identity: dict[str, Any]) -> dict[str, Any]:
    """A run identity without the keys at this version's defaults, so that a key added by an update (recorded by
    later runs at its default, absent from earlier records) leaves a finished run finished."""

    def drop(values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
        return {
            key: value
            for key, value in values.items()
            if key not in model.model_fields or value != _default(model, key)
        }

    kept = drop(identity, AxolotlConfig)
    if isinstance(datasets := identity.get("datasets"), list):
        kept["datasets"] = [drop(d, DatasetSpec) if isinstance(d, dict) else d for d in datasets]
    return kept


def _changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs (identities without defaults), key by key; a dataset's files or settings by its position."""
    changes = []
    for key in sorted(previous.keys() | current.keys()):
        before, after = previous.get(key), current.get(key)
        if before == after:
            continue
        if key == "datasets" and isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            for i, (old, new) in enumerate(zip(before, after, strict=True)):
                for field in sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)):
                    was, now = (d.get(field, _default(DatasetSpec, field)) for d in (old, new))
                    changes.append(
                        f"datasets[{i}] files" if field == "_files" else f"datasets[{i}].{field}: {was} -> {now}"
                    )
        elif key == "datasets":
            changes.append(f"datasets: {len(before or [])} -> {len(after or [])} entries")
        else:
            was, now = (d.get(key, _default(AxolotlConfig, key)) for d in (previous, current))
            changes.append(f"{key}: {was} -> {now}")
    return changes


def write_record(cfg: AxolotlConfig, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / RUN_RECORD, json.dumps(run_identity(cfg), indent=2, sort_keys=True) + "\n")


def start_fresh(output_dir: Path) -> None:
    """Remove a previous run's checkpoints, record and published markers (nothing else in output_dir)."""
    for checkpoint in output_dir.glob("checkpoint-*"):
        LOG.info("--fresh: removing %s", checkpoint)
        shutil.rmtree(checkpoint)
    for name in (*COMPLETION_MARKERS, RUN_RECORD):
        (output_dir / name).unlink(missing_ok=True)


def unpublish(output_dir: Path) -> None:
    for name in COMPLETION_MARKERS:
        if (output_dir / name).exists():
            LOG.info("Removing the previous run's %s until this run finishes", output_dir / name)
            (output_dir / name).unlink()


def is_complete_checkpoint(path: Path) -> bool:
    # The Trainer writes trainer_state.json last; a checkpoint killed while being written lacks it (or has half).
    try:
        json.loads((path / TRAINER_STATE).read_text())
        return True
    except (OSError, ValueError):
        return False


def _at_end(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def _step(checkpoint: Path) -> int:
    suffix = checkpoint.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


def discard_partial_checkpoint(output_dir: Path) -> None:
    """After a run stopped (Ctrl-C, SIGTERM, a full disk): remove the checkpoint it was writing, which the next run
    would remove anyway; on a full disk it holds the space the message asks to free. Only in a run's own folder."""
    if (output_dir / RUN_RECORD).is_file():
        _checkpoints(output_dir, remove_partial=True)


def interrupted_message(output_dir: Path, *, fresh: bool = False) -> str:
    """What a run stopped by Ctrl-C left, and what rerunning does with it (`fresh`: the run was started with --fresh,
    which a rerun of the same command would give again, deleting the checkpoints)."""
    checkpoints = _checkpoints(output_dir, remove_partial=False)
    if not checkpoints:
        return f"interrupted before {output_dir} held a checkpoint: rerunning starts from step 0"
    newest = f"{checkpoints[-1]} (step {_step(checkpoints[-1])})"
    if fresh:
        return f"interrupted: rerun without --fresh to resume from {newest}; with --fresh it is deleted"
    return f"interrupted: rerun the same command to resume from {newest}"


def _checkpoints(output_dir: Path, *, remove_partial: bool) -> list[Path]:
    """The complete `checkpoint-*` folders, oldest first; newer incomplete ones are removed (main process)."""
    found = sorted((p for p in output_dir.glob("checkpoint-*") if _step(p) >= 0), key=_step)
    complete = [p for p in found if is_complete_checkpoint(p)]
    newest_step = _step(complete[-1]) if complete else -1
    for broken in found:
        if remove_partial and _step(broken) > newest_step:
            LOG.warning("Removing %s: written only in part (the run was interrupted while saving it)", broken)
            shutil.rmtree(broken, ignore_errors=True)
    return complete
