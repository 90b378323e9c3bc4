"""chat_template rows beyond role and content, as axolotl builds them: a message's other keys that the template reads
(tool calls, tool results, a name, a custom key of a chat_template_jinja), each on a file the test writes, rendered
by a real template with the embedded model's real tokenizer, against the text written out by hand and the trained
stretches axolotl's find_turn gives.

qwen2_5_instruct.jinja beside this file is Qwen2.5-Instruct's own chat template (tokenizer_config.json), tools and
tool calls included; SmolLM2's tokenizer has its <|im_start|>/<|im_end|> as single tokens, the EOS <|im_end|>.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_dataset_types import trained_runs  # tests/data is on pytest's path

from llmkit.config.schema import ConfigWarning
from llmkit.data.chat import template_message_keys
from llmkit.data.pipeline import DataError, build_datasets

QWEN25 = Path(__file__).with_name("qwen2_5_instruct.jinja")
QWEN25_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
# A tool-calling exchange as OpenAI's format writes it (and datasets such as glaive's or xlam's in it): the call's
# arguments a JSON string, the assistant's content null beside its tool calls, the result in a `tool` message.
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 18}', "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is 18 degrees."},
]
TOOL_CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_TEXT = (
    QWEN25_SYSTEM + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    f"<|im_start|>assistant\n{TOOL_CALL_TEXT}<|im_end|>\n"
    '<|im_start|>user\n<tool_response>\n{"temp": 18}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\nIt is 18 degrees.<|im_end|>\n"
)


def _rows(write_rows, make_cfg, tokenizer, rows: list[dict], **keys) -> list[dict]:
    dataset = {"path": str(write_rows(rows, "jsonl")), "type": "chat_template", **keys}
    cfg = make_cfg([dataset], dataset_prepared_path=None)
    return list(build_datasets(cfg, tokenizer).train)


def test_a_tool_calling_conversation_renders_its_calls_and_results_and_trains_the_calls(
    write_rows, make_cfg, tokenizer
):
    """Qwen2.5's template reads message.tool_calls: the calls reach it (their JSON-string arguments read as JSON, as
    axolotl reads them, so `tojson` writes an object), and the tool's result renders as Qwen2.5 writes it. The call
    turn trains its <tool_call> block and end token (axolotl's find_turn renders the turn's place with a dummy content
    and no calls); the tool's result, a `tool` turn, is not trained. Such a row was refused ('training on tool calls
    is not implemented')."""
    (row,) = _rows(write_rows, make_cfg, tokenizer, [{"messages": TOOL_TURNS}], chat_template_jinja=str(QWEN25))
    assert tokenizer.decode(row["input_ids"]) == TOOL_TEXT
    assert row["input_ids"] == tokenizer(TOOL_TEXT, add_special_tokens=False)["input_ids"]
    assert trained_runs(tokenizer, row) == [TOOL_CALL_TEXT + "<|im_end|>", "It is 18 degrees.<|im_end|>"]
    # a call beside text trains both; roles_to_train: [tool] trains the result's content
    turns = [TOOL_TURNS[0], {**TOOL_TURNS[1], "content": "Let me look."}, *TOOL_TURNS[2:]]
    (row,) = _rows(
        write_rows,
        make_cfg,
        tokenizer,
        [{"messages": turns}],
        chat_template_jinja=str(QWEN25),
        roles_to_train=["assistant", "tool"],
    )
    assert tokenizer.decode(row["input_ids"]) == TOOL_TEXT.replace(
        "assistant\n<tool_call>", "assistant\nLet me look.\n<tool_call>"
    )
    assert trained_runs(tokenizer, row) == [
        f"Let me look.\n{TOOL_CALL_TEXT}<|im_end|>",
        '{"temp": 18}',  # its <|im_end|> is 6 tokens on: past axolotl's 3, untrained
        "It is 18 degrees.<|im_end|>",
    ]


def test_tool_call_arguments_that_are_not_json_name_the_row_and_field(write_rows, make_cfg, tokenizer):
    bad = {**CALL, "function": {**CALL["function"], "arguments": "{city: Paris"}}
    turns = [TOOL_TURNS[0], {**TOOL_TURNS[1], "tool_calls": [CALL, bad]}]
    with pytest.raises(
        DataError,
        match=re.escape("row 1: field 'messages[1].tool_calls[1].function.arguments' is a string but not JSON"),
    ):
        _rows(write_rows, make_cfg, tokenizer, [{"messages": turns}], chat_template_jinja=str(QWEN25))


def test_a_tool_call_turn_without_content_under_a_template_that_writes_no_calls_is_an_error(
    write_rows, make_cfg, tokenizer
):
    with pytest.raises(
        DataError,
        match=re.escape(
            "field 'messages[1].content' is empty: a tool-call turn, and the chat template reads no message"
        ),
    ):
        _rows(write_rows, make_cfg, tokenizer, [{"messages": TOOL_TURNS}], chat_template="chatml")


# A user's template that writes a message's `name` and a custom `mood` key: both reach it under their own names.
NAMED = (
    "{% for message in messages %}{{ '<|im_start|>' + message.role }}{% if message['name'] %}"
    "{{ ' (' + message['name'] + ')' }}{% endif %}{{ '\\n' + message.content }}"
    "{% if message.mood %}{{ ' [' + message.mood + ']' }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
)
NAMED_TURNS = [
    {"role": "user", "content": "Hi there.", "name": "Ann", "mood": "glad", "note": "not read"},
    {"role": "assistant", "content": "Hello, Ann.", "name": "Bot"},
]


