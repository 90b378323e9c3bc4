"""ORPO (`rl: orpo`) and SimPO (`rl: simpo`): axolotl's chat_template.argilla rows become TRL's prompt/chosen/rejected,
orpo_alpha, simpo_gamma and cpo_alpha mean what axolotl passes them as, and a real step of each on a tiny model logs
its loss, computed here from the untrained model's logits (neither has a reference model); a run of each (and of DPO
and KTO) stopped at a checkpoint resumes to the same end, bit for bit, as one that was not stopped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from llmkit.config.schema import load_config
from llmkit.config.sections import DatasetSpec
from llmkit.data.chat import ChatDefaults
from llmkit.data.preference import build_preference_datasets, preference_builder
from llmkit.data.sources import DataError
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.run import train, training_arguments

CHATML_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _turns(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _pairs(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_chat_template_argilla_builds_axolotls_rows(tokenizer):
    build = preference_builder(
        DatasetSpec(path="unused.jsonl", type="chat_template.argilla"), tokenizer, ChatDefaults(template="chatml")
    )
    row = {"system": "Be brief.", "chosen": _turns("Hi", "Hello!"), "rejected": _turns("Hi", "Go away.")}
    assert build(row) == {
        "prompt": "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_USER.format("Hi"),
        "chosen": "Hello!<|im_end|>\n",
        "rejected": "Go away.<|im_end|>\n",
    }
    # two turns: the prompt is chosen's first exchange and its second question; a `prompt` field is every user turn
    chat = {"chosen": _turns("A?", "a") + _turns("B?", "b"), "rejected": _turns("A?", "a") + _turns("B?", "c")}
    first = CHATML_USER.format("A?") + "a<|im_end|>\n"
    assert build(chat) == {"prompt": first + CHATML_USER.format("B?"), "chosen": "b<|im_end|>\n",
                           "rejected": "c<|im_end|>\n"}  # fmt: skip
    assert build({**chat, "prompt": "Q"})["prompt"] == CHATML_USER.format("Q") + "a<|im_end|>\n" + CHATML_USER.format(
        "Q"
    )
    with pytest.raises(ValueError, match=r"chosen.*must be a list of user and assistant turns"):
        build({"chosen": "Hello!", "rejected": _turns("Hi", "Go")})


def test_chat_template_argilla_renders_with_the_configs_template_as_axolotls_orpo_does(make_cfg, tokenizer, tmp_path):
    """axolotl's orpo argilla resolves the config's chat template alone (get_chat_template_from_config without the
    dataset's entry): an entry's chat_template changes nothing there, and is said to; it rendered the rows here."""
    from llmkit.config.schema import ConfigWarning

    path = _pairs(tmp_path, [{"chosen": _turns("Hi", "Hello!"), "rejected": _turns("Hi", "Go away.")}])
    entry = {"path": str(path), "type": "chat_template.argilla", "chat_template": "llama3"}
    said = (
        r"datasets\[0\]\.chat_template='llama3': rl: orpo's chat_template\.argilla renders with the config's "
        r"top-level chat_template, as axolotl's does"
    )
    with pytest.warns(ConfigWarning, match=said):
        cfg = make_cfg([entry], rl="orpo", chat_template="chatml")
    assert build_preference_datasets(cfg, tokenizer).train.to_list() == [
        {"prompt": CHATML_USER.format("Hi"), "chosen": "Hello!<|im_end|>\n", "rejected": "Go away.<|im_end|>\n"}
    ]


def test_orpo_keys_and_types(make_cfg, tmp_path):
    argilla = [{"path": "p.jsonl", "type": "chat_template.argilla"}]
    # axolotl: trl.beta, then rl_beta, then orpo_alpha become TRL's ORPO beta
    assert make_cfg(argilla, rl="orpo", orpo_alpha=0.5).preference_beta == 0.5
    assert make_cfg(argilla, rl="orpo", orpo_alpha=0.5, rl_beta=0.2).preference_beta == 0.2
    with pytest.raises(ValueError, match=r"chatml\.intel is rl: dpo's type .* rl: orpo does not read; supported: "
                                         r"chat_template\.argilla \["):  # fmt: skip
        make_cfg([{"path": "p.jsonl", "type": "chatml.intel"}], rl="orpo")
    with pytest.raises(ValueError, match=r"chat_template\.argilla is rl: orpo's type .* rl: dpo does not read"):
        make_cfg(argilla, rl="dpo")
    with pytest.raises(ValueError, match=r"a mapping is axolotl's user-defined DPO or KTO format, which rl: orpo"):
        make_cfg([{"path": "p.jsonl", "type": {"field_prompt": "q"}}], rl="orpo")
    with pytest.raises(ValueError, match=r"rpo_alpha, dpo_use_weighting: options of DPO's loss, not rl: orpo's"):
        make_cfg(argilla, rl="orpo", rpo_alpha=1.0, dpo_use_weighting=True)
    with pytest.raises(ValueError, match=r"orpo_alpha: ORPO's weight, read with rl: orpo; rl: dpo's beta is rl_bet"):
        make_cfg([{"path": "p.jsonl", "type": "chatml.intel"}], rl="dpo", orpo_alpha=0.1)
    with pytest.raises(ValueError, match=r"orpo_alpha: preference-training keys, but rl is not set"):
        make_cfg(orpo_alpha=0.1)
    older = (
        r"kto_pair: axolotl's older kto_pair \(DPO's trainer with the kto_pair loss\) needs a loss TRL 1.16's "
        r"DPOTrainer no longer has; rl: kto trains KTO on unpaired rows: not implemented here; supported: dpo"
    )
    with pytest.raises(ValueError, match=older):
        make_cfg(argilla, rl="kto_pair")


def test_simpo_keys_and_types(make_cfg):
    pairs = [{"path": "p.jsonl", "type": "chatml.intel"}]
    cfg = make_cfg(pairs, rl="simpo", simpo_gamma=0.5, rl_beta=2.0)  # SimPO reads DPO's types, as axolotl
    assert (cfg.simpo_gamma, cfg.cpo_alpha, cfg.preference_beta) == (0.5, None, 2.0)
    with pytest.raises(ValueError, match=r"simpo_gamma: required with rl: simpo"):
        make_cfg(pairs, rl="simpo")
    with pytest.raises(ValueError, match=r"simpo_gamma, cpo_alpha: SimPO's, read with rl: simpo, not rl: dpo"):
        make_cfg(pairs, rl="dpo", simpo_gamma=0.5, cpo_alpha=0.0)
    with pytest.raises(ValueError, match=r"rpo_alpha: options of DPO's loss, not rl: simpo's"):
        make_cfg(pairs, rl="simpo", simpo_gamma=0.5, rpo_alpha=1.0)
    with pytest.raises(ValueError, match=r"chat_template\.argilla is rl: orpo's type .* rl: simpo does not read"):
        make_cfg([{"path": "p.jsonl", "type": "chat_template.argilla"}], rl="simpo", simpo_gamma=0.5)
    with pytest.raises(ValueError, match=r"cpo_alpha: preference-training keys, but rl is not set"):
        make_cfg(cpo_alpha=0.1)


SUMS = [(f"What is {a} plus {a}?", str(2 * a), f"Maybe {a}") for a in range(4)]


@pytest.mark.slow
def test_an_orpo_step_logs_orpos_loss_and_publishes(tiny_config, tiny_model_dir, tmp_path):
    """The first logged loss is ORPO's, computed here from the untrained model's logits (LoRA starts as the base):
    the chosen sequences' NLL (prompt included, as TRL's ORPO computes it) minus orpo_alpha x the mean log-sigmoid
    of the log odds ratio of the length-averaged answer log-probabilities."""
    rows = [{"chosen": _turns(q, good), "rejected": _turns(q, bad)} for q, good, bad in SUMS]
    pairs = _pairs(tmp_path, rows)
    alpha = 0.7
    config = tiny_config(
        datasets=[{"path": str(pairs), "type": "chat_template.argilla"}], chat_template="chatml", rl="orpo",
        orpo_alpha=alpha, micro_batch_size=len(rows), max_steps=2, sequence_len=96,
    )  # fmt: skip
    cfg = load_config(config)
    args = training_arguments(cfg, cfg.optimizer.value)
    assert (type(args).__name__, args.beta, args.max_length) == ("ORPOConfig", alpha, 96)

    tokenizer = load_tokenizer(cfg)
    data = build_preference_datasets(cfg, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    nll_sum, nll_count, logps = 0.0, 0, {"chosen": [], "rejected": []}
    with torch.no_grad():
        for pair in data.train:
            sequences, answers = _answer_logps(model, tokenizer, pair)
            for side in ("chosen", "rejected"):
                logps[side].append(answers[side].mean())
            nll_sum -= sequences[0].sum().item()  # the chosen sequence, its prompt included
            nll_count += len(sequences[0])
    chosen, rejected = torch.stack(logps["chosen"]), torch.stack(logps["rejected"])
    log_odds = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
    expected = nll_sum / nll_count - alpha * F.logsigmoid(log_odds).mean().item()

    out = train(cfg)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["loss"]) for entry in logged)
    assert logged[0]["loss"] == pytest.approx(expected, rel=1e-3), (logged[0], expected)
    assert logged[0]["nll_loss"] == pytest.approx(nll_sum / nll_count, rel=1e-3)
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert load_config(out / "config.resolved.yml").rl.value == "orpo"


def test_a_bad_argilla_row_names_the_row(make_cfg, tokenizer, tmp_path):
    path = _pairs(tmp_path, [{"chosen": _turns("a", "b"), "rejected": _turns("a", "c")}, {"chosen": _turns("d", "e")}])
    cfg = make_cfg([{"path": str(path), "type": "chat_template.argilla"}], rl="orpo")
    with pytest.raises(DataError, match=rf"{path}: row 2: field 'rejected' is missing"):
        build_preference_datasets(cfg, tokenizer)


def _answer_logps(model, tokenizer, pair: dict) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Each answer's token log-probabilities after its prompt, and the whole sequence's, tokenized as TRL's ORPO and
    CPO trainers do (BOS first unless the prompt starts with it, EOS appended)."""
    prompt = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and prompt[:1] != [tokenizer.bos_token_id]:
        prompt = [tokenizer.bos_token_id, *prompt]
    answers, sequences = {}, []
    for side in ("chosen", "rejected"):
        answer = tokenizer(pair[side], add_special_tokens=False)["input_ids"]
        answer += [] if answer[-1:] == [tokenizer.eos_token_id] else [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        token_logps = F.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
        sequences.append(token_logps)
        answers[side] = token_logps[len(prompt) - 1 :]
    return sequences, answers


@pytest.mark.slow
def test_a_simpo_step_logs_simpos_loss(tiny_config, tiny_model_dir, tmp_path):
    """SimPO's loss as TRL's CPOTrainer computes it (axolotl's rl: simpo): -log sigmoid(beta x (mean log p(chosen) -
    mean log p(rejected)) - simpo_gamma), plus cpo_alpha x the chosen answers' NLL (answer tokens only)."""
    pairs = _pairs(tmp_path, [{"question": q, "chosen": good, "rejected": bad} for q, good, bad in SUMS])
    beta, gamma, cpo_alpha = 2.0, 0.5, 0.3
    config = tiny_config(
        datasets=[{"path": str(pairs), "type": "chatml.intel"}], rl="simpo", rl_beta=beta, simpo_gamma=gamma,
        cpo_alpha=cpo_alpha, micro_batch_size=len(SUMS), max_steps=2, sequence_len=96,
    )  # fmt: skip
    cfg = load_config(config)
    args = training_arguments(cfg, cfg.optimizer.value)
    assert (type(args).__name__, args.loss_type, args.beta, args.simpo_gamma, args.cpo_alpha) == (
        "CPOConfig", "simpo", beta, gamma, cpo_alpha
    )  # fmt: skip

    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    losses, nll_sum, nll_count = [], 0.0, 0
    with torch.no_grad():
        for pair in build_preference_datasets(cfg, tokenizer).train:
            _, answers = _answer_logps(model, tokenizer, pair)
            margin = answers["chosen"].mean() - answers["rejected"].mean()
            losses.append(-F.logsigmoid(beta * margin - gamma))
            nll_sum -= answers["chosen"].sum().item()
            nll_count += len(answers["chosen"])
    expected = torch.stack(losses).mean().item() + cpo_alpha * nll_sum / nll_count

    out = train(cfg)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["loss"]) for entry in logged)
    assert logged[0]["loss"] == pytest.approx(expected, rel=1e-3), (logged[0], expected)
    assert (out / "adapter_model.safetensors").is_file() and load_config(
        out / "config.resolved.yml"
    ).rl.value == "simpo"


