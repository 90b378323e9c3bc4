"""axolotl's instruction formats: the alpaca family (`alpaca`, `alpaca:chat`, `alpaca_chat.load_qa`, ...) and the
user-defined `type:` mapping.

A prompt is an optional system line, then the turn template filled with the instruction (and the input, where the
row has one); the response follows, trained, then EOS (`Parts.prompt_response`, masked as docs/axolotl.md says).
The texts are those of axolotl's AlpacaPrompter styles and prompt strategies; the README's "Dataset types" table
lists every name with its rows and prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from llmkit.config.sections import CustomPrompt, DatasetSpec, DatasetType, PromptStyle, parse_dataset_type
from llmkit.data.fields import Builder, FieldError, text_field
from llmkit.data.rows import Parts, RawRow


@dataclass(frozen=True)
class Turn:
    """A prompt layout: `{instruction}` and `{input}` in the turns, `{system}` in the system line."""

    with_input: str
    no_input: str
    system: str


# AlpacaPrompter's styles, chosen by `<type>:<style>`.
STYLE_TURNS: dict[PromptStyle, Turn] = {
    PromptStyle.instruct: Turn(
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
        "{system}\n\n",
    ),
    PromptStyle.chat: Turn(
        "USER: {instruction}\n{input}\nASSISTANT:",
        "USER: {instruction}\nASSISTANT:",
        "SYSTEM: {system}\n",
    ),
    PromptStyle.chatml: Turn(
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\n{system}<|im_end|>\n",
    ),
    PromptStyle.phi: Turn(
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
        "<|system|>\n{system}<|end|>\n",
    ),
}
# Prompters with a layout of their own, whatever the style (axolotl overrides their style matching).
_CHOICE = Turn("USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:", "{system}")
_TLDR_ASK = "USER: Summarize the following article as a TL;DR.\n{instruction}"
_TLDR = Turn(_TLDR_ASK + "\n{input}\nASSISTANT:", _TLDR_ASK + "\nASSISTANT:", "{system}")
_OPEN_ORCA = Turn(
    "### Human:\n{instruction}\n### Additional Context:\n{input}\n### Assistant:\n",
    "### Human:\n{instruction}\n### Assistant:\n",
    "### System:\n{system}\n",
)


class SystemPrompt(NamedTuple):
    """A prompter's built-in system text, for rows with and without an input."""

    with_input: str
    no_input: str


ALPACA_SYSTEM = SystemPrompt(
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
)
# alpaca_chat's prompters end their text with a blank line of their own (so chat style shows three newlines).
CONCISE_SYSTEM = SystemPrompt(
    "Below is an instruction from a USER that describes a task, paired with an input that provides further "
    "context. The ASSISTANT writes a response that concisely and appropriately completes the request.\n\n",
    "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that "
    "appropriately and concisely completes the request.\n\n",
)
NO_SYSTEM = SystemPrompt("", "")
_EXPLAIN = "Choose the answer that best answers the question. Explain your reasoning.\n"
_BE_CONCISE = "Choose the answer that best answers the question. Be concise in your response.\n\n"

# The classic alpaca prompt (docs/axolotl.md): `alpaca`'s instruct style with its built-in system text.
_INSTRUCT = STYLE_TURNS[PromptStyle.instruct]
ALPACA_WITH_INPUT = _INSTRUCT.system.format(system=ALPACA_SYSTEM.with_input) + _INSTRUCT.with_input
ALPACA_NO_INPUT = _INSTRUCT.system.format(system=ALPACA_SYSTEM.no_input) + _INSTRUCT.no_input


class Fields(NamedTuple):
    """What a format reads from a row."""

    instruction: str
    input: str
    output: str
    system: str = ""  # the row's own system text, for formats without a built-in one


FieldReader = Callable[[RawRow, DatasetSpec], Fields]


def alpaca_fields(row: RawRow, spec: DatasetSpec) -> Fields:
    return Fields(
        text_field(row, spec.field_instruction or "instruction"),
        text_field(row, spec.field_input or "input", optional=True),
        text_field(row, spec.field_output or "output"),
    )


def _fixed_fields(instruction: str, output: str, input_field: str | None = None, system: str | None = None):
    """A reader of fixed field names: the input and the system text are optional."""

    def read(row: RawRow, spec: DatasetSpec) -> Fields:
        return Fields(
            text_field(row, instruction),
            text_field(row, input_field, optional=True) if input_field else "",
            text_field(row, output),
            text_field(row, system, optional=True) if system else "",
        )

    return read


def _with_system_fields(row: RawRow, spec: DatasetSpec) -> Fields:
    return alpaca_fields(row, spec)._replace(system=text_field(row, "system", optional=True))


def _jeopardy_fields(row: RawRow, spec: DatasetSpec) -> Fields:
    return Fields(text_field(row, "question"), text_field(row, "category"), "what is " + text_field(row, "answer"))


def _choice_fields(row: RawRow, spec: DatasetSpec) -> Fields:
    choices = row.get("choices")
    if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
        raise FieldError("choices", "must be a list of strings")
    answer = "solution" if row.get("solution") is not None else "explanation"
    listed = "\n".join(f'- "{choice}"' for choice in choices)
    return Fields(text_field(row, "question"), listed, text_field(row, answer))


@dataclass(frozen=True)
class InstructionFormat:
    read: FieldReader
    turns: Mapping[PromptStyle, Turn]
    system: SystemPrompt | None  # None: the row's own system text (Fields.system)
    style: PromptStyle = PromptStyle.instruct  # when the name has no `:<style>`


