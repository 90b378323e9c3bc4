"""Preference training (`rl: dpo|ipo`): axolotl's DPO dataset types become TRL's prompt/chosen/rejected rows exactly,
and two DPO steps on a tiny model train, write the adapter and publish as SFT does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llmkit.config.schema import ConfigError, ConfigWarning, load_config
from llmkit.config.sections import DatasetSpec
from llmkit.data.preference import build_preference_datasets, preference_builder
from llmkit.data.sources import DataError
from llmkit.data.tokenizer import load_tokenizer
from llmkit.train.run import train, training_arguments

CHATML_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
LLAMA3_USER = (
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)


def _pairs(tmp_path: Path, rows: list[dict], name: str = "pairs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _build(tokenizer, kind: str, row: dict, **spec_keys) -> dict:
    return preference_builder(DatasetSpec(path="unused.jsonl", type=kind, **spec_keys), tokenizer)(row)


def test_chatml_and_llama3_types_build_the_exact_rows(tokenizer):
    row = {"system": "Be brief.", "question": "What is 2 plus 2?", "chosen": "4", "rejected": "5"}
    assert _build(tokenizer, "chatml.intel", row) == {
        "prompt": "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_USER.format("What is 2 plus 2?"),
        "chosen": "4<|im_end|>",
        "rejected": "5<|im_end|>",
    }
    assert _build(tokenizer, "chatml.intel", {**row, "system": None})["prompt"] == CHATML_USER.format(
        "What is 2 plus 2?"
    )
    argilla = {"instruction": "Name a colour.", "chosen_response": "Red", "rejected_response": "Seven"}
    assert _build(tokenizer, "chatml.argilla", argilla) == {
        "prompt": CHATML_USER.format("Name a colour."),
        "chosen": "Red<|im_end|>",
        "rejected": "Seven<|im_end|>",
    }
    chat = {
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
    }
    assert _build(tokenizer, "llama3.argilla_chat", chat) == {
        "prompt": LLAMA3_USER.format("Hi"),
        "chosen": "Hello!<|eot_id|>",
        "rejected": "Go away.<|eot_id|>",
    }
    ultra = {"prompt": "Hi", "chosen": chat["chosen"], "rejected": chat["rejected"], "system": "Be kind."}
    assert _build(tokenizer, "llama3.ultra", ultra) == {  # the answers are the conversations' second turns
        "prompt": "<|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>" + LLAMA3_USER.format("Hi"),
        "chosen": "Hello!<|eot_id|>",
        "rejected": "Go away.<|eot_id|>",
    }
    icr = {"input": "Fix: teh cat", "chosen": "the cat", "rejected": "teh dog"}
    assert _build(tokenizer, "chatml.icr", icr) == {
        "prompt": CHATML_USER.format("Fix: teh cat"),
        "chosen": "the cat<|im_end|>",
        "rejected": "teh dog<|im_end|>",
    }
    pairs = {"prompt": "Name a fruit.", "chosen": "Apple", "rejected": "Carrot", "system": "Be exact."}
    assert _build(tokenizer, "llama3.prompt_pairs", pairs) == {
        "prompt": "<|start_header_id|>system<|end_header_id|>\n\nBe exact.<|eot_id|>"
        + LLAMA3_USER.format("Name a fruit."),
        "chosen": "Apple<|eot_id|>",
        "rejected": "Carrot<|eot_id|>",
    }


def test_axolotls_default_and_passthrough_dpo_types_are_read(make_cfg, tokenizer, tmp_path):
    """axolotl's dpo chatml.default and llama3.default (rows {system?, prompt|input|question|instruction,
    chosen|chosen_response, rejected|rejected_response}) and passthrough.default (rows as they are) were refused as
    no preference types; `type: user_defined.default`, which axolotl refuses as a string, now says to write the
    mapping."""
    row = {"system": "Be brief.", "input": "Name a colour.", "chosen_response": "Red", "rejected": "Seven"}
    for family in ("chatml", "llama3"):
        assert _build(tokenizer, f"{family}.default", row) == _build(tokenizer, f"{family}.argilla", row)
    assert _build(tokenizer, "chatml.default", row) == {
        "prompt": "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_USER.format("Name a colour."),
        "chosen": "Red<|im_end|>",
        "rejected": "Seven<|im_end|>",
    }
    plain = {"prompt": "Name a colour.", "chosen": " Red", "rejected": " Seven"}
    path = _pairs(tmp_path, [{**plain, "id": 3}] * 2)
    data = build_preference_datasets(make_cfg([{"path": str(path), "type": "passthrough.default"}], rl="dpo"),
                                     tokenizer)  # fmt: skip
    assert data.train.to_list() == [plain, plain]
    with pytest.raises(ValueError, match=r"passthrough\.default is rl: dpo's type .* which rl: orpo does not read"):
        make_cfg([{"path": str(path), "type": "passthrough.default"}], rl="orpo")
    for rl, keys in [("dpo", "prompt_format, field_chosen, field_rejected, "),
                     ("kto", "prompt_format, field_completion, field_label, ")]:  # fmt: skip
        said = r"datasets\[0\]\.type: user_defined\.default is axolotl's name for a type given as a mapping, which"
        with pytest.raises(
            ValueError,
            match=said + r" it reads from the mapping: write type: \{field_prompt, "
            r"field_system, " + keys,
        ):
            make_cfg([{"path": str(path), "type": "user_defined.default"}], rl=rl, micro_batch_size=2)


def test_mistral_argilla_chat_builds_axolotls_row_and_its_unloadable_dpo_types_are_refused_by_name(
    make_cfg, tokenizer
):
    """axolotl's dpo mistral.argilla_chat (refused as no preference type) writes the question in [INST] ... [/INST]
    and closes each answer with the text </s>; zephyr.nectar (which trains Nectar's two worst answers) and
    mistral.prompt_pairs (which axolotl cannot load) are refused with their reasons, not as unknown types."""
    chat = {
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
    }
    assert _build(tokenizer, "mistral.argilla_chat", chat) == {
        "prompt": "[INST] Hi [/INST]", "chosen": "Hello!</s>", "rejected": "Go away.</s>"
    }  # fmt: skip
    for name, why in [("zephyr.nectar", r"takes the last two, the worst ranked \(rank 1 is Nectar's best\)"),
                      ("mistral.prompt_pairs", r"axolotl cannot load it")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"datasets\[0\]\.type: {name} is refused: .*{why}"):
            make_cfg([{"path": "p.jsonl", "type": name}], rl="dpo")


def test_a_dpo_type_named_without_a_dot_is_its_modules_default_as_axolotl_loads_it(make_cfg, tokenizer, tmp_path):
    """axolotl's rlhf docs write `type: chatml` under rl: dpo: its loader reads chatml.default, as it reads
    chat_template as chat_template.default; both were refused as no preference types (chat_template as the SFT
    type)."""
    for name, rl in [("chatml", "dpo"), ("llama3", "ipo"), ("chat_template", "dpo"), ("passthrough", "dpo")]:
        cfg = make_cfg([{"path": "p.jsonl", "type": name}], rl=rl)
        assert cfg.datasets[0].type == f"{name}.default"
    rows = [{"messages": [{"role": "user", "content": "Name a colour."}], "chosen": "Red", "rejected": "Seven"}] * 2
    path = _pairs(tmp_path, rows)
    pairs = {
        name: build_preference_datasets(make_cfg([{"path": str(path), "type": name}], rl="dpo"), tokenizer).train[0]
        for name in ("chat_template", "chat_template.default")
    }
    assert pairs["chat_template"] == pairs["chat_template.default"] and pairs["chat_template"]["chosen"].startswith(
        "Red"
    )
    # a module without that default is refused as before: kto's strategies have no chatml.default, orpo's read
    # chat_template.argilla
    with pytest.raises(ValueError, match=r"datasets\[0\]\.type: chatml is not a KTO dataset type"):
        make_cfg([{"path": "p.jsonl", "type": "chatml"}], rl="kto", micro_batch_size=2)
    # under rl: orpo, chat_template is dpo's chat_template.default: axolotl's orpo module has none (its loader's
    # getattr fails); it was said to be no preference type
    with pytest.raises(ValueError, match=r"datasets\[0\]\.type: chat_template is rl: dpo's chat_template\.default "
                                         r"\(axolotl loads .* its orpo strategies have none: its loader fails on it\)"
                                         r"; supported: chat_template\.argilla"):  # fmt: skip
        make_cfg([{"path": "p.jsonl", "type": "chat_template"}], rl="orpo")
    with pytest.raises(ValueError, match=r"datasets\[0\]\.type: user_defined\.default is axolotl's name for a type "):
        make_cfg([{"path": "p.jsonl", "type": "user_defined"}], rl="dpo")


def test_chat_template_default_reads_axolotls_dataset_keys(tokenizer):
    row = {
        "conversation": [{"from": "human", "value": "What is 2 plus 2?"}],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": [{"from": "human", "value": "What is 2 plus 2?"}, {"from": "gpt", "value": "5"}],
    }
    keys = {
        "field_messages": "conversation",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles": {"user": ["human"], "assistant": ["gpt"]},
    }
    assert _build(tokenizer, "chat_template.default", row, chat_template="chatml", **keys) == {
        "prompt": CHATML_USER.format("What is 2 plus 2?"),
        "chosen": "4<|im_end|>",
        "rejected": "5<|im_end|>",
    }
    # Without a chat_template the tokenizer's own renders the prompt (SmolLM2's adds its default system turn).
    own = _build(tokenizer, "chat_template.default", {**row, "rejected": "5"}, **keys)
    assert own["prompt"].startswith("<|im_start|>system\n") and own["prompt"].endswith(
        CHATML_USER.format("What is 2 plus 2?")
    )
    assert (own["chosen"], own["rejected"]) == ("4<|im_end|>", "5<|im_end|>")


def test_chat_template_argilla_chat_reads_the_prompt_from_the_chosen_conversation(make_cfg, tokenizer, tmp_path):
    """axolotl's dpo chat_template.argilla_chat (refused as no preference type): the prompt is the chosen
    conversation's turns before its last, rendered with the generation prompt; each answer its conversation's last
    turn, rendered as chat_template.default renders an answer; the dataset's keys (roles, property mappings) apply."""
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is 2 plus 2?"}]
    row = {"chosen": [*turns, {"from": "gpt", "value": "4"}], "rejected": [*turns, {"from": "gpt", "value": "5"}]}
    keys = {"message_property_mappings": {"role": "from", "content": "value"},
            "roles": {"system": ["system"], "user": ["human"], "assistant": ["gpt"]}}  # fmt: skip
    assert _build(tokenizer, "chat_template.argilla_chat", row, chat_template="chatml", **keys) == {
        "prompt": "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_USER.format("What is 2 plus 2?"),
        "chosen": "4<|im_end|>",
        "rejected": "5<|im_end|>",
    }
    path = _pairs(tmp_path, [row, {**row, "chosen": [{"from": "gpt", "value": "4"}]}])
    cfg = make_cfg([{"path": str(path), "type": "chat_template.argilla_chat", "chat_template": "chatml", **keys}],
                   rl="dpo")  # fmt: skip
    with pytest.raises(DataError, match=rf"{path}: row 2: field 'chosen' must be a conversation: the turns before"):
        build_preference_datasets(cfg, tokenizer)


QWEN25 = Path(__file__).parents[1] / "data" / "qwen2_5_instruct.jinja"  # Qwen2.5-Instruct's own, tools included
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": '{"type": "object"}'},
}


