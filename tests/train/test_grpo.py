"""GRPO (`rl: grpo`) as axolotl runs it through TRL's GRPOTrainer: the dataset's `type: module.function` and
trl.reward_funcs are the user's Python beside the config, the keys' mistakes are said by name before anything loads,
and a real run on a tiny model generates its own completions, scores them with the user's function (called with
TRL's arguments) and logs that function's rewards, its adapter moved by them."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from llmkit.config.plan import plan
from llmkit.config.schema import ConfigError, ConfigWarning, load_config
from llmkit.config.sections import GRPO_CONFIG_KEYS, GRPO_DEFAULT_COMPLETION_TOKENS, RLMethod
from llmkit.core.challenge import TRACKS
from llmkit.data.preference import build_preference_datasets, epoch_pair_tokens
from llmkit.data.sources import DataError
from llmkit.train.run import train, training_arguments
from llmkit.train.validate import validate

REWARDS = """
import json
from pathlib import Path

CALLS = Path(__file__).with_name("calls.jsonl")


def token_sum(prompts, completions, completion_ids, **kwargs):
    rewards = [float(sum(ids) % 97) for ids in completion_ids]
    with CALLS.open("a") as calls:
        calls.write(json.dumps({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                                "keys": sorted(kwargs), "answer": kwargs["answer"], "rewards": rewards}) + "\\n")
    return rewards


def broken(prompts, completions, **kwargs):
    return [kwargs["score"] for _ in completions]


