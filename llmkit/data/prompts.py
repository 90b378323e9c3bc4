"""Prompt builders, one per axolotl dataset type: a row in, the text split into masked and trained segments out.

The formats follow docs/axolotl.md ("Dataset types and prompts"). Builders only assemble text; tokenizing and
masking happen once, in `llmkit.data.pipeline.Tokenize`, so every type masks the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from llmkit.config.sections import DatasetSpec, DatasetType
from llmkit.data.rows import Parts, RawRow, Segment

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# Used only when a tokenizer has no chat template of its own (base models such as Llama-2).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# ShareGPT's speaker names, mapped to chat-template roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

Builder = Callable[[RawRow, DatasetSpec], Parts]
Message = dict[str, str]  # a chat turn, {"role": ..., "content": ...}: what transformers' chat templates take


class FieldError(ValueError):
    """A row lacks a field or holds the wrong type there; the loader adds the file and row to the message."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field = field


def text_field(row: RawRow, field: str, *, optional: bool = False, where: str = "") -> str:
    """The string in `row[field]`; a missing field (or null) is an error unless optional, then it is "".

    `where` prefixes the field's name in errors for nested fields (e.g. "messages[2].").
    """
    value = row.get(field)
    if value is None:
        if optional:
            return ""
        raise FieldError(where + field, "is missing")
    if not isinstance(value, str):
        raise FieldError(where + field, f"must be a string, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def build_alpaca(row: RawRow, spec: DatasetSpec) -> Parts:
    instruction = text_field(row, spec.field_instruction or "instruction")
    input_text = text_field(row, spec.field_input or "input", optional=True)
    output = text_field(row, spec.field_output or "output")
    return Parts.prompt_response(alpaca_prompt(instruction, input_text), output)


def build_gpteacher(row: RawRow, spec: DatasetSpec) -> Parts:
    prompt = alpaca_prompt(text_field(row, "instruction"), text_field(row, "input", optional=True))
    return Parts.prompt_response(prompt, text_field(row, "response"))


def build_oasst(row: RawRow, spec: DatasetSpec) -> Parts:
    return Parts.prompt_response(alpaca_prompt(text_field(row, "INSTRUCTION")), text_field(row, "RESPONSE"))


def build_gpt4all(row: RawRow, spec: DatasetSpec) -> Parts:
    # alpaca_lora_4bit's gpt4all loader: the prompt, a newline, then the response.
    return Parts.prompt_response(text_field(row, "prompt") + "\n", text_field(row, "response"))


def build_completion(row: RawRow, spec: DatasetSpec) -> Parts:
    return Parts((Segment(text_field(row, spec.field or "text"), True),), chunked=True)


def build_input_output(row: RawRow, spec: DatasetSpec) -> Parts:
    segments = row.get("segments")
    if not isinstance(segments, list) or not segments:
        raise FieldError("segments", "must be a non-empty list of {label, text}")
    parts = []
    for i, segment in enumerate(segments):
        if not isinstance(segment, dict) or not isinstance(segment.get("label"), bool):
            raise FieldError(f"segments[{i}].label", "must be true or false")
        parts.append(Segment(text_field(segment, "text", where=f"segments[{i}]."), segment["label"]))
    # EOS only ends a trained answer: a masked last segment is a prompt with nothing to learn after it.
    return Parts(tuple(parts), add_eos=parts[-1].trained)


def chat_messages(row: RawRow, spec: DatasetSpec) -> list[Message]:
    """The row's conversation as [{role, content}]; reads OpenAI-style `messages` or ShareGPT `conversations`."""
    field = spec.field_messages or ("messages" if "messages" in row else "conversations")
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise FieldError(field, "must be a non-empty list of messages")
    first = turns[0] if isinstance(turns[0], dict) else {}
    sharegpt = "from" in first or ("role" not in first and field == "conversations")
    role_key = spec.message_field_role or ("from" if sharegpt else "role")
    content_key = spec.message_field_content or ("value" if sharegpt else "content")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FieldError(f"{field}[{i}]", f"must be an object, got {type(turn).__name__}")
        role = text_field(turn, role_key, where=f"{field}[{i}].")
        if role not in SHAREGPT_ROLES:
            raise FieldError(f"{field}[{i}].{role_key}", f"is {role!r}, not one of {sorted(SHAREGPT_ROLES)}")
        content = text_field(turn, content_key, where=f"{field}[{i}].")
        messages.append({"role": SHAREGPT_ROLES[role], "content": content})
    return messages


def make_chat_builder(tokenizer: PreTrainedTokenizerBase) -> Builder:
    """The chat_template builder: a chat template renders the conversation; assistant turns are trained.

    The template is the spec's `chat_template` (a Jinja string), else the tokenizer's, else ChatML. Each
    trained turn's text is what rendering the conversation up to it adds after the generation prompt, so the
    role header stays masked and the turn's end marker (the template's EOS) is trained.
    """

    def build(row: RawRow, spec: DatasetSpec) -> Parts:
        template = chat_template_for(spec, tokenizer)
        trained_roles = set(spec.roles_to_train or ["assistant"])
        messages = chat_messages(row, spec)
        segments: list[Segment] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and i:
                prompt = _render(tokenizer, template, messages[:i], generation_prompt=True)
                segments.append(Segment(prompt[len(done) :], False))
                done = prompt
            full = _render(tokenizer, template, messages[: i + 1], generation_prompt=False)
            if not full.startswith(done):
                raise FieldError("messages", "cannot be split into turns: the chat template is not incremental")
            segments.append(Segment(full[len(done) :], message["role"] in trained_roles))
            done = full
        return Parts(tuple(s for s in segments if s.text), add_eos=False, add_special_tokens=False)

    return build


def chat_template_for(spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase) -> str:
    """The spec's `chat_template`: tokenizer_default (or unset), chatml, or a Jinja string.

    Raises:
        ValueError: a template name this project does not ship (axolotl's llama3, gemma, ...).
    """
    own = spec.chat_template
    if not own or own == "tokenizer_default":
        return tokenizer.chat_template or CHATML_TEMPLATE
    if own == "chatml":
        return CHATML_TEMPLATE
    if "{{" not in own and "{%" not in own:
        raise ValueError(f"chat_template {own!r}: use tokenizer_default, chatml or a Jinja template string")
    return own


def _render(
    tokenizer: PreTrainedTokenizerBase, template: str, messages: list[Message], *, generation_prompt: bool
) -> str:
    # tokenize=False: the template's text, special tokens spelled out (a str); `Tokenize` turns it into ids.
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )
    return cast(str, text)


# Builders that need no tokenizer; chat_template (alias sharegpt) is added per tokenizer by `builders_for`.
STATIC_BUILDERS: dict[DatasetType, Builder] = {
    DatasetType.alpaca: build_alpaca,
    DatasetType.completion: build_completion,
    DatasetType.input_output: build_input_output,
    DatasetType.oasst: build_oasst,
    DatasetType.gpteacher: build_gpteacher,
    DatasetType.gpt4all: build_gpt4all,
}
CHAT_TYPES = (DatasetType.chat_template, DatasetType.sharegpt)


def builders_for(tokenizer: PreTrainedTokenizerBase) -> dict[DatasetType, Builder]:
    """A builder for every `DatasetType` (the config admits no other type; a test checks each has one)."""
    chat = make_chat_builder(tokenizer)
    return {**STATIC_BUILDERS, **dict.fromkeys(CHAT_TYPES, chat)}
