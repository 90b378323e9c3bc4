"""The dataset types real axolotl configs use, beyond test_data.py's basics, each on a tiny file the test writes and
the embedded model's real tokenizer: the exact prompt axolotl writes for the name, exactly the response tokens (and
EOS) trained, and errors that name the file, row and field, or the config key.

Types: `<format>:<style>` (alpaca:chat, ...), `<module>.load_<variant>` (alpaca_chat.load_qa, ...), the
user-defined `type:` mapping, chat_template with its keys and named templates, and a user's own Python module.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config.schema import ConfigError, ConfigWarning, DatasetType, load_config
from llmkit.data.chat import CHAT_TEMPLATES
from llmkit.data.pipeline import DataError, build_datasets
from llmkit.data.rows import IGNORE_INDEX

ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
CONCISE = (
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that "
    "appropriately and concisely completes the request.\n\n"
)
ADD = {"instruction": "Add.", "input": "2 and 3", "output": "5"}
COLOUR = {"instruction": "Name a colour.", "output": "Blue."}

# (type, extra dataset keys, row, the prompt axolotl writes, the trained response before EOS)
INSTRUCTION_CASES = [
    (
        "alpaca:instruct",
        {},
        ADD,
        f"{ALPACA_INPUT}\n\n### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n",
        "5",
    ),
    ("alpaca:chat", {}, ADD, f"SYSTEM: {ALPACA_INPUT}\nUSER: Add.\n2 and 3\nASSISTANT:", "5"),
    ("alpaca:chat", {}, COLOUR, f"SYSTEM: {ALPACA}\nUSER: Name a colour.\nASSISTANT:", "Blue."),
    (
        "alpaca:chatml",
        {},
        COLOUR,
        f"<|im_start|>system\n{ALPACA}<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        "Blue.",
    ),
    (
        "alpaca:chatml",
        {},
        ADD,
        f"<|im_start|>system\n{ALPACA_INPUT}<|im_end|>\n<|im_start|>user\nAdd.\n2 and 3<|im_end|>\n"
        "<|im_start|>assistant\n",
        "5",
    ),
    (
        "alpaca:phi",
        {},
        COLOUR,
        f"<|system|>\n{ALPACA}<|end|>\n<|user|>\nName a colour.<|end|>\n<|assistant|>\n",
        "Blue.",
    ),
    ("alpaca:phi", {}, ADD, f"<|system|>\n{ALPACA_INPUT}<|end|>\n<|user|>\nAdd.<|end|>2 and 3<|assistant|>", "5"),
    ("alpaca_instruct", {}, COLOUR, f"{ALPACA}\n\n### Instruction:\nName a colour.\n\n### Response:\n", "Blue."),
    ("alpaca_chat", {}, COLOUR, f"SYSTEM: {ALPACA}\nUSER: Name a colour.\nASSISTANT:", "Blue."),
    (
        "alpaca_chat",
        {"conversation": "chatml"},
        COLOUR,
        f"<|im_start|>system\n{ALPACA}<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
        "Blue.",
    ),
    (
        "alpaca_chat.load_qa",
        {},
        {"question": "What is 2+2?", "answer": "4"},
        f"SYSTEM: {CONCISE}\nUSER: What is 2+2?\nASSISTANT:",
        "4",
    ),
    ("alpaca_chat.load_concise", {}, COLOUR, f"SYSTEM: {CONCISE}\nUSER: Name a colour.\nASSISTANT:", "Blue."),
    (
        "alpaca_chat.load_camel_ai",
        {},
        {"message_1": "Define inertia.", "message_2": "Resistance to change in motion."},
        f"SYSTEM: {CONCISE}\nUSER: Define inertia.\nASSISTANT:",
        "Resistance to change in motion.",
    ),
    ("alpaca_chat.load_no_prompt", {}, ADD, "USER: Add.\n2 and 3\nASSISTANT:", "5"),
    (
        "alpaca_w_system",
        {},
        {**COLOUR, "system": "Be brief."},
        "SYSTEM: Be brief.\nUSER: Name a colour.\nASSISTANT:",
        "Blue.",
    ),
    ("alpaca_w_system.load_chat", {}, COLOUR, "USER: Name a colour.\nASSISTANT:", "Blue."),  # no system text
    (
        "alpaca_w_system.load_instruct",
        {},
        {**ADD, "system": "Be brief."},
        "Be brief.\n\n### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n",
        "5",
    ),
    (
        "alpaca_w_system.load_open_orca",
        {},
        {"system_prompt": "Be brief.", "question": "Sky colour?", "response": "Blue."},
        "### System:\nBe brief.\n### Human:\nSky colour?\n### Assistant:\n",
        "Blue.",
    ),
    (
        "alpaca_w_system.load_open_orca_chatml",
        {},
        {"system_prompt": "Be brief.", "question": "Sky colour?", "response": "Blue."},
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n",
        "Blue.",
    ),
    (
        "oasst:chat",
        {},
        {"INSTRUCTION": "Say yes.", "RESPONSE": "Yes."},
        f"SYSTEM: {ALPACA}\nUSER: Say yes.\nASSISTANT:",
        "Yes.",
    ),
    (
        "gpteacher:chat",
        {},
        {"instruction": "Echo.", "input": "ping", "response": "ping"},
        f"SYSTEM: {ALPACA_INPUT}\nUSER: Echo.\nping\nASSISTANT:",
        "ping",
    ),
    (
        "jeopardy",
        {},
        {"question": "Largest planet", "category": "SPACE", "answer": "Jupiter"},
        f"{ALPACA_INPUT}\n\n### Instruction:\nLargest planet\n\n### Input:\nSPACE\n\n### Response:\n",
        "what is Jupiter",
    ),
    (
        "summarizetldr",
        {},
        {"article": "Rain fell all day.", "summary": "Rainy day."},
        "USER: Summarize the following article as a TL;DR.\nRain fell all day.\nASSISTANT:",
        "Rainy day.",
    ),
    (
        "explainchoice",
        {},
        {"question": "2+2?", "choices": ["3", "4"], "explanation": "4, since 2+2=4."},
        "Choose the answer that best answers the question. Explain your reasoning.\n\n\n### Instruction:\n2+2?\n\n"
        '### Input:\n- "3"\n- "4"\n\n### Response:\n',
        "4, since 2+2=4.",
    ),
    (
        "concisechoice:chatml",  # concisechoice keeps its own layout whatever the style
        {},
        {"question": "2+2?", "choices": ["3", "4"], "solution": "4"},
        'Choose the answer that best answers the question. Be concise in your response.\n\nUSER: 2+2?\n- "3"\n- "4"\n'
        "ASSISTANT:",
        "4",
    ),
]


@pytest.mark.parametrize(
    ("kind", "keys", "row", "prompt", "response"),
    INSTRUCTION_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(INSTRUCTION_CASES)],
)
def test_instruction_types_write_axolotls_prompt_and_train_only_the_response(
    write_rows, make_cfg, tokenizer, kind, keys, row, prompt, response
):
    cfg = make_cfg([{"path": str(write_rows([row], "jsonl")), "type": kind, **keys}])
    (built,) = build_datasets(cfg, tokenizer).train
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(built["input_ids"]) == prompt + response + tokenizer.eos_token
    assert built["input_ids"] == prompt_ids + response_ids
    assert built["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids


# (type, a good row, the same row without a field the type needs, that field)
MISSING_FIELD = [
    ("alpaca:chat", COLOUR, {"instruction": "Name a colour."}, "output"),
    ("alpaca_chat.load_qa", {"question": "Q?", "answer": "A"}, {"question": "Q?"}, "answer"),
    ("alpaca_chat.load_camel_ai", {"message_1": "Q?", "message_2": "A"}, {"message_2": "A"}, "message_1"),
    ("alpaca_w_system.load_open_orca", {"question": "Q?", "response": "A"}, {"response": "A"}, "question"),
    ("jeopardy", {"question": "Q", "category": "C", "answer": "A"}, {"question": "Q", "answer": "A"}, "category"),
    (
        "explainchoice",
        {"question": "Q", "choices": ["a"], "solution": "a"},
        {"question": "Q", "solution": "a"},
        "choices",
    ),
    ({"field_instruction": "q", "field_output": "a"}, {"q": "Q", "a": "A"}, {"a": "A"}, "q"),
]


@pytest.mark.parametrize(("kind", "good", "bad", "field"), MISSING_FIELD, ids=[str(c[0]) for c in MISSING_FIELD])
def test_a_row_missing_a_field_names_file_row_and_field(write_rows, make_cfg, tokenizer, kind, good, bad, field):
    path = write_rows([good, bad], "jsonl")
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: field '{field}' ")):
        build_datasets(make_cfg([{"path": str(path), "type": kind}]), tokenizer)


def _pairs(rows) -> list[tuple[list[int], list[int]]]:
    return sorted((row["input_ids"], row["labels"]) for row in rows)


def _expected(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


CUSTOM = {
    "system_prompt": "You are terse.",
    "field_system": "sys",
    "field_instruction": "q",
    "field_input": "ctx",
    "field_output": "a",
    "format": "[INST] {instruction}\n{input} [/INST] ",
    "no_input_format": "[INST] {instruction} [/INST] ",
    "system_format": "<<SYS>>{system}<</SYS>>\n",
}


def test_a_user_defined_mapping_formats_each_row_as_axolotl(write_rows, make_cfg, tokenizer):
    """Input or not (a missing input is a null cell); the mapping's system_prompt where the data has no system."""
    rows = [{"q": "Sum?", "ctx": "1 and 2", "a": "3"}, {"q": "Capital of France?", "a": "Paris"}]
    built = build_datasets(make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": CUSTOM}]), tokenizer).train
    assert _pairs(built) == sorted(
        [
            _expected(tokenizer, "<<SYS>>You are terse.<</SYS>>\n[INST] Sum?\n1 and 2 [/INST] ", "3"),
            _expected(tokenizer, "<<SYS>>You are terse.<</SYS>>\n[INST] Capital of France? [/INST] ", "Paris"),
        ]
    )


def test_a_rows_own_system_field_wins_even_empty_or_missing_from_the_row(write_rows, make_cfg, tokenizer):
    """axolotl's `prompt[field_system] if field_system in prompt else system_prompt`: once the data has the field,
    a row's "" (or a JSON row without the key, which datasets reads as null) writes no system line."""
    rows = [{"q": "A?", "a": "a", "sys": "One word."}, {"q": "B?", "a": "b", "sys": ""}, {"q": "C?", "a": "c"}]
    built = build_datasets(make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": CUSTOM}]), tokenizer).train
    assert _pairs(built) == sorted(
        [
            _expected(tokenizer, "<<SYS>>One word.<</SYS>>\n[INST] A? [/INST] ", "a"),
            _expected(tokenizer, "[INST] B? [/INST] ", "b"),
            _expected(tokenizer, "[INST] C? [/INST] ", "c"),
        ]
    )


def test_a_mapping_takes_axolotls_defaults_for_what_it_leaves_out(write_rows, make_cfg, tokenizer):
    """format "{instruction} {input} ", no_input_format "{instruction} ", system_format "{system}", field_system
    "system" (even when the mapping names a format with an input only)."""
    rows = [{"q": "Hi", "a": "Yo", "system": "S: "}, {"q": "Add", "input": "1 1", "a": "2"}]
    cfg = make_cfg([{"path": str(write_rows(rows, "jsonl")), "type": {"field_instruction": "q", "field_output": "a"}}])
    assert _pairs(build_datasets(cfg, tokenizer).train) == sorted(
        [_expected(tokenizer, "S: Hi ", "Yo"), _expected(tokenizer, "Add 1 1 ", "2")]
    )


def _load(tmp_path: Path, datasets: list, **keys):
    """load_config on a YAML file written to tmp_path (so the config knows its folder)."""
    path = tmp_path / "run.yml"
    raw = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "learning_rate": 1e-4, "datasets": datasets, **keys}
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "alpaca_chat:load_qa",
            "datasets[1].type: unknown dataset type 'alpaca_chat:load_qa' (did you mean alpaca_chat.load_qa?)",
        ),
        (
            "alpaca_chat.load_qaa",
            "datasets[1].type: unknown dataset type 'alpaca_chat.load_qaa' (did you mean alpaca_chat.load_qa?)",
        ),
        ("alpacca:chat", "datasets[1].type: unknown dataset type 'alpacca:chat' (did you mean alpaca:chat?)"),
        (
            "alpaca:chatlm",
            "datasets[1].type: unknown dataset type 'alpaca:chatlm' (styles: instruct, chat, chatml, phi)",
        ),
        ("completion:chat", "(completion takes no :style)"),
        ("chatml.intel", "'chatml.intel' (a preference-data type: it needs a top-level rl, e.g. rl: dpo)"),
        # axolotl's own strategies that are not here: said as such, not as a typo of the user's
        ("metharme", "datasets[1].type: dataset type 'metharme' is axolotl's metharme prompt strategy: not"),
        ("context_qa.load_404", "'context_qa.load_404' is axolotl's context_qa prompt strategy: not implemented here"),
        ("reflection", "'reflection' is axolotl's reflection prompt strategy: not implemented here"),
        (
            {"format": "{instruction} {question}"},
            "datasets[1].type: format: unknown placeholder {question}; use {input}, {instruction}",
        ),
        (
            {"field_instructions": "q"},
            "datasets[1].type: field_instructions: unknown key (did you mean field_instruction?)",
        ),
    ],
)
def test_a_wrong_type_is_a_config_error_naming_the_key_and_the_supported_names(tmp_path, kind, expected):
    datasets = [{"path": "a.jsonl", "type": "alpaca"}, {"path": "b.jsonl", "type": kind}]
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, datasets)
    assert expected in str(caught.value)
    if isinstance(kind, str):
        assert (
            "supported: alpaca[:instruct|chat|chatml|phi], alpaca_instruct, alpaca_chat, alpaca_chat.load_qa"
            in str(caught.value)
        )