def test_chat_template_preference_rows_render_tools_and_tool_calls_as_axolotls_dpo_strategies(
    make_cfg, tokenizer, tmp_path
):
    """axolotl's dpo chat_template.default and argilla_chat give the template the row's tools (`field_tools`,
    default `tools`; a function's parameters JSON text read as JSON) and a message's keys beyond role and content
    (tool_calls, with their JSON-string arguments read, a tool's tool_call_id) in every render, as its SFT rows get
    them; an answer that is a tool call (no content) is the template's text for it. Both were dropped: the prompt
    had no tools, a tool-call turn was an error (its content missing)."""
    keys = {"chat_template": "jinja", "chat_template_jinja": str(QWEN25)}
    user = {"role": "user", "content": "Weather in Paris?"}
    called = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    row = {"messages": [user], "chosen": called, "rejected": "I cannot know.", "functions": [WEATHER]}
    tools = [{**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": "object"}}}]
    own = tokenizer.apply_chat_template([user], tools=tools, chat_template=QWEN25.read_text(), tokenize=False,
                                        add_generation_prompt=True)  # fmt: skip
    assert '"description": "The weather in a city."' in own
    assert _build(tokenizer, "chat_template.default", row, field_tools="functions", **keys) == {
        "prompt": own,
        "chosen": CALL_TEXT,
        "rejected": "I cannot know.<|im_end|>",
    }
    # argilla_chat: the history holds the call and its result, whose tool_call_id reaches the template
    result = {"role": "tool", "content": '{"temp": 18}', "tool_call_id": "call_1"}
    history = [user, called, result]
    row = {
        "chosen": [*history, {"role": "assistant", "content": "18 degrees."}],
        "rejected": [*history, {"role": "assistant", "content": "Sunny."}],
        "tools": [WEATHER],
    }
    parsed = [
        user,
        {**called, "tool_calls": [{**CALL, "function": {**CALL["function"], "arguments": {"city": "Paris"}}}]},
        result,
    ]
    own = tokenizer.apply_chat_template(parsed, tools=tools, chat_template=QWEN25.read_text(), tokenize=False,
                                        add_generation_prompt=True)  # fmt: skip
    assert own.endswith('<tool_response>\n{"temp": 18}\n</tool_response><|im_end|>\n<|im_start|>assistant\n')
    expected = {"prompt": own, "chosen": "18 degrees.<|im_end|>", "rejected": "Sunny.<|im_end|>"}
    assert _build(tokenizer, "chat_template.argilla_chat", row, **keys) == expected
    # read from a file: its conversations of mixed messages are typed as JSON, which took a pair's text as characters
    path = _pairs(tmp_path, [row, row])
    cfg = make_cfg([{"path": str(path), "type": "chat_template.argilla_chat", **keys}], rl="dpo")
    assert list(build_preference_datasets(cfg, tokenizer).train) == [expected, expected]


def test_field_tools_is_said_to_be_ignored_where_no_type_reads_it(make_cfg):
    with pytest.warns(ConfigWarning, match=r"field_tools='functions': read only by rl's chat_template\.default and "):
        make_cfg([{"path": "p.jsonl", "type": "chatml.intel", "field_tools": "functions"}], rl="dpo")
    with pytest.warns(ConfigWarning, match=r"field_tools='functions': axolotl's loader never passes it on"):
        make_cfg([{"path": "p.jsonl", "type": "chat_template", "field_tools": "functions"}])


def test_field_messages_ending_on_the_chosen_answer_is_the_prompt_as_axolotl_renders_it_and_warned_once(
    make_cfg, tokenizer, tmp_path, caplog
):
    """A DPO tutorial's config sets field_messages: chosen, whose conversation ends on the chosen answer. axolotl's
    chat_template.default renders all of field_messages, that answer included, as the prompt; so does this project,
    and it now says so once per dataset (it said nothing, and every pair's answers followed the chosen one)."""
    rows = [
        {
            "chosen": [{"from": "human", "value": f"Explain {i}"}, {"from": "gpt", "value": f"Simple {i}"}],
            "rejected": [{"from": "human", "value": f"Explain {i}"}, {"from": "gpt", "value": f"Technical {i}"}],
        }
        for i in range(2)
    ]
    keys = {
        "type": "chat_template.default",
        "chat_template": "chatml",
        "field_messages": "chosen",
        "message_field_role": "from",
        "message_field_content": "value",
        "roles": {"user": ["human"], "assistant": ["gpt"]},
    }
    path = _pairs(tmp_path, rows)
    with caplog.at_level("WARNING"):
        pairs = build_preference_datasets(make_cfg([{"path": str(path), **keys}], rl="dpo"), tokenizer).train
    answered = (
        "<|im_start|>user\nExplain 0<|im_end|>\n<|im_start|>assistant\nSimple 0<|im_end|>\n<|im_start|>assistant\n"
    )
    assert {(pair["prompt"], pair["chosen"], pair["rejected"]) for pair in pairs} >= {
        (answered, "Simple 0<|im_end|>", "Technical 0<|im_end|>")
    }
    said = (
        f"{path}: field_messages 'chosen' ends on an assistant turn (the chosen answer itself), which the prompt keeps"
    )
    assert caplog.text.count(said) == 1
    caplog.clear()
    plain = [{"messages": [{"role": "user", "content": "Explain"}], "chosen": "Simple", "rejected": "Technical"}]
    with caplog.at_level("WARNING"):  # a prompt ending on the user's turn is not warned about
        build_preference_datasets(
            make_cfg(
                [{"path": str(_pairs(tmp_path, plain, "plain.jsonl")), "type": "chat_template.default"}], rl="dpo"
            ),
            tokenizer,
        )
    assert "ends on an assistant turn" not in caplog.text


def test_a_bad_row_names_the_file_row_and_field(make_cfg, tokenizer, tmp_path):
    rows = [{"question": "a", "chosen": "b", "rejected": "c"}, {"question": "d", "chosen": "e"}]
    path = _pairs(tmp_path, rows)
    cfg = make_cfg([{"path": str(path), "type": "chatml.intel"}], rl="dpo")
    with pytest.raises(DataError, match=rf"{path}: row 2: field 'rejected' is missing"):
        build_preference_datasets(cfg, tokenizer)
    # a row the chat template refuses (its raise_exception): said as the row's, not Jinja's traceback
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path = _pairs(tmp_path, [{"messages": system, "chosen": "Hello", "rejected": "Go"}] * 2, "refused.jsonl")
    cfg = make_cfg([{"path": str(path), "type": "chat_template.default", "chat_template": "gemma"}], rl="dpo")
    with pytest.raises(
        DataError, match=rf"{path}: row 1: the chat template refuses the row: gemma has no system role"
    ):
        build_preference_datasets(cfg, tokenizer)


# The same five pairs in each type's row shape: two usable, one far longer than sequence_len, one whose chosen answer
# is empty and one whose answers are the same; (question, chosen, rejected).
FIVE_PAIRS = [
    ("What is 2 plus 2?", "4", "5"),
    ("word " * 3000, "long", "longer"),
    ("What is 3 plus 3?", "", "7"),
    ("What is 4 plus 4?", "8", "8"),
    ("What is 5 plus 5?", "10", "11"),
]
ROW_SHAPES = {
    "chatml.intel": lambda q, c, r: {"question": q, "chosen": c, "rejected": r},
    "chatml.argilla": lambda q, c, r: {"instruction": q, "chosen_response": c, "rejected_response": r},
    "chat_template.default": lambda q, c, r: {
        "messages": [{"role": "user", "content": q}],
        "chosen": c,
        "rejected": r,
    },
    None: lambda q, c, r: {"prompt": q, "chosen": c, "rejected": r},
}


@pytest.mark.parametrize("kind", list(ROW_SHAPES))
def test_long_pairs_and_pairs_that_train_nothing_are_dropped_and_counted(kind, make_cfg, tokenizer, tmp_path):
    """TRL cut a long pair to sequence_len (its answers to nothing) and trained identical answers, in silence;
    axolotl drops a pair whose prompt and either answer are longer than sequence_len."""
    path = _pairs(tmp_path, [ROW_SHAPES[kind](*pair) for pair in FIVE_PAIRS])
    datasets = [{"path": str(path), "type": kind}]
    data = build_preference_datasets(make_cfg(datasets, rl="dpo", sequence_len=256), tokenizer)
    assert sorted(pair["chosen"].split("<")[0] for pair in data.train) == ["10", "4"]
    counts = data.stats.datasets[0]
    assert (counts.rows, counts.kept, counts.dropped_overlong, counts.dropped_untrained) == (5, 2, 1, 2)
    assert (data.stats.train_rows, data.stats.eval_rows) == (2, 0)

    strict = make_cfg(datasets, rl="dpo", sequence_len=256, excess_length_strategy="raise")
    with pytest.raises(DataError, match=rf"{path}: row 2: the pair is \d+ tokens long .* sequence_len 256, and "
                                        "excess_length_strategy is raise"):  # fmt: skip
        build_preference_datasets(strict, tokenizer)


def test_no_usable_pair_says_why_and_truncate_is_refused_under_rl(make_cfg, tokenizer, tmp_path):
    path = _pairs(tmp_path, [ROW_SHAPES["chatml.intel"](*FIVE_PAIRS[i]) for i in (1, 3)])
    cfg = make_cfg([{"path": str(path), "type": "chatml.intel"}], rl="ipo", sequence_len=256)
    why = r"1 with nothing to train on \(an empty chosen answer, or chosen the same as rejected\)"
    with pytest.raises(DataError, match=rf"no row is left of 2: 1 longer than sequence_len 256 .*; {why}"):
        build_preference_datasets(cfg, tokenizer)
    with pytest.raises(ValueError, match="excess_length_strategy: truncate does not work with rl: dpo"):
        make_cfg([{"path": str(path), "type": "chatml.intel"}], rl="dpo", excess_length_strategy="truncate")


def test_a_dataset_without_type_is_used_as_it_is_under_rl_and_required_without(make_cfg, tokenizer, tmp_path):
    # axolotl: "If no type is provided, assume the dataset is already in the expected format".
    path = _pairs(tmp_path, [{"prompt": "Name a colour.", "chosen": " Red", "rejected": " Seven", "id": 3}] * 4)
    cfg = make_cfg([{"path": str(path), "type": None}], rl="dpo", val_set_size=0.25)
    data = build_preference_datasets(cfg, tokenizer)
    assert data.train[0] == {"prompt": "Name a colour.", "chosen": " Red", "rejected": " Seven"}
    with pytest.raises(ValueError, match=r"datasets\[0\]\.type: required"):
        make_cfg([{"path": str(path)}])


def test_trls_conversational_preference_rows_render_as_dpotrainer_renders_them(make_cfg, tokenizer, tmp_path):
    """No type, rows in TRL's conversational preference form (prompt, chosen and rejected lists of messages), which
    axolotl hands to TRL as they are: the strings TRL's own apply_chat_template makes of them, with the dataset's chat
    template (the tokenizer's, or the one chat_template names), under rl: dpo and rl: orpo alike. They were refused
    (`prompt` must be a string)."""
    from trl.data_utils import apply_chat_template

    from llmkit.data.chat import CHAT_TEMPLATES

    def said(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    rows = [
        {"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": said("Red."), "rejected": said("7.")},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}],
         "chosen": said("Bye."), "rejected": said("No.")},
        {"prompt": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "One,"}],
         "chosen": said(" two."), "rejected": said(" five.")},  # a prompt TRL continues
    ]  # fmt: skip
    path = _pairs(tmp_path, rows)
    for rl in ("dpo", "orpo"):
        built = build_preference_datasets(make_cfg([{"path": str(path), "type": None}], rl=rl), tokenizer).train
        assert sorted(built, key=str) == sorted((apply_chat_template(row, tokenizer) for row in rows), key=str)
    llama3 = make_cfg([{"path": str(path), "type": None, "chat_template": "llama3"}], rl="dpo")
    built = build_preference_datasets(llama3, tokenizer).train
    expected = [apply_chat_template(row, tokenizer, chat_template=CHAT_TEMPLATES["llama3"]) for row in rows]
    assert sorted(built, key=str) == sorted(expected, key=str)
    assert "<|start_header_id|>user<|end_header_id|>" in built[0]["prompt"]

    half = _pairs(tmp_path, [rows[0], {**rows[0], "rejected": "Seven."}], "half.jsonl")
    said = rf"{half}: row 2: field 'rejected' must be a non-empty list of .*\(prompt, chosen, rejected all .*Seven"
    with pytest.raises(DataError, match=said):
        build_preference_datasets(make_cfg([{"path": str(half), "type": None}], rl="dpo"), tokenizer)