@pytest.mark.parametrize("rl", ["orpo", "simpo"])
def test_pairs_are_measured_as_orpo_and_cpo_tokenize_them(rl, make_cfg, tokenizer, tmp_path):
    """ORPO's and CPO's trainers put BOS before a prompt that does not start with it (SmolLM2's BOS is no token its
    tokenizer adds); a pair measured as DPO tokenizes it was kept at one token over sequence_len and cut by TRL."""
    from types import SimpleNamespace

    from trl.experimental.orpo import ORPOTrainer

    from llmkit.data.preference import epoch_pair_tokens

    pair = {"prompt": "Name a colour.", "chosen": " Red", "rejected": " Seven"}
    trl = SimpleNamespace(processing_class=tokenizer, is_encoder_decoder=False, max_length=10**6)
    trl.build_tokenized_answer = lambda prompt, answer: ORPOTrainer.build_tokenized_answer(trl, prompt, answer)
    row = ORPOTrainer.tokenize_row(trl, pair)
    trained = max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))  # what ORPO/CPO train: BOS first
    path = _pairs(tmp_path, [pair, {"prompt": "Hi.", "chosen": " Yo", "rejected": " No"}])
    keys = {"simpo_gamma": 0.5} if rl == "simpo" else {}
    at_limit = make_cfg([{"path": str(path), "type": None}], rl=rl, sequence_len=trained, **keys)
    assert epoch_pair_tokens(at_limit, tokenizer).sequences == 2
    below = make_cfg([{"path": str(path), "type": None}], rl=rl, sequence_len=trained - 1, **keys)
    data = build_preference_datasets(below, tokenizer)
    assert (len(data.train), data.stats.datasets[0].dropped_overlong) == (1, 1)


