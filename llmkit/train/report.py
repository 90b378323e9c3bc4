"""What a finished training run left in its output_dir, as a picture (loss curve) and a summary for the CLI."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from llmkit.config.sections import CAUSAL_LM_METRICS

LOSS_CURVE = "loss_curve.png"
TRAINER_STATE = "trainer_state.json"


def task_metrics(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per do_causal_lm_eval metric logged (`eval_exact_match` → exact_match)."""
    found: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for name in CAUSAL_LM_METRICS:
            if f"eval_{name}" in entry:
                found.setdefault(name, []).append((entry["step"], entry[f"eval_{name}"]))
    return found


def plot_loss_curve(
    log_history: list[dict[str, Any]],
    path: Path,
    title: str = "",
    ylabel: str = "cross-entropy loss",
    published_step: int | None = None,
) -> Path:
    """Train loss per logging step and eval loss per evaluation, from the Trainer's `state.log_history`; a line at
    `published_step` where the published model is an earlier checkpoint (load_best_model_at_end)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    if published_step is not None:
        ax.axvline(published_step, linestyle=":", color="tab:gray", label=f"published: best, step {published_step}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Training loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    tasks = task_metrics(log_history)
    if tasks:  # do_causal_lm_eval: held-out answers scored, on their own 0-1 axis
        right = ax.twinx()
        for (name, points), color in zip(tasks.items(), ("tab:green", "tab:red", "tab:purple"), strict=False):
            right.plot(*zip(*points, strict=True), "s--", color=color, label=f"held-out {name}")
        right.set_ylim(0, 1)
        right.set_ylabel("score of generated answers")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def published_best(state: dict[str, Any], picks_best: bool) -> tuple[int, float] | None:
    """(step, metric) of the checkpoint published instead of the last step, where load_best_model_at_end (or early
    stopping) chose an earlier one; None when the last step's model is the published one."""
    checkpoint, metric = state.get("best_model_checkpoint"), state.get("best_metric")
    if not picks_best or not checkpoint or metric is None:
        return None
    step = state.get("best_global_step") or int(Path(checkpoint).name.rsplit("-", 1)[-1])
    return None if step == state["global_step"] else (step, metric)


def summarize(output_dir: str | Path) -> dict[str, Any]:
    """Steps, first/final train loss, final eval loss, the checkpoint published where it is not the last, run time
    and artefact paths of a finished run."""
    import yaml

    from llmkit.config.schema import RESOLVED_CONFIG

    output_dir = Path(output_dir)
    state = json.loads((output_dir / TRAINER_STATE).read_text())
    resolved = output_dir / RESOLVED_CONFIG
    ran = (yaml.safe_load(resolved.read_text()) or {}) if resolved.is_file() else {}
    picks_best = bool(ran.get("load_best_model_at_end") or ran.get("early_stopping_patience"))
    history = state["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    runtime = [entry["train_runtime"] for entry in history if "train_runtime" in entry]
    weights = next((p for p in ("adapter_model.safetensors", "model.safetensors") if (output_dir / p).exists()), None)
    return {
        "steps": state["global_step"],
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "first_eval_loss": evals[0] if evals else None,
        "final_eval_loss": evals[-1] if evals else None,
        "task_metrics": {name: (points[0][1], points[-1][1]) for name, points in task_metrics(history).items()},
        "published_best": published_best(state, picks_best),
        "best_metric_name": ran.get("metric_for_best_model") or "eval_loss",
        "max_steps": state.get("max_steps"),
        "train_seconds": runtime[-1] if runtime else None,
        "weights": str(output_dir / weights) if weights else None,
        "loss_curve": str(output_dir / LOSS_CURVE),
        "output_dir": str(output_dir),
    }


def _summary_table(summary: dict[str, Any]) -> Any:
    """`summarize`'s numbers as a rich table (names escaped, not markup)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Trained model", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")

    def loss(first: float | None, final: float | None) -> str:
        return "-" if final is None else f"{first:.4f} -> {final:.4f}"

    steps = str(summary["steps"])
    if summary["published_best"] and summary["max_steps"] and summary["steps"] < summary["max_steps"]:
        steps += f" of {summary['max_steps']} (stopped early: early_stopping_patience)"
    table.add_row("optimizer steps", steps)
    table.add_row("train loss (first -> last logged)", loss(summary["first_loss"], summary["final_loss"]))
    table.add_row("eval loss (first -> last)", loss(summary["first_eval_loss"], summary["final_eval_loss"]))
    if best := summary["published_best"]:  # load_best_model_at_end: the weights below are not the last step's
        published = f"checkpoint of step {best[0]}: best {summary['best_metric_name']} {best[1]:.4f}"
        table.add_row("published model", escape(published))
    for name, (first, final) in summary["task_metrics"].items():
        table.add_row(f"held-out {name} (first -> last)", f"{first:.3f} -> {final:.3f}")
    seconds = summary["train_seconds"]
    table.add_row("training time (last session)", "-" if seconds is None else f"{seconds:.0f} s")
    return table


def print_summary(output_dir: str | Path, console: Any) -> None:
    """What `llmkit train` ends with: the numbers of `summarize` as a table, then the run's paths one per line, whole.

    A table fits its cells to the terminal, so at 80 columns it folded a path over several lines that could not be
    copied; soft-wrapped lines are never broken by rich (a narrow terminal wraps them on screen only)."""
    summary = summarize(output_dir)
    console.print(_summary_table(summary))
    logdir = shlex.quote(str(Path(summary["output_dir"]) / "runs"))
    paths = {
        "output_dir": summary["output_dir"],
        "weights": summary["weights"] or "-",
        "loss curve": summary["loss_curve"],
        "TensorBoard": f"tensorboard --logdir {logdir}",
    }
    for label, path in paths.items():
        console.print(f"{label}: {path}", soft_wrap=True, markup=False, highlight=False)