def _same_turn(turn: Turn) -> dict[PromptStyle, Turn]:
    return dict.fromkeys(PromptStyle, turn)


_QA = _fixed_fields("question", "answer")
INSTRUCTION_FORMATS: dict[DatasetType, InstructionFormat] = {
    DatasetType.alpaca: InstructionFormat(alpaca_fields, STYLE_TURNS, ALPACA_SYSTEM),
    DatasetType.alpaca_instruct: InstructionFormat(alpaca_fields, STYLE_TURNS, ALPACA_SYSTEM),
    DatasetType.alpaca_chat: InstructionFormat(alpaca_fields, STYLE_TURNS, ALPACA_SYSTEM, PromptStyle.chat),
    DatasetType.alpaca_chat_qa: InstructionFormat(_QA, STYLE_TURNS, CONCISE_SYSTEM, PromptStyle.chat),
    DatasetType.alpaca_chat_concise: InstructionFormat(alpaca_fields, STYLE_TURNS, CONCISE_SYSTEM, PromptStyle.chat),
    DatasetType.alpaca_chat_camel_ai: InstructionFormat(
        _fixed_fields("message_1", "message_2"), STYLE_TURNS, CONCISE_SYSTEM, PromptStyle.chat
    ),
    DatasetType.alpaca_chat_no_prompt: InstructionFormat(alpaca_fields, STYLE_TURNS, NO_SYSTEM, PromptStyle.chat),
    DatasetType.alpaca_w_system: InstructionFormat(_with_system_fields, STYLE_TURNS, None, PromptStyle.chat),
    DatasetType.alpaca_w_system_chat: InstructionFormat(_with_system_fields, STYLE_TURNS, None, PromptStyle.chat),
    DatasetType.alpaca_w_system_instruct: InstructionFormat(_with_system_fields, STYLE_TURNS, None),
    DatasetType.alpaca_w_system_open_orca: InstructionFormat(
        _fixed_fields("question", "response", system="system_prompt"), _same_turn(_OPEN_ORCA), None
    ),
    DatasetType.alpaca_w_system_open_orca_chatml: InstructionFormat(
        _fixed_fields("question", "response", system="system_prompt"), STYLE_TURNS, None, PromptStyle.chatml
    ),
    DatasetType.oasst: InstructionFormat(_fixed_fields("INSTRUCTION", "RESPONSE"), STYLE_TURNS, ALPACA_SYSTEM),
    DatasetType.gpteacher: InstructionFormat(
        _fixed_fields("instruction", "response", input_field="input"), STYLE_TURNS, ALPACA_SYSTEM
    ),
    DatasetType.jeopardy: InstructionFormat(_jeopardy_fields, STYLE_TURNS, ALPACA_SYSTEM),
    DatasetType.summarizetldr: InstructionFormat(_fixed_fields("article", "summary"), _same_turn(_TLDR), NO_SYSTEM),
    DatasetType.explainchoice: InstructionFormat(_choice_fields, STYLE_TURNS, SystemPrompt(_EXPLAIN, _EXPLAIN)),
    DatasetType.concisechoice: InstructionFormat(
        _choice_fields, _same_turn(_CHOICE), SystemPrompt(_BE_CONCISE, _BE_CONCISE)
    ),
}


def layout(turn: Turn, system: str, instruction: str, input_text: str) -> str:
    """The prompt: the system line where there is a system text, then the turn with or without the input."""
    head = turn.system.format(system=system) if system and turn.system else ""
    if input_text:
        return head + turn.with_input.format(instruction=instruction, input=input_text)
    return head + turn.no_input.format(instruction=instruction)


def prompt_style(spec: DatasetSpec, default: PromptStyle) -> PromptStyle:
    """The style the spec asks for: `<type>:<style>`, alpaca_chat's `conversation`, else the format's own."""
    if isinstance(spec.type, str) and ":" in spec.type:
        parsed = parse_dataset_type(spec.type)
        if parsed and parsed[1]:
            return parsed[1]
    if spec.type is DatasetType.alpaca_chat and spec.conversation:
        return PromptStyle(spec.conversation)  # checked against PromptStyle when the config loaded
    return default


def instruction_builder(fmt: InstructionFormat) -> Builder:
    def build(row: RawRow, spec: DatasetSpec) -> Parts:
        fields = fmt.read(row, spec)
        if fmt.system is None:
            system = fields.system
        else:
            system = fmt.system.with_input if fields.input else fmt.system.no_input
        turn = fmt.turns[prompt_style(spec, fmt.style)]
        return Parts.prompt_response(layout(turn, system, fields.instruction, fields.input), fields.output)

    return build


def build_custom(row: RawRow, spec: DatasetSpec) -> Parts:
    """axolotl's user-defined format: the `type:` mapping names the fields and the layout."""
    custom = spec.type
    assert isinstance(custom, CustomPrompt)  # the pipeline picks this builder for mappings only
    # axolotl's `row[field_system] if field_system in row else system_prompt`: a row's "" or null (a JSON row
    # without the key, where other rows have it) writes no system line; system_prompt is for data without the field.
    field = custom.field_system
    system = text_field(row, field, optional=True) if field in row else custom.system_prompt
    turn = Turn(custom.format, custom.no_input_format, custom.system_format)
    instruction = text_field(row, custom.field_instruction)
    prompt = layout(turn, system, instruction, text_field(row, custom.field_input, optional=True))
    return Parts.prompt_response(prompt, text_field(row, custom.field_output, optional=True))
