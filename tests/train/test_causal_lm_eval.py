"""do_causal_lm_eval: held-out prompts and references cut from real tokenized rows (packed or not), greedy answers
generated in left-padded batches equal to one-by-one generation, scored, and logged like eval_loss."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmkit.config.schema import ConfigError, ConfigWarning, load_config
from llmkit.data.pipeline import build_datasets
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.causal_lm_eval import CausalLMEval, HeldOutAnswer, exact_match, held_out_answers
from llmkit.train.report import print_summary
from llmkit.train.run import train


@pytest.mark.parametrize("packed", [False, True])
def test_held_out_answers_are_each_rows_prompt_and_trained_answer(tiny_config, packed):
    cfg = load_config(tiny_config(val_set_size=0.25, sample_packing=packed, sequence_len=256))
    tokenizer = load_tokenizer(cfg)
    data = build_datasets(cfg, tokenizer)
    answers = held_out_answers(data.eval)
    assert len(answers) == data.stats.eval_rows == 6
    if packed:
        assert len(data.eval) < 6  # several examples per row, split again at the position_ids restarts
    for answer in answers:
        prompt = tokenizer.decode(answer.prompt)
        assert prompt.count("What is") == 1 and prompt.rstrip().endswith("### Response:"), prompt
        a, b = map(int, re.search(r"What is (\d+) plus (\d+)\?", prompt).groups())
        assert tokenizer.decode(answer.reference, skip_special_tokens=True).strip() == str(a + b)
        assert answer.reference[-1] == tokenizer.eos_token_id


def test_batched_greedy_answers_equal_one_by_one_generation_and_are_scored(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = [tokenizer(text)["input_ids"] for text in ("One", "Two words here", "A longer prompt than the others")]
    alone = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False, pad_token_id=0)
        alone.append(tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True))
    # References: the model's own answers for two rows (exact matches), a wrong one for the third.
    answers = [
        HeldOutAnswer(prompt, tokenizer(text, add_special_tokens=False)["input_ids"])
        for prompt, text in zip(prompts, [alone[0], alone[1], alone[2] + " wrong"], strict=True)
    ]
    callback = CausalLMEval(answers, tokenizer, ["exact_match"], max_new_tokens=5)
    model.train()
    generated = callback.generate(model)
    assert model.training  # the mode it was in
    by_prompt = {tuple(a.prompt): text for a, text in zip(callback.answers, generated, strict=True)}
    assert [by_prompt[tuple(p)] for p in prompts] == alone
    references = [tokenizer.decode(a.reference) for a in callback.answers]
    assert exact_match(generated, references) == pytest.approx(2 / 3)


def test_training_logs_the_task_metric_beside_eval_loss(tiny_config):
    out = train(
        load_config(
            tiny_config(val_set_size=0.25, do_causal_lm_eval=True, eval_steps=1, max_steps=2, eval_max_new_tokens=4)
        )
    )
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry["step"] for entry in history if "eval_exact_match" in entry]
    assert steps == [0, 1, 2], history  # eval_on_start, then every step
    assert all(0.0 <= entry["eval_exact_match"] <= 1.0 for entry in history if "eval_exact_match" in entry)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = {path.parent for path in (out / "runs").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "eval/exact_match" in accumulator.Tags()["scalars"]
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    from rich.console import Console

    console = Console(width=120, record=True)
    print_summary(out, console)
    assert "held-out exact_match (first -> last)" in console.export_text()


def test_training_evaluates_test_datasets(tiny_config, tiny_dataset, caplog):
    spec = {"path": str(tiny_dataset), "type": "alpaca", "split": "train[:3]"}
    keys = {"do_causal_lm_eval": True, "eval_steps": 1, "max_steps": 1, "eval_max_new_tokens": 2}
    config = tiny_config(test_datasets=[spec], **keys)
    with caplog.at_level("INFO", logger="llmkit.train.run"):
        out = train(load_config(config))
    assert re.search(r"Data: \d+ training rows -> \d+ sequences, 3 eval rows", caplog.text)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "eval_loss" in e] == [0, 1]
    assert [e["step"] for e in history if "eval_exact_match" in e] == [0, 1]


def test_causal_lm_eval_keys_are_checked(tiny_config):
    """Metrics it does not compute change only what is logged: a real config naming axolotl's chrf and sacrebleu
    was refused outright; they are ignored with a warning, as other keys that change no weight are (strict: error)."""
    keys = {"val_set_size": 0.25, "do_causal_lm_eval": True, "eval_causal_lm_metrics": ["exact_match", "chrf"]}
    with pytest.warns(ConfigWarning, match=r"eval_causal_lm_metrics=\['chrf'\]: metrics not computed here"):
        assert load_config(tiny_config(**keys)).eval_causal_lm_metrics == ["exact_match"]
    with pytest.raises(ConfigError, match=r"strict: true forbids these keys: eval_causal_lm_metrics=\['chrf'\]"):
        load_config(tiny_config(**keys, strict=True))
    with pytest.raises(ConfigError, match="do_causal_lm_eval: scores answers to held-out rows; set val_set_size"):
        load_config(tiny_config(do_causal_lm_eval=True))
    assert load_config(tiny_config(eval_causal_lm_metrics=None)).eval_causal_lm_metrics == ["exact_match"]
