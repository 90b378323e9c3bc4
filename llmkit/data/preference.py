"""Preference data: axolotl's `prompt_strategies/dpo` dataset types (and `orpo`'s chat_template.argilla) as TRL's
{prompt, chosen, rejected} rows; under rl: kto, its `prompt_strategies/kto` types as TRL's {prompt, completion, label}.

    rl: dpo
    datasets:
      - path: data/pairs.jsonl
        type: chatml.intel        # rows {system?, question, chosen, rejected}

Each type makes three strings of a row: the prompt, which ends where the assistant's answer starts, and the
preferred and the worse answer, each closed by the end marker of its turn. TRL's DPOTrainer tokenizes them
(appending EOS to an answer that does not end with it) and trains the first answer over the second. As axolotl does,
a pair whose prompt and either answer are longer than sequence_len is dropped and counted (or, with
excess_length_strategy: raise, an error naming it); so is a pair that trains nothing (an empty chosen answer, or
the same answer twice). The chatml.*
and llama3.* types write their chat format themselves; chat_template.default and chat_template.argilla render the
conversation with the dataset's chat template (or the config's, or the tokenizer's). TRL's ORPOTrainer (rl: orpo)
reads the same rows. A KTO row (one answer, labelled desirable or not) is dropped and counted the same way: longer
than sequence_len as KTOTrainer tokenizes it, or with an empty completion.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from datasets import Dataset, concatenate_datasets
from jinja2 import TemplateError

from llmkit.config.plan import TokenizedSplit
from llmkit.config.sections import DatasetSpec, KTOPrompt, KTOType, PreferencePrompt, PreferenceType, RLMethod
from llmkit.core.errors import short_repr
from llmkit.data.chat import (
    TOOLS,
    ChatDefaults,
    chat_tools,
    message_text,
    template_fields,
    template_for_rows,
    template_message_keys,
)
from llmkit.data.fields import FieldError, RowError, absent, text_field
from llmkit.data.pipeline import count_kept
from llmkit.data.rows import RawRow
from llmkit.data.sources import DataError, convert_rows, load_rows, source_name, split_held_out
from llmkit.data.stats import DatasetStats, DataStats

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig

LOG = logging.getLogger(__name__)


class PreferenceRow(TypedDict):
    """A preference pair as TRL's DPOTrainer reads it (its "standard", not conversational, format)."""

    prompt: str  # through the assistant's header: the answer follows directly
    chosen: str  # the preferred answer, with its turn's end marker
    rejected: str  # the worse answer, with its turn's end marker


class KTORow(TypedDict):
    """A KTO row as TRL's KTOTrainer reads it (its unpaired "standard" format)."""

    prompt: str  # through the assistant's header: the answer follows directly
    completion: str  # one answer, with its turn's end marker
    label: bool  # true: a desirable answer; false: an undesirable one


PreferenceBuilder = Callable[[RawRow], PreferenceRow]
KTOBuilder = Callable[[RawRow], KTORow]
Row = TypeVar("Row", PreferenceRow, KTORow)
AnyRow = PreferenceRow | KTORow


@dataclass
class PreferenceData:
    train: Dataset  # PreferenceRow (KTORow under rl: kto)
    eval: Dataset | None
    stats: DataStats


@dataclass(frozen=True)
class ChatFormat:
    """A chat format written out: how a system text, a user turn and an answer's end are marked."""

    system_start: str
    system_end: str
    user_start: str
    assistant_start: str  # after the user's text: ends the user turn and opens the assistant's
    answer_end: str

    def prompt(self, user: str, system: str | None) -> str:
        head = self.system_start + system + self.system_end if system else ""
        return head + self.user_start + user + self.assistant_start


# As axolotl's dpo/chatml.py and dpo/llama3.py write them, which is not what chat.CHAT_TEMPLATES renders: no BOS
# (TRL's tokenizer adds the tokenizer's own) and no trimmed text, so a pair trains on the strings axolotl trains on.
CHATML = ChatFormat(
    "<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"
)
LLAMA3 = ChatFormat(
    "<|start_header_id|>system<|end_header_id|>\n\n",
    "<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\n",
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|eot_id|>",
)
# axolotl's dpo/mistral.py argilla_chat (its only mistral type that loads): no system turn, EOS written as text.
MISTRAL = ChatFormat("", "", "[INST] ", " [/INST]", "</s>")
_FORMATS = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL}
# argilla rows name their prompt in one of these fields (the first present wins), as axolotl reads them.
_ARGILLA_PROMPT = ("prompt", "input", "question", "instruction")


def _first_present(row: RawRow, fields: tuple[str, ...]) -> str:
    field = next((name for name in fields if row.get(name) is not None), fields[-1])
    return text_field(row, field)


def _turn_content(row: RawRow, field: str, index: int) -> str:
    """The content of message `index` of the conversation in `row[field]` ([user, assistant] in argilla/ultra)."""
    turns = row.get(field)
    if not isinstance(turns, list) or len(turns) <= index or not isinstance(turns[index], dict):
        raise FieldError(f"{field}[{index}]", "is missing: expected a list of {role, content} messages")
    return text_field(turns[index], "content", where=f"{field}[{index}].")


