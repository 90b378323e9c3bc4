"""KTO (`rl: kto`): axolotl's kto dataset types become TRL's {prompt, completion, label} rows exactly, a row is
measured as TRL's KTOTrainer tokenizes it, KTO's keys mean what axolotl passes them as, and a real step on a tiny model
logs KTO's loss and the answers' log-probabilities, computed here from the untrained model's logits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from llmkit.config.schema import load_config
from llmkit.config.sections import DatasetSpec
from llmkit.data.preference import build_preference_datasets, epoch_pair_tokens, kto_builder
from llmkit.data.sources import DataError
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.run import train, training_arguments

CHATML_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
LLAMA3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"
LLAMA3_USER = LLAMA3_HEADER.format("user") + "{}<|eot_id|>" + LLAMA3_HEADER.format("assistant")


def _rows(tmp_path: Path, rows: list[dict], name: str = "kto.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _build(tokenizer, kind: str | None, row: dict) -> dict:
    return kto_builder(DatasetSpec(path="unused.jsonl", type=kind), tokenizer)(row)


def test_kto_types_build_axolotls_rows(tokenizer):
    """The strings axolotl's kto/chatml.py and kto/llama3.py write: the system text first where the row has one, the
    answer closed by its turn's end marker, the label kept."""
    system = "<|im_start|>system\nBe brief.<|im_end|>\n"
    for kind, field in [("argilla", "instruction"), ("intel", "question"), ("prompt_pairs", "prompt"),
                        ("ultra", "prompt")]:  # fmt: skip
        row = {field: "Hi", "completion": "Hello!", "label": True}
        assert _build(tokenizer, f"chatml.{kind}", row) == {
            "prompt": CHATML_USER.format("Hi"), "completion": "Hello!<|im_end|>", "label": True
        }  # fmt: skip
        with_system = _build(tokenizer, f"chatml.{kind}", {**row, "system": "Be brief.", "label": False})
        assert with_system == {"prompt": system + CHATML_USER.format("Hi"), "completion": "Hello!<|im_end|>",
                               "label": False}  # fmt: skip
    llama_system = LLAMA3_HEADER.format("system") + "Be brief.<|eot_id|>"
    assert _build(tokenizer, "llama3.argilla", {"instruction": "Hi", "system": "Be brief.", "completion": "Yo",
                                                "label": True}) == {  # fmt: skip
        "prompt": llama_system + LLAMA3_USER.format("Hi"), "completion": "Yo<|eot_id|>", "label": True
    }  # fmt: skip
    turns = [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"}]
    assert _build(tokenizer, "chatml.argilla_chat", {"completion": turns, "label": False}) == {
        "prompt": CHATML_USER.format("A?"), "completion": "a<|im_end|>", "label": False
    }  # fmt: skip
    # llama3's argilla_chat: every turn before the last under its own role, the last the answer
    chat = [{"role": "system", "content": "S"}, *turns, {"role": "user", "content": "B?"}, {"role": "assistant",
            "content": "b"}]  # fmt: skip
    history = "".join(LLAMA3_HEADER.format(turn["role"]) + turn["content"] + "<|eot_id|>" for turn in chat[:-1])
    assert _build(tokenizer, "llama3.argilla_chat", {"completion": chat, "label": True}) == {
        "prompt": history + LLAMA3_HEADER.format("assistant"), "completion": "b<|eot_id|>", "label": True
    }  # fmt: skip
    plain = {"prompt": "Name a colour.", "completion": " Red", "label": True, "id": 3}
    assert _build(tokenizer, None, plain) == {"prompt": "Name a colour.", "completion": " Red", "label": True}


def test_kto_keys_and_types(make_cfg):
    rows = [{"path": "k.jsonl", "type": "chatml.argilla"}]
    cfg = make_cfg(rows, rl="kto", micro_batch_size=2, rl_beta=0.3, kto_undesirable_weight=1.5)
    assert (cfg.preference_beta, cfg.kto_desirable_weight, cfg.kto_undesirable_weight) == (0.3, None, 1.5)
    unknown = r"datasets\[0\]\.type: chatml\.argilla_pairs is not a KTO dataset type \(axolotl's kto strategies\)"
    with pytest.raises(ValueError, match=unknown + r", which rl: kto needs; supported: chatml\.argilla, "):
        make_cfg([{"path": "k.jsonl", "type": "chatml.argilla_pairs"}], rl="kto", micro_batch_size=2)
    with pytest.raises(ValueError, match=r"test_datasets\[0\]\.type: chat_template\.default is a pair type"):
        make_cfg(
            rows, rl="kto", micro_batch_size=2, test_datasets=[{"path": "t.jsonl", "type": "chat_template.default"}]
        )
    with pytest.raises(ValueError, match=r"rpo_alpha, dpo_use_weighting: options of DPO's loss, not rl: kto's"):
        make_cfg(rows, rl="kto", micro_batch_size=2, rpo_alpha=1.0, dpo_use_weighting=True)
    with pytest.raises(ValueError, match=r"kto_desirable_weight: KTO's, read with rl: kto, not rl: dpo"):
        make_cfg([{"path": "p.jsonl", "type": "chatml.intel"}], rl="dpo", kto_desirable_weight=2.0)
    with pytest.raises(ValueError, match=r"kto_undesirable_weight: preference-training keys, but rl is not set"):
        make_cfg(kto_undesirable_weight=1.0)
    for key in ("kto_desirable_weight", "kto_undesirable_weight"):  # was pydantic's "greater than 0", no reason
        with pytest.raises(
            ValueError,
            match=rf"0 trains those rows at weight 1\.0 in axolotl \(it passes {key} or "
            r"1\.0\), not at 0; remove the key for 1\.0, or give a weight above 0",
        ):
            make_cfg(rows, rl="kto", micro_batch_size=2, **{key: 0})
    with pytest.raises(ValueError, match=r"Input should be greater than 0"):
        make_cfg(rows, rl="kto", micro_batch_size=2, kto_desirable_weight=-1)
    with pytest.raises(ValueError, match=r"micro_batch_size: rl: kto needs at least 2"):
        make_cfg(rows, rl="kto")
    with pytest.raises(
        ValueError,
        match=r"truncate does not work with rl: kto \(axolotl drops KTO rows longer than "
        r"sequence_len, and a row cut short rates an answer that is not the data's",
    ):
        make_cfg(rows, rl="kto", micro_batch_size=2, excess_length_strategy="truncate")


def test_a_type_mapping_is_axolotls_user_defined_kto_format(make_cfg, tokenizer, tmp_path):
    """axolotl's `type: {field_prompt, field_completion, field_label, prompt_format, completion_format}` under
    rl: kto (its kto user_defined.default) was refused as not implemented."""
    rows = [
        {"q": "Name a colour.", "sys": "Be brief.", "answer": "Red", "good": True},
        {"q": "Name a fruit.", "answer": "Nine", "good": "FALSE"},  # no system field: {system} is ""
    ]
    mapping = {
        "field_prompt": "q",
        "field_system": "sys",
        "field_completion": "answer",
        "field_label": "good",
        "prompt_format": "[{system}] Q: {prompt}\nA:",
        "completion_format": " {completion}.",
    }
    cfg = make_cfg([{"path": str(_rows(tmp_path, rows)), "type": mapping}], rl="kto", micro_batch_size=2)
    assert sorted(build_preference_datasets(cfg, tokenizer).train, key=lambda row: row["prompt"]) == [
        {"prompt": "[Be brief.] Q: Name a colour.\nA:", "completion": " Red.", "label": True},
        {"prompt": "[] Q: Name a fruit.\nA:", "completion": " Nine.", "label": False},
    ]
    # keys the DPO mapping shares ({}, field_prompt, prompt_format) are read as the KTO mapping under rl: kto
    plain = _rows(tmp_path, [{"prompt": "Hi.", "completion": " Hello", "label": True}] * 2, "plain.jsonl")
    cfg = make_cfg([{"path": str(plain), "type": {"prompt_format": "Q: {prompt}"}}], rl="kto", micro_batch_size=2)
    assert build_preference_datasets(cfg, tokenizer).train[0] == {"prompt": "Q: Hi.", "completion": " Hello",
                                                                  "label": True}  # fmt: skip
    bad = _rows(tmp_path, [rows[0], {**rows[0], "good": 2}], "bad.jsonl")
    cfg = make_cfg([{"path": str(bad), "type": mapping}], rl="kto", micro_batch_size=2)
    with pytest.raises(DataError, match=rf"{bad}: row 2: field 'good' must be true .* or 0\), got 2"):
        build_preference_datasets(cfg, tokenizer)

    mapping_said = r"datasets\[0\]\.type: "  # the rl check's errors; the mapping's own come from its field
    for keys, rl, said in [
        ({"field_chosen": "a"}, "kto", mapping_said + r"field_chosen: keys of axolotl's DPO user-defined mapping "
         r"\(rl: dpo\); the KTO mapping rl: kto reads takes field_prompt, field_system, prompt_format, "
         r"field_completion"),
        ({"field_label": "a"}, "dpo", mapping_said + r"field_label: keys of axolotl's KTO user-defined mapping "
         r"\(rl: kto\); the preference mapping rl: dpo reads"),
        ({"field_completion": "a"}, None, mapping_said + r"a \{field_prompt, field_completion, field_label, "
         r"\.\.\.\} mapping is axolotl's KTO format, read under rl: kto only"),
        ({"completion_format": "{chosen}"}, "kto", r"completion_format: unknown placeholder \{chosen\}; use "
         r"\{completion\}"),
        ({"field_lable": "a", "field_label": "b"}, "kto", r"field_lable: unknown key \(did you mean field_label\?\)"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=said):
            make_cfg([{"path": "k.jsonl", "type": keys}], rl=rl, micro_batch_size=2)


def test_kto_settings_reach_trl(tiny_config, tmp_path):
    path = _rows(tmp_path, [{"prompt": "q", "completion": "a", "label": True}])
    keys = {"rl": "kto", "rl_beta": 0.2, "kto_desirable_weight": 1.4, "micro_batch_size": 2, "sequence_len": 96}
    cfg = load_config(tiny_config(datasets=[{"path": str(path), "type": "chatml.prompt_pairs"}], **keys))
    args = training_arguments(cfg, cfg.optimizer.value)
    assert type(args).__name__ == "KTOConfig"
    assert (args.beta, args.desirable_weight, args.undesirable_weight, args.max_length) == (0.2, 1.4, 1.0, 96)
    assert (args.loss_type, args.train_sampling_strategy) == ("kto", "sequential")  # the KL pairs keep their order


def test_a_bad_kto_row_names_the_row_and_field(make_cfg, tokenizer, tmp_path):
    good = {"instruction": "a", "completion": "b", "label": True}
    for bad, said in [({**good, "label": 2}, r"field 'label' must be true .* or false \(or 1 or 0\), got 2"),
                      ({"instruction": "a", "completion": "b"}, "field 'label' is missing")]:  # fmt: skip
        path = _rows(tmp_path, [good, bad])
        cfg = make_cfg([{"path": str(path), "type": "chatml.argilla"}], rl="kto", micro_batch_size=2)
        with pytest.raises(DataError, match=rf"{path}: row 2: {said}"):
            build_preference_datasets(cfg, tokenizer)


def test_chatml_argilla_chat_refuses_any_conversation_but_a_question_and_its_answer(make_cfg, tokenizer, tmp_path):
    """axolotl's chatml.argilla_chat reads completion[0] and completion[1] whatever they are: a longer conversation
    would train its first answer under the label that rates the last, a system turn the user's question as the
    answer. Refused, naming the file, row and field, what the row holds, and the type that reads it."""
    user, assistant = {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}
    good = {"completion": [user, assistant], "label": True}
    for turns, got in [
        ([user, assistant, {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
         r"\[user, assistant, user, assistant\]"),
        ([{"role": "system", "content": "S"}, user, assistant], r"\[system, user, assistant\]"),
        ([user], r"\[user\]"),
        ("Q1", "a str"),
    ]:  # fmt: skip
        path = _rows(tmp_path, [good, {"completion": turns, "label": False}])
        cfg = make_cfg([{"path": str(path), "type": "chatml.argilla_chat"}], rl="kto", micro_batch_size=2)
        said = rf"{path}: row 2: field 'completion' must be exactly \[user, assistant\] messages .*, got {got}; "
        with pytest.raises(DataError, match=said + r"llama3\.argilla_chat reads a longer conversation"):
            build_preference_datasets(cfg, tokenizer)


def test_trls_conversational_kto_rows_render_as_ktotrainer_renders_them(make_cfg, tokenizer, tmp_path):
    """No type, rows in TRL's conversational form (trl-lib/kto-mix-14k: prompt and completion lists of messages):
    the strings TRL's own apply_chat_template makes of them, with the dataset's chat template (the tokenizer's, or
    the one chat_template names). They were refused (`prompt` must be a string); llama3.argilla_chat, which reads its
    question from `completion`, dropped their prompt: refused now, naming it."""
    from trl.data_utils import apply_chat_template

    from llmkit.data.chat import CHAT_TEMPLATES

    rows = [
        {"prompt": [{"role": "user", "content": "Name a colour."}],
         "completion": [{"role": "assistant", "content": "Red."}], "label": True},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}],
         "completion": [{"role": "assistant", "content": "Bye."}], "label": False},
        {"prompt": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "One,"}],
         "completion": [{"role": "assistant", "content": " two."}], "label": True},  # a prompt TRL continues
    ]  # fmt: skip
    path = _rows(tmp_path, rows)
    cfg = make_cfg([{"path": str(path), "type": None}], rl="kto", micro_batch_size=2)
    built = build_preference_datasets(cfg, tokenizer).train
    assert sorted(built, key=str) == sorted((apply_chat_template(row, tokenizer) for row in rows), key=str)
    llama3 = make_cfg([{"path": str(path), "type": None, "chat_template": "llama3"}], rl="kto", micro_batch_size=2)
    built = build_preference_datasets(llama3, tokenizer).train
    expected = [apply_chat_template(row, tokenizer, chat_template=CHAT_TEMPLATES["llama3"]) for row in rows]
    assert sorted(built, key=str) == sorted(expected, key=str)
    assert "<|start_header_id|>user<|end_header_id|>" in built[0]["prompt"]

    half = _rows(tmp_path, [rows[0], {**rows[0], "completion": "Red."}], "half.jsonl")
    cfg = make_cfg([{"path": str(half), "type": None}], rl="kto", micro_batch_size=2)
    said = rf"{half}: row 2: field 'completion' must be a non-empty list of .*got 'Red.'"
    with pytest.raises(DataError, match=said):
        build_preference_datasets(cfg, tokenizer)
    cfg = make_cfg([{"path": str(path), "type": "llama3.argilla_chat"}], rl="kto", micro_batch_size=2)
    with pytest.raises(DataError, match=rf"{path}: row 1: field 'prompt' holds messages, .*Name a colour.*, which "
                                        r"llama3\.argilla_chat does not read .* read with no type"):  # fmt: skip
        build_preference_datasets(cfg, tokenizer)
    # argilla's own rows (kto-mix-15k) repeat the question as a string prompt: read as they were
    turns = [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "a"}]
    assert _build(tokenizer, "llama3.argilla_chat", {"prompt": "A?", "completion": turns, "label": True}) == {
        "prompt": LLAMA3_USER.format("A?"), "completion": "a<|eot_id|>", "label": True
    }  # fmt: skip