def _checkpoint_state(checkpoint: Path) -> tuple[dict, dict, list]:
    """A checkpoint's adapter weights, optimizer state and logged losses."""
    from safetensors.torch import load_file

    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    losses = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    return load_file(checkpoint / "adapter_model.safetensors"), optimizer, losses


def _same_tensors(first, second) -> bool:
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(_same_tensors(first[k], second[k]) for k in first)
    if isinstance(first, list | tuple):
        return len(first) == len(second) and all(_same_tensors(a, b) for a, b in zip(first, second, strict=True))
    return torch.equal(first, second) if torch.is_tensor(first) else first == second


@pytest.mark.slow
@pytest.mark.parametrize("rl", ["orpo", "simpo", "dpo", "kto"])
def test_a_resumed_preference_run_ends_as_the_run_that_was_not_stopped(rl, tiny_config, tmp_path):
    """Stopped after its checkpoint of step 3 of 6 and resumed, by rerunning it (its output_dir's newest checkpoint)
    or from resume_from_checkpoint in another output_dir, an ORPO, SimPO, DPO or KTO run takes steps 4 to 6 as the
    run that was not stopped did, bit for bit: the same losses, optimizer state and adapter. 8 pairs in steps of 2
    cross an epoch's end after the resumed step: the rows skipped and the next epoch's order are the sampler's as it
    was. (TRL's preference trainers turn dropout off: nothing else in a step draws from the RNG the checkpoint
    restores, nor in DPO's and KTO's reference passes or KTO's KL pass.)
    """
    import shutil

    questions = [(f"What is {a} plus {a}?", str(2 * a), f"Maybe {a}") for a in range(8)]
    if rl == "orpo":  # ORPO reads axolotl's argilla rows only; SimPO reads DPO's types
        rows = [{"chosen": _turns(q, good), "rejected": _turns(q, bad)} for q, good, bad in questions]
        dataset = {"path": str(_pairs(tmp_path, rows)), "type": "chat_template.argilla"}
    elif rl == "kto":  # one answer a row, desirable or not
        rows = [{"prompt": q, "completion": (bad, good)[i % 2], "label": i % 2 == 1} for i, (q, good, bad) in
                enumerate(questions)]  # fmt: skip
        dataset = {"path": str(_pairs(tmp_path, rows)), "type": "chatml.prompt_pairs"}
    else:
        rows = [{"question": q, "chosen": good, "rejected": bad} for q, good, bad in questions]
        dataset = {"path": str(_pairs(tmp_path, rows)), "type": "chatml.intel"}
    keys = {
        "datasets": [dataset], "rl": rl, "micro_batch_size": 2, "max_steps": 6, "save_steps": 3,
        "sequence_len": 96, "learning_rate": 1e-2,
    }  # fmt: skip
    keys |= {"simpo_gamma": 0.5} if rl == "simpo" else {"chat_template": "chatml"} if rl == "orpo" else {}
    whole = train(load_config(tiny_config(**keys, output_dir=str(tmp_path / "whole"))))
    expected = _checkpoint_state(whole / "checkpoint-6")
    assert [step for step, _ in expected[2]] == [1, 2, 3, 4, 5, 6]

    rerun = tmp_path / "rerun"  # as if killed after saving checkpoint-3
    shutil.copytree(whole, rerun)
    for name in ("checkpoint-6", "adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
        shutil.rmtree(rerun / name) if name.startswith("checkpoint") else (rerun / name).unlink()
    train(load_config(tiny_config(**keys, output_dir=str(rerun))))
    elsewhere = tiny_config(
        **keys, output_dir=str(tmp_path / "elsewhere"), resume_from_checkpoint=str(rerun / "checkpoint-3")
    )
    train(load_config(elsewhere))
    for out in (rerun, tmp_path / "elsewhere"):
        weights, optimizer, losses = _checkpoint_state(out / "checkpoint-6")
        assert losses == expected[2], out  # steps 1-3 read back from checkpoint-3, 4-6 trained again
        assert _same_tensors(optimizer, expected[1]) and _same_tensors(weights, expected[0]), out
        published = (out / "adapter_model.safetensors").read_bytes()
        assert published == (whole / "adapter_model.safetensors").read_bytes(), out