# (prompt, chosen, rejected) of a row, per row shape (the part of the type name after the format).
_SHAPES: dict[str, Callable[[RawRow], tuple[str, str, str]]] = {
    "intel": lambda row: (text_field(row, "question"), text_field(row, "chosen"), text_field(row, "rejected")),
    "argilla": lambda row: (
        _first_present(row, _ARGILLA_PROMPT),
        _first_present(row, ("chosen", "chosen_response")),
        _first_present(row, ("rejected", "rejected_response")),
    ),
    "default": lambda row: _SHAPES["argilla"](row),  # axolotl's dpo chatml.default and llama3.default
    "icr": lambda row: (text_field(row, "input"), text_field(row, "chosen"), text_field(row, "rejected")),
    "prompt_pairs": lambda row: (text_field(row, "prompt"), text_field(row, "chosen"), text_field(row, "rejected")),
    "ultra": lambda row: (
        text_field(row, "prompt"),
        _turn_content(row, "chosen", 1),
        _turn_content(row, "rejected", 1),
    ),
    "argilla_chat": lambda row: (
        _turn_content(row, "chosen", 0),
        _turn_content(row, "chosen", 1),
        _turn_content(row, "rejected", 1),
    ),
}


def _as_they_are(spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults) -> PreferenceBuilder:
    """No type (or passthrough.default): axolotl hands the rows to TRL as they are, {prompt, chosen, rejected} as
    strings, or in TRL's conversational form, which TRL's DPOTrainer (ORPOTrainer, CPOTrainer) renders with the chat
    template (`_conversational`)."""
    answers = ("chosen", "rejected")
    conversational = _conversational(spec, tokenizer, defaults, answers)

    def build(row: RawRow) -> PreferenceRow:
        if _is_conversational(row, answers):
            prompt, (chosen, rejected) = conversational(row)
            return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected)
        prompt, chosen, rejected = _SHAPES["prompt_pairs"](row)
        return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected)

    return build


def _user_defined_builder(mapping: PreferencePrompt) -> PreferenceBuilder:
    """A `type:` mapping: the row's fields written with the mapping's formats, as axolotl's dpo/user_defined.py
    writes them (a missing or empty system field is "")."""

    def build(row: RawRow) -> PreferenceRow:
        system = text_field(row, mapping.field_system, optional=True)
        return PreferenceRow(
            prompt=mapping.prompt_format.format(prompt=text_field(row, mapping.field_prompt), system=system),
            chosen=mapping.chosen_format.format(chosen=text_field(row, mapping.field_chosen)),
            rejected=mapping.rejected_format.format(rejected=text_field(row, mapping.field_rejected)),
        )

    return build


def _closed(answer: str, end: str) -> str:
    """An answer with its turn's end marker; an empty answer stays empty (a pair with no chosen answer is dropped)."""
    return answer + end if answer.strip() else ""


def _formatted_builder(kind: PreferenceType) -> PreferenceBuilder:
    """chatml.* / llama3.*: the row's system text (except argilla_chat, whose rows have none) and prompt, in the
    format the name gives."""
    family, shape = kind.value.split(".")
    chat, read = _FORMATS[family], _SHAPES[shape]

    def build(row: RawRow) -> PreferenceRow:
        prompt, chosen, rejected = read(row)
        system = None if shape == "argilla_chat" else text_field(row, "system", optional=True)
        return PreferenceRow(
            prompt=chat.prompt(prompt, system),
            chosen=_closed(chosen, chat.answer_end),
            rejected=_closed(rejected, chat.answer_end),
        )

    return build


# chat_template.default's role names when the spec gives no `roles` (axolotl's DPO default: the template's own).
_TEMPLATE_ROLES = ("system", "user", "assistant", "tool")
# Stands in for the user turn before an answer, to render the answer as the template writes an assistant turn.
_DUMMY_USER = {"role": "user", "content": "\ue000"}
# The message keys axolotl's preference strategies give the template whatever its analysis finds (it misses a key
# read with message.get(...)), beside those the template reads.
_OPENAI_KEYS = frozenset({"tool_calls", "tool_call_id", "name", "reasoning_content", "reasoning"})


def _messages(
    value: object, field: str, spec: DatasetSpec, read: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """A message list (or a single message, or a plain string: one turn) as template messages: role and content
    (absent in a tool-call turn without text), and the other keys as chat_template's SFT rows give them
    (`template_fields`: mapped ones, and those in `read`)."""
    keys = {"role": "role", "content": "content", **spec.message_keys}
    roles = {source: target for target, sources in (spec.roles or {}).items() for source in sources}
    roles = roles or {role: role for role in _TEMPLATE_ROLES}
    turns = value if isinstance(value, list) else [value]
    messages = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]." if isinstance(value, list) else f"{field}."
        if not isinstance(turn, dict):
            raise FieldError(where.rstrip("."), f"must be a message object, got {type(turn).__name__}")
        role = text_field(turn, keys["role"], where=where)
        if role not in roles:
            raise FieldError(where + keys["role"], f"is {role!r}, not one of {sorted(roles)} (set roles: to map it)")
        message: dict[str, Any] = {"role": roles[role]}
        calls = bool(turn.get(keys.get("tool_calls", "tool_calls")))
        if (content := message_text(turn, keys["content"], where, calls)) is not None:
            message["content"] = content
        messages.append(message | template_fields(turn, keys, read, where))
    return messages