def test_a_preference_type_is_left_to_rl(tmp_path):
    cfg = _load(
        tmp_path, [{"path": "pairs.jsonl", "type": "chatml.intel"}], rl="dpo", adapter="lora", lora_target_linear=True
    )
    assert cfg.datasets[0].type == "chatml.intel"


def test_alpaca_chat_conversation_must_be_a_style(tmp_path):
    with pytest.raises(
        ConfigError, match=r"conversation: alpaca_chat takes a prompt style \(instruct, chat, chatml, phi\)"
    ):
        _load(tmp_path, [{"path": "a.jsonl", "type": "alpaca_chat", "conversation": "vicuna"}])


@pytest.mark.parametrize("name", ["sharegpt", "sharegpt:chat"])  # 2023 axolotl's spelling: its only style
@pytest.mark.parametrize(
    ("keys", "top", "template"),
    [
        ({}, {}, "tokenizer_default"),
        ({}, {"chat_template": "chatml"}, "chatml"),
        ({"conversation": "chatml"}, {}, None),
    ],
)
def test_sharegpt_without_conversation_says_which_template_renders_it(tmp_path, keys, top, template, name):
    """Older axolotl rendered it with fastchat's vicuna_v1.1, current axolotl refuses the type: the template used
    here is said, not left to be guessed. `sharegpt:chat` was refused (sharegpt takes no :style)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        cfg = _load(tmp_path, [{"path": "a.jsonl", "type": name, **keys}], **top)
    assert cfg.datasets[0].type is DatasetType.sharegpt
    said = [note for note in cfg.notices if "sharegpt" in note]
    if template is None:
        assert not said and not caught
        return
    expected = f"datasets[0].type: sharegpt without conversation: rendered with chat_template {template}"
    assert len(said) == 1 and said[0].startswith(expected) and "vicuna_v1.1" in said[0]
    assert any(expected in str(warning.message) for warning in caught)


# --- chat_template ---------------------------------------------------------------------------------------------

SHAREGPT = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Hi there"},
    {"from": "gpt", "value": "Hello!"},
    {"from": "human", "value": "Bye"},
    {"from": "gpt", "value": "Goodbye."},
]
CHATML_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!"
    "<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye.<|im_end|>\n"
)
MAPPED = {
    "type": "chat_template",
    "chat_template": "chatml",
    "field_messages": "conversations",
    "message_property_mappings": {"role": "from", "content": "value"},
    "roles": {"user": ["human"], "assistant": ["gpt"], "system": ["system"]},
}


def trained_runs(tokenizer, row) -> list[str]:
    """The trained stretches of a built row, decoded."""
    runs, current = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs, current = [*runs, tokenizer.decode(current)], []
    return runs + ([tokenizer.decode(current)] if current else [])


def _chat(write_rows, make_cfg, tokenizer, rows, **keys):
    cfg = make_cfg([{"path": str(write_rows(rows, "jsonl")), **MAPPED, **keys}])
    return list(build_datasets(cfg, tokenizer).train)


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"message_property_mappings": None, "message_field_role": "from", "message_field_content": "value"},
        {"type": "sharegpt", "chat_template": None, "conversation": "chatml"},
    ],
    ids=["message_property_mappings", "message_field_role/content", "sharegpt-conversation"],
)
def test_chat_keys_map_fields_and_roles_and_train_contents_with_their_eos(write_rows, make_cfg, tokenizer, keys):
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT}], **keys)
    assert tokenizer.decode(row["input_ids"]) == CHATML_TEXT
    assert row["input_ids"] == tokenizer(CHATML_TEXT, add_special_tokens=False)["input_ids"]
    assert trained_runs(tokenizer, row) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]


@pytest.mark.parametrize(
    ("keys", "runs"),
    [
        ({"train_on_eos": "none"}, ["Hello!", "Goodbye."]),
        ({"train_on_eos": "last"}, ["Hello!", "Goodbye.<|im_end|>"]),
        (
            {"train_on_eos": "all"},
            ["<|im_end|>", "<|im_end|>", "Hello!<|im_end|>", "<|im_end|>", "Goodbye.<|im_end|>"],
        ),
        (
            {"roles_to_train": ["human", "assistant"]},
            ["Hi there<|im_end|>", "Hello!<|im_end|>", "Bye<|im_end|>", "Goodbye.<|im_end|>"],
        ),
        ({"drop_system_message": True}, ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]),
    ],
)
def test_roles_to_train_and_train_on_eos_choose_what_is_trained(write_rows, make_cfg, tokenizer, keys, runs):
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT}], **keys)
    assert trained_runs(tokenizer, row) == runs
    expected = (
        CHATML_TEXT.removeprefix("<|im_start|>system\nBe brief.<|im_end|>\n")
        if "drop_system_message" in keys
        else CHATML_TEXT
    )
    assert tokenizer.decode(row["input_ids"]) == expected


def test_train_on_eos_true_or_false_is_refused_saying_which_name_to_write(tmp_path):
    """Two real configs wrote `train_on_eos: true`; axolotl's schema takes all, turn, last or null, not a bool. It was
    refused listing the names only; now the error says which one true (turn, axolotl's default) or false means."""
    dataset = {"path": "a.jsonl", "type": "chat_template"}
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, [{**dataset, "train_on_eos": True}, {**dataset, "train_on_eos": False, "train_on_eot": True}])
    names = "Input should be 'turn', 'all', 'last' or 'none'"
    turn = "write turn (after each trained turn, axolotl's default for chat_template)"
    assert info.value.problems == [
        f"datasets[0].train_on_eos: {names}, not true: {turn} (got True)",
        f"datasets[1].train_on_eos: {names}, not false: write none (got False)",
        f"datasets[1].train_on_eot: {names}, not true: {turn} (got True)",
    ]


def test_sharegpt_roles_input_and_output_are_more_speakers_masked_or_trained(write_rows, make_cfg, tokenizer):
    """axolotl's sharegpt `roles: {input: [...], output: [...]}` names speakers beyond human/gpt, each rendered under
    its own name: input ones masked, output ones trained. They were read as chat_template's template roles, so the
    rows rendered human/gpt under the role headers `input`/`output` (or were refused) and trained the wrong turns."""
    turns = [
        {"from": "human", "value": "Hi there"},
        {"from": "narrator", "value": "A door opens."},
        {"from": "gpt", "value": "Hello!"},
        {"from": "char", "value": "Who is it?"},
    ]
    roles = {"input": ["human", "narrator"], "output": ["gpt", "char"]}
    keys = {"type": "sharegpt", "conversation": "chatml", "roles": roles, "message_property_mappings": None}
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": turns}], **keys)
    assert tokenizer.decode(row["input_ids"]) == (
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>narrator\nA door opens.<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>char\nWho is it?<|im_end|>\n"
    )
    assert trained_runs(tokenizer, row) == ["Hello!<|im_end|>", "Who is it?<|im_end|>"]


def test_chat_template_names_are_checked_without_the_tokenizer(tmp_path):
    """`llmkit validate` checked template names only with the tokenizer at hand (the embedded model, a folder): on a
    hub model a misspelt name passed, and training stopped on it after the download."""
    from llmkit.data.tokenizer import tokenizer_problems

    (tmp_path / "a.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    datasets = [
        {"path": "a.jsonl", "type": "chat_template"},  # the config's template: reported once, as the config's
        {"path": "a.jsonl", "type": "chat_template", "chat_template": "qwen_25"},
        {"path": "a.jsonl", "type": "chat_template", "chat_template": "tokenizer_default"},  # needs the tokenizer
        {"path": "a.jsonl", "type": "chat_template", "chat_template": "qwen3"},  # the model's own: so does this
        {"path": "a.jsonl", "type": "sharegpt", "conversation": "vicuna"},
        {"path": "a.jsonl", "type": "chat_template", "chat_template": "jinja", "chat_template_jinja": "no.jinja"},
    ]
    cfg = _load(tmp_path, datasets, base_model="Qwen/Qwen2.5-0.5B", chat_template="chatlm")
    # the models' own templates in one parenthesis: it was attached to llama3_2_vision alone
    choices = "chatml, llama3, phi_3, gemma, qwen_25, alpaca, metharme, falcon_h1, the base model's own where it is "
    choices += "that model's (qwen3, gemma3, gemma3n, "
    choices += "gemma4, gemma4_unified, llama4, cohere, aya, deepseek_v2, exaone, mistral_v1, mistral_v2v3, "
    choices += "mistral_v3_tekken, "
    choices += "pixtral, mistral_v7_tekken, qwen2_vl, llama3_2_vision),"
    choices += " tokenizer_default, tokenizer_default_fallback_<name>, jinja, a Jinja string (axolotl names more"
    choices += " templates than this project renders: tokenizer_default renders the model's own, which a"
    choices += (
        " model-named template such as phi_35 or deepseek_v3 is written after; chat_template_jinja takes any other)"
    )
    source = tmp_path / "a.jsonl"
    assert tokenizer_problems(cfg, None, None) == [
        f"chat_template: 'chatlm' is not one of {choices}",
        f"datasets[4].conversation: 'vicuna' is not one of {choices} ({source})",
        f"datasets[5].chat_template_jinja: 'no.jinja' is no file here, and not a Jinja template ({source})",
    ]
    assert tokenizer_problems(cfg.model_copy(update={"chat_template": "chatml"}), None, None) == [
        f"datasets[4].conversation: 'vicuna' is not one of {choices} ({source})",
        f"datasets[5].chat_template_jinja: 'no.jinja' is no file here, and not a Jinja template ({source})",
    ]


