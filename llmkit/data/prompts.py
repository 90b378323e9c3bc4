"""Prompt builders, one per dataset type: a row in, the text split into masked and trained segments out.

The formats follow docs/axolotl.md ("Dataset types and prompts") and axolotl's prompt strategies: the alpaca family
and the user-defined mapping in `llmkit.data.formats`, chat templates in `llmkit.data.chat`, the plain types here.
Builders only assemble text; tokenizing and masking happen once, in `llmkit.data.pipeline.Tokenize`, so every type
masks the same way. A user's own `module.function` strategy tokenizes for itself (`llmkit.data.user_strategy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llmkit.config.sections import CustomPrompt, DatasetSpec, DatasetType
from llmkit.data.chat import ChatDefaults, chat_messages, chat_tools, make_chat_builder, resolve_template
from llmkit.data.fields import Builder, FieldError, text_field
from llmkit.data.formats import (
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    INSTRUCTION_FORMATS,
    build_custom,
    instruction_builder,
)
from llmkit.data.rows import Parts, RawRow, Segment

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ALPACA_NO_INPUT",
    "ALPACA_WITH_INPUT",
    "CHAT_TYPES",
    "Builder",
    "ChatDefaults",
    "FieldError",
    "STATIC_BUILDERS",
    "builder_for",
    "fields_check",
    "resolve_template",
    "text_field",
]


def build_gpt4all(row: RawRow, spec: DatasetSpec) -> Parts:
    # alpaca_lora_4bit's gpt4all loader: the prompt, a newline, then the response.
    return Parts.prompt_response(text_field(row, "prompt") + "\n", text_field(row, "response"))


def build_completion(row: RawRow, spec: DatasetSpec) -> Parts:
    return Parts((Segment(text_field(row, spec.field or "text"), True),), chunked=True)


def build_input_output(row: RawRow, spec: DatasetSpec) -> Parts:
    segments = row.get("segments")
    if not isinstance(segments, list):  # an empty list is a row with nothing to train on: dropped and counted
        raise FieldError("segments", "must be a list of {label, text}")
    parts = []
    for i, segment in enumerate(segments):
        if not isinstance(segment, dict) or not isinstance(segment.get("label"), bool):
            raise FieldError(f"segments[{i}].label", "must be true or false")
        parts.append(Segment(text_field(segment, "text", where=f"segments[{i}]."), segment["label"]))
    # The text exactly as written, as axolotl's RawInputOutputStrategy tokenizes it: no BOS, no EOS added (its users
    # write them into the segments; adding one would train a second).
    return Parts(tuple(parts), add_eos=False, add_special_tokens=False)


CHAT_TYPES = (DatasetType.chat_template, DatasetType.sharegpt)
_TOOL_CALLS = frozenset({"tool_calls"})  # a message key a chat type's template may read (`fields_check`)
# Builders that need no tokenizer; a chat type's builder is made per dataset by `builder_for` (a test checks that
# these and CHAT_TYPES cover every `DatasetType`, the only names the config admits).
STATIC_BUILDERS: dict[DatasetType, Builder] = {
    **{kind: instruction_builder(fmt) for kind, fmt in INSTRUCTION_FORMATS.items()},
    DatasetType.gpt4all: build_gpt4all,
    DatasetType.completion: build_completion,
    DatasetType.input_output: build_input_output,
}


def builder_for(
    spec: DatasetSpec,
    tokenizer: PreTrainedTokenizerBase,
    train_on_inputs: bool = False,
    chat: ChatDefaults | None = None,
) -> Builder:
    """The builder for one dataset spec: its named type (`alpaca:chat` is alpaca's), or the user-defined mapping.

    Raises:
        ValueError: a type name that names no builder (user modules tokenize for themselves: see user_strategy), or
            a chat template that cannot be used.
    """
    if isinstance(spec.type, CustomPrompt):
        return build_custom
    kind = spec.base_type
    if kind is None:
        raise ValueError(f"type {spec.type!r} is a user module, not a prompt builder")
    if kind in CHAT_TYPES:
        return make_chat_builder(spec, tokenizer, train_on_inputs, chat)
    return STATIC_BUILDERS[kind]


def fields_check(spec: DatasetSpec) -> Callable[[RawRow], object] | None:
    """What the spec's rows must hold that no tokenizer is needed to check (`llmkit validate`, where the tokenizer is
    not here): the whole builder of a type that writes its own text, a chat type's messages and tools (the template
    renders them, and reads further keys of a message, which `builder_for`'s builder checks); None for a user's
    module, which tokenizes its rows itself."""
    if isinstance(spec.type, CustomPrompt) or spec.base_type in STATIC_BUILDERS:
        build = build_custom if isinstance(spec.type, CustomPrompt) else STATIC_BUILDERS[spec.base_type]
        return lambda row: build(row, spec)
    if spec.base_type in CHAT_TYPES:  # a tool-call turn without text is refused only by a template without
        return lambda row: (chat_messages(row, spec, _TOOL_CALLS), chat_tools(row))  # tool calls: unknown here
    return None