def _answer(row: RawRow, field: str, spec: DatasetSpec, read: frozenset[str] = frozenset()) -> dict[str, Any]:
    """An answer field: a string (the assistant's text), a message, or a conversation whose last message it is."""
    value = row.get(field)
    if value is None:
        raise absent(row, field)
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if isinstance(value, list) and not value:
        raise FieldError(field, "is an empty list: expected the answer message last")
    last = value[-1] if isinstance(value, list) else value
    where = f"{field}[{len(value) - 1}]" if isinstance(value, list) else field
    return _messages(last, where, spec, read)[0]


def _render(
    tokenizer: PreTrainedTokenizerBase,
    template: str | None,
    messages: list[dict[str, Any]],
    tools: list | None = None,
    **options: bool,
) -> str:
    """`messages` as text, rendered with `template` (the chat template the dataset's spec resolved) and the row's
    `tools` (none given where there are none, as axolotl and TRL give them).

    Raises:
        RowError: the template refuses the row (its raise_exception: Gemma's system turn) or cannot render it.
    """
    extra = {"tools": tools} if tools else {}
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **extra, **options)
    except TemplateError as err:
        raise RowError(f"the chat template refuses the row: {err}") from None
    return cast(str, text)


def _response(full: str, prompt: str, content: str) -> str:
    """An answer's text in `full` (the dummy user turn and the answer, rendered), as axolotl extracts it: what follows
    the longest prefix `full` shares with `prompt` (the dummy user turn with the generation prompt, which a template
    may write otherwise than an answer's opening: Qwen3's <think>), trailing whitespace removed; where that still holds
    the dummy turn, from the answer's content on."""
    response = full[len(os.path.commonprefix([prompt, full])) :]
    if _DUMMY_USER["content"] not in response:
        return response.rstrip()
    at = full.find(content) if content else -1
    return full[at:].rstrip() if at >= 0 else full.rstrip()


def _template_builder(
    spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, template: str, history_in_chosen: bool = False
) -> PreferenceBuilder:
    """chat_template.default: the prompt is the conversation in `field_messages` (a string: one user turn) rendered
    with the generation prompt; an answer is the template's assistant turn after a dummy user turn, from where it
    parts from that turn's generation prompt, trailing whitespace removed (axolotl's rule). chat_template.argilla_chat
    (`history_in_chosen`): the prompt is the chosen conversation's turns before its last, and each answer its
    conversation's last turn, as axolotl reads them. As axolotl's, every render has the row's tools (`field_tools`,
    default `tools`), and a message the keys the template reads (tool calls, a tool's name and call id, ...)."""
    field = (spec.field_chosen or "chosen") if history_in_chosen else (spec.field_messages or "messages")
    read = template_message_keys(template) | _OPENAI_KEYS

    def render(messages: list[dict[str, Any]], generation_prompt: bool, tools: list | None) -> str:
        return _render(tokenizer, template, messages, tools, add_generation_prompt=generation_prompt)

    def answer(row: RawRow, answer_field: str, tools: list | None) -> str:
        message = _answer(row, answer_field, spec, read)
        content = message.get("content") or ""
        if not content.strip() and not message.get("tool_calls"):
            return ""  # as the chatml types give it: a pair with no chosen answer is dropped
        full = render([_DUMMY_USER, message], False, tools)
        return _response(full, render([_DUMMY_USER], True, tools), content)

    warned = False  # the prompt ending on an answer: said once per dataset, not per row

    def build(row: RawRow) -> PreferenceRow:
        nonlocal warned
        prompt = row.get(field)
        if prompt is None:
            raise absent(row, field)
        if history_in_chosen:
            if not isinstance(prompt, list) or len(prompt) < 2:
                raise FieldError(field, "must be a conversation: the turns before the answer, then the answer")
            prompt = prompt[:-1]
        messages = _messages(prompt, field, spec, read)
        tools = chat_tools(row, spec.field_tools or TOOLS)
        chosen_field = spec.field_chosen or "chosen"
        pair = PreferenceRow(
            prompt=render(messages, True, tools),
            chosen=answer(row, chosen_field, tools),
            rejected=answer(row, spec.field_rejected or "rejected", tools),
        )
        if messages and messages[-1]["role"] == "assistant" and not warned and not history_in_chosen:
            warned = True
            # axolotl renders all of field_messages as the prompt, a last assistant turn included (field_messages:
            # chosen in DPO tutorials): so does this, but each answer then follows an answer already given.
            chosen = (_answer(row, chosen_field, spec).get("content") or "").strip()
            which = " (the chosen answer itself)" if (messages[-1].get("content") or "").strip() == chosen else ""
            LOG.warning(
                "%s: field_messages %r ends on an assistant turn%s, which the prompt keeps, as axolotl's "
                "chat_template.default renders it: every pair's answers follow an answer already given; set "
                "field_messages to a field holding the conversation before the answers",
                source_name(spec),
                field,
                which,
            )
        return pair

    return build