# Turns as Gemma's template ends them: an end-of-turn token of its own, then the EOS (SmolLM2's <|endoftext|> and
# <|im_end|> here: special tokens, so no text merges with them).
TURN_END_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>{{ eos_token }}\n"
    "{% endfor %}"
)


@pytest.mark.parametrize(
    ("top", "keys", "runs"),
    [
        ({}, {}, ["Hello!", "<|im_end|>", "Goodbye.", "<|im_end|>"]),  # no eot_tokens: only the EOS ends a turn
        ({"eot_tokens": ["<|endoftext|>"]}, {}, ["Hello!<|endoftext|><|im_end|>", "Goodbye.<|endoftext|><|im_end|>"]),
        (
            {"eot_tokens": "<|endoftext|>"},
            {"train_on_eos": "none"},  # train_on_eot follows it unless set
            ["Hello!", "Goodbye."],
        ),
        (
            {"eot_tokens": ["<|endoftext|>"]},
            {"train_on_eot": "turn", "train_on_eos": "none"},
            ["Hello!<|endoftext|>", "Goodbye.<|endoftext|>"],
        ),
        (
            {"eot_tokens": ["<|endoftext|>"]},
            {"train_on_eot": "last", "train_on_eos": "none"},
            ["Hello!", "Goodbye.<|endoftext|>"],
        ),
    ],
)
def test_eot_tokens_and_train_on_eot_choose_the_turn_ends_trained(write_rows, make_cfg, tokenizer, top, keys, runs):
    path = write_rows([{"conversations": SHAREGPT}], "jsonl")
    dataset = {**MAPPED, "path": str(path), "chat_template": "jinja", "chat_template_jinja": TURN_END_TEMPLATE, **keys}
    (row,) = build_datasets(make_cfg([dataset], **top), tokenizer).train
    assert trained_runs(tokenizer, row) == runs


def test_train_on_eot_last_is_the_last_turn_looked_at_where_the_eos_trains_after_every_turn(
    write_rows, make_cfg, tokenizer
):
    """train_on_eos: all makes axolotl look at every turn, untrained ones too, and train_on_eot: last then trains the
    end-of-turn token of the last turn it looked at: here the untrained "Bye" that ends the row. It trained the last
    trained turn's ("Hello!"'s)."""
    path = write_rows([{"conversations": SHAREGPT[:4]}], "jsonl")
    keys = {"chat_template": "jinja", "chat_template_jinja": TURN_END_TEMPLATE}
    dataset = {**MAPPED, "path": str(path), **keys, "train_on_eot": "last", "train_on_eos": "all"}
    (row,) = build_datasets(make_cfg([dataset], eot_tokens=["<|endoftext|>"]), tokenizer).train
    # each turn's EOS; the last turn's end-of-turn token before its EOS
    runs = ["<|im_end|>", "<|im_end|>", "Hello!", "<|im_end|>", "<|endoftext|><|im_end|>"]
    assert trained_runs(tokenizer, row) == runs


def test_train_on_eot_and_train_on_eos_that_disagree_on_the_eos_are_refused(
    write_rows, make_cfg, tokenizer, tiny_config, tmp_path
):
    """As axolotl's ChatTemplateStrategy: the EOS is one of eot_tokens (their default), so the two would train it two
    ways. Refused before a row is read, by preprocessing and by `llmkit validate`."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    path = write_rows([{"conversations": SHAREGPT}], "jsonl")
    conflict = {**MAPPED, "path": str(path), "train_on_eos": "turn", "train_on_eot": "all"}
    expected = "train_on_eot: all and train_on_eos: turn disagree on the EOS '<|im_end|>', eot_tokens' default"
    with pytest.raises(DataError, match=re.escape(f"datasets[0].{expected}")):
        build_datasets(make_cfg([conflict]), tokenizer)
    named = "disagree on the EOS '<|im_end|>', in eot_tokens: set them alike, or leave the EOS out of eot_tokens"
    with pytest.raises(DataError, match=re.escape(named)):  # the message says where the EOS comes from
        build_datasets(make_cfg([conflict], eot_tokens=["<|im_end|>"]), tokenizer)
    other_end = {"eot_tokens": ["<|endoftext|>"]}  # the EOS is no end-of-turn token: each follows its own key
    assert len(build_datasets(make_cfg([conflict], **other_end), tokenizer).train) == 1
    result = CliRunner().invoke(app, ["validate", str(tiny_config(datasets=[conflict]))])
    assert result.exit_code == 1 and expected in " ".join(result.output.split())


def test_train_on_inputs_trains_every_content_but_never_the_role_headers(write_rows, make_cfg, tokenizer):
    cfg = make_cfg([{"path": str(write_rows([{"conversations": SHAREGPT}], "jsonl")), **MAPPED}], train_on_inputs=True)
    (row,) = build_datasets(cfg, tokenizer).train
    contents = [f"{m['value']}<|im_end|>" for m in SHAREGPT]
    assert trained_runs(tokenizer, row) == contents
    assert row["labels"][:3] == [IGNORE_INDEX] * 3  # "<|im_start|>system\n"


def test_field_system_adds_the_rows_system_turn_and_message_training_overrides_roles(write_rows, make_cfg, tokenizer):
    talk = [{"from": "human", "value": "Hi there", "train": True}, {"from": "gpt", "value": "Hello!", "train": False}]
    rows = [{"conversations": talk, "persona": "Be brief."}]
    (row,) = _chat(write_rows, make_cfg, tokenizer, rows, field_system="persona", message_field_training="train")
    assert tokenizer.decode(row["input_ids"]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!"
        "<|im_end|>\n"
    )
    assert trained_runs(tokenizer, row) == ["Hi there<|im_end|>"]


# axolotl's docs' example turn: characters 0..8 ("I'm doing"), 9..18 (" very well") and 19..30 (", thank you!"), both
# ends counted; SmolLM2 splits it I|'m| doing| very| well|,| thank| you|!
DETAILED = "I'm doing very well, thank you!"


def _detailed(detail: list[dict], **flags) -> list[dict]:
    return [
        {"from": "human", "value": "How are you?"},
        {"from": "gpt", "value": DETAILED, "detail": detail, **flags},
    ]


def _trained_tokens(tokenizer, row) -> list[str]:
    trained = [token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    return tokenizer.convert_ids_to_tokens(trained)


def test_message_field_training_detail_trains_the_tokens_axolotl_picks_for_each_span(
    write_rows, make_cfg, tokenizer, caplog
):
    """A turn's training_detail trains only the content tokens axolotl's get_offsets_for_train_detail picks: the
    content tokenized alone, a span widened to the tokens it partly covers (not to one it touches by its first or last
    character alone), then the end-of-turn token as the turn trains. The key was ignored: the whole turn trained."""
    keys = {"message_field_training_detail": "detail", "message_field_training": "train"}
    docs_example = [
        {"begin_offset": 0, "end_offset": 8, "train": False},
        {"begin_offset": 9, "end_offset": 18, "train": True},
        {"begin_offset": 19, "end_offset": 30, "train": False},
    ]
    rows = [
        {"conversations": _detailed(docs_example)},
        # 10..16: inside " very" (9..13) and " well" (14..18): both, widened; 27..27: the "y" of " you" alone
        {"conversations": _detailed([{"begin_offset": 10, "end_offset": 16, "train": True}, *docs_example[2:]])},
        {"conversations": _detailed([{"begin_offset": 27, "end_offset": 27, "train": True}])},
        # 13..14: " very"'s last and " well"'s first character: axolotl's widening keeps neither (it warns)
        {"conversations": _detailed([{"begin_offset": 13, "end_offset": 14, "train": True}])},
        # the flag wins over the detail; a user turn with a detail trains (a non-empty detail trains its turn)
        {"conversations": _detailed(docs_example, train=False)},
        {"conversations": [{"from": "human", "value": DETAILED, "detail": docs_example[1:2]}]},
    ]
    built = [_chat(write_rows, make_cfg, tokenizer, [row], **keys) for row in rows[:4]]
    assert [_trained_tokens(tokenizer, row) for (row,) in built] == [
        ["Ġvery", "Ġwell", "<|im_end|>"],
        ["Ġvery", "Ġwell", "<|im_end|>"],
        ["Ġyou", "<|im_end|>"],
        ["<|im_end|>"],
    ]
    assert "(13..14) holds no token of its content" in caplog.text
    with pytest.raises(DataError, match="no row is left of 1: 1 with no trained token"):
        _chat(write_rows, make_cfg, tokenizer, [rows[4]], **keys)
    ((row,),) = [_chat(write_rows, make_cfg, tokenizer, [rows[5]], **keys)]
    assert _trained_tokens(tokenizer, row) == ["Ġvery", "Ġwell", "<|im_end|>"]
    # the text is the conversation's, as without the key
    (plain,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": _detailed([])}])
    assert built[0][0]["input_ids"] == plain["input_ids"]


# Qwen3's assistant turn, its reasoning in a <think> block before the content (empty where the message has none)
THINKING_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\\n<think>\\n' + "
    "(m.reasoning_content or '') + '\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>' + "
    "m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
)


def test_a_training_detail_after_a_reasoning_the_template_writes_first_is_refused(write_rows, make_cfg, tokenizer):
    """axolotl places a turn's training_detail tokens counting from where its find_turn starts the turn, the first
    token that differs from a dummy turn without the message's reasoning: after an empty <think> block that is the
    content, and the spans train the content's tokens, as here; after a reasoning the template writes, it is the
    reasoning, and axolotl's spans train the reasoning's tokens (here " answer." for the content's " very well").
    That trained the content's tokens silently; it is an error naming the field now."""
    keys = {"message_field_training_detail": "detail", "chat_template": "jinja"}
    keys["chat_template_jinja"] = THINKING_TEMPLATE
    detail = [{"begin_offset": 9, "end_offset": 18, "train": True}]
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": _detailed(detail)}], **keys)
    assert "<think>\n\n</think>\n\nI'm doing" in tokenizer.decode(row["input_ids"])
    assert _trained_tokens(tokenizer, row) == ["Ġvery", "Ġwell", "<|im_end|>"]
    reasoned = _detailed(detail)
    reasoned[1]["reasoning_content"] = "Be polite and answer."
    said = (
        r"row 1: field 'conversations\[1\]\.detail' cannot be placed as axolotl places it: the chat template writes "
        r"'Be polite and answer\.\\n</think>\\n\\n' of the assistant turn before its content .* drop the message's "
        r"reasoning \(field_thinking\) or its training_detail"
    )
    with pytest.raises(DataError, match=said):
        _chat(write_rows, make_cfg, tokenizer, [{"conversations": reasoned}], **keys)


@pytest.mark.parametrize(
    ("detail", "error"),
    [
        ("0-8", "field 'conversations[1].detail' must be a list of {begin_offset, end_offset, train} spans"),
        ([{"begin_offset": 0, "end_offset": 8}], "field 'conversations[1].detail[0]' must be {begin_offset, end_o"),
        ([{"begin_offset": 9, "end_offset": 3, "train": True}], "needs 0 <= begin_offset <= end_offset"),
    ],
)
def test_a_bad_training_detail_names_the_field(write_rows, make_cfg, tokenizer, detail, error):
    with pytest.raises(DataError, match=re.escape(error)):
        _chat(
            write_rows,
            make_cfg,
            tokenizer,
            [{"conversations": _detailed(detail)}],
            message_field_training_detail="detail",
        )


@pytest.fixture
def llama3_tokenizer(default_model_dir):
    """The embedded tokenizer with Llama 3's turn markers as special tokens and <|eot_id|> as its EOS."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    tokenizer.add_special_tokens(
        {"eos_token": "<|eot_id|>", "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]}
    )
    return tokenizer


def test_the_llama3_template_trains_contents_and_eot(write_rows, make_cfg, llama3_tokenizer):
    (row,) = _chat(write_rows, make_cfg, llama3_tokenizer, [{"conversations": SHAREGPT[:3]}], chat_template="llama3")
    turn = "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>"
    text = "<|im_start|>" + "".join(
        turn.format(r, c) for r, c in [("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!")]
    )
    assert llama3_tokenizer.decode(row["input_ids"]) == text  # the bos_token first: here the embedded model's
    assert trained_runs(llama3_tokenizer, row) == ["Hello!<|eot_id|>"]


@pytest.mark.parametrize(
    ("template", "text", "runs"),
    [
        (
            "phi_3",
            "<|im_start|><|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n",
            ["Hello!"],  # <|end|> is no EOS of this tokenizer: axolotl trains no EOS then
        ),
        (
            "gemma",
            "<|im_start|><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
            ["Hello!"],
        ),
        (
            "qwen_25",
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
            ["Hello!<|im_end|>"],
        ),
        (
            "tokenizer_default_fallback_chatml",
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
            ["Hello!<|im_end|>"],
        ),
    ],
)
def test_shipped_templates_render_as_their_models_do(write_rows, make_cfg, tokenizer, template, text, runs):
    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    tokenizer.chat_template = None  # a base model's tokenizer: the fallback is what renders
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT[1:3]}], chat_template=template)
    assert tokenizer.decode(row["input_ids"]) == text
    assert trained_runs(tokenizer, row) == runs


# What axolotl's own alpaca.jinja, metharme.jinja and falcon_h1.jinja write for SHAREGPT[:3] (its ChatTemplate names
# them; Falcon-H1's own template was not found), rendered with those files' texts; {bos}/{eos}: the tokenizer's.
AXOLOTL_GENERIC_TEXTS = {
    "alpaca": "{bos}Be brief.\n\n### Instruction:\nHi there\n\n### Response:\nHello!{eos}",
    "metharme": "{bos}<|system|>Be brief.<|user|>Hi there<|model|>Hello!{eos}",
    "falcon_h1": "{bos}<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>"
    "assistant\nHello!<|im_end|>\n",
}


@pytest.mark.parametrize("name", list(AXOLOTL_GENERIC_TEXTS))
def test_axolotls_generic_templates_write_axolotls_text(tokenizer, name):
    """chat_template: alpaca (or metharme), a name of axolotl's schema, was refused as unknown; falcon_h1, which all
    seven of axolotl's Falcon-H1 examples name, as a model's template whose model's own was not found."""
    from llmkit.data.chat import CHAT_TEMPLATES, DEFAULT_ROLES

    messages = [{"role": DEFAULT_ROLES[turn["from"]], "content": turn["value"]} for turn in SHAREGPT[:3]]
    written = tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATES[name], tokenize=False)
    expected = AXOLOTL_GENERIC_TEXTS[name].format(bos=tokenizer.bos_token, eos=tokenizer.eos_token)
    assert written == expected