def test_trls_conversational_kto_rows_render_their_tools_and_tool_calls_as_ktotrainer_does(
    make_cfg, tokenizer, tmp_path
):
    """TRL's KTOTrainer renders a conversational row with its `tools` column (a list, or its JSON text) and each
    message whole (a tool call, a tool's call id): the strings its apply_chat_template makes with those tools. The
    tools were dropped, and a tool-call turn without content was an error."""
    from trl.data_utils import apply_chat_template

    qwen25 = Path(__file__).parents[1] / "data" / "qwen2_5_instruct.jinja"  # Qwen2.5-Instruct's own, tools included
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                               "parameters": {"type": "object"}}}]  # fmt: skip
    prompt = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 18}', "tool_call_id": "call_1"},
    ]
    row = {"prompt": prompt, "completion": [{"role": "assistant", "content": "18 degrees."}], "label": True}
    path = _rows(tmp_path, [{**row, "tools": json.dumps(tools)}, {**row, "label": False}])
    keys = {"chat_template": "jinja", "chat_template_jinja": str(qwen25)}
    cfg = make_cfg([{"path": str(path), "type": None, **keys}], rl="kto", micro_batch_size=2)
    built = sorted(build_preference_datasets(cfg, tokenizer).train, key=lambda made: made["label"])
    template = qwen25.read_text()
    with_tools = apply_chat_template(row, tokenizer, tools=tools, chat_template=template)
    assert built == [{**apply_chat_template(row, tokenizer, chat_template=template), "label": False}, with_tools]
    assert '"description": "The weather in a city."' in with_tools["prompt"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in with_tools["prompt"]


def test_a_csv_kto_dataset_loads_its_labels_as_text(make_cfg, tokenizer, write_rows):
    """CSV columns are read as text, so a CSV's labels are "True"/"false" (or "1"/"0") strings: read as bools (any
    case); a JSON row's 1 and 0 are true and false, as TRL's KTOTrainer reads them (they were refused); "yes", 2 and
    "2" are still refused."""
    labels = ("True", "false", "TRUE", "False", "1", "0")
    rows = [{"prompt": "Q", "completion": "A", "label": label} for label in labels]
    path = write_rows(rows, "csv")
    data = build_preference_datasets(make_cfg([{"path": str(path)}], rl="kto", micro_batch_size=2), tokenizer)
    assert sorted(row["label"] for row in data.train) == [False, False, False, True, True, True]
    path = write_rows([{**rows[0], "label": label} for label in (1, 0, 1)], "jsonl")
    data = build_preference_datasets(make_cfg([{"path": str(path)}], rl="kto", micro_batch_size=2), tokenizer)
    assert sorted(row["label"] for row in data.train) == [False, True, True]
    for bad in ("2", "yes", 2, -1):
        path = write_rows([rows[0], {**rows[0], "label": bad}], "csv" if isinstance(bad, str) else "jsonl")
        cfg = make_cfg([{"path": str(path)}], rl="kto", micro_batch_size=2)
        with pytest.raises(DataError, match=rf"{path}: row 2: field 'label' must be true .* or 0\), got "):
            build_preference_datasets(cfg, tokenizer)


def test_one_sided_kto_rows_are_warned_about_once_with_their_counts(make_cfg, tokenizer, tmp_path, caplog):
    """All rows undesirable: KTO has nothing to weigh them against, and TRL's weight advice counts a desirable row
    that is not there; llmkit says so once, naming the counts."""
    path = _rows(tmp_path, [{"prompt": f"Q{i}", "completion": "A", "label": False} for i in range(3)])
    cfg = make_cfg([{"path": str(path)}], rl="kto", micro_batch_size=2)
    with caplog.at_level("WARNING", logger="llmkit.data.preference"):
        build_preference_datasets(cfg, tokenizer)
        build_preference_datasets(cfg, tokenizer)  # validate and training both build them
    said = [record.getMessage() for record in caplog.records if "rl: kto: all" in record.getMessage()]
    assert len(said) == 1 and "all 3 training rows are undesirable (label false) and none desirable" in said[0], said


def _trl_tokens(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """A row's prompt and completion token ids, as TRL's KTOTrainer prepares them (its own _prepare_dataset)."""
    from datasets import Dataset
    from trl import KTOTrainer

    trainer = SimpleNamespace(_tokenizer=tokenizer, calculate_KL=False, desirable_weight=1.0, undesirable_weight=1.0)
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, per_device_train_batch_size=2)
    prepared = KTOTrainer._prepare_dataset(trainer, Dataset.from_list([row]), tokenizer, args, "eval")
    return prepared[0]["prompt_ids"], prepared[0]["completion_ids"]


def test_kto_rows_are_measured_as_ktotrainer_tokenizes_them(make_cfg, tokenizer, tmp_path):
    """A row longer than sequence_len, as KTOTrainer tokenizes it (the tokenizer's own special tokens, EOS appended),
    is dropped and counted (TRL would cut its answer); one at sequence_len is kept."""
    row = {"prompt": "Name a colour.", "completion": " Red", "label": True}
    prompt, completion = _trl_tokens(tokenizer, row)
    trained = len(prompt) + len(completion)
    path = _rows(tmp_path, [row, {"prompt": "Hi.", "completion": " Yo", "label": False}])
    keys = {"rl": "kto", "micro_batch_size": 2}
    at_limit = make_cfg([{"path": str(path), "type": None}], sequence_len=trained, **keys)
    assert epoch_pair_tokens(at_limit, tokenizer).sequences == 2
    below = make_cfg([{"path": str(path), "type": None}], sequence_len=trained - 1, **keys)
    data = build_preference_datasets(below, tokenizer)
    assert (len(data.train), data.stats.datasets[0].dropped_overlong) == (1, 1)
    empty = _rows(tmp_path, [{**row, "completion": " "}, row], "empty.jsonl")  # nothing to rate: dropped, counted
    data = build_preference_datasets(make_cfg([{"path": str(empty), "type": None}], **keys), tokenizer)
    assert (len(data.train), data.stats.datasets[0].dropped_untrained) == (1, 1)


SUMS = [(f"What is {a} plus {a}?", str(2 * a), f"Maybe {a}") for a in range(3)]


def test_a_kto_config_validates_to_a_plan_and_preprocess_counts_its_rows(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from llmkit.cli import app

    rows = [{"question": q, "completion": answer, "label": label} for q, good, bad in SUMS
            for answer, label in ((good, True), (bad, False))]  # fmt: skip
    config = tiny_config(datasets=[{"path": str(_rows(tmp_path, rows)), "type": "chatml.intel"}], rl="kto",
                         max_steps=None, micro_batch_size=2)  # fmt: skip
    result = CliRunner().invoke(app, ["validate", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "KTO (TRL)," in said and "3 (6 KTO rows from 6 rows," in said, said
    result = CliRunner().invoke(app, ["preprocess", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "6 KTO rows (3 desirable, 3 undesirable) to train on, 0 held out for evaluation (rl: kto)" in result.output


@pytest.mark.slow
def test_a_kto_step_logs_ktos_loss_and_the_answers_log_probabilities(tiny_config, tiny_model_dir, tmp_path):
    """The first step's policy is its reference (LoRA starts as the base): every log-ratio and the KL estimate are 0,
    so KTO's loss is the mean of desirable_weight x (1 - sigmoid(0)) over desirable rows and undesirable_weight x
    (1 - sigmoid(0)) over the others; the logged log-probabilities of the answers are the untrained model's, each
    answer's summed over its tokens (EOS included) after its prompt, tokenized as KTOTrainer does."""
    rows = [{"question": q, "completion": answer, "label": label} for q, good, bad in SUMS
            for answer, label in ((good, True), (bad, False))]  # fmt: skip
    rows.append({"question": "What is 9 plus 9?", "completion": "18", "label": True})  # 4 desirable, 3 not
    desirable, undesirable = 0.8, 1.3
    config = tiny_config(
        datasets=[{"path": str(_rows(tmp_path, rows)), "type": "chatml.intel"}], rl="kto", rl_beta=0.5,
        kto_desirable_weight=desirable, kto_undesirable_weight=undesirable, micro_batch_size=len(rows), max_steps=2,
        sequence_len=96,
    )  # fmt: skip
    cfg = load_config(config)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    logps: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        for row in build_preference_datasets(cfg, tokenizer).train:
            prompt, completion = _trl_tokens(tokenizer, row)
            ids = torch.tensor([prompt + completion])
            token_logps = F.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
            logps[row["label"]].append(token_logps[len(prompt) - 1 :].sum().item())
    chosen, rejected = len(logps[True]), len(logps[False])
    expected = (desirable * chosen * 0.5 + undesirable * rejected * 0.5) / (chosen + rejected)

    out = train(cfg)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 2 and all(math.isfinite(entry["loss"]) for entry in logged)
    first = logged[0]
    assert first["loss"] == pytest.approx(expected, rel=1e-3), (first, expected)
    assert first["logps/chosen"] == pytest.approx(sum(logps[True]) / chosen, rel=1e-3), first
    assert first["logps/rejected"] == pytest.approx(sum(logps[False]) / rejected, rel=1e-3), first
    assert first["kl"] == 0 and first["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert logged[1]["loss"] != pytest.approx(expected, rel=1e-4), "the first step changed nothing"
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert not (out / "ref").exists(), "the reference copy of the adapter must not be published"
    assert load_config(out / "config.resolved.yml").rl.value == "kto"


@pytest.mark.slow
def test_a_kto_step_trains_the_user_defined_mapping_and_its_labels_of_1_and_0(tiny_config, tmp_path):
    """A mapping's rows with labels 1 and 0 reach KTOTrainer as desirable and undesirable: the first step's loss
    (every log-ratio and the KL estimate 0, the policy its reference) is the weighted mean of 1 - sigmoid(0) over
    them, which a label read otherwise (all desirable, or counted as numbers) would not give."""
    rows = [{"q": q, "a": answer, "ok": label} for q, good, bad in SUMS for answer, label in ((good, 1), (bad, 0))]
    rows.append({"q": "What is 9 plus 9?", "a": "18", "ok": 1})  # 4 desirable, 3 not
    mapping = {"field_prompt": "q", "field_completion": "a", "field_label": "ok", "prompt_format": "Q: {prompt}\nA:",
               "completion_format": " {completion}"}  # fmt: skip
    desirable, undesirable = 0.8, 1.3
    config = tiny_config(
        datasets=[{"path": str(_rows(tmp_path, rows)), "type": mapping}], rl="kto", kto_desirable_weight=desirable,
        kto_undesirable_weight=undesirable, micro_batch_size=len(rows), max_steps=1, sequence_len=96,
    )  # fmt: skip
    out = train(load_config(config))
    logged = [
        entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in entry
    ]
    assert logged[0]["loss"] == pytest.approx((desirable * 4 * 0.5 + undesirable * 3 * 0.5) / 7, rel=1e-3), logged
    assert load_config(out / "config.resolved.yml").datasets[0].type.field_label == "ok"