def _argilla_builder(tokenizer: PreTrainedTokenizerBase, template: str) -> PreferenceBuilder:
    """chat_template.argilla (ORPO's, axolotl's orpo/chat_template.py): `chosen` and `rejected` are conversations of
    user/assistant turns ending in the answer; the prompt is the row's system text and `chosen`'s turns before its
    last answer (each user turn the row's `prompt` text where it has one, as axolotl reads it) rendered with the
    generation prompt; an answer is the rendering with it, from where the prompt ends. `template`: the config's (or
    the tokenizer's), as axolotl's: it reads no dataset's own chat_template for this type."""

    def turns(row: RawRow, field: str) -> list[Any]:
        value = row.get(field)
        if value is None:
            raise absent(row, field)
        if not isinstance(value, list) or not value or len(value) % 2:
            raise FieldError(field, "must be a list of user and assistant turns, the answer last (an even number)")
        return value

    def render(messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return _render(tokenizer, template, messages, add_generation_prompt=generation_prompt)

    def build(row: RawRow) -> PreferenceRow:
        chosen, rejected = turns(row, "chosen"), turns(row, "rejected")
        system = text_field(row, "system", optional=True)
        messages = [{"role": "system", "content": system}] if system else []
        for i in range(0, len(chosen), 2):
            user = text_field(row, "prompt") if row.get("prompt") is not None else _turn_content(row, "chosen", i)
            messages.append({"role": "user", "content": user})
            if i + 2 < len(chosen):
                messages.append({"role": "assistant", "content": _turn_content(row, "chosen", i + 1)})
        prompt = render(messages, generation_prompt=True)

        def answer(field: str, last: int) -> str:
            content = _turn_content(row, field, last)
            if not content.strip():
                return ""  # as the other types give it: a pair with no chosen answer is dropped
            full = render([*messages, {"role": "assistant", "content": content}], generation_prompt=False)
            return full[len(prompt) :]

        return PreferenceRow(
            prompt=prompt, chosen=answer("chosen", len(chosen) - 1), rejected=answer("rejected", len(rejected) - 1)
        )

    return build


def preference_builder(
    spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults | None = None
) -> PreferenceBuilder:
    """What turns one of the spec's rows into a `PreferenceRow`.

    Raises:
        ValueError: a type that is no preference type, or a chat template that cannot be used.
    """
    if spec.type is None or spec.type == PreferenceType.passthrough_default:  # as axolotl: rows already in TRL's
        return _without_double_bos(_as_they_are(spec, tokenizer, defaults or ChatDefaults()), tokenizer)  # format
    if (plain := _plain_builder(spec)) is not None:
        return _without_double_bos(plain, tokenizer)
    if not isinstance(spec.type, str) or spec.type not in PreferenceType._value2member_map_:
        names = ", ".join(kind.value for kind in PreferenceType)
        raise ValueError(f"type {spec.type!r} is not a preference dataset type; supported: {names}")
    kind = PreferenceType(spec.type)  # a chat_template.* type: rendered with the chat template
    if kind is PreferenceType.chat_template_argilla:
        # axolotl's orpo argilla resolves the config's chat template alone (get_chat_template_from_config without
        # the dataset's entry): the entry's own chat_template is said to be ignored (config.schema)
        config_only = spec.model_copy(update={"chat_template": None, "chat_template_jinja": None})
        build = _argilla_builder(tokenizer, template_for_rows(config_only, tokenizer, defaults or ChatDefaults()))
    else:
        template = template_for_rows(spec, tokenizer, defaults or ChatDefaults())
        build = _template_builder(spec, tokenizer, template, kind is PreferenceType.chat_template_argilla_chat)
    return _without_double_bos(build, tokenizer)


def _plain_builder(spec: DatasetSpec) -> PreferenceBuilder | None:
    """The spec's pair builder where it needs no tokenizer: a mapping, or a type that writes its own chat format
    (chatml.*, llama3.*); None where the chat template renders the rows (chat_template.*, and rows as
    they are, which may be TRL's conversational ones), or for no preference type."""
    if spec.type is None or spec.type == PreferenceType.passthrough_default:
        return None
    if isinstance(spec.type, PreferencePrompt):
        return _user_defined_builder(spec.type)
    if not isinstance(spec.type, str) or spec.type not in PreferenceType._value2member_map_:
        return None
    kind = PreferenceType(spec.type)
    return None if kind.value.startswith("chat_template.") else _formatted_builder(kind)


def _without_double_bos(build: Callable[[RawRow], Row], tokenizer: PreTrainedTokenizerBase) -> Callable[[RawRow], Row]:
    """TRL tokenizes the prompt with the tokenizer's special tokens: a prompt that a template began with the BOS
    text would start with two BOS tokens where the tokenizer adds its own."""
    bos = tokenizer.bos_token
    probe = tokenizer("a")["input_ids"]
    if not bos or not probe or probe[0] != tokenizer.bos_token_id:
        return build

    def build_once(row: RawRow) -> Row:
        made = build(row)
        return cast(Row, {**made, "prompt": made["prompt"].removeprefix(bos)})

    return build_once


# A label's text (a CSV file's columns are read as text, so its TRUE, False or 1 comes as a string; a JSON file's
# "true" says the same) and the bool it is.
_LABEL_TEXTS = {"true": True, "false": False, "1": True, "0": False}


def _label(row: RawRow, field: str = "label") -> bool:
    """A row's label: a bool, 1 or 0 (TRL's KTOTrainer reads the label as a bool, so axolotl, which passes it on as
    it is, trains a 1 as true), or one of their texts in any case."""
    value = row.get(field)
    if value is None:
        raise absent(row, field)
    if isinstance(value, str) and value.lower() in _LABEL_TEXTS:
        return _LABEL_TEXTS[value.lower()]
    if isinstance(value, int) and value in (0, 1):  # a bool too
        return bool(value)
    # 2 or "yes": TRL would count a 2 twice among the desirable rows, and fail on a text
    raise FieldError(field, f"must be true (a desirable answer) or false (or 1 or 0), got {short_repr(value)}")


# KTO's prompt field per row shape, as axolotl's kto strategies read it (the row's system text comes first).
_KTO_PROMPT_FIELDS = {"argilla": "instruction", "intel": "question", "prompt_pairs": "prompt", "ultra": "prompt"}


def _llama3_history(row: RawRow) -> tuple[str, str]:
    """llama3.argilla_chat (KTO's): `completion` is a conversation; the prompt is every turn before its last, each
    under its own role's header, then the assistant's header; the answer is the last turn's content."""
    turns = row.get("completion")
    if not isinstance(turns, list) or not turns:
        raise FieldError("completion", "must be a list of {role, content} messages, the answer last")
    prompt = ""
    for i, turn in enumerate(turns[:-1]):
        if not isinstance(turn, dict):
            raise FieldError(f"completion[{i}]", "must be a {role, content} message")
        role = text_field(turn, "role", where=f"completion[{i}].")
        content = text_field(turn, "content", where=f"completion[{i}].")
        prompt += f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}{LLAMA3.answer_end}"
    answer = _turn_content(row, "completion", len(turns) - 1)
    return prompt + "<|start_header_id|>assistant<|end_header_id|>\n\n", answer