def test_the_alpaca_chat_template_trains_each_response_and_its_eos(write_rows, make_cfg, tokenizer):
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT}], chat_template="alpaca")
    assert tokenizer.decode(row["input_ids"]) == (
        "<|im_start|>Be brief.\n\n### Instruction:\nHi there\n\n### Response:\nHello!<|im_end|>\n\n"
        "### Instruction:\nBye\n\n### Response:\nGoodbye.<|im_end|>"
    )
    assert trained_runs(tokenizer, row) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]


# What axolotl's falcon_h1.jinja writes for more conversations (rendered with its text, add_generation_prompt off
# and on): no system turn, a later system turn (dropped: only the first message's is written), whitespace kept.
FALCON_H1_TEXTS = [
    (
        SHAREGPT[1:],
        "{bos}<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye"
        "<|im_end|>\n<|im_start|>assistant\nGoodbye.<|im_end|>\n",
    ),
    (
        [*SHAREGPT[:2], {"from": "system", "value": "Now be long."}, {"from": "gpt", "value": " Hello \n"}],
        "{bos}<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        " Hello \n<|im_end|>\n",
    ),
    (SHAREGPT[1:2], "{bos}<|im_start|>user\nHi there<|im_end|>\n"),
]


@pytest.mark.parametrize(("turns", "text"), FALCON_H1_TEXTS, ids=["no-system", "later-system", "one-turn"])
def test_falcon_h1_writes_axolotls_text_of_each_conversation(tokenizer, turns, text):
    from llmkit.data.chat import CHAT_TEMPLATES, DEFAULT_ROLES

    messages = [{"role": DEFAULT_ROLES[turn["from"]], "content": turn["value"]} for turn in turns]
    template = CHAT_TEMPLATES["falcon_h1"]
    expected = text.format(bos=tokenizer.bos_token)
    assert tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert prompt == expected + "<|im_start|>assistant\n"


def test_the_falcon_h1_chat_template_trains_each_reply_and_its_end_token(write_rows, make_cfg, tokenizer):
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT}], chat_template="falcon_h1")
    assert tokenizer.decode(row["input_ids"]) == tokenizer.bos_token + CHATML_TEXT  # ChatML after a BOS
    assert trained_runs(tokenizer, row) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]


# metharme's text of SHAREGPT and of SHAREGPT[:4] (which ends with the user's "Bye"): one EOS, after the last turn
METHARME_TEXT = "{bos}<|system|>Be brief.<|user|>Hi there<|model|>Hello!<|user|>Bye<|model|>Goodbye.{eos}"
METHARME_USER_LAST = "{bos}<|system|>Be brief.<|user|>Hi there<|model|>Hello!<|user|>Bye{eos}"


@pytest.mark.parametrize(
    ("rows", "keys", "markers", "runs"),
    [
        # the one EOS follows the last turn: trained after it (turn, last, all), never after "Hello!"
        (SHAREGPT, {}, False, ["Hello!", "Goodbye.<|im_end|>"]),
        (SHAREGPT, {"train_on_eos": "none"}, False, ["Hello!", "Goodbye."]),
        (SHAREGPT, {"train_on_eos": "last"}, False, ["Hello!", "Goodbye.<|im_end|>"]),
        (SHAREGPT, {"train_on_eos": "all"}, False, ["Hello!", "Goodbye.<|im_end|>"]),
        # the whole text's '.<' is one token (the system turn's end, then the '<' of '<|user|>'): the token at the
        # content's last place, as axolotl counts places in the system turn's own text ('.', then its EOS)
        (
            SHAREGPT,
            {"roles_to_train": ["system", "human", "gpt"]},
            False,
            ["Be brief.<", "Hi there", "Hello!", "Bye", "Goodbye.<|im_end|>"],
        ),
        # after an untrained user turn the EOS trains under all only ('<|user|>Bye': 7 tokens after "Hello!")
        (SHAREGPT[:4], {}, False, ["Hello!"]),
        (SHAREGPT[:4], {"train_on_eos": "last"}, False, ["Hello!"]),
        (SHAREGPT[:4], {"train_on_eos": "all"}, False, ["Hello!", "<|im_end|>"]),
        # with the markers as tokens, '<|user|>Bye' is 3 tokens: the EOS is within axolotl's reach of "Hello!" and
        # ends that turn
        (SHAREGPT[:4], {}, True, ["Hello!", "<|im_end|>"]),
        (SHAREGPT[:4], {"train_on_eos": "last"}, True, ["Hello!", "<|im_end|>"]),
        (SHAREGPT[:4], {"train_on_eos": "none"}, True, ["Hello!"]),
    ],
)
def test_metharme_rows_train_what_axolotl_finds_in_the_whole_conversation(
    write_rows, make_cfg, tokenizer, rows, keys, markers, runs
):
    """metharme writes one EOS, after the conversation's last turn, so a conversation's text does not start with
    that of its first turns; axolotl finds each turn by rendering the conversation up to it, with and without its
    content, and looks for its end token in the whole conversation's tokens: the spans above, read off the text by
    hand. Its rows were refused as not incremental."""
    if markers:
        tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|model|>"]})
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": rows}], chat_template="metharme", **keys)
    text = (METHARME_TEXT if rows == SHAREGPT else METHARME_USER_LAST).format(
        bos=tokenizer.bos_token, eos=tokenizer.eos_token
    )
    assert row["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert trained_runs(tokenizer, row) == runs


def test_metharme_writes_its_default_system_text_into_a_conversation_without_one(write_rows, make_cfg, tokenizer):
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT[1:3]}], chat_template="metharme")
    assert tokenizer.decode(row["input_ids"]) == (
        "<|im_start|><|system|>Enter RP mode. You shall reply to the user while staying in character. Your responses "
        "must be detailed, creative, immersive, and drive the scenario forward.<|user|>Hi there<|model|>Hello!"
        "<|im_end|>"
    )
    assert trained_runs(tokenizer, row) == ["Hello!<|im_end|>"]


def test_a_top_level_chat_template_no_dataset_uses_is_saved_with_the_tokenizer(tmp_path, write_rows, tokenizer):
    """A real config (Mostafa77Mahmoud/DataSet_PIPE) sets chat_template: alpaca with type: alpaca data: axolotl
    renders the data with the alpaca prompter and sets the template on the tokenizer it saves; it was refused."""
    from llmkit.data.chat import CHAT_TEMPLATES
    from llmkit.data.tokenizer import load_tokenizer

    path = write_rows([{"instruction": "Say 1.", "output": "1"}], "jsonl")
    cfg = _load(tmp_path, [{"path": str(path), "type": "alpaca"}], chat_template="alpaca")
    (row,) = list(build_datasets(cfg, tokenizer).train)
    assert "### Instruction:\nSay 1.\n\n### Response:\n1" in tokenizer.decode(row["input_ids"])
    assert load_tokenizer(cfg).chat_template == CHAT_TEMPLATES["alpaca"]