def test_trls_implicit_prompt_rows_are_refused_saying_where_the_prompt_goes(make_cfg, tokenizer, tmp_path):
    """trl-lib/ultrafeedback_binarized's rows have no prompt: chosen and rejected are whole conversations, whose
    shared turns DPOTrainer would take as the prompt; axolotl's rl loader refuses a row without a prompt before TRL
    sees it. The error said only that prompt is missing."""
    turns = [{"role": "user", "content": "Hi"}]
    row = {"chosen": [*turns, {"role": "assistant", "content": "Hello"}], "score_chosen": 8.0,
           "rejected": [*turns, {"role": "assistant", "content": "Go"}], "score_rejected": 2.0}  # fmt: skip
    path = _pairs(tmp_path, [row])
    said = (
        rf"{path}: row 1: field 'prompt' is missing: chosen and rejected hold whole conversations \(TRL's implicit "
        r"prompt\), which axolotl's rl loader refuses without a prompt column; put the turns before the answers in "
        r"prompt, and the answers alone in chosen and rejected"
    )
    with pytest.raises(DataError, match=said):
        build_preference_datasets(make_cfg([{"path": str(path)}], rl="dpo"), tokenizer)


def test_a_type_mapping_is_axolotls_user_defined_preference_format(make_cfg, tokenizer, tmp_path):
    """axolotl's `type: {field_prompt, field_chosen, ..., prompt_format}` under rl was refused as unknown keys."""
    rows = [
        {"q": "Name a colour.", "sys": "Be brief.", "good": "Red", "bad": "Seven"},
        {"q": "Name a fruit.", "good": "Pear", "bad": "Nine"},  # no system field: {system} is ""
    ]
    path = _pairs(tmp_path, rows * 2)
    mapping = {
        "field_prompt": "q",
        "field_system": "sys",
        "field_chosen": "good",
        "field_rejected": "bad",
        "prompt_format": "[{system}] Q: {prompt}\nA:",
        "chosen_format": " {chosen}.",
    }
    data = build_preference_datasets(make_cfg([{"path": str(path), "type": mapping}], rl="dpo"), tokenizer)
    assert sorted(data.train, key=lambda pair: pair["prompt"]) == [
        {"prompt": "[Be brief.] Q: Name a colour.\nA:", "chosen": " Red.", "rejected": "Seven"},
        {"prompt": "[Be brief.] Q: Name a colour.\nA:", "chosen": " Red.", "rejected": "Seven"},
        {"prompt": "[] Q: Name a fruit.\nA:", "chosen": " Pear.", "rejected": "Nine"},
        {"prompt": "[] Q: Name a fruit.\nA:", "chosen": " Pear.", "rejected": "Nine"},
    ]
    # {} (axolotl's defaults: prompt, chosen, rejected as they are) is read as the preference mapping under rl
    plain = _pairs(tmp_path, [{"prompt": "Hi.", "chosen": " Hello", "rejected": " Go"}] * 2, "plain.jsonl")
    data = build_preference_datasets(make_cfg([{"path": str(plain), "type": {}}], rl="dpo"), tokenizer)
    assert data.train[0] == {"prompt": "Hi.", "chosen": " Hello", "rejected": " Go"}

    with pytest.raises(ValueError, match=r"datasets\[0\]\.type: a \{field_prompt, .* read under rl only"):
        make_cfg([{"path": str(path), "type": mapping}])
    with pytest.raises(ValueError, match=r"field_instruction: keys of axolotl's SFT user-defined prompt; the pref"):
        make_cfg([{"path": str(path), "type": {"field_instruction": "q"}}], rl="dpo")
    with pytest.raises(ValueError, match=r"field_choosen: unknown key \(did you mean field_chosen\?\)"):
        make_cfg([{"path": str(path), "type": {"field_prompt": "q", "field_choosen": "good"}}], rl="dpo")
    with pytest.raises(ValueError, match=r"chosen_format: unknown placeholder \{good\}; use \{chosen\}"):
        make_cfg([{"path": str(path), "type": {"chosen_format": "{good}"}}], rl="dpo")