def _question_and_answer(row: RawRow) -> tuple[str, str]:
    """chatml.argilla_chat (KTO's): `completion` is [user, assistant], the question and the answer its label rates.
    axolotl reads its first two messages whatever they are: a longer conversation would train an earlier answer (or
    a system text's question) under the label that rates the last, so anything else is refused."""
    turns = row.get("completion")
    if turns is None:
        raise absent(row, "completion")
    roles = [
        str(turn.get("role")) if isinstance(turn, dict) else type(turn).__name__
        for turn in (turns if isinstance(turns, list) else [])
    ]
    if roles != ["user", "assistant"]:
        got = f"[{', '.join(roles)}]" if isinstance(turns, list) else f"a {type(turns).__name__}"
        raise FieldError(
            "completion",
            f"must be exactly [user, assistant] messages for chatml.argilla_chat (the question, then the answer "
            f"its label rates), got {got}; llama3.argilla_chat reads a longer conversation, its last turn the answer",
        )
    return _turn_content(row, "completion", 0), _turn_content(row, "completion", 1)


def _user_defined_kto(mapping: KTOPrompt) -> KTOBuilder:
    """A `type:` mapping under rl: kto: the row's prompt and completion fields written with the mapping's formats
    and its label field, as axolotl's kto/user_defined.py is documented to (a missing or empty system field is "")."""

    def build(row: RawRow) -> KTORow:
        system = text_field(row, mapping.field_system, optional=True)
        return KTORow(
            prompt=mapping.prompt_format.format(prompt=text_field(row, mapping.field_prompt), system=system),
            completion=mapping.completion_format.format(completion=text_field(row, mapping.field_completion)),
            label=_label(row, mapping.field_label),
        )

    return build


def _is_conversational(row: RawRow, answers: tuple[str, ...]) -> bool:
    """TRL's conversational form of a row (trl-lib/kto-mix-14k; its conversational preference rows): `prompt` and the
    `answers` fields (completion; chosen and rejected) lists of messages."""
    return any(isinstance(row.get(field), list) for field in ("prompt", *answers))