def test_keys_a_custom_template_reads_reach_it_and_train_with_their_turn(write_rows, make_cfg, tokenizer):
    """A key the template reads on `message` is given under its own name, whatever its role; a key it does not read
    (`note`) changes nothing. An assistant turn's name, written in its header, trains from where the header first
    differs from the turn written without its other keys (axolotl's dummy turn has its role alone)."""
    assert template_message_keys(NAMED) == {"role", "name", "content", "mood"}
    (row,) = _rows(write_rows, make_cfg, tokenizer, [{"messages": NAMED_TURNS}], chat_template_jinja=NAMED)
    text = "<|im_start|>user (Ann)\nHi there. [glad]<|im_end|>\n<|im_start|>assistant (Bot)\nHello, Ann.<|im_end|>\n"
    assert tokenizer.decode(row["input_ids"]) == text
    assert trained_runs(tokenizer, row) == [" (Bot)\nHello, Ann.<|im_end|>"]


def test_keys_are_read_as_axolotls_template_analysis_finds_them(write_rows, make_cfg, tokenizer):
    """axolotl gives a message's other keys where its analysis of the template finds them read on a variable named
    `message`; a template that loops `for m in messages` reads none there, so a name it writes is not given (the
    mapped keys, role and content, always are). A key mapped by message_property_mappings is given under the mapped
    name, and its source key is not given again."""
    as_m = NAMED.replace("message", "m").replace("for m in ms", "for m in messages")
    assert template_message_keys(as_m) == frozenset()
    (row,) = _rows(write_rows, make_cfg, tokenizer, [{"messages": NAMED_TURNS}], chat_template_jinja=as_m)
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>user\nHi there.<|im_end|>")
    turns = [{**turn, "speaker": turn.pop("name")} for turn in json.loads(json.dumps(NAMED_TURNS))]
    (row,) = _rows(
        write_rows,
        make_cfg,
        tokenizer,
        [{"messages": turns}],
        chat_template_jinja=NAMED,
        message_property_mappings={"role": "role", "content": "content", "name": "speaker"},
    )
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>user (Ann)\nHi there. [glad]")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
    },
}
# Qwen2.5's system turn where the conversation has tools: each tool's JSON (`tojson`), the parameters an object
WEATHER_SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may "
    "call one or more functions to assist with the user query.\n\nYou are provided with function signatures within "
    '<tools></tools> XML tags:\n<tools>\n{"type": "function", "function": {"name": "get_weather", "description": '
    '"The weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
    '"required": ["city"]}}}\n</tools>\n\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)


def test_a_rows_tools_column_reaches_the_template(write_rows, make_cfg, tokenizer):
    """A row's `tools` (its function's parameters given as JSON text, read as JSON as axolotl reads them) are given
    to the template in every render, so Qwen2.5 writes them into its system turn and the turns train where the whole
    conversation writes them; a row without tools in the same file renders none. They were dropped."""
    rows = [{"messages": TOOL_TURNS, "tools": [WEATHER]}, {"messages": TOOL_TURNS}]
    built = _rows(write_rows, make_cfg, tokenizer, rows, chat_template_jinja=str(QWEN25))
    without, with_tools = sorted(built, key=lambda row: len(row["input_ids"]))  # merged rows are shuffled
    text = TOOL_TEXT.replace(QWEN25_SYSTEM, WEATHER_SYSTEM)
    assert tokenizer.decode(with_tools["input_ids"]) == text
    assert with_tools["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert trained_runs(tokenizer, with_tools) == [TOOL_CALL_TEXT + "<|im_end|>", "It is 18 degrees.<|im_end|>"]
    assert tokenizer.decode(without["input_ids"]) == TOOL_TEXT


def test_tools_that_are_not_a_list_or_whose_parameters_are_not_json_name_the_field(write_rows, make_cfg, tokenizer):
    rows = [{"messages": TOOL_TURNS, "tools": json.dumps([WEATHER])}]
    with pytest.raises(DataError, match=re.escape("row 1: field 'tools' must be a list of tools (objects), got str")):
        _rows(write_rows, make_cfg, tokenizer, rows, chat_template_jinja=str(QWEN25))
    bad = {**WEATHER, "function": {**WEATHER["function"], "parameters": "{type: object"}}
    rows = [{"messages": TOOL_TURNS, "tools": [bad]}]
    with pytest.raises(DataError, match=re.escape("field 'tools[0].function.parameters' is a string but not JSON")):
        _rows(write_rows, make_cfg, tokenizer, rows, chat_template_jinja=str(QWEN25))


def test_field_tools_is_said_to_be_ignored_as_axolotl_ignores_it(make_cfg):
    """axolotl's schema takes field_tools but its loader never gives it to the prompter, which reads `tools`: the
    key is listed among the ignored ones, saying so (it was said 'not implemented here')."""
    with pytest.warns(ConfigWarning, match="field_tools='functions': axolotl's loader never passes it on"):
        cfg = make_cfg([{"path": "rows.jsonl", "type": "chat_template", "field_tools": "functions"}])
    assert [key.describe() for key in cfg.ignored_keys] == [
        "datasets[0].field_tools='functions': axolotl's loader never passes it on, so a row's tools are its `tools` "
        "column whatever this names, there as here"
    ]