def test_test_datasets_are_the_evaluation_pairs(make_cfg, tokenizer, tmp_path):
    train = _pairs(
        tmp_path, [{"prompt": f"Name colour {i}.", "chosen": " Red", "rejected": " Seven"} for i in range(4)]
    )
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "Name a fruit.", "chosen": " Pear", "rejected": " Nine"}) + "\n")
    test = [{"path": str(held), "type": None, "split": "train"}]
    data = build_preference_datasets(make_cfg([{"path": str(train), "type": None}], rl="dpo", test_datasets=test),
                                     tokenizer)  # fmt: skip
    assert len(data.train) == 4 and data.eval.to_list() == [
        {"prompt": "Name a fruit.", "chosen": " Pear", "rejected": " Nine"}
    ]
    with pytest.raises(ValueError, match=r"test_datasets\[0\]\.type: alpaca is not a preference dataset type"):
        make_cfg([{"path": str(train), "type": None}], rl="dpo", test_datasets=[{**test[0], "type": "alpaca"}])


def test_ipo_rpo_and_beta_reach_trl(tiny_config, tmp_path):
    pairs = _pairs(tmp_path, [{"question": "q", "chosen": "a", "rejected": "b"}])
    keys = {"rl": "ipo", "dpo_beta": 0.2, "rpo_alpha": 0.5, "dpo_use_weighting": True, "sequence_len": 96}
    cfg = load_config(tiny_config(datasets=[{"path": str(pairs), "type": "chatml.intel"}], **keys))
    args = training_arguments(cfg, cfg.optimizer.value)
    assert type(args).__name__ == "DPOConfig"
    assert (args.loss_type, args.loss_weights, args.beta) == (["ipo", "sft"], [1.0, 0.5], 0.2)
    assert (args.max_length, args.use_weighting) == (96, True)