def _conversational(
    spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults, answers: tuple[str, ...]
) -> Callable[[RawRow], tuple[str, list[str]]]:
    """A conversational row's prompt and `answers` (KTO's completion; DPO's chosen and rejected) as TRL's trainers
    render them (trl.apply_chat_template), with the dataset's chat template as chat_template.default resolves it:
    the prompt with the generation prompt (continuing a last assistant message), each answer the rendering of the
    prompt and it from where the prompt ends (the prefix all renderings share: a template may write the generation
    prompt otherwise before an answer). As TRL's, every render has the row's `tools` and each message all its keys
    (tool calls as written: TRL reads no JSON in them). The template is resolved at the first such row: a dataset
    of plain strings needs none."""
    template: str | None = None

    def conversation(row: RawRow, field: str) -> list[dict[str, Any]]:
        value = row.get(field)
        if value is None:
            raise absent(row, field)
        if not isinstance(value, list) or not value:
            raise FieldError(
                field, f"must be a non-empty list of {{role, content}} messages: the row is in TRL's conversational "
                f"form ({', '.join(('prompt', *answers))} all lists of messages), got {short_repr(value)}"
            )  # fmt: skip
        return [{**turn, **message} for turn, message in zip(value, _messages(value, field, spec), strict=True)]

    def build(row: RawRow) -> tuple[str, list[str]]:
        nonlocal template
        if template is None:
            try:
                template = template_for_rows(spec, tokenizer, defaults)
            except ValueError as err:
                raise DataError(f"{source_name(spec)}: {err}") from None
        if row.get("prompt") is None and "chosen" in answers:
            # TRL's implicit-prompt rows (trl-lib/ultrafeedback_binarized): DPOTrainer would split the shared turns
            # off as the prompt, but axolotl's rl loader refuses a row without one before TRL sees it
            raise FieldError(
                "prompt",
                f"{absent(row, 'prompt').problem}: chosen and rejected hold whole conversations (TRL's implicit "
                "prompt), which axolotl's rl loader refuses without a prompt column; put the turns before the "
                "answers in prompt, and the answers alone in chosen and rejected",
            )
        prompt = conversation(row, "prompt")
        last = len(prompt) - 1
        role = prompt[last]["role"]
        if role not in ("user", "tool", "assistant"):  # as TRL refuses it
            raise FieldError(f"prompt[{last}]", f"is a {role} message: a prompt ends on a user, tool or assistant one")
        continued = role == "assistant"
        tools = _trl_tools(row)
        head = _render(
            tokenizer, template, prompt, tools, add_generation_prompt=not continued, continue_final_message=continued
        )
        wholes = [_render(tokenizer, template, prompt + conversation(row, field), tools) for field in answers]
        head = os.path.commonprefix([head, *wholes])
        return head, [whole[len(head) :] for whole in wholes]

    return build


def _trl_tools(row: RawRow) -> list | None:
    """A conversational row's `tools` as TRL's KTOTrainer reads them: a list, or its JSON text."""
    tools = row.get(TOOLS)
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise FieldError(
                TOOLS, f"is a string but not JSON ({err}): write the list of tools or its JSON text"
            ) from None
    if tools is not None and not isinstance(tools, list):
        raise FieldError(TOOLS, f"must be a list of tools (objects) or its JSON text, got {short_repr(tools)}")
    return tools


def kto_builder(
    spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults | None = None
) -> KTOBuilder:
    """What turns one of the spec's rows into a `KTORow` (rl: kto): axolotl's kto strategies write the chat format
    themselves, the answer closed by its turn's end marker; a mapping writes the row's fields with its formats; no
    type: rows already {prompt, completion, label}, as
    strings or in TRL's conversational form (rendered with the chat template, `_conversational`).

    Raises:
        ValueError: a type that is no KTO type.
    """
    if spec.type is None:
        conversational = _conversational(spec, tokenizer, defaults or ChatDefaults(), ("completion",))

        def as_they_are(row: RawRow) -> KTORow:
            if _is_conversational(row, ("completion",)):
                prompt, (completion,) = conversational(row)
                return KTORow(prompt=prompt, completion=completion, label=_label(row))
            return KTORow(
                prompt=text_field(row, "prompt"), completion=text_field(row, "completion"), label=_label(row)
            )

        return _without_double_bos(as_they_are, tokenizer)
    if (plain := _plain_kto_builder(spec)) is not None:
        return _without_double_bos(plain, tokenizer)
    names = ", ".join(kind.value for kind in KTOType)
    raise ValueError(f"type {spec.type!r} is not a KTO dataset type; supported: {names}")


def _plain_kto_builder(spec: DatasetSpec) -> KTOBuilder | None:
    """The spec's KTO row builder where it needs no tokenizer: a mapping, or a type that writes its own chat format;
    None for rows as they are (TRL's conversational ones are rendered by the chat template), or no KTO type."""
    if isinstance(spec.type, KTOPrompt):
        return _user_defined_kto(spec.type)
    if not isinstance(spec.type, str) or spec.type not in KTOType._value2member_map_:
        return None
    family, shape = spec.type.split(".")
    chat = _FORMATS[family]

    def build(row: RawRow) -> KTORow:
        if shape == "argilla_chat" and isinstance(ignored := row.get("prompt"), list) and ignored:
            # TRL's conversational rows: argilla_chat reads the question from `completion` alone, so their prompt
            # messages would go unread. (argilla's own rows, kto-mix-15k, have a string prompt repeating the
            # completion's first user turn: read as axolotl reads them.)
            raise FieldError(
                "prompt",
                f"holds messages, {short_repr(ignored, 60)}, which {spec.type} does not read (its question comes "
                "from completion): the answers would train without them; rows in TRL's conversational form (prompt "
                "and completion lists of messages) are read with no type",
            )
        if shape == "argilla_chat" and family == "llama3":
            prompt, answer = _llama3_history(row)
        elif shape == "argilla_chat":
            question, answer = _question_and_answer(row)
            prompt = chat.prompt(question, None)
        else:
            user = text_field(row, _KTO_PROMPT_FIELDS[shape])
            prompt = chat.prompt(user, text_field(row, "system", optional=True))
            answer = text_field(row, "completion")
        return KTORow(prompt=prompt, completion=_closed(answer, chat.answer_end), label=_label(row))

    return build


