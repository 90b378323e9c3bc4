"""Prompt builders, one per axolotl dataset type: a row in, the text split into masked and trained segments out.

The formats follow docs/axolotl.md ("Dataset types and prompts"). Builders only assemble text; tokenizing and
masking happen once, in `llmkit.data.pipeline.tokenize_parts`, so every type masks the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class FieldError(ValueError):
    """A row lacks a field or holds the wrong type there; the loader adds the file and row to the message."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field = field


@dataclass(frozen=True)
class Parts:
    """A row as text segments, each (text, trained). `add_eos`: append EOS after the last segment."""

    segments: list[tuple[str, bool]]
    add_eos: bool = True
    add_special_tokens: bool = True  # BOS etc. on the first segment; off where a chat template writes its own
    chunked: bool = False  # completion text: split into sequence_len pieces instead of dropping long rows


def text_field(row: dict[str, Any], field: str, *, optional: bool = False, where: str = "") -> str:
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


def _field_name(spec: Any, key: str, default: str) -> str:
    return getattr(spec, key, None) or default


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    if input_text:
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def build_alpaca(row: dict, spec: Any) -> Parts:
    instruction = text_field(row, _field_name(spec, "field_instruction", "instruction"))
    input_text = text_field(row, _field_name(spec, "field_input", "input"), optional=True)
    output = text_field(row, _field_name(spec, "field_output", "output"))
    return Parts([(alpaca_prompt(instruction, input_text), False), (output, True)])


def build_gpteacher(row: dict, spec: Any) -> Parts:
    prompt = alpaca_prompt(text_field(row, "instruction"), text_field(row, "input", optional=True))
    return Parts([(prompt, False), (text_field(row, "response"), True)])


def build_oasst(row: dict, spec: Any) -> Parts:
    return Parts([(alpaca_prompt(text_field(row, "INSTRUCTION")), False), (text_field(row, "RESPONSE"), True)])


def build_gpt4all(row: dict, spec: Any) -> Parts:
    # alpaca_lora_4bit's gpt4all loader: the prompt, a newline, then the response.
    return Parts([(text_field(row, "prompt") + "\n", False), (text_field(row, "response"), True)])


def build_completion(row: dict, spec: Any) -> Parts:
    return Parts([(text_field(row, _field_name(spec, "field", "text")), True)], chunked=True)


def build_input_output(row: dict, spec: Any) -> Parts:
    segments = row.get("segments")
    if not isinstance(segments, list) or not segments:
        raise FieldError("segments", "must be a non-empty list of {label, text}")
    parts = []
    for i, segment in enumerate(segments):
        if not isinstance(segment, dict) or not isinstance(segment.get("label"), bool):
            raise FieldError(f"segments[{i}].label", "must be true or false")
        parts.append((text_field(segment, "text", where=f"segments[{i}]."), segment["label"]))
    # EOS only ends a trained answer: a masked last segment is a prompt with nothing to learn after it.
    return Parts(parts, add_eos=parts[-1][1])


def chat_messages(row: dict, spec: Any) -> list[dict[str, str]]:
    """The row's conversation as [{role, content}]; reads OpenAI-style `messages` or ShareGPT `conversations`."""
    field = _field_name(spec, "field_messages", "messages" if "messages" in row else "conversations")
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise FieldError(field, "must be a non-empty list of messages")
    first = turns[0] if isinstance(turns[0], dict) else {}
    sharegpt = "from" in first or ("role" not in first and field == "conversations")
    role_key = _field_name(spec, "message_field_role", "from" if sharegpt else "role")
    content_key = _field_name(spec, "message_field_content", "value" if sharegpt else "content")
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


def make_chat_builder(tokenizer: Any) -> Callable[[dict, Any], Parts]:
    """The chat_template builder: a chat template renders the conversation; assistant turns are trained.

    The template is the spec's `chat_template` (a Jinja string), else the tokenizer's, else ChatML. Each
    trained turn's text is what rendering the conversation up to it adds after the generation prompt, so the
    role header stays masked and the turn's end marker (the template's EOS) is trained.
    """

    def build(row: dict, spec: Any) -> Parts:
        template = chat_template_for(spec, tokenizer)
        trained_roles = set(getattr(spec, "roles_to_train", None) or ["assistant"])
        messages = chat_messages(row, spec)
        segments, done = [], ""
        for i, message in enumerate(messages):
            trained = message["role"] in trained_roles
            if message["role"] == "assistant" and i:
                prompt = _render(tokenizer, template, messages[:i], generation_prompt=True)
                segments.append((prompt[len(done) :], False))
                done = prompt
            full = _render(tokenizer, template, messages[: i + 1], generation_prompt=False)
            if not full.startswith(done):
                raise FieldError("messages", "cannot be split into turns: the chat template is not incremental")
            segments.append((full[len(done) :], trained))
            done = full
        return Parts([s for s in segments if s[0]], add_eos=False, add_special_tokens=False)

    return build


def chat_template_for(spec: Any, tokenizer: Any) -> str:
    """The spec's `chat_template`: tokenizer_default (or unset), chatml, or a Jinja string.

    Raises:
        ValueError: a template name this project does not ship (axolotl's llama3, gemma, ...).
    """
    own = getattr(spec, "chat_template", None)
    if not own or own == "tokenizer_default":
        return tokenizer.chat_template or CHATML_TEMPLATE
    if own == "chatml":
        return CHATML_TEMPLATE
    if "{{" not in own and "{%" not in own:
        raise ValueError(f"chat_template {own!r}: use tokenizer_default, chatml or a Jinja template string")
    return own


def _render(tokenizer: Any, template: str, messages: list[dict], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


# Builders that need no tokenizer; chat_template (alias sharegpt) is added per tokenizer by `builders_for`.
STATIC_BUILDERS: dict[str, Callable[[dict, Any], Parts]] = {
    "alpaca": build_alpaca,
    "completion": build_completion,
    "input_output": build_input_output,
    "oasst": build_oasst,
    "gpteacher": build_gpteacher,
    "gpt4all": build_gpt4all,
}
CHAT_TYPES = ("chat_template", "sharegpt")
DATASET_TYPES = (*STATIC_BUILDERS, *CHAT_TYPES)


def builders_for(tokenizer: Any) -> dict[str, Callable[[dict, Any], Parts]]:
    chat = make_chat_builder(tokenizer)
    return {**STATIC_BUILDERS, **dict.fromkeys(CHAT_TYPES, chat)}