def length(completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


def one_short(prompts, completions, **kwargs):
    return [0.0 for _ in completions[1:]]


def no_kwargs(prompts, completions):
    return [0.0 for _ in completions]


def by_position(cfg, dataset_idx):
    def transform(example):
        return {"prompt": example["question"], "answer": example["answer"], "position": dataset_idx}

    return transform


def questions(cfg, *args, **kwargs):
    def transform(example, tokenizer=None):
        return {"prompt": [{"role": "user", "content": "Q: " + example["question"]}], "answer": example["answer"]}

    return transform, {"remove_columns": ["question"]}
"""

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]


def _grpo_config(tiny_config, tmp_path: Path, **overrides) -> Path:
    (tmp_path / "rewards.py").write_text(REWARDS)
    rows = tmp_path / "questions.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    keys = {
        "rl": "grpo",
        "datasets": [{"path": str(rows), "type": "rewards.questions"}],
        "trl": {"num_generations": 2, "max_completion_length": 6, "reward_funcs": ["rewards.token_sum"]},
        "micro_batch_size": 2,
        "sequence_len": 96,
        "max_steps": 2,
    }
    return tiny_config(**(keys | overrides))


def _error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_grpo_keys_are_checked_by_name(tiny_config, tmp_path):
    path = _grpo_config(tiny_config, tmp_path)
    trl = {"num_generations": 2, "reward_funcs": ["rewards.token_sum"]}
    indivisible = _error(path, {"trl": {**trl, "num_generations": 3}})
    assert "micro_batch_size x gradient_accumulation_steps x GPUs = 2 x 1 x 1 = 2 completions" in indivisible
    assert "not divisible by trl.num_generations 3" in indivisible
    unset = _error(path, {"trl": {"reward_funcs": ["rewards.token_sum"]}})
    assert "not divisible by trl.num_generations 8 (unset: TRL's default)" in unset
    vllm = _error(path, {"trl": {**trl, "use_vllm": True}})
    assert "trl.use_vllm: true: vLLM is not used here; GRPO's generation runs in the trainer" in vllm
    assert "trl.reward_funcs: required with rl: grpo" in _error(path, {"trl": {"num_generations": 2}})
    weights = _error(path, {"trl": {**trl, "reward_weights": [1.0, 2.0]}})
    assert "trl.reward_weights: 2 weights for 1 trl.reward_funcs" in weights
    assert (
        "trl.reward_funcs, trl.num_generations, trl.max_completion_length: GRPO's keys, read with rl: grpo, "
        "not rl: dpo" in _error(path, {"rl": "dpo", "datasets": [{"path": "x.jsonl", "type": "chatml.intel"}]})
    )
    alpaca = _error(path, {"datasets": [{"path": "x.jsonl", "type": "alpaca"}]})
    assert "datasets[0].type: alpaca is not a GRPO dataset type" in alpaca


def test_rl_adapter_ref_model_says_grpo_without_beta_has_no_reference(tiny_config, tmp_path):
    path = _grpo_config(tiny_config, tmp_path)
    with pytest.warns(ConfigWarning):
        cfg = load_config(path, {"rl_adapter_ref_model": True})
    assert [key.describe() for key in cfg.ignored_keys] == [
        "rl_adapter_ref_model=True: rl: grpo without a KL penalty (trl.beta 0, TRL's default) has no reference "
        "model, so it does nothing"
    ]


def test_a_missing_reward_module_or_function_is_said_before_anything_loads(tiny_config, tmp_path):
    path = _grpo_config(tiny_config, tmp_path)
    for name, said in [
        ("scores.correct", "trl.reward_funcs[0] 'scores.correct': no such Python file: "),
        ("rewards.nothing", f"trl.reward_funcs[0] 'rewards.nothing': {tmp_path / 'rewards.py'} has no function"),
        ("rewards.no_kwargs", "trl.reward_funcs[0] 'rewards.no_kwargs': no_kwargs must take **kwargs"),
    ]:
        cfg = load_config(path, {"trl": {"num_generations": 2, "reward_funcs": [name]}})
        with pytest.raises(ConfigError, match=r"Invalid config .*tiny\.yml") as info:
            train(cfg)
        assert said in str(info.value)
        assert not (tmp_path / "out").exists()  # refused before the output folder, the data and the model


def test_grpo_prompts_come_from_the_users_transform(tiny_config, tmp_path, tokenizer):
    cfg = load_config(_grpo_config(tiny_config, tmp_path, shuffle_merged_datasets=False))
    train_rows = build_preference_datasets(cfg, tokenizer).train
    assert set(train_rows.column_names) == {"answer", "prompt"}  # question removed, as the transform asked
    assert train_rows[0] == {"answer": "0", "prompt": [{"role": "user", "content": "Q: What is 0 + 0?"}]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"answer": "1"}) + "\n")
    cfg = load_config(_grpo_config(tiny_config, tmp_path, datasets=[{"path": str(bad), "type": "rewards.questions"}]))
    raised = rf"{bad}: row 2: the type's transform raised TypeError: can only concatenate str"
    with pytest.raises(DataError, match=raised):
        build_preference_datasets(cfg, tokenizer)
    untyped = tmp_path / "plain.jsonl"
    untyped.write_text(json.dumps({"question": "no prompt"}) + "\n")
    cfg = load_config(_grpo_config(tiny_config, tmp_path, datasets=[{"path": str(untyped)}]))
    with pytest.raises(DataError, match=r"row 1: no prompt: GRPO's rows need `prompt`"):
        build_preference_datasets(cfg, tokenizer)


def test_a_transform_is_given_its_datasets_position_as_axolotl_gives_it(tiny_config, tmp_path, tokenizer):
    files = []
    for name, rows in [("first", ROWS[:2]), ("second", ROWS[2:]), ("held", ROWS[:2])]:
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second, held = ({"path": str(path), "type": "rewards.by_position", "split": "train"} for path in files)
    cfg = load_config(_grpo_config(tiny_config, tmp_path, datasets=[first, second], test_datasets=[held]))
    data = build_preference_datasets(cfg, tokenizer)
    # dataset_idx: the entry's position in its list, datasets or test_datasets
    placed = sorted(zip(data.train["answer"], data.train["position"], strict=True))
    assert placed == [("0", 0), ("2", 0), ("4", 1), ("6", 1)]
    assert data.eval["position"] == [0, 0]


def test_prompts_longer_than_sequence_len_are_kept_as_axolotl_keeps_them_and_counted(
    tiny_config, tmp_path, tokenizer, caplog
):
    # axolotl's long-row filter keeps every GRPO prompt, and TRL's GRPOTrainer neither cuts nor drops one
    long = {"question": "What is " + " + ".join(["1"] * 60) + "?", "answer": "60"}
    rows = tmp_path / "long.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in [*ROWS, long]))
    datasets = [{"path": str(rows), "type": "rewards.questions"}]
    cfg = load_config(_grpo_config(tiny_config, tmp_path, datasets=datasets, sequence_len=48))
    with caplog.at_level(logging.WARNING, logger="llmkit.data.grpo"):
        data = build_preference_datasets(cfg, tokenizer)
    assert len(data.train) == 5 and "60" in data.train["answer"]
    counted = data.stats.datasets[0]
    assert (counted.rows, counted.kept, counted.dropped_overlong) == (5, 5, 0)
    said = rf"{rows}: 1 of 5 prompts are longer than sequence_len 48 \(up to \d+ tokens\), kept as axolotl keeps them"
    assert re.search(said, caplog.text), caplog.text
    cfg = load_config(_grpo_config(tiny_config, tmp_path, datasets=datasets, sequence_len=48,
                                   excess_length_strategy="raise"))  # fmt: skip
    raised = r"row 5: the prompt is \d+ tokens long, longer than sequence_len 48, and excess_length_strategy is raise"
    with pytest.raises(DataError, match=raised):
        build_preference_datasets(cfg, tokenizer)
    cut = _error(_grpo_config(tiny_config, tmp_path, excess_length_strategy="truncate"))
    assert "excess_length_strategy: truncate does not work with rl: grpo (axolotl keeps prompts longer than" in cut
    assert "remove it or use raise" in cut


def test_grpo_says_its_own_batch_and_why_it_has_no_causal_lm_eval(tiny_config, tmp_path):
    path = _grpo_config(tiny_config, tmp_path, gradient_accumulation_steps=2)
    said = _error(path, {"do_causal_lm_eval": True, "val_set_size": 2})
    assert "do_causal_lm_eval: not with rl: grpo (a GRPO row is a prompt whose answers the model generates" in said
    console = Console(width=400, record=True)
    assert validate(path, console=console) == 0
    text = console.export_text()
    assert "tokens per optimizer step" not in text  # not micro_batch_size x sequence_len: GRPO trains completions
    assert "completions per optimizer step" in text
    assert "4 (2 x 2 accum x 1 GPU), each its prompt and at most 6 generated tokens; generated 4 at once" in text


def test_validate_projects_grpo_time_and_memory_with_their_verdicts(tiny_config, tmp_path):
    """validate said GRPO's time and memory were not projected; it prints both, generation in them, and the
    verdicts other methods get."""
    console = Console(width=400, record=True)
    assert validate(_grpo_config(tiny_config, tmp_path, max_steps=None, num_epochs=1), console=console) == 0
    text = console.export_text()
    assert "not projected" not in text
    assert "Estimated training memory per GPU" in text and "generation" in text
    assert text.count("fits") >= 4  # each track's memory and time
    assert "of it generating), within the 24 h 00 min limit" in text
    assert "memory-bound" in text and "1008 GB/s" in text  # the 4090's bandwidth


def test_the_grpo_projection_is_the_hand_calculation(tiny_config, tmp_path, tiny_model_dir, tokenizer):
    """GRPO's time and memory on the tiny Llama (LoRA r=4 on every linear layer, 16-bit base, beta 0.1), from its
    config.json's sizes and the real tokenizer's prompts, worked out here by hand."""
    trl = {"num_generations": 2, "max_completion_length": 6, "reward_funcs": ["rewards.token_sum"], "beta": 0.1}
    cfg = load_config(_grpo_config(tiny_config, tmp_path, max_steps=None, num_epochs=1, trl=trl))
    data = epoch_pair_tokens(cfg, tokenizer)
    p = plan(cfg, data=data)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    h, i, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]  # 32
    params = vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h  # tied embeddings
    lora = layers * 4 * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))  # r=4 on q, o; k, v; gate, up, down
    assert (p.shape.num_params, p.trainable_params) == (params, lora)
    # the prompts as TRL renders them: the chat template with the generation prompt
    prompts = [[{"role": "user", "content": "Q: " + row["question"]}] for row in ROWS]
    rendered = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in rendered]
    prompt, longest = sum(lengths) / 4, max(lengths)
    # 4 prompts, 1 a step (2 x 1 accum completions, 2 of a prompt): 4 steps, one generate() of 2 completions each
    completions, made, calls = 8, 6, 4
    assert p.steps == calls and p.tokens == math.ceil(completions * (prompt + made))
    kv_bytes = 2 * layers * kv * 2  # K and V, bf16, a token
    for t, m in zip(p.training_time, p.memory, strict=True):
        spec = TRACKS[t.track]
        step_tokens_per_s = 8 * 2048 / 5.2 * (spec.bf16_tflops / 312) * (7e9 / params)  # LoRA's published pace
        # forward-only a trained sequence: the reference (the adapter disabled) and the prompt's prefill, each pass
        # half a LoRA step's FLOPs
        tokens_per_s = step_tokens_per_s / (1 + (1 + prompt / (prompt + made)) * 0.5)
        read = params * 2 + lora * 4 + 2 * (prompt + (made - 1) / 2) * kv_bytes  # weights, 2 sequences' KV so far
        step_s = max(read / (spec.memory_bandwidth_gbs * 1e9), 2 * 0.5 / step_tokens_per_s)
        assert t.tokens_per_s == pytest.approx(tokens_per_s)
        assert t.generation_s == pytest.approx(calls * made * step_s)
        assert t.projected_s == pytest.approx(p.tokens / tokens_per_s + calls * made * step_s)
        # memory: a micro-batch of 2 completions of the longest prompt + 6 tokens, logits over the 6 completion tokens
        layer = 2 * (6 * h + 4 * kv + 4 * i)  # a token's activations of a layer, bf16
        activations = 2 * (longest + 6) * layers * layer + 2 * 6 * vocab * (2 + 8)
        # KV cache, prefill, last logits
        generation = 2 * (longest + 6) * kv_bytes + 2 * longest * layer + 2 * vocab * (2 + 8)
        weights = params * 2 + 2 * lora  # the 16-bit base (no reference copy) and autocast's copies of the adapter
        trainable = lora * (4 + 4 + 8)  # fp32 weights, gradients, AdamW's two states
        peak = weights + trainable + max(activations, generation)
        assert (m.weights, m.trainable, m.activations, m.generation) == (weights, trainable, activations, generation)
        assert m.total == pytest.approx(peak + 1024**3 + 0.05 * peak, abs=2)


def test_grpo_holds_a_reference_copy_only_for_a_full_fine_tune_under_beta(tiny_config, tmp_path):
    """TRL's GRPOTrainer loads a reference model under a KL penalty, a copy for a full fine-tune and none for an
    adapter (the adapter disabled); a run whose prompts cannot be counted says its generation is left out."""
    trl = {"num_generations": 2, "max_completion_length": 6, "reward_funcs": ["rewards.token_sum"]}
    for adapter, copy in (("lora", 0), (None, 2)):  # a full fine-tune's bf16 weights
        keys = {"adapter": adapter} if adapter else {"adapter": None, "lora_target_linear": None}
        plain, under_beta = (
            plan(load_config(_grpo_config(tiny_config, tmp_path, **keys, trl=trl | beta)))
            for beta in ({}, {"beta": 0.1})
        )
        assert len(plain.memory) == len(under_beta.memory) == 2  # a track each
        for before, now in zip(plain.memory, under_beta.memory, strict=True):
            assert now.weights - before.weights == copy * plain.shape.num_params, adapter
        for before, now in zip(plain.training_time, under_beta.training_time, strict=True):
            assert now.tokens_per_s < before.tokens_per_s and "forward-only" in now.sentence()
    hub = _grpo_config(tiny_config, tmp_path, datasets=[{"path": "org/prompts"}], max_steps=None)
    unknown = plan(load_config(hub))
    assert unknown.tokens is None and unknown.steps is None
    assert all(t.verdict().endswith("tokens trained, less the generation's time") for t in unknown.training_time)


def test_grpo_memory_pads_to_the_longest_tokenized_prompt_past_sequence_len(tiny_config, tmp_path, tokenizer):
    """GRPO keeps prompts longer than sequence_len (as axolotl does), but the memory plan took each prompt as
    sequence_len tokens even with the prompts tokenized: a micro-batch and a generation batch pad to the longest
    prompt, so its activations and KV cache are that prompt's (sequence_len stays the estimate without them)."""
    long = {"question": "What is " + " + ".join(["1"] * 60) + "?", "answer": "60"}
    rows = tmp_path / "long.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in [*ROWS, long]))
    datasets = [{"path": str(rows), "type": "rewards.questions"}]
    cfg = load_config(_grpo_config(tiny_config, tmp_path, datasets=datasets, sequence_len=48, max_steps=None))
    # the long prompt as TRL renders it: the chat template with the generation prompt
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q: " + long["question"]}], add_generation_prompt=True, tokenize=False
    )
    longest = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert longest > 48 + 60
    measured, estimated = plan(cfg, data=epoch_pair_tokens(cfg, tokenizer)), plan(cfg)
    assert len(measured.memory) == len(estimated.memory) == 2
    for grown, before in zip(measured.memory, estimated.memory, strict=True):
        assert grown.activations > before.activations and grown.generation > before.generation
        assert grown.total > before.total
    assert (measured.rollout.longest_prompt, estimated.rollout.longest_prompt) == (longest, 48)
    assert measured.tokens_per_step == 2 * (longest + 6)  # 2 completions, each the longest prompt + 6
    console = Console(width=400, record=True)
    assert validate(_grpo_config(tiny_config, tmp_path, datasets=datasets, sequence_len=48), console=console) == 0
    said = " ".join(console.export_text().split())
    assert f"a prompt at its longest ({longest} tokens, the longest tokenized training prompt)" in said, said