def fields_check(cfg: AxolotlConfig, spec: DatasetSpec) -> Callable[[RawRow], object] | None:
    """The spec's pair (rl: kto: KTO row) builder where it needs no tokenizer (`_plain_builder`,
    `_plain_kto_builder`): what `llmkit validate` checks each row with where the tokenizer is not here; None where
    the chat template renders the rows."""
    return _plain_builder(spec) if cfg.rl is None or cfg.rl.paired else _plain_kto_builder(spec)


# A column holding a row's length in tokens, measured as it is read; build_preference_datasets removes it, and
# epoch_pair_tokens sums it for the plan (a pair: its longer sequence; a GRPO row: its prompt)
TOKENS = "_tokens"
# What a pair (a KTO row) with nothing to train is, in the message when none is left (`count_kept`).
UNTRAINED_PAIRS = "with nothing to train on (an empty chosen answer, or chosen the same as rejected)"
UNTRAINED_KTO_ROWS = "with nothing to train on (an empty completion)"


def _pair_tokens(tokenizer: PreTrainedTokenizerBase, cfg: AxolotlConfig) -> Callable[[AnyRow], int]:
    """The tokens of a pair's longer sequence (a KTO row's one sequence), as the config's TRL trainer builds them:
    DPOTrainer and KTOTrainer tokenize the prompt and the answer as one text with the tokenizer's special tokens;
    ORPO's and CPO's (rl: orpo, simpo) without them, then put BOS first where the prompt does not start with it
    (`RLMethod.trainer_adds_bos`). All append EOS to an answer that does not end with it."""
    eos = tokenizer.eos_token or ""
    own_bos = cfg.rl is not None and cfg.rl.trainer_adds_bos and tokenizer.bos_token_id is not None
    paired = cfg.rl is None or cfg.rl.paired

    def tokens(row: AnyRow) -> int:
        answers = (row["chosen"], row["rejected"]) if paired else (row["completion"],)  # type: ignore[typeddict-item]
        texts = [row["prompt"] + answer + ("" if answer.endswith(eos) else eos) for answer in answers]
        if not own_bos:
            return max(len(ids) for ids in tokenizer(texts)["input_ids"])
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return max(len(one) + (one[:1] != [tokenizer.bos_token_id]) for one in ids)

    return tokens


def _trains_nothing(row: AnyRow) -> bool:
    """An empty chosen answer, or the same answer twice: the loss has nothing to prefer; a KTO row's empty
    completion: nothing to rate."""
    if "completion" in row:
        return not row["completion"].strip()  # type: ignore[typeddict-item]
    return not row["chosen"].strip() or row["chosen"] == row["rejected"]  # type: ignore[typeddict-item]