_MISTRAL_SYSTEM = (
    "{% if messages[0].role == 'system' %}{% set system = messages[0].content + '\\n\\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
)
# Each model's own chat template, as written here in the format the model defines (text turns only), and how it
# writes SHAREGPT[:3]; what a base of that family would carry (the tiny random models have SmolLM2's tokenizer).
OWN_TEMPLATES = {
    "qwen3": (
        "qwen3",
        "{% for m in messages %}{% if m.role == 'assistant' and loop.last %}{{ '<|im_start|>assistant\\n<think>\\n"
        "\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>' + m.role + '\\n' + "
        "m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\nHello!<|im_end|>\n",
    ),
    "gemma3": (
        "gemma3_text",
        "{{ bos_token }}{% if messages[0].role == 'system' %}{% set prefix = messages[0].content + '\\n\\n' %}"
        "{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
        "{% for m in turns %}{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\\n' + "
        "(prefix if loop.first else '') + m.content | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        "<|im_start|><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!"
        "<end_of_turn>\n",
    ),
    # Gemma 4 on a Llama base: the system turn is a turn of its own
    "gemma4": (
        "llama",
        "{{ bos_token }}{% for m in messages %}{{ '<|turn>' + ('model' if m.role == 'assistant' else m.role) + "
        "'\\n' + m.content | trim + '<turn|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|turn>model\\n' }}{% endif %}",
        "<|im_start|><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi there<turn|>\n<|turn>model\nHello!<turn|>\n",
    ),
    "llama4": (
        "llama4_text",
        "{{ bos_token }}{% for m in messages %}{{ '<|header_start|>' + m.role + '<|header_end|>\\n\\n' + m.content + "
        "'<|eot|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|header_start|>assistant<|header_end|>\\n\\n' }}"
        "{% endif %}",
        "<|im_start|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|><|header_start|>user<|header_end|>\n\n"
        "Hi there<|eot|><|header_start|>assistant<|header_end|>\n\nHello!<|eot|>",
    ),
    "cohere": (
        "cohere",
        "{{ bos_token }}{% for m in messages %}{{ '<|START_OF_TURN_TOKEN|><|' + {'system': 'SYSTEM', 'user': 'USER', "
        "'assistant': 'CHATBOT'}[m.role] + '_TOKEN|>' + m.content.strip() + '<|END_OF_TURN_TOKEN|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}",
        "<|im_start|><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
        "<|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello!"
        "<|END_OF_TURN_TOKEN|>",
    ),
    # DeepSeek-V2-Chat-0628 and EXAONE 3.5 on a Llama base: the check reads the tokenizer's template alone
    "deepseek_v2": (
        "llama",
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ m.content + '\\n\\n' }}"
        "{% elif m.role == 'user' %}{{ '<｜User｜>' + m.content }}"
        "{% else %}{{ '<｜Assistant｜>' + m.content + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}",
        "<|im_start|>Be brief.\n\n<｜User｜>Hi there<｜Assistant｜>Hello!<|im_end|>",
    ),
    "exaone": (
        "llama",
        "{% for m in messages %}{% if loop.first and m.role != 'system' %}{{ '[|system|][|endofturn|]\\n' }}"
        "{% endif %}"
        "{{ '[|' + m.role + '|]' + m.content + ('\\n' if m.role == 'user' else '[|endofturn|]\\n') }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}",
        "[|system|]Be brief.[|endofturn|]\n[|user|]Hi there\n[|assistant|]Hello![|endofturn|]\n",
    ),
    # Mistral's three formats: the system text opens the first user turn (v1) or the last (v3, Tekken: a
    # conversation that ends with the assistant's turn writes none)
    "mistral_v1": (
        "mixtral",
        _MISTRAL_SYSTEM + "{{ bos_token }}{% for m in turns %}{% if m.role == 'user' %}{{ ' [INST] ' + "
        "(system if loop.first else '') + m.content + ' [/INST]' }}{% else %}{{ ' ' + m.content + eos_token }}"
        "{% endif %}{% endfor %}",
        "<|im_start|> [INST] Be brief.\n\nHi there [/INST] Hello!<|im_end|>",
    ),
    "mistral_v2v3": (
        "mistral",
        _MISTRAL_SYSTEM + "{{ bos_token }}{% for m in turns %}{% if m.role == 'user' %}{{ '[INST] ' + "
        "(system if loop.last else '') + m.content + '[/INST]' }}{% else %}{{ ' ' + m.content | trim + eos_token }}"
        "{% endif %}{% endfor %}",
        "<|im_start|>[INST] Hi there[/INST] Hello!<|im_end|>",
    ),
    "mistral_v3_tekken": (
        "mistral",
        _MISTRAL_SYSTEM + "{{ bos_token }}{% for m in turns %}{% if m.role == 'user' %}{{ '[INST]' + "
        "(system if loop.last else '') + m.content + '[/INST]' }}{% else %}{{ m.content + eos_token }}{% endif %}"
        "{% endfor %}",
        "<|im_start|>[INST]Hi there[/INST]Hello!<|im_end|>",
    ),
    "llama3_2_vision": (
        "llama",
        "{{ bos_token }}{% if messages[0].role == 'system' %}{% set system = messages[0].content %}"
        "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
        "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: ' + "
        "strftime_now('%d %b %Y') + '\\n\\n' + system + '<|eot_id|>' }}{% for m in turns %}{{ '<|start_header_id|>' + "
        "m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}{% endfor %}",
        "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: "
        f"{datetime.now():%d %b %Y}\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi there"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>",
    ),
}
# Mistral Small 3's default system prompt, dated today by the template ({}: where the date goes)
_MISTRAL_SMALL_3 = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered in "
    "Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is {}.\n\nWhen you're not sure "
    "about some information, you say that you don't have the information and don't make up anything.\nIf the user's "
    "question is not clear, ambiguous, or does not provide enough context for you to accurately answer the question, "
    'you do not try to answer it right away and you rather ask the user to clarify their request (e.g. "What are some '
    'good restaurants around me?" => "Where are you?" or "When is the next flight to Tokyo" => "Where do you travel '
    'from?")'
)


def _mistral_small_template(default: str) -> str:
    """Mistral Small 3's format with `default` (Jinja) as the system text of a conversation without a system turn."""
    return (
        "{{ bos_token }}{% if messages[0].role == 'system' %}{% set system = messages[0].content %}"
        "{% set turns = messages[1:] %}{% else %}{% set system = " + default + " %}{% set turns = messages %}"
        "{% endif %}{{ '[SYSTEM_PROMPT]' + system + '[/SYSTEM_PROMPT]' }}{% for m in turns %}"
        "{% if m.role == 'user' %}{{ '[INST]' + m.content + '[/INST]' }}{% else %}{{ m.content + eos_token }}"
        "{% endif %}{% endfor %}"
    )


OWN_TEMPLATES["mistral_v7_tekken"] = (
    "mistral",
    _mistral_small_template(
        " + strftime_now('%Y-%m-%d') + ".join(json.dumps(part) for part in _MISTRAL_SMALL_3.split("{}"))
    ),
    "<|im_start|>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hi there[/INST]Hello!<|im_end|>",
)
OWN_TEMPLATES["qwen2_vl"] = (
    "qwen2",
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    CHATML_TEXT.split("<|im_start|>user\nBye")[0],
)
OWN_TEMPLATES["aya"] = OWN_TEMPLATES["cohere"]  # Aya's own writes Command-R's format
OWN_TEMPLATES["gemma3n"] = OWN_TEMPLATES["gemma3"]  # Gemma 3n's own writes Gemma 3's text turns
OWN_TEMPLATES["gemma4_unified"] = OWN_TEMPLATES["gemma4"]
OWN_TEMPLATES["pixtral"] = OWN_TEMPLATES["mistral_v3_tekken"]  # Pixtral-12B's own writes Tekken's text turns


def _family_with_template(
    tiny_family_dir, make_tiny_model, tokenizer, family: str, template: str | None, folder: Path
) -> tuple[Path, object]:
    """A copy of the family's tiny random model whose tokenizer carries `template` (None: no chat template), and that
    tokenizer: a copy of `tokenizer`, the tokenizer every tiny random model carries (a copy, not a load: 20 cases)."""
    import shutil

    from transformers import CohereConfig, CohereForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    # not among the trained families: the text-only Gemma 3 (as gemma-3-1b is), Command-R
    others = {"gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM), "cohere": (CohereConfig, CohereForCausalLM)}
    if family in others:
        source = make_tiny_model(*others[family], head_dim=16)
    else:
        source = tiny_family_dir(family)
    shutil.copytree(source, folder)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = template
    (folder / "chat_template.jinja").unlink(missing_ok=True)  # saving no template leaves the old file
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


@pytest.mark.parametrize("name", list(OWN_TEMPLATES))
def test_a_model_named_template_renders_the_models_own(
    write_rows, tiny_family_dir, make_tiny_model, tokenizer, tmp_path, name
):
    """axolotl's qwen3, gemma3, gemma3n, gemma4(_unified), llama4, cohere, aya, deepseek_v2, exaone, llama3_2_vision,
    pixtral, qwen2_vl and four Mistral templates are those models' own: on a base of the family they train what
    tokenizer_default trains, and `llmkit validate` plans. They were refused as templates this project does not ship,
    so real Qwen3 and Gemma 3 configs (tests/config/real_world) could not run unchanged, nor configs naming the
    others."""
    family, template, text = OWN_TEMPLATES[name]
    model, tokenizer = _family_with_template(
        tiny_family_dir, make_tiny_model, tokenizer, family, template, tmp_path / "model"
    )
    path = write_rows([{"conversations": SHAREGPT[:3]}], "jsonl")
    built = {}
    for choice in (name, "tokenizer_default"):
        config = _load(tmp_path, [{"path": str(path), **MAPPED, "chat_template": choice}], base_model=str(model))
        built[choice] = list(build_datasets(config, tokenizer).train)
    assert built[name] == built["tokenizer_default"]
    assert tokenizer.decode(built[name][0]["input_ids"]) == text
    # the content is trained (after Mistral's space before it, which the tokenizer merges into its first token)
    assert trained_runs(tokenizer, built[name][0])[0].lstrip().startswith("Hello!")
    config = tmp_path / "run.yml"
    raw = yaml.safe_load(config.read_text()) | {"chat_template": name}  # the config's own, as real configs set it
    raw["datasets"][0].pop("chat_template")
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(config)], prog_name="llmkit", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output


# Qwen3's format (OWN_TEMPLATES) of SHAREGPT: the empty <think> block before the last assistant turn only
QWEN3_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!"
    "<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nGoodbye.<|im_end|>\n"
)


def test_qwen3_rows_of_several_exchanges_train_each_reply_as_axolotl_finds_it(write_rows, make_cfg, tokenizer):
    """axolotl's qwen3 text renders the conversation up to "Hello!" as the whole one writes it (no <think> block: it
    is told the whole one's last index), so it trains both replies; Qwen3's own, which chat_template: qwen3 renders
    here, writes a <think> block before the last reply of any conversation, so the rows were refused as not
    incremental. Under tokenizer_default axolotl renders Qwen3's own, and its labels for "Hello!" fall the <think>
    block's 4 tokens (in Qwen3's tokenizer) after it: the row stays an error."""
    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    tokenizer.chat_template = OWN_TEMPLATES["qwen3"][1]
    path = write_rows([{"conversations": SHAREGPT}], "jsonl")
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT}], chat_template="qwen3")
    assert row["input_ids"] == tokenizer(QWEN3_TEXT, add_special_tokens=False)["input_ids"]
    assert trained_runs(tokenizer, row) == ["Hello!<|im_end|>", "Goodbye.<|im_end|>"]
    said = r"row 1: field 'conversations' cannot be split into turns: .* up to message 2 \(assistant\)"
    with pytest.raises(DataError, match=said) as info:
        build_datasets(make_cfg([{"path": str(path), **MAPPED, "chat_template": "tokenizer_default"}]), tokenizer)
    assert "Mistral" not in str(info.value)  # its hint is for a user turn after a system turn
    assert str(info.value).endswith(
        "Qwen3's own template writes a <think> block before the last assistant turn only: "
        "chat_template: qwen3 finds the turns of a Qwen3 base's rows as axolotl's qwen3 text does"
    )


# Mistral v3's format (OWN_TEMPLATES): the system text opens the last user turn, so SHAREGPT, which ends with the
# assistant's turn, writes none, and SHAREGPT[:4], which ends with the user's "Bye", writes it there
MISTRAL_V3_TEXT = "<|im_start|>[INST] Hi there[/INST] Hello!<|im_end|>[INST] Bye[/INST] Goodbye.<|im_end|>"
MISTRAL_V3_USER_LAST = "<|im_start|>[INST] Hi there[/INST] Hello!<|im_end|>[INST] Be brief.\n\nBye[/INST]"