def test_dpo_loss_type_weights_and_label_smoothing_reach_trl(tiny_config, tmp_path):
    """axolotl's dpo_loss_type and dpo_loss_weights (rl: dpo) were refused as not implemented, and any
    dpo_label_smoothing but 0; they are TRL's loss_type, loss_weights and label_smoothing, rpo_alpha's sft last."""
    pairs = _pairs(tmp_path, [{"question": "q", "chosen": "a", "rejected": "b"}])
    dataset = [{"path": str(pairs), "type": "chatml.intel"}]

    def args(**keys):
        cfg = load_config(tiny_config(datasets=dataset, rl="dpo", **keys))
        return training_arguments(cfg, cfg.optimizer.value)

    made = args(dpo_loss_type=["robust", "apo_zero"], dpo_loss_weights=[1.0, 0.5], dpo_label_smoothing=0.1,
                rpo_alpha=0.2)  # fmt: skip
    assert (made.loss_type, made.loss_weights, made.label_smoothing) == (
        ["robust", "apo_zero", "sft"],
        [1, 0.5, 0.2],
        0.1,
    )
    made = args(dpo_loss_type="hinge", rpo_alpha=0.3)  # one name: a list of one, as TRL reads it
    assert (made.loss_type, made.loss_weights, made.label_smoothing) == (["hinge", "sft"], [1.0, 0.3], 0.0)
    assert (args().loss_type, args().loss_weights) == (["sigmoid"], None)
    # rpo_alpha 0 is no NLL term, as axolotl's TRL adds 0 x it (it was refused as not above 0)
    made = args(rpo_alpha=0, dpo_loss_type=["sigmoid", "sft"])
    assert (made.loss_type, made.loss_weights) == (["sigmoid", "sft"], None)

    for keys, said in [
        ({"dpo_loss_type": ["sigmoid", "kto_pair"]}, r"dpo_loss_type\[1\]: Input should be 'sigmoid', 'hinge', "),
        ({"dpo_loss_type": []}, r"dpo_loss_type: List should have at least 1 item"),
        ({"dpo_loss_type": ["sigmoid", "sft"], "dpo_loss_weights": [1.0]},
         r"dpo_loss_weights: 1 weights for 2 losses of dpo_loss_type \['sigmoid', 'sft'\]; give one per loss"),
        ({"dpo_loss_weights": [1.0, 2.0]}, r"dpo_loss_weights: 2 weights for 1 losses of the default dpo_loss_type"),
        ({"dpo_loss_type": ["sigmoid", "sigmoid"]}, r"dpo_loss_type: \['sigmoid', 'sigmoid'\] names a loss twice"),
        ({"dpo_loss_type": ["hinge"], "dpo_label_smoothing": 0.1}, r"dpo_label_smoothing: read by TRL's robust, "
         r"exo_pair, aot, aot_unpaired losses only, none of dpo_loss_type \['hinge'\]: it would change nothing"),
        ({"dpo_loss_type": ["exo_pair"]}, r"dpo_label_smoothing: required above 0 with dpo_loss_type exo_pair"),
        ({"dpo_loss_type": ["aot"], "dpo_use_weighting": True}, r"dpo_use_weighting: TRL does not weight the aot"),
        ({"dpo_loss_type": ["sigmoid", "sft"], "rpo_alpha": 0.5}, r"rpo_alpha: adds TRL's sft loss, which "
         r"dpo_loss_type already has"),
        ({"dpo_label_smoothing": 0.5, "dpo_loss_type": ["robust"]}, r"dpo_label_smoothing: Input should be less "),
        ({"rl": "ipo", "dpo_loss_type": ["hinge"]}, r"dpo_loss_type: read with rl: dpo; rl: ipo's loss is TRL's ipo "
         r"alone \(axolotl drops them\): use rl: dpo with dpo_loss_type: \[ipo, \.\.\.\]"),
        ({"rl": "orpo", "dpo_loss_weights": [2.0], "datasets": None}, r"dpo_loss_weights: options of DPO's loss, "
         r"not rl: orpo's"),
        ({"rl": None, "dpo_loss_type": ["hinge"], "datasets": None}, r"dpo_loss_type: preference-training keys, "
         r"but rl is not set"),
    ]:  # fmt: skip
        keys = {"rl": "dpo", "datasets": dataset, **keys}
        if keys["datasets"] is None:
            del keys["datasets"]
        with pytest.raises(ConfigError, match=said):
            load_config(tiny_config(**keys))