def test_the_plan_counts_generations_as_trl_configures_them(tiny_config, tmp_path):
    cfg = load_config(_grpo_config(tiny_config, tmp_path, max_steps=None, num_epochs=1))
    p = plan(cfg)
    assert p.steps == 4  # 4 prompts x 2 completions, 2 completions a step
    assert p.rollout.completion_tokens == 6 and p.rollout.sequences == 2
    args = training_arguments(cfg, cfg.optimizer.value)
    assert type(args).__name__ == "GRPOConfig"
    assert (args.num_generations, args.max_completion_length, args.use_vllm, args.beta) == (2, 6, False, 0.0)
    assert (args.generation_batch_size, args.steps_per_generation, args.num_iterations) == (2, 1, 1)
    defaults = {field.name: field.default for field in dataclasses.fields(type(args))}
    assert defaults["max_completion_length"] == GRPO_DEFAULT_COMPLETION_TOKENS  # what the plan takes when unset


def test_the_plan_counts_steps_as_trls_sampler_hands_out_prompts(tiny_config, tmp_path):
    """TRL's RepeatSampler hands out whole generation batches (here 2 prompts x 2 completions a step) and leaves out
    the prompts at an epoch's end that do not fill one: 5 prompts are 2 steps, where the plan counted 3."""
    from trl.trainer.utils import RepeatSampler

    rows = tmp_path / "five.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?"}) + "\n" for i in range(5)))
    overrides = {"datasets": [{"path": str(rows)}], "gradient_accumulation_steps": 2}
    cfg = load_config(_grpo_config(tiny_config, tmp_path, max_steps=None, num_epochs=1, **overrides))
    args = training_arguments(cfg, cfg.optimizer.value)
    sampler = RepeatSampler(
        range(5),
        mini_repeat_count=args.num_generations,
        batch_size=args.generation_batch_size // args.num_generations,
        repeat_count=args.num_iterations * args.steps_per_generation,
    )
    batches = len(sampler) // (args.per_device_train_batch_size * args.steps_per_generation)  # GRPOTrainer's loader
    per_epoch = max(math.ceil(batches / args.gradient_accumulation_steps), 1)  # transformers' Trainer
    assert plan(cfg).steps == per_epoch == 2