@pytest.mark.parametrize(
    ("rows", "text", "runs"),
    [
        (SHAREGPT, MISTRAL_V3_TEXT, [" Hello!<|im_end|>", " Goodbye.<|im_end|>"]),
        (SHAREGPT[:4], MISTRAL_V3_USER_LAST, [" Hello!<|im_end|>"]),
    ],
)
def test_mistral_v3_rows_with_a_system_turn_train_their_assistant_turns(
    write_rows, make_cfg, tokenizer, rows, text, runs
):
    """Mistral v3's own template writes the system text into the last user turn, so the conversation up to an
    assistant turn writes the text the whole one writes before it: axolotl finds each assistant turn there (its
    content after the space, which the tokenizer merges into the first token, and the EOS). Such rows were refused as
    not incremental."""
    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    tokenizer.chat_template = OWN_TEMPLATES["mistral_v2v3"][1]
    (row,) = _chat(write_rows, make_cfg, tokenizer, [{"conversations": rows}], chat_template="tokenizer_default")
    assert row["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert trained_runs(tokenizer, row) == runs


_EVERY_TURN = [" Hi there", " Hello!<|im_end|>", " Bye", " Goodbye.<|im_end|>"]


@pytest.mark.parametrize(
    ("keys", "top", "runs"),
    [
        ({"roles_to_train": ["human", "gpt"]}, {}, _EVERY_TURN),
        ({"train_on_eos": "all"}, {}, [" Hello!<|im_end|>", " Goodbye.<|im_end|>"]),  # no EOS after a user turn
        ({}, {"train_on_inputs": True}, _EVERY_TURN),
    ],
)
def test_mistral_v3_rows_with_a_system_turn_that_train_a_user_turn_say_why_they_cannot(
    write_rows, make_cfg, tokenizer, keys, top, runs
):
    """Up to "Hi there", the conversation writes '[INST] Be brief.\n\nHi there[/INST]', the whole one '[INST] Hi
    there[/INST]': axolotl's labels for that user turn (its EOS's too, under train_on_eos: all) fall on the tokens
    after it. The error says why and the ways out; it said 'not incremental'."""
    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    tokenizer.chat_template = OWN_TEMPLATES["mistral_v2v3"][1]
    path = write_rows([{"conversations": SHAREGPT}], "jsonl")
    dataset = {"path": str(path), **MAPPED, "chat_template": "tokenizer_default", **keys}
    said = (
        r"row 1: field 'conversations' cannot be split into turns: the chat template writes the conversation up to "
        r"message 1 \(user\) otherwise once later messages follow, .* Mistral v3's, Tekken's and Pixtral's own "
        r"templates write the system text into the last user turn .*drop_system_message"
    )
    with pytest.raises(DataError, match=said):
        build_datasets(make_cfg([dataset], **top), tokenizer)
    (row,) = build_datasets(make_cfg([{**dataset, "drop_system_message": True}], **top), tokenizer).train
    assert tokenizer.decode(row["input_ids"]) == MISTRAL_V3_TEXT
    assert trained_runs(tokenizer, row) == runs  # without it, the user turns train where the whole writes them


@pytest.mark.parametrize(
    ("keep_template", "said"),
    [
        (False, "this tokenizer has no chat template: use a Qwen3 base model, or chat_template: jinja with"),
        (True, "this tokenizer's template is not Qwen3's: it writes '<|im_start|>system\\nBe brief."),
    ],
    ids=["no template", "another model's template"],
)
def test_a_model_named_template_on_another_model_is_a_config_error(
    tiny_family_dir, make_tiny_model, tokenizer, tmp_path, keep_template, said
):
    """qwen3 on a Llama base whose tokenizer's template is not Qwen3's (SmolLM2's ChatML, which writes no <think>
    block), or that has none: `llmkit validate` says so naming chat_template, and what to set instead."""
    own = tokenizer.chat_template if keep_template else None  # the tiny Llama's own
    model, _ = _family_with_template(tiny_family_dir, make_tiny_model, tokenizer, "llama", own, tmp_path / "model")
    (tmp_path / "a.jsonl").write_text(json.dumps({"conversations": SHAREGPT[:3]}) + "\n")
    datasets = [{"path": "a.jsonl", **MAPPED, "chat_template": None}]
    config = _load(tmp_path, datasets, base_model=str(model), chat_template="qwen3").source
    result = CliRunner().invoke(app, ["validate", str(config)], prog_name="llmkit", env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    expected = "- chat_template: qwen3 is Qwen3's own chat template, rendered from the base model's tokenizer, but "
    assert expected + said in result.output


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("aya", "qwen3"),
        ("deepseek_v2", "exaone"),
        ("exaone", "deepseek_v2"),
        ("mistral_v1", "mistral_v2v3"),
        ("mistral_v2v3", "mistral_v3_tekken"),
        ("mistral_v3_tekken", "mistral_v2v3"),
        ("llama3_2_vision", "llama4"),
        ("gemma3n", "gemma4"),
        ("gemma4", "gemma3"),
        ("gemma4_unified", "llama4"),
        ("pixtral", "mistral_v2v3"),
        # another copy of Pixtral-12B's own: the system text in the first user turn (axolotl's, the last)
        pytest.param(
            "pixtral",
            _MISTRAL_SYSTEM + "{{ bos_token }}{% for m in turns %}{% if m.role == 'user' %}{{ '[INST]' + "
            "(system if loop.first else '') + m.content + '[/INST]' }}{% else %}{{ m.content + eos_token }}"
            "{% endif %}{% endfor %}",
            id="pixtral-system-in-the-first-turn",
        ),
        # plain ChatML: a system turn written as Qwen2-VL writes it, none written into a conversation without one
        pytest.param("qwen2_vl", CHAT_TEMPLATES["chatml"], id="qwen2_vl-plain-chatml"),
        ("mistral_v7_tekken", "mistral_v3_tekken"),
        # Mistral Small 3.2's own: the default system prompt undated
        pytest.param(
            "mistral_v7_tekken",
            _mistral_small_template(json.dumps(_MISTRAL_SMALL_3.replace(" The current date is {}.", ""))),
            id="mistral_v7_tekken-undated",
        ),
        ("qwen2_vl", "qwen3"),
    ],
)
def test_a_model_named_template_refuses_another_models_template(write_rows, make_cfg, tokenizer, name, other):
    """A Mistral format's name on a tokenizer of another Mistral format (whose text differs by a space, or by where
    the system text goes), or another family's name: refused naming the key, as qwen3 on a Llama base is."""
    from llmkit.data.chat import MODEL_TEMPLATES

    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    tokenizer.chat_template = OWN_TEMPLATES[other][1] if other in OWN_TEMPLATES else other
    path = write_rows([{"conversations": SHAREGPT[1:3]}], "jsonl")
    family = MODEL_TEMPLATES[name][0]
    said = rf"datasets\[0\]\.chat_template: {name} is {family}'s own chat template, rendered from the base model's "
    with pytest.raises(DataError, match=said + rf"tokenizer, but this tokenizer's template is not {family}'s"):
        build_datasets(make_cfg([{"path": str(path), **MAPPED, "chat_template": name}]), tokenizer)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("command_a", "writes Cohere's '# System Preamble' and '# Default Preamble' text around the system turn"),
        ("command_a_rag", "its own rag template was not found to compare"),
        ("phi_4", "Phi-4-reasoning's long system prompt into a conversation without a system turn"),
        ("nemotron_h", "plain ChatML, which the check cannot tell from any ChatML model's"),
        ("jamba", "AI21's '<|bom|><|user|> text<|eom|>' turns after <|startoftext|>"),
        ("exaone4", "writes a conversation's system turn twice, where EXAONE 4.0's own writes it once"),
        ("qwen3_5", "keeps the whitespace around a turn's content, which Qwen3.5's own trims from every turn"),
        ("llava", "a text content (every turn's, as this project renders it) writes nothing but the role names"),
    ],
)
def test_axolotls_other_model_named_templates_say_why_they_are_refused(tmp_path, name, why):
    """axolotl's model-named templates that are not their models' own text, or whose model's own was not found,
    are refused by `llmkit validate` with the reason (they were refused as unknown names)."""
    from llmkit.data.tokenizer import tokenizer_problems

    (tmp_path / "a.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    cfg = _load(
        tmp_path, [{"path": "a.jsonl", "type": "chat_template"}], base_model="Qwen/Qwen2.5-0.5B", chat_template=name
    )
    (said,) = tokenizer_problems(cfg, None, None)  # a hub model not downloaded: checked without the tokenizer
    assert said.startswith(f"chat_template: {name} is axolotl's copy of a model's chat template, not rendered here: ")
    assert why in said and "tokenizer_default renders the base model's own" in said, said


# Command A's turns as axolotl's command_a text writes them (its preambles aside): every conversation, a whole one
# as one cut at any turn, ends with an opened chatbot turn
COMMAND_A_SHAPE = (
    "{{ bos_token }}{% for m in messages %}<|START_OF_TURN_TOKEN|>{% if m.role == 'system' %}<|SYSTEM_TOKEN|>"
    "{% elif m.role == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|><|START_RESPONSE|>{% endif %}{{ m.content }}"
    "{% if m.role == 'assistant' %}<|END_RESPONSE|>{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
)


