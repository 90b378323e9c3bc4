"""axolotl's `use_dynamic_finetuning` (DFT) trains what it means: each target token's cross-entropy times its own
probability, detached, summed over the optimizer step's target tokens and divided by their count. Checked on a real
one-step full fine-tune of the tiny random Llama, against the loss and gradient computed here from the model's
logits; the same step without the key trains plain cross-entropy; both train the same step split between two DDP
processes (`make train NPROC=2`), the token count being the step's over both."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmkit.config.schema import load_config
from llmkit.data.pipeline import build_datasets
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.run import train

ROOT = Path(__file__).resolve().parents[2]
# plain SGD, no warmup, no clipping: the step moves each weight by exactly lr x its gradient; DFT's gradients on a
# random model are ~1e-8, so a large lr keeps the move far above float32's resolution of the weights
LEARNING_RATE = 1e5


def _one_step_config(tiny_config, tmp_path, dft: bool, micro_batch_size: int = 12) -> Path:
    """One optimizer step over all 24 rows (2 accumulated micro-batches of 12 in one process): the step's loss and
    every weight before and after do not depend on the order the Trainer shuffled the rows into, nor on how they
    are split between processes."""
    return tiny_config(
        adapter=None,
        lora_r=None,
        lora_alpha=None,
        lora_target_linear=None,
        micro_batch_size=micro_batch_size,
        gradient_accumulation_steps=2,
        max_steps=1,
        optimizer="sgd",
        learning_rate=LEARNING_RATE,
        lr_scheduler="constant",
        warmup_steps=0,
        max_grad_norm=0,
        bf16=False,
        use_dynamic_finetuning=dft,
        output_dir=str(tmp_path / f"out-dft-{dft}"),
    )


def _one_step(tiny_config, tmp_path, dft: bool):
    cfg = load_config(_one_step_config(tiny_config, tmp_path, dft))
    return cfg, *_step_taken(train(cfg))


def _step_taken(out: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss logged at the step, and the weights published after it."""
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert logged[0]["step"] == 1
    return logged[0]["loss"], load_file(out / "model.safetensors")


def _expected(cfg, objective: str):
    """The step's loss and gradient, from the untrained model's float64 logits over the rows training saw, each
    row on its own (no padding): for DFT sum(p.detach() x -log p) / n, for cross-entropy sum(-log p) / n, over the
    n tokens whose label is not -100 (position i predicts token i + 1); and the plain cross-entropy for comparison.
    """
    rows = build_datasets(cfg, load_tokenizer(cfg)).train
    assert len(rows) == 24  # every row in the step
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float64)
    total, cross_entropy, n = torch.zeros((), dtype=torch.float64), 0.0, 0
    for row in rows:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
        targets = labels[1:]
        trained = targets != -100
        # the logits of the positions that predict a trained token only: the others add nothing to the loss nor
        # its gradient, and a float64 backward through all of the vocabulary's logits was most of this test's time
        logits = model(input_ids=ids, logits_to_keep=trained.nonzero().squeeze(-1)).logits[0]
        log_p = torch.log_softmax(logits, dim=-1).gather(-1, targets[trained].unsqueeze(-1)).squeeze(-1)
        weight = log_p.exp().detach() if objective == "dft" else torch.ones_like(log_p)
        total = total + (weight * -log_p).sum()
        cross_entropy += float(-log_p.detach().sum())
        n += int(trained.sum())
    loss = total / n
    loss.backward()
    gradients = {name: parameter.grad for name, parameter in model.named_parameters()}
    return float(loss), cross_entropy / n, gradients


@pytest.mark.parametrize("dft", [True, False], ids=["dft", "cross-entropy"])
def test_the_step_trains_dft_or_cross_entropy_as_computed_from_the_logits(tiny_config, tmp_path, dft):
    cfg, logged, trained = _one_step(tiny_config, tmp_path, dft)
    _check_step(cfg, dft, logged, trained)


@pytest.mark.slow
@pytest.mark.parametrize("dft", [True, False], ids=["dft", "cross-entropy"])
def test_two_ddp_processes_train_the_step_one_process_trains(tiny_config, tmp_path, dft, ddp_launch):
    """`make train NPROC=2`: two CPU processes, each taking 6 rows a micro-batch, take the same 24-row step as one
    process taking 12: the loss logged is the mean over both processes' target tokens (the Trainer gathers their
    count, num_items_in_batch, over the processes and scales each process's loss by 2, which DDP's average of the
    gradients undoes), and the weights move by that loss's gradient, computed from the logits as for one process."""
    path = _one_step_config(tiny_config, tmp_path, dft, micro_batch_size=6)
    result = subprocess.run(ddp_launch(path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = load_config(path)
    out = Path(cfg.output_dir)
    assert "cpu, 2 process(es)" in (out / "config.resolved.yml").read_text()
    _check_step(cfg, dft, *_step_taken(out))


def _check_step(cfg, dft: bool, logged: float, trained: dict[str, torch.Tensor]) -> None:
    loss, cross_entropy, gradients = _expected(cfg, "dft" if dft else "cross-entropy")
    assert logged == pytest.approx(loss, rel=1e-4)
    if dft:
        # a random model gives each token p ~ 1/vocabulary: DFT's loss is ~p x cross-entropy's, far from it
        assert logged < cross_entropy / 1000
    else:
        assert logged == pytest.approx(cross_entropy, rel=1e-4)
    base = load_file(Path(cfg.base_model) / "model.safetensors")
    assert trained.keys() == base.keys()
    for name, before in base.items():
        step = (before.double() - trained[name].double()) / LEARNING_RATE
        expected = gradients[name]
        # the detached p: without it the gradient would be (1 + log p) times this one, ~10 times larger here
        assert torch.allclose(step, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())), name


@pytest.mark.parametrize(
    "keys",
    [{"peft_method": "prompt_tuning", "peft_num_virtual_tokens": 4}, {"sample_packing": True}],
    ids=["prompt_tuning", "packed"],
)
def test_dft_trains_and_evaluates_with_virtual_tokens_and_packed_rows(tiny_config, keys):
    # prompt tuning's logits are longer than the labels by its virtual tokens, which get no label (as peft gives them)
    cfg = load_config(tiny_config(use_dynamic_finetuning=True, val_set_size=0.25, eval_steps=1, **keys))
    history = json.loads((train(cfg) / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    evaluated = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    # cross-entropy on this random model is ~ln(49152) = 10.8 a token; DFT's is ~p = 1/49152 times that
    assert len(losses) == 2 and all(0 < loss < 0.01 for loss in losses)
    assert len(evaluated) == 3 and all(0 < loss < 0.01 for loss in evaluated)  # evaluation is DFT too, as in axolotl