SUMS = [{"question": f"What is {a} plus {a}?", "chosen": str(2 * a), "rejected": f"Maybe {a}"} for a in range(6)]


@pytest.mark.parametrize(
    ("kind", "keys"),
    [
        ("chatml.intel", {"rl": "dpo", "adapter": "qlora", "load_in_4bit": True}),
        ("chat_template.default", {"rl": "ipo", "rpo_alpha": 0.5}),
    ],
)
def test_two_preference_steps_train_and_publish_an_adapter(kind, keys, tiny_config, tiny_model_dir, tmp_path):
    rows = (
        SUMS
        if kind == "chatml.intel"
        else [
            {
                "messages": [{"role": "user", "content": row["question"]}],
                "chosen": row["chosen"],
                "rejected": row["rejected"],
            }
            for row in SUMS
        ]
    )
    pairs = _pairs(tmp_path, rows)
    path = tiny_config(datasets=[{"path": str(pairs), "type": kind}], micro_batch_size=2, val_set_size=0.34, **keys)
    out = train(load_config(path))

    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 2 and len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert any("eval_loss" in entry for entry in state["log_history"])
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert not (out / "ref").exists(), "the reference copy of the adapter must not be published"
    resolved = load_config(out / "config.resolved.yml")
    assert resolved.rl.value == keys["rl"] and resolved.datasets[0].type == kind

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    probe = torch.tensor([[1, 42, 314, 2718, 99]])
    with torch.no_grad():
        before = base(probe).logits[0, -1]
        after = PeftModel.from_pretrained(base, out)(probe).logits[0, -1]
    assert (after - before).abs().max() > 1e-6, "training changed nothing"