def test_a_template_that_opens_a_turn_after_the_last_trains_through_chat_template_jinja(
    write_rows, make_cfg, tokenizer
):
    """The refusal of command_a says chat_template_jinja with axolotl's text renders it; its rows were all refused as
    not incremental (each cut conversation ends with the opened chatbot turn the whole one writes after its last
    turn). Now each reply trains, and its <|END_OF_TURN_TOKEN|> one token (<|END_RESPONSE|>) after it."""
    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    markers = ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|USER_TOKEN|>"]
    markers += ["<|CHATBOT_TOKEN|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": markers})  # as Command A's tokenizer has them
    path = write_rows([{"conversations": SHAREGPT}], "jsonl")
    dataset = {**MAPPED, "path": str(path), "chat_template": "jinja", "chat_template_jinja": COMMAND_A_SHAPE}
    (row,) = build_datasets(make_cfg([dataset], eot_tokens=["<|END_OF_TURN_TOKEN|>"]), tokenizer).train
    assert tokenizer.decode(row["input_ids"]).endswith(
        "<|START_RESPONSE|>Goodbye.<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )
    runs = ["Hello!", "<|END_OF_TURN_TOKEN|>", "Goodbye.", "<|END_OF_TURN_TOKEN|>"]
    assert trained_runs(tokenizer, row) == runs


def test_template_choices_that_cannot_render_are_clear_errors(write_rows, make_cfg, tokenizer, tmp_path):
    path = write_rows([{"conversations": SHAREGPT[1:3]}], "jsonl")
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(
        DataError, match=re.escape("datasets[0].chat_template: tokenizer_default, but the tokenizer has no chat")
    ):
        build_datasets(make_cfg([{"path": str(path), **MAPPED, "chat_template": "tokenizer_default"}]), bare)
    with pytest.raises(
        DataError,
        match=r"datasets\[0\]\.chat_template: phi_35 is axolotl's copy of a model's chat template, not rendered here: "
        "its text writes no EOS after the last turn",
    ):
        build_datasets(make_cfg([{"path": str(path), **MAPPED, "chat_template": "phi_35"}]), tokenizer)
    with pytest.raises(DataError, match=r"datasets\[0\]\.chat_template: qwen3 is Qwen3's own chat template"):
        build_datasets(make_cfg([{"path": str(path), **MAPPED, "chat_template": "qwen3"}]), tokenizer)
    with pytest.raises(
        DataError, match=r"row 1: field 'conversations' is refused by the chat template: gemma has no system"
    ):
        rows = write_rows([{"conversations": SHAREGPT}], "jsonl")
        build_datasets(make_cfg([{"path": str(rows), **MAPPED, "chat_template": "gemma"}]), tokenizer)


def test_a_jinja_template_from_a_file(write_rows, make_cfg, tokenizer, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}\n{% endfor %}")
    (row,) = _chat(
        write_rows,
        make_cfg,
        tokenizer,
        [{"conversations": SHAREGPT[1:3]}],
        chat_template="jinja",
        chat_template_jinja=str(template),
    )
    assert tokenizer.decode(row["input_ids"]) == "user: Hi there<|im_end|>\nassistant: Hello!<|im_end|>\n"
    assert trained_runs(tokenizer, row) == [" Hello!<|im_end|>"]


def test_bad_chat_rows_name_the_mapped_field(write_rows, make_cfg, tokenizer):
    path = write_rows([{"conversations": SHAREGPT}, {"conversations": [{"from": "human"}]}], "jsonl")
    with pytest.raises(DataError, match=re.escape(f"{path}: row 2: field 'conversations[0].value' is missing")):
        build_datasets(make_cfg([{"path": str(path), **MAPPED}]), tokenizer)
    path = write_rows([{"conversations": [{"from": "robot", "value": "x"}]}], "jsonl")
    with pytest.raises(
        DataError, match=r"row 1: field 'conversations\[0\]\.from' is 'robot', not one of \['assistant', 'gpt'"
    ):
        build_datasets(make_cfg([{"path": str(path), **MAPPED}]), tokenizer)


def test_content_as_a_list_of_text_parts_trains_as_the_joined_text(write_rows, make_cfg, tokenizer):
    def split(text: str) -> list[dict]:  # OpenAI's content parts
        return [{"type": "text", "text": text[:2]}, {"type": "text", "text": text[2:]}]

    parts = [{**turn, "value": split(turn["value"])} for turn in SHAREGPT]
    as_parts = _chat(write_rows, make_cfg, tokenizer, [{"conversations": parts}])
    as_text = _chat(write_rows, make_cfg, tokenizer, [{"conversations": SHAREGPT}])
    assert as_parts == as_text
    image = [SHAREGPT[0], {"from": "human", "value": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    path = write_rows([{"conversations": image}], "jsonl")
    with pytest.raises(DataError, match=r"field 'conversations\[1\]\.value\[0\]' is a 'image_url' part; only text"):
        build_datasets(make_cfg([{"path": str(path), **MAPPED}]), tokenizer)
    tool = [SHAREGPT[1], {"from": "gpt", "value": None, "tool_calls": [{"type": "function"}]}]
    path = write_rows([{"conversations": tool}], "jsonl")
    with pytest.raises(
        DataError, match="is empty: a tool-call turn, and the chat template reads no message.tool_calls"
    ):
        build_datasets(make_cfg([{"path": str(path), **MAPPED}]), tokenizer)


# Qwen3's own template as it writes text turns: an assistant turn after the last user message writes its reasoning
# (`reasoning_content`) in a <think> block (the last turn an empty one), an earlier turn its content alone.
QWEN3_THINKING = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- set ns = namespace(last_query_index=messages|length - 1, found=false) %}"
    "{%- for m in messages[::-1] %}{%- if not ns.found and m.role == 'user' %}{%- set ns.found = true %}"
    "{%- set ns.last_query_index = messages|length - 1 - loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- elif m.role == 'assistant' %}"
    "{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}{{- '<|im_start|>assistant\\n<think>\\n'"
    " + reasoning.strip('\\n') + '\\n</think>\\n\\n' + m.content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + m.content }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# gpt-oss's layout: the reasoning (`thinking`) in an analysis message before the final one
GPT_OSS_THINKING = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ '<|start|>user<|message|>' + m.content + '<|end|>' }}"
    "{% else %}{% if m.thinking %}{{ '<|start|>assistant<|channel|>analysis<|message|>' + m.thinking + '<|end|>' }}"
    "{% endif %}{{ '<|start|>assistant<|channel|>final<|message|>' + m.content + eos_token }}{% endif %}{% endfor %}"
)
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
REASONED = [*QUESTION, {"role": "assistant", "content": "4.", "reasoning_content": "Two and two make four."}]


def _reasoned(write_rows, make_cfg, tokenizer, messages, **keys):
    """The rows built from one row of `messages` (a chat_template dataset)."""
    dataset = {"path": str(write_rows([{"messages": messages}], "jsonl")), "type": "chat_template", **keys}
    cfg = make_cfg([dataset], dataset_prepared_path=None)
    assert not cfg.ignored_keys  # field_thinking and template_thinking_key were "not implemented here"
    return list(build_datasets(cfg, tokenizer).train)


@pytest.mark.parametrize(
    ("keys", "template", "trace", "runs"),
    [
        ({"chat_template": "qwen3"}, QWEN3_THINKING, "reasoning_content", ["Two and two make four.\n</think>\n\n4."]),
        (  # the row's own key, given to the template under its default one
            {"chat_template": "qwen3", "field_thinking": "thought"},
            QWEN3_THINKING,
            "thought",
            ["Two and two make four.\n</think>\n\n4."],
        ),
        (  # axolotl's gpt-oss examples: field_thinking and template_thinking_key both `thinking`
            {"chat_template": "tokenizer_default", "field_thinking": "thinking", "template_thinking_key": "thinking"},
            GPT_OSS_THINKING,
            "thinking",
            ["analysis<|message|>Two and two make four.<|end|><|start|>assistant<|channel|>final<|message|>4."],
        ),
    ],
    ids=["qwen3", "field_thinking", "gpt-oss"],
)
def test_a_messages_reasoning_trains_with_its_turn_where_the_template_writes_it(
    write_rows, make_cfg, tokenizer, caplog, keys, template, trace, runs
):
    """axolotl gives a message's `field_thinking` to the template under `template_thinking_key`, and trains its turn
    from the first token that differs from the turn rendered without it: the reasoning the template writes is trained
    with the answer. It was dropped (field_thinking an ignored key, reasoning_content read by nothing)."""
    tokenizer = copy.deepcopy(tokenizer)  # the session's, left as it is
    tokenizer.chat_template = template
    messages = [*QUESTION, {"role": "assistant", "content": "4.", trace: "Two and two make four."}]
    with caplog.at_level(logging.WARNING, logger="llmkit"):
        (row,) = _reasoned(write_rows, make_cfg, tokenizer, messages, **keys)
    key = keys.get("template_thinking_key", "reasoning_content")
    rendered = tokenizer.apply_chat_template([*QUESTION, {**REASONED[1], key: "Two and two"}], tokenize=False)
    assert tokenizer.decode(row["input_ids"]) == rendered.replace("Two and two", "Two and two make four.")
    assert trained_runs(tokenizer, row) == [runs[0] + "<|im_end|>"]
    assert "reasoning" not in caplog.text


def test_reasoning_in_every_turn_trains_where_the_whole_conversation_writes_it(write_rows, make_cfg, tokenizer):
    """Two exchanges, each reply with its reasoning: a template that writes every turn's reasoning trains both; the
    row is the whole conversation's text. Qwen3's writes the reasoning after the last user message only: under
    chat_template: qwen3 the first reply trains its content alone, the second its reasoning too, where the whole
    conversation writes them (axolotl's qwen3 text, which renders the first reply's <think> block in the conversation
    cut there, would put its labels on other tokens); under tokenizer_default (Qwen3's own cut there writes the block)
    the row is an error naming it."""
    tokenizer = copy.deepcopy(tokenizer)
    every = QWEN3_THINKING.replace("loop.index0 > ns.last_query_index and (loop.last or reasoning)", "reasoning")
    messages = [*REASONED, {"role": "user", "content": "And 3+3?"}]
    messages.append({"role": "assistant", "content": "6.", "reasoning_content": "Six."})
    (row,) = _reasoned(write_rows, make_cfg, tokenizer, messages, chat_template="jinja", chat_template_jinja=every)
    whole = tokenizer.apply_chat_template(messages, chat_template=every, tokenize=False)
    assert "<think>\nTwo and two make four.\n</think>\n\n4." in whole and "<think>\nSix.\n</think>\n\n6." in whole
    assert tokenizer.decode(row["input_ids"]) == whole
    assert trained_runs(tokenizer, row) == [  # without its reasoning a turn writes no <think> block: it trains too
        "<think>\nTwo and two make four.\n</think>\n\n4.<|im_end|>",
        "<think>\nSix.\n</think>\n\n6.<|im_end|>",
    ]
    tokenizer.chat_template = QWEN3_THINKING
    (row,) = _reasoned(write_rows, make_cfg, tokenizer, messages, chat_template="qwen3")
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "Two and two" not in whole and "<think>\nSix.\n</think>\n\n6." in whole
    assert tokenizer.decode(row["input_ids"]) == whole
    assert trained_runs(tokenizer, row) == ["4.<|im_end|>", "Six.\n</think>\n\n6.<|im_end|>"]
    with pytest.raises(DataError, match=r"row 1: field 'messages' cannot be split into turns"):
        _reasoned(write_rows, make_cfg, tokenizer, messages, chat_template="tokenizer_default")


def test_reasoning_the_template_does_not_write_is_warned_about_once(write_rows, make_cfg, tokenizer, caplog):
    """chatml writes no reasoning: as in axolotl the turn trains its content alone, but the data's reasoning would be
    lost in silence, so the log says so, once, naming the field and the template."""
    with caplog.at_level(logging.WARNING, logger="llmkit"):
        rows = _reasoned(write_rows, make_cfg, tokenizer, REASONED, chat_template="chatml")
    (row,) = rows
    assert "Two and two" not in tokenizer.decode(row["input_ids"])
    assert trained_runs(tokenizer, row) == ["4.<|im_end|>"]
    said = [r.getMessage() for r in caplog.records if "reasoning" in r.getMessage()]
    assert said == [
        "messages: a row's reasoning (field_thinking 'reasoning_content') is not in the text the chat template "
        "(chatml) writes, so it is not trained: the template reads no 'reasoning_content' (template_thinking_key), "
        "or not for those turns (Qwen3's writes the reasoning after the last user message only)"
    ]


@pytest.mark.parametrize(
    "content",
    [
        "<think>\nTwo and two make four.\n</think>\n\n4.",
        "  <reasoning> Two and two make four. </reasoning>4.",
        "<|begin_of_thought|>\n\nTwo and two make four.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n4.\n\n"
        "<|end_of_solution|>",
    ],
    ids=["think", "reasoning", "open-thoughts"],
)
def test_split_thinking_takes_an_assistants_reasoning_out_of_its_content(write_rows, make_cfg, tokenizer, content):
    """axolotl's split_thinking: the text between an assistant content's thinking tags becomes its reasoning, the
    text after them (or within the solution tags) its content; the template then writes the reasoning where it
    writes reasoning, and it trains with the turn. Without it the content, tags and all, is the content (Qwen3's
    layout then writes an empty <think> block before it). It was an ignored key."""
    messages = [*QUESTION, {"role": "assistant", "content": content}]
    (row,) = _reasoned(
        write_rows, make_cfg, tokenizer, messages, chat_template_jinja=QWEN3_THINKING, split_thinking=True
    )
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(row["input_ids"]) == text + "<think>\nTwo and two make four.\n</think>\n\n4.<|im_end|>\n"
    assert trained_runs(tokenizer, row) == ["Two and two make four.\n</think>\n\n4.<|im_end|>"]
    (row,) = _reasoned(write_rows, make_cfg, tokenizer, messages, chat_template_jinja=QWEN3_THINKING)
    assert (
        tokenizer.decode(row["input_ids"]) == text + "<think>\n\n</think>\n\n" + content.lstrip("\n") + "<|im_end|>\n"
    )