@pytest.mark.slow
def test_a_grpo_run_logs_the_rewards_of_the_users_function_and_moves_the_adapter(tiny_config, tmp_path, tokenizer):
    # half an epoch: 2 of the 4 prompts, each as 2 completions, 2 completions a step: the plan's 2 steps
    cfg = load_config(_grpo_config(tiny_config, tmp_path, max_steps=None, num_epochs=0.5))
    assert plan(cfg).steps == 2
    out = train(cfg)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2  # one generation batch a step: 1 prompt x 2 completions
    answers = {row["answer"] for row in ROWS}
    for call in calls:
        # TRL's arguments, by name: the row's other columns with the trainer's own
        assert call["keys"] == ["answer", "log_extra", "log_metric", "trainer_state"]
        assert call["answer"][0] in answers and call["answer"][0] == call["answer"][1]  # one prompt's group
        assert call["prompts"][0] == call["prompts"][1] and call["prompts"][0][0]["role"] == "user"
        assert all(0 < len(ids) <= 6 for ids in call["completion_ids"])
        decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in call["completion_ids"]]
        assert call["completions"] == [[{"role": "assistant", "content": text}] for text in decoded]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [entry for entry in state["log_history"] if "reward" in entry]
    assert len(logged) == 2
    for entry, call in zip(logged, calls, strict=True):
        expected = sum(float(sum(ids) % 97) for ids in call["completion_ids"]) / 2
        assert entry["reward"] == pytest.approx(expected), (entry, call)
        assert entry["rewards/token_sum/mean"] == pytest.approx(expected)
        assert math.isfinite(entry["loss"])
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and any(torch.count_nonzero(tensor) for tensor in lora_b), "lora_B starts at zero: no step moved it"
    assert load_config(out / "config.resolved.yml").rl.value == "grpo"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reward", "said"),
    [
        ("broken", "Error: trl.reward_funcs[0] 'rewards.broken' raised KeyError: 'score'"),
        ("one_short", "Error: trl.reward_funcs[0] 'rewards.one_short' returned 1 rewards for 2 completions"),
    ],
)
def test_a_reward_function_that_fails_is_one_error_line_naming_it(tiny_config, tmp_path, reward, said):
    """A reward function's exception, or a count of rewards other than the completions', came out of TRL as a
    ~190-line traceback; the train command says it in one line naming the key."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    trl = {"num_generations": 2, "max_completion_length": 6, "reward_funcs": [f"rewards.{reward}"]}
    path = _grpo_config(tiny_config, tmp_path, max_steps=1, trl=trl)
    result = CliRunner().invoke(app, ["train", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and said in result.output, result.output
    assert "Traceback" not in result.output


# Each supported trl: key with a value other than TRL's default, as GRPOConfig reads it (sync_ref_model needs full
# fine-tuning and a KL penalty)
GRPO_KEYS = {
    "num_generations": 2,
    "max_completion_length": 6,
    "reward_weights": [2.0],
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 1,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "generation_kwargs": {"min_new_tokens": 6},
    "scale_rewards": False,
    "multi_objective_aggregation": "normalize_then_sum",
    "loss_type": "grpo",
    "importance_sampling_level": "sequence",
    "mask_truncated_completions": True,
    "num_iterations": 2,
    "epsilon": 0.3,
    "epsilon_high": 0.28,
    "off_policy_mask_threshold": 0.5,
    "use_bias_correction_kl": False,
    "num_completions_to_print": 1,
    "log_completions": True,
    "sync_ref_model": True,
    "beta": 0.04,
}
# what GRPOConfig holds for a key whose value TRL turns into its own (axolotl's scale_rewards is a bool)
GRPO_READ_AS = {"scale_rewards": "none"}


def _grpo_keys_config(tiny_config, tmp_path: Path, **trl) -> Path:
    return _grpo_config(
        tiny_config, tmp_path, adapter=None, trl={"reward_funcs": ["rewards.token_sum"]} | GRPO_KEYS | trl
    )


def _assert_grpo_keys(args, **expected) -> None:
    for key, value in (GRPO_KEYS | expected).items():
        assert getattr(args, key) == GRPO_READ_AS.get(key, value), key


def test_every_grpo_key_of_axolotl_is_passed_to_grpoconfig_by_name(tiny_config, tmp_path):
    assert set(GRPO_CONFIG_KEYS) < set(GRPO_KEYS)  # every key of the table, tried here
    cfg = load_config(_grpo_keys_config(tiny_config, tmp_path))
    args = training_arguments(cfg, cfg.optimizer.value)
    # sync_ref_model brings axolotl's defaults of its two keys (TRL's are 0.6 and 512)
    _assert_grpo_keys(args, ref_model_mixup_alpha=0.9, ref_model_sync_steps=64)
    cfg = load_config(_grpo_keys_config(tiny_config, tmp_path, ref_model_mixup_alpha=0.5, ref_model_sync_steps=3))
    _assert_grpo_keys(training_arguments(cfg, cfg.optimizer.value), ref_model_mixup_alpha=0.5, ref_model_sync_steps=3)
    # μ passes over each generation batch: the plan counts them (4 prompts x 2 completions x 2 passes, 2 a step)
    assert plan(load_config(_grpo_keys_config(tiny_config, tmp_path), {"max_steps": None})).steps == 8


def test_rl_gdpo_is_grpo_normalizing_each_reward_before_the_sum_as_axolotl_runs_it(tiny_config, tmp_path):
    """axolotl's rl: gdpo (its GRPO trainer, TRL's multi_objective_aggregation normalize_then_sum unless trl: sets
    it) was refused as not implemented."""
    trl = {"num_generations": 2, "max_completion_length": 6, "reward_funcs": ["rewards.token_sum", "rewards.length"]}
    cfg = load_config(_grpo_config(tiny_config, tmp_path, rl="gdpo", trl=trl))
    assert cfg.rl is RLMethod.grpo and not cfg.ignored_keys and not cfg.notices
    args = training_arguments(cfg, cfg.optimizer.value)
    assert (type(args).__name__, args.multi_objective_aggregation) == ("GRPOConfig", "normalize_then_sum")
    assert load_config(_grpo_config(tiny_config, tmp_path, trl=trl)).trl.multi_objective_aggregation is None
    own = trl | {"multi_objective_aggregation": "sum_then_normalize"}  # the config's own wins, as axolotl's setdefault
    summed = load_config(_grpo_config(tiny_config, tmp_path, rl="gdpo", trl=own))
    assert summed.trl.multi_objective_aggregation == "sum_then_normalize"
    missing = _error(_grpo_config(tiny_config, tmp_path, rl="gdpo", trl=None))
    assert "trl.reward_funcs: required with rl: grpo" in missing


@pytest.mark.slow
def test_a_gdpo_step_trains_on_each_reward_normalized(tiny_config, tmp_path):
    trl = {"num_generations": 2, "max_completion_length": 6, "reward_funcs": ["rewards.token_sum", "rewards.length"]}
    out = train(load_config(_grpo_config(tiny_config, tmp_path, rl="gdpo", trl=trl, max_steps=1)))
    args = torch.load(out / "training_args.bin", weights_only=False)  # the settings the trainer ran with
    assert args.multi_objective_aggregation == "normalize_then_sum"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    logged = next(entry for entry in state["log_history"] if "reward" in entry)
    assert {"rewards/token_sum/mean", "rewards/length/mean"} <= set(logged) and math.isfinite(logged["loss"])
    resolved = load_config(out / "config.resolved.yml")
    assert (resolved.rl, resolved.trl.multi_objective_aggregation) == (RLMethod.grpo, "normalize_then_sum")


def test_the_projection_generates_once_per_num_iterations_steps(tiny_config, tmp_path):
    # TRL generates once every num_iterations optimizer steps and trains each of them on that generation, so μ
    # passes train μ times the tokens from the same generate() calls, with one more forward pass per generation (the
    # log-probabilities the completions had when generated)
    path = _grpo_config(tiny_config, tmp_path, max_steps=None)
    trl = {"num_generations": 2, "max_completion_length": 6, "reward_funcs": ["rewards.token_sum"]}
    once, twice = (plan(load_config(path, {"trl": trl | {"num_iterations": n}})) for n in (1, 2))
    assert twice.steps == 2 * once.steps and twice.rollout.calls == once.rollout.calls
    assert twice.tokens == 2 * once.tokens
    assert "each trained 2 times (trl.num_iterations)" in twice.tokens_basis
    for one, two in zip(once.training_time, twice.training_time, strict=True):
        assert two.generation_s == one.generation_s > 0
        assert two.tokens_per_s < one.tokens_per_s  # the generation's log-probabilities: one more pass


def test_bad_grpo_values_are_errors_naming_the_key(tiny_config, tmp_path):
    path = _grpo_config(tiny_config, tmp_path)
    trl = {"num_generations": 2, "reward_funcs": ["rewards.token_sum"]}
    for key, value, said in [
        ("top_p", 1.5, "trl.top_p: Input should be less than or equal to 1 (got 1.5)"),
        ("top_k", -1, "trl.top_k: Input should be greater than or equal to 0"),
        ("min_p", 2, "trl.min_p: Input should be less than or equal to 1"),
        ("repetition_penalty", 0, "trl.repetition_penalty: Input should be greater than 0"),
        ("loss_type", "ppo", "trl.loss_type: Input should be 'grpo', 'dr_grpo', 'dapo', 'bnpo', 'cispo', 'sapo'"),
        ("importance_sampling_level", "turn", "trl.importance_sampling_level: Input should be 'token' or 'sequence'"),
        ("num_iterations", 0, "trl.num_iterations: Input should be greater than or equal to 1"),
        ("epsilon", -0.1, "trl.epsilon: Input should be greater than or equal to 0"),
        ("scale_rewards", "batch", "trl.scale_rewards: Input should be a valid boolean"),
        ("ref_model_mixup_alpha", 1.5, "trl.ref_model_mixup_alpha: Input should be less than or equal to 1"),
        ("generation_kwargs", {"max_new_tokens": 3}, "trl.generation_kwargs: max_new_tokens: GRPO's own, set "
                                                     "trl.max_completion_length"),
        ("generation_kwargs", {"top_kk": 3}, "trl.generation_kwargs: top_kk: not transformers' GenerationConfig"),
        ("rollout_func", "rollouts.run", "trl.rollout_func: a custom rollout replaces TRL's generation"),
        ("use_liger_loss", True, "trl.use_liger_loss: TRL 1.16's GRPOConfig has no liger loss"),
    ]:  # fmt: skip
        assert said in _error(path, {"trl": {**trl, key: value}}), key
    assert load_config(path, {"trl": {**trl, "vllm_server_host": None, "async_prefetch": False}})  # asks for nothing
    reference = "trl.sync_ref_model: true needs a reference model, which GRPO has only with a KL penalty"
    assert reference in _error(path, {"trl": {**trl, "sync_ref_model": True}})
    adapter = "trl.sync_ref_model: true needs a copy of the model as its reference, which TRL keeps only in full"
    assert adapter in _error(path, {"trl": {**trl, "sync_ref_model": True, "beta": 0.1}})
    with pytest.warns(ConfigWarning):
        cfg = load_config(path, {"trl": {**trl, "ref_model_sync_steps": 8}})
    assert [key.describe() for key in cfg.ignored_keys] == [
        "trl.ref_model_sync_steps=8: read only with trl.sync_ref_model: true"
    ]
    assert not training_arguments(cfg, cfg.optimizer.value).sync_ref_model
    # axolotl reads its vLLM keys only with use_vllm: true (its own config dumps hold the server's host and port):
    # ignored keys here too, with the reason; with use_vllm: true, that key is the error
    with pytest.warns(ConfigWarning):
        cfg = load_config(path, {"trl": {**trl, "vllm_server_host": "0.0.0.0", "vllm_mode": "server"}})
    assert [key.describe() for key in cfg.ignored_keys] == [
        f"trl.{key}: read only with trl.use_vllm: true (GRPO's completions are generated in the trainer here)"
        for key in ("vllm_mode='server'", "vllm_server_host='0.0.0.0'")
    ]
    assert "trl.use_vllm: true: vLLM is not used here" in _error(
        path, {"trl": {**trl, "use_vllm": True, "vllm_mode": "server"}}
    )


@pytest.mark.slow
def test_a_grpo_run_trains_with_the_keys_it_was_given(tiny_config, tmp_path):
    # full fine-tuning with a KL penalty, the reference synced every step; 2 of the 4 prompts, 2 completions each,
    # each generation trained twice (num_iterations): 4 steps, 2 generations
    path = _grpo_keys_config(tiny_config, tmp_path, ref_model_sync_steps=1)
    cfg = load_config(path, {"max_steps": None, "num_epochs": 0.5})
    assert plan(cfg).steps == 4
    out = train(cfg)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    args = torch.load(out / "training_args.bin", weights_only=False)  # the settings the trainer ran with
    assert type(args).__name__ == "GRPOConfig"
    _assert_grpo_keys(args, ref_model_mixup_alpha=0.9, ref_model_sync_steps=1)
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2  # one generation for each 2 steps: num_iterations
    for call in calls:
        first, second = call["completion_ids"]
        assert first == second  # top_k 1: the likeliest token each time, the same completion twice
        assert len(first) == 6  # generation_kwargs' min_new_tokens: no end before max_completion_length