@pytest.mark.slow
def test_a_dpo_step_trains_dpo_loss_type_with_its_weights_and_label_smoothing(tiny_config, tmp_path):
    """The first step's policy is its reference (LoRA starts as the base): every log-ratio is 0, so EXO's loss is
    -log 2 - (log(1 - e) + log e) / 2 with e = dpo_label_smoothing, and APO-zero's (1 - sigmoid(0)) + sigmoid(0) = 1,
    each times its dpo_loss_weights weight: the first logged loss is theirs, not sigmoid DPO's log 2."""
    smoothing, weights = 0.1, [1.0, 2.0]
    path = tiny_config(
        datasets=[{"path": str(_pairs(tmp_path, SUMS)), "type": "chatml.intel"}], rl="dpo", micro_batch_size=2,
        dpo_loss_type=["exo_pair", "apo_zero"], dpo_loss_weights=weights, dpo_label_smoothing=smoothing,
    )  # fmt: skip
    out = train(load_config(path))
    losses = [entry["loss"] for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]  # fmt: skip
    exo = -math.log(2) - (math.log(1 - smoothing) + math.log(smoothing)) / 2
    assert losses[0] == pytest.approx(weights[0] * exo + weights[1] * 1.0, rel=1e-4), losses
    assert len(losses) == 2 and losses[1] != pytest.approx(losses[0], rel=1e-5), "the first step changed nothing"
    assert load_config(out / "config.resolved.yml").dpo_loss_type == ["exo_pair", "apo_zero"]


def test_preprocess_reads_and_counts_preference_pairs(tiny_config, tmp_path):
    """`llmkit preprocess` on any rl: config ended in a traceback calling its dataset type one that needs rl."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    long = {"question": "word " * 100, "chosen": "a", "rejected": "b"}  # over sequence_len: dropped and counted
    pairs = _pairs(tmp_path, [*SUMS, long])
    config = tiny_config(datasets=[{"path": str(pairs), "type": "chatml.intel"}], rl="dpo", val_set_size=2)
    result = CliRunner().invoke(app, ["preprocess", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "4 preference pairs to train on, 2 held out for evaluation (rl: dpo); TRL tokenizes them" in result.output
    assert "│ chatml.intel │    7 │    6 │        1 │          0 │" in result.output  # the SFT rows' table


def test_validate_counts_the_pairs_training_keeps_and_refuses_a_long_one_under_raise(tiny_config, tmp_path):
    """validate planned preference data as rows x sequence_len, and let a pair through that training should stop on."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.data.preference import epoch_pair_tokens

    long = {"question": "word " * 100, "chosen": "a", "rejected": "b"}
    pairs = _pairs(tmp_path, [*SUMS, long])
    config = tiny_config(
        datasets=[{"path": str(pairs), "type": "chatml.intel"}], rl="dpo", max_steps=None, micro_batch_size=2
    )
    split = epoch_pair_tokens(load_config(config), load_tokenizer(load_config(config)))
    assert split.sequences == 6 and 6 * 20 < split.tokens < 6 * 40  # the six short pairs, not the long one
    result = CliRunner().invoke(app, ["validate", str(config)], terminal_width=200)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"{split.tokens:,} tokens of the tokenized training split" in said
    # the steps too: 6 kept pairs, not 7 rows (the plan counted the dropped pair's step)
    assert "3 (6 preference pairs from 7 rows," in said, said

    strict = tiny_config(
        datasets=[{"path": str(pairs), "type": "chatml.intel"}], rl="dpo", excess_length_strategy="raise"
    )
    result = CliRunner().invoke(app, ["validate", str(strict)], terminal_width=200)
    assert result.exit_code == 1
    assert "row 7: the pair is" in " ".join(result.output.split())