def test_split_thinking_leaves_other_turns_and_contents_without_both_tags(write_rows, make_cfg, tokenizer):
    messages = [
        {"role": "user", "content": "<think>a</think>b"},
        {"role": "assistant", "content": "<think>unclosed, so kept"},
    ]
    (row,) = _reasoned(write_rows, make_cfg, tokenizer, messages, chat_template="chatml", split_thinking=True)
    assert tokenizer.decode(row["input_ids"]) == (
        "<|im_start|>user\n<think>a</think>b<|im_end|>\n<|im_start|>assistant\n<think>unclosed, so kept<|im_end|>\n"
    )


def test_two_spellings_of_one_message_key_must_agree(tmp_path):
    keys = {"message_field_role": "from", "message_property_mappings": {"role": "speaker"}}
    with pytest.raises(
        ConfigError, match=r"message_field_role 'from' and message_property_mappings.role 'speaker' disagree"
    ):
        _load(tmp_path, [{"path": "a.jsonl", "type": "chat_template", **keys}])


# --- a user's own module ---------------------------------------------------------------------------------------

STRATEGY = '''
class QuestionAnswer:
    """Trains the answer of {q, a} rows; the prompt shows what load() read from cfg and ds_cfg."""

    def __init__(self, tokenizer, prefix):
        self.tokenizer, self.prefix = tokenizer, prefix

    def tokenize_prompt(self, row):
        prompt = self.tokenizer(f"{self.prefix} Q: {row['q']}\\nA:")["input_ids"]
        answer = self.tokenizer(" " + row["a"], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer, "attention_mask": [1] * 99}


def load_qa(tokenizer, cfg, ds_cfg):
    return QuestionAnswer(tokenizer, f"[{cfg.sequence_len} {cfg.not_a_key} {ds_cfg['split']} {cfg.datasets[0].split}]")


def load(tokenizer, cfg):
    return QuestionAnswer(tokenizer, "[pkg]")
'''


def _user_config(tmp_path: Path, kind: str, rows: list[dict]):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return _load(tmp_path, [{"path": "qa.jsonl", "type": kind}], sequence_len=256)


def test_a_users_module_beside_the_config_tokenizes_its_rows(tmp_path, tokenizer, monkeypatch):
    (tmp_path / "my_prompts.py").write_text(STRATEGY)
    monkeypatch.chdir("/")  # found beside the config, not through the current directory
    cfg = _user_config(tmp_path, "my_prompts.load_qa", [{"q": "2+2?", "a": "4"}])
    data = build_datasets(cfg, tokenizer)
    (row,) = data.train
    prompt = tokenizer("[256 None train train] Q: 2+2?\nA:")["input_ids"]
    answer = tokenizer(" 4", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert row["input_ids"] == prompt + answer and row["labels"] == [IGNORE_INDEX] * len(prompt) + answer
    assert row["attention_mask"] == [1] * len(row["input_ids"])  # the pipeline's own, not the strategy's
    assert data.stats.datasets[0].type == "my_prompts.load_qa"


def test_axolotls_package_module_spelling_calls_its_load(tmp_path, tokenizer):
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "qa.py").write_text(STRATEGY)
    (row,) = build_datasets(_user_config(tmp_path, "strategies.qa", [{"q": "Hi?", "a": "Yo"}]), tokenizer).train
    assert tokenizer.decode(row["input_ids"]).startswith("[pkg] Q: Hi?\nA: Yo")


@pytest.mark.parametrize(
    ("module", "kind", "expected"),
    [
        (
            None,
            "my_prompts.load_qa",
            r"datasets\[0\]\.type 'my_prompts\.load_qa': no such Python file: .*my_prompts\.py",
        ),
        (
            STRATEGY,
            "my_prompts.load_other",
            r"my_prompts\.py has no function 'load_other' \(it defines \['QuestionAnswer', 'load', 'load_qa'\]\)",
        ),
        (
            "from axolotl.prompt_tokenizers import PromptTokenizingStrategy\n",
            "my_prompts.load",
            r"importing .*my_prompts\.py failed: ModuleNotFoundError: No module named 'axolotl'",
        ),
        (
            "def load(tokenizer, cfg):\n    return 'text'\n",
            "my_prompts.load",
            r"returned str, not a strategy with tokenize_prompt",
        ),
    ],
)
def test_a_module_that_cannot_be_used_names_the_type(tmp_path, tokenizer, module, kind, expected):
    if module is not None:
        (tmp_path / "my_prompts.py").write_text(module)
    with pytest.raises(DataError, match=expected):
        build_datasets(_user_config(tmp_path, kind, [{"q": "Q?", "a": "A"}]), tokenizer)


def test_a_row_the_users_strategy_fails_on_names_file_and_row(tmp_path, tokenizer):
    (tmp_path / "my_prompts.py").write_text(STRATEGY)
    cfg = _user_config(tmp_path, "my_prompts.load_qa", [{"q": "Q?", "a": "A"}, {"q": "Q2?", "a": None}])
    data = (tmp_path / "qa.jsonl").resolve()
    with pytest.raises(DataError, match=re.escape(f"{data}: row 2: tokenize_prompt raised TypeError")):
        build_datasets(cfg, tokenizer)
    (tmp_path / "my_prompts.py").write_text(STRATEGY.replace('"labels": [-100]', '"mask": [-100]'))
    with pytest.raises(DataError, match=re.escape("row 1: tokenize_prompt must return {input_ids, labels}, got ['")):
        build_datasets(cfg, tokenizer)


def test_a_batched_strategy_gets_columns(tmp_path, tokenizer):
    batched = (
        STRATEGY
        + """

class Batched(QuestionAnswer):
    supports_batched = True

    def tokenize_prompt(self, batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = [QuestionAnswer.tokenize_prompt(self, row) for row in rows]
        return {"input_ids": [o["input_ids"] for o in out], "labels": [o["labels"] for o in out]}


def load_batched(tokenizer, cfg):
    return Batched(tokenizer, "[batched]")
"""
    )
    (tmp_path / "my_prompts.py").write_text(batched)
    built = build_datasets(
        _user_config(tmp_path, "my_prompts.load_batched", [{"q": "A?", "a": "a"}, {"q": "B?", "a": "b"}]), tokenizer
    )
    assert sorted(tokenizer.decode(row["input_ids"]) for row in built.train) == [
        "[batched] Q: A?\nA: a<|im_end|>",
        "[batched] Q: B?\nA: b<|im_end|>",
    ]


def test_editing_the_users_module_invalidates_the_prepared_data(tmp_path, tokenizer):
    (tmp_path / "my_prompts.py").write_text(STRATEGY)
    cfg = _user_config(tmp_path, "my_prompts.load_qa", [{"q": "Q?", "a": "A"}])
    cfg = cfg.model_copy(update={"dataset_prepared_path": str(tmp_path / "prepared")})
    cfg._source = tmp_path / "run.yml"  # model_copy keeps private attributes; said here for the reader
    assert [build_datasets(cfg, tokenizer).stats.cache for _ in range(2)] == ["miss", "hit"]
    (tmp_path / "my_prompts.py").write_text(STRATEGY.replace("Q: ", "Question: "))
    again = build_datasets(cfg, tokenizer)
    assert again.stats.cache == "miss" and tokenizer.decode(again.train[0]["input_ids"]).startswith(
        "[256 None train train] Question:"
    )


def test_the_top_level_chat_template_renders_datasets_and_is_saved_with_the_tokenizer(
    write_rows, make_cfg, tokenizer, tmp_path
):
    from llmkit.data.tokenizer import load_tokenizer

    base = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    base.chat_template = None  # a base model's tokenizer: only the config names a template
    spec = {"path": str(write_rows([{"conversations": SHAREGPT[1:3]}], "jsonl")), "type": "chat_template"}
    spec |= {"field_messages": "conversations", "roles": MAPPED["roles"]}
    spec |= {"message_property_mappings": MAPPED["message_property_mappings"]}
    cfg = make_cfg([spec], chat_template="gemma")
    (row,) = list(build_datasets(cfg, base).train)
    assert "<start_of_turn>user\nHi there<end_of_turn>" in base.decode(row["input_ids"])
    saved = load_tokenizer(make_cfg(chat_template="chatml"))
    assert saved.chat_template.startswith("{% for message in messages %}") and "<|im_start|>" in saved.chat_template
    with pytest.raises(ConfigError, match="chat_template: 'qwen9' is not one of"):
        load_tokenizer(make_cfg(chat_template="qwen9"))


def test_exact_duplicates_are_dropped_and_order_kept_without_shuffling(write_rows, make_cfg, tokenizer):
    rows = [{"instruction": f"Say {n}.", "output": str(n)} for n in (1, 2, 1, 3, 2, 4)]
    path = write_rows(rows, "jsonl")
    kept = build_datasets(make_cfg([{"path": str(path), "type": "alpaca"}], shuffle_merged_datasets=False), tokenizer)
    assert [tokenizer.decode(r["input_ids"]).split("Say ")[1][0] for r in kept.train] == list("121324")
    cfg = make_cfg([{"path": str(path), "type": "alpaca"}], dataset_exact_deduplication=True)
    deduplicated = build_datasets(cfg, tokenizer).train
    assert sorted(tokenizer.decode(r["input_ids"]).split("Say ")[1][0] for r in deduplicated) == list("1234")


def test_deduplication_keeps_the_same_tokens_trained_differently(write_rows, make_cfg, tokenizer):
    path = str(write_rows([{"conversations": SHAREGPT}], "jsonl"))
    both = [{"path": path, **MAPPED}, {"path": path, **MAPPED, "roles_to_train": ["human", "assistant"]}]
    train = build_datasets(make_cfg(both, dataset_exact_deduplication=True), tokenizer).train
    assert sorted(len(trained_runs(tokenizer, row)) for row in train) == [2, 4]  # one chat, two sets of labels
    again = build_datasets(make_cfg([both[0], both[0]], dataset_exact_deduplication=True), tokenizer).train
    assert len(again) == 1


def test_a_template_that_ends_no_turn_with_a_stop_token_is_warned_about(write_rows, make_cfg, tokenizer, caplog):
    """special_tokens changed the EOS to one the chat template never writes: as axolotl, no turn end trains, but the
    model would not learn to stop, so the log says so (once)."""
    path = write_rows([{"conversations": SHAREGPT}] * 2, "jsonl")
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    dataset = {**MAPPED, "path": str(path), "chat_template": "jinja", "chat_template_jinja": plain}
    build_datasets(make_cfg([dataset], dataset_prepared_path=None), tokenizer)
    assert caplog.text.count("ends a trained turn with none of ['<|im_end|>']") == 1
    caplog.clear()
    ended = {**dataset, "chat_template_jinja": TURN_END_TEMPLATE}
    build_datasets(make_cfg([ended], dataset_prepared_path=None), tokenizer)
    assert "ends a trained turn with none" not in caplog.text


def test_a_template_that_trains_no_turn_end_is_said_again_when_the_prepared_data_is_reused(
    write_rows, make_cfg, tokenizer, tmp_path, caplog
):
    """`validate` and the first `train` said it; a second `train`, reusing the prepared rows, trained in silence."""
    path = write_rows([{"conversations": SHAREGPT}], "jsonl")
    no_end = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    dataset = {**MAPPED, "path": str(path), "chat_template": "jinja", "chat_template_jinja": no_end}
    cfg = make_cfg([dataset], dataset_prepared_path=str(tmp_path / "prepared"))
    for cache in ("miss", "hit"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="llmkit.data"):
            assert build_datasets(cfg, tokenizer).stats.cache == cache
        said = [r.getMessage() for r in caplog.records if "no end-of-turn token is trained" in r.getMessage()]
        assert len(said) == 1, (cache, caplog.text)