def spec_pairs(
    cfg: AxolotlConfig, spec: DatasetSpec, entry: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[Dataset, DatasetStats]:
    """One dataset's usable pairs (KTO rows) and their stats (`_spec_rows`); `entry`: where the config lists it."""
    defaults = ChatDefaults.from_config(cfg)
    try:  # a bad template is the spec's error, not every row's: said once, before reading
        build: Callable[[RawRow], AnyRow] = (
            preference_builder(spec, tokenizer, defaults) if cfg.rl is None or cfg.rl.paired
            else kto_builder(spec, tokenizer, defaults)
        )  # fmt: skip
    except ValueError as err:
        raise DataError(f"{source_name(spec)}: {err}") from None
    return _spec_rows(cfg, spec, entry, build, tokenizer)


def _spec_rows(
    cfg: AxolotlConfig,
    spec: DatasetSpec,
    entry: str,
    build: Callable[[RawRow], AnyRow],
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[Dataset, DatasetStats]:
    """One dataset's pairs (KTO rows), with their tokens (the TOKENS column), the ones training cannot use (longer
    than sequence_len, training nothing) dropped and counted, as axolotl drops them before merging;
    excess_length_strategy: raise makes a long pair an error naming its row."""
    source = source_name(spec)
    rows = load_rows(spec, build, cfg.seed, entry)
    tokens, limit = _pair_tokens(tokenizer, cfg), cfg.sequence_len
    paired = cfg.rl is None or cfg.rl.paired
    what = "the pair is {} tokens long (its prompt and longer answer)" if paired else "the row is {} tokens long"

    def measured(row: RawRow) -> list[dict[str, Any]]:
        made = build(row)
        length = tokens(made)
        if length > limit and cfg.excess_length_strategy == "raise":
            raise RowError(
                f"{what.format(length)}, longer than sequence_len {limit}, and excess_length_strategy is raise"
            )
        return [{**made, TOKENS: length}]

    desc = f"{'Preference pairs' if paired else 'KTO rows'} of {Path(source).name}"
    columns = ("prompt", "chosen", "rejected") if paired else ("prompt", "completion", "label")
    # original_types off: a conversation column (chosen, prompt) of messages of mixed keys (tool calls) is typed
    # as JSON, which would take the text the pair holds in its place as a list of characters
    pairs = convert_rows(rows, source, measured, (*columns, TOKENS), desc, original_types=False)
    lengths: list[int] = pairs[TOKENS]
    stats = DatasetStats(source, spec.type_name, len(rows), 0)
    keep = []
    for pair, length in zip(pairs.remove_columns(TOKENS), lengths, strict=True):
        overlong = length > limit
        untrained = not overlong and _trains_nothing(cast(AnyRow, pair))
        stats.dropped_overlong += overlong
        stats.dropped_untrained += untrained
        keep.append(not (overlong or untrained))
    count_kept(stats, keep, lengths, limit, UNTRAINED_PAIRS if paired else UNTRAINED_KTO_ROWS)
    return pairs.select([i for i, usable in enumerate(keep) if usable]), stats


def build_preference_datasets(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> PreferenceData:
    """Every dataset's usable rows as preference pairs, concatenated, shuffled with `seed`
    (shuffle_merged_datasets); evaluated: the last `val_set_size` of them held out, or test_datasets' pairs. rl: grpo:
    its prompts (llmkit.data.grpo).

    Raises:
        DataError: a file, row or field is bad, a dataset's chat template cannot be used, a dataset has no usable
            pair, or a pair is too long under excess_length_strategy: raise.
    """
    measured = _measured_rows(cfg, tokenizer)
    held_out = measured.eval.remove_columns(TOKENS) if measured.eval is not None else None
    return PreferenceData(measured.train.remove_columns(TOKENS), held_out, measured.stats)


def _measured_rows(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> PreferenceData:
    """`build_preference_datasets`' rows with each one's tokens in the TOKENS column, measured once, as they are
    read (`_spec_rows`): the plan's count reads them there (`epoch_pair_tokens`)."""
    if cfg.rl is RLMethod.grpo:  # prompts, not pairs
        from llmkit.data.grpo import measured_prompts

        return measured_prompts(cfg, tokenizer)
    pairs: dict[str, list[Dataset]] = {"datasets": [], "test_datasets": []}
    stats = DataStats()
    for key, position, spec in cfg.dataset_entries():
        rows, spec_stats = spec_pairs(cfg, spec, f"{key}[{position}]", tokenizer)
        pairs[key].append(rows)
        (stats.datasets if key == "datasets" else stats.eval_datasets).append(spec_stats)
    data = merged_and_held_out(cfg, pairs, stats, "pairs")
    if cfg.rl is not None and not cfg.rl.paired:
        _warn_one_sided(data.train)
    return data


def merged_and_held_out(
    cfg: AxolotlConfig, parts: dict[str, list[Dataset]], stats: DataStats, noun: str
) -> PreferenceData:
    """The `datasets` parts concatenated and shuffled with `seed` (shuffle_merged_datasets); held out: the
    `test_datasets` parts, or the last `val_set_size` of them (`noun`: what a row is, in split_held_out's errors).

    Raises:
        DataError: the parts' columns differ (GRPO's rows carry the user's columns, which TRL passes on by name).
    """
    try:
        rows = concatenate_datasets(parts["datasets"])
        held_out = concatenate_datasets(parts["test_datasets"]) if parts["test_datasets"] else None
    except ValueError as err:
        raise DataError(f"the datasets' {noun} have different columns: {err}") from None
    rows = (rows.shuffle(seed=cfg.seed) if cfg.shuffle_merged_datasets else rows).flatten_indices()
    train, held_out = (rows, held_out) if held_out is not None else split_held_out(rows, cfg, noun)
    stats.train_rows = stats.train_sequences = len(train)
    stats.eval_rows = len(held_out) if held_out is not None else 0
    return PreferenceData(train, held_out, stats)


def kto_label_counts(rows: Dataset) -> tuple[int, int]:
    """(desirable, undesirable) KTO rows."""
    desirable = sum(rows["label"])
    return desirable, len(rows) - desirable


_WARNED_ONE_SIDED: set[tuple[int, int]] = set()  # said once per process: validate and training both build the rows


def _warn_one_sided(train: Dataset) -> None:
    """KTO rows all desirable (or all undesirable): the loss has only one side, and TRL's weight advice, which counts
    at least one row of each kind, names a range for rows that are not there."""
    counts = kto_label_counts(train)
    if all(counts) or not len(train) or counts in _WARNED_ONE_SIDED:
        return
    _WARNED_ONE_SIDED.add(counts)
    kind, other = ("desirable", "undesirable") if counts[0] else ("undesirable", "desirable")
    LOG.warning(
        "rl: kto: all %d training rows are %s (label %s) and none %s: KTO's loss then only moves those answers "
        "against its KL estimate, with nothing on the other side to weigh them against (TRL's advice on "
        "desirable_weight and undesirable_weight, if it follows, counts a row of each kind that is not there); add "
        "%s rows",
        len(train),
        kind,
        str(kind == "desirable").lower(),
        other,
        other,
    )


def epoch_pair_tokens(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> TokenizedSplit:
    """The training pairs that training keeps (one epoch), with the tokens of each pair's longer sequence, as they
    were measured when read (not tokenized again); `llmkit validate`'s plan counts both sequences of a pair from
    them, and the longest. rl: grpo: its prompts, with their tokens as TRL renders them (messages through the chat
    template, with the generation prompt), and the longest, which the memory plan pads to; the completions,
    generated in training, are not counted."""
    lengths: list[int] = _measured_rows(cfg, tokenizer).train[TOKENS]
    return TokenizedSplit(tokens=sum(lengths), sequences=len(lengths), longest=max(lengths, default=None))