@pytest.mark.parametrize("rl", ["dpo", "simpo", "kto"])
def test_the_plans_pair_count_reads_the_lengths_measured_when_the_pairs_were_read(rl, make_cfg, tmp_path):
    """epoch_pair_tokens tokenized every pair (KTO row) a second time after reading had measured it: its count is the
    same sum, from the texts tokenized once (as many as building the pairs for training tokenizes)."""
    from llmkit.data.preference import _pair_tokens, epoch_pair_tokens

    if rl == "kto":
        rows = [{"prompt": row["question"], "completion": row["chosen"], "label": i % 2 == 0}
                for i, row in enumerate(SUMS)]  # fmt: skip
        spec = {"path": str(_pairs(tmp_path, rows)), "type": None}
    else:
        spec = {"path": str(_pairs(tmp_path, SUMS)), "type": "chatml.intel"}
    gamma = {"simpo_gamma": 0.5} if rl == "simpo" else {}  # simpo: tokenized without special tokens, BOS put first
    cfg = make_cfg([spec], rl=rl, val_set_size=2, sequence_len=40, micro_batch_size=2, **gamma)
    tokenizer = load_tokenizer(cfg)  # its own: its class is changed below
    tokenized = []  # the texts each call tokenizes: the real tokenizer, its calls counted

    class Counting(type(tokenizer)):
        def __call__(self, text, *args, **kwargs):
            tokenized.extend(text if isinstance(text, list) else [text])
            return super().__call__(text, *args, **kwargs)

    tokenizer.__class__ = Counting
    train = build_preference_datasets(cfg, tokenizer).train
    building, tokenized[:] = len(tokenized), []
    split = epoch_pair_tokens(cfg, tokenizer)
    assert len(tokenized) == building > 0, "the pairs were tokenized again for the count"
    tokens = _pair_tokens(tokenizer, cfg)
    assert split.sequences == len(train) == 4
    assert split.tokens == sum(tokens(pair) for pair in train)  # the count the plan had


def test_dpo_norm_loss_averages_the_log_probabilities_as_axolotls_trainer_did(tiny_config, tmp_path):
    """dpo_norm_loss was refused; axolotl's DPO trainer ran every loss on the answers' log-probabilities averaged
    over their tokens (TRL's ipo averaging) under it: TRL 1.16's sigmoid_norm for the sigmoid loss, ipo as it is,
    and an error beside a loss TRL cannot average."""
    pairs = _pairs(tmp_path, [{"question": "q", "chosen": "a", "rejected": "b"}])
    dataset = [{"path": str(pairs), "type": "chatml.intel"}]

    def loss(**keys):
        cfg = load_config(tiny_config(datasets=dataset, dpo_norm_loss=True, **{"rl": "dpo", **keys}))
        args = training_arguments(cfg, cfg.optimizer.value)
        return args.loss_type, args.loss_weights

    assert loss() == (["sigmoid_norm"], None)
    assert loss(rl="ipo") == (["ipo"], None)  # IPO's loss already averages them
    assert loss(rpo_alpha=0.5) == (["sigmoid_norm", "sft"], [1.0, 0.5])
    assert loss(dpo_loss_type=["ipo", "sigmoid", "sft"], dpo_loss_weights=[1, 2, 3]) == (
        ["ipo", "sigmoid_norm", "sft"],
        [1, 2, 3],
    )
    for keys, said in [
        ({"dpo_loss_type": ["sigmoid", "hinge", "robust"], "dpo_label_smoothing": 0.1},
         r"dpo_norm_loss: averages each answer's log-probabilities over its tokens, which TRL 1.16 does in its "
         r"sigmoid_norm \(the sigmoid loss's\) and ipo losses only; dpo_loss_type \['hinge', 'robust'\] would be "
         r"trained on the summed ones"),
        ({"dpo_loss_type": ["sigmoid", "sigmoid_norm"]}, r"dpo_norm_loss: makes sigmoid sigmoid_norm, which "
         r"dpo_loss_type already has"),
        ({"rl": "orpo", "datasets": None}, r"dpo_norm_loss: options of DPO's loss, not rl: orpo's"),
        ({"rl": None, "datasets": None}, r"dpo_norm_loss: preference-training keys, but rl is not set"),
    ]:  # fmt: skip
        keys = {"rl": "dpo", "datasets": dataset, "dpo_norm_loss": True, **keys}
        if keys["datasets"] is None:
            del keys["datasets"]
        with pytest.raises(ConfigError, match=said):
            load_config(tiny_config(**keys))
    assert not load_config(tiny_config(datasets=dataset, rl="dpo", dpo_norm_loss=False)).ignored_keys


@pytest.mark.slow
def test_a_dpo_step_under_dpo_norm_loss_trains_the_averaged_loss(tiny_config, tmp_path):
    """Two DPO steps under dpo_norm_loss train TRL's sigmoid_norm loss, step for step, not the summed sigmoid one
    (the first step's log-ratios are all 0, log 2 either way: the second step tells them apart)."""

    def losses(run: str, **keys) -> list[float]:
        path = tiny_config(
            datasets=[{"path": str(_pairs(tmp_path, SUMS)), "type": "chatml.intel"}], rl="dpo", micro_batch_size=2,
            output_dir=str(tmp_path / run), **keys,
        )  # fmt: skip
        state = json.loads((train(load_config(path)) / "trainer_state.json").read_text())
        return [entry["loss"] for entry in state["log_history"] if "loss" in entry]

    normed = losses("normed", dpo_norm_loss=True)
    averaged, summed = losses("averaged", dpo_loss_type=["sigmoid_norm"]), losses("summed")
    assert len(normed) == 2 and normed[0] == pytest.approx(math.log(2), rel=1e-4)
    assert normed == pytest.approx(averaged, rel=1e-5)
    assert normed[1] != pytest.approx(summed[1], rel=1e-4), (normed, summed)
