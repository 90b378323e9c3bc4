"""`chat_template` datasets (alias `sharegpt`) as axolotl builds them.

A chat template renders the conversation, and each turn is found in that text where rendering the conversation up
to the turn, with and without its content, puts it (as axolotl's find_turn). The content of each trained turn is
trained, and so is the token that ends the turn: the first of `eot_tokens` (default: the tokenizer's EOS) right
after the content in the whole conversation, trained as
`train_on_eot` says (turn, all, last or none; default: `train_on_eos`); an EOS that is not one of `eot_tokens` and
follows it is trained as `train_on_eos` says. A turn with empty content (and no reasoning) trains nothing, its end
token included (axolotl finds no turn there). Role headers and the template's other text stay masked. A turn is
trained when its role is in `roles_to_train` (default: assistant), when train_on_inputs is set,
or when the message's own `message_field_training` flag says so; a message's `message_field_training_detail` spans
(character offsets into its content) train only the tokens axolotl picks for them (`_detail_tokens`), and train the
turn where no flag says otherwise. Messages are read through
`message_property_mappings` (or the older `message_field_role` / `message_field_content`), their role names
mapped by `roles`; a `field_system` text (default: a `system` column) becomes the first turn, and
`drop_system_message` removes a leading system turn. A message's reasoning trace (`field_thinking`, default
`reasoning_content`) reaches the template under `template_thinking_key` (default `reasoning_content`); where the
template writes it (Qwen3's <think> block, gpt-oss's analysis channel), it trains with its turn; `split_thinking` takes
it out of an assistant's content (<think>...</think> and the like) first. A message's other keys
reach the template under their own names where it reads them on `message` (tool_calls, name, a custom key), as
axolotl's analysis of the template finds them; what the template writes of them in a trained turn trains with it. A
row's `tools` column is given to the template as its tools.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from jinja2 import Environment, TemplateError, TemplateSyntaxError, nodes
from jinja2.ext import Extension

from llmkit.config.sections import DatasetSpec, DatasetType
from llmkit.core.errors import short_repr
from llmkit.core.files import user_path
from llmkit.data.fields import Builder, FieldError, text_field
from llmkit.data.rows import Parts, RawRow, Segment

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LOG = logging.getLogger(__name__)
Message = dict[str, Any]  # {"role", "content", ...}: what transformers' chat templates take

# The templates named by `chat_template:` that real configs use, written for this project after the formats
# their models define. tokenizer_default (or a Jinja string, or `jinja`) covers every other model.
CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
        "'<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "phi_3": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n<|assistant|>\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
    ),
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('gemma has no system role (drop_system_message: true drops it)') }}{% endif %}"
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('gemma needs turns alternating user/assistant') }}{% endif %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "qwen_25": (
        "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + "
        "'<|im_end|>\n' }}{% else %}{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
        "helpful assistant.<|im_end|>\n' }}{% endif %}{% for message in messages %}"
        "{% if message['role'] == 'tool' %}{{ raise_exception('qwen_25 here renders text turns only; for tool "
        "turns use tokenizer_default with Qwen2.5 itself') }}{% endif %}"
        "{% if not (loop.first and message['role'] == 'system') %}{{ '<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # What axolotl's alpaca.jinja writes: the system text alone, '### Instruction:' / '### Response:' turns, the EOS
    # after each response, turns apart by a blank line.
    "alpaca": (
        "{{ bos_token }}{% for message in messages %}{{ '' if loop.first else '\n\n' }}"
        "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token }}"
        "{% elif message['role'] == 'system' and loop.first %}{{ message['content'] }}{% endif %}{% endfor %}"
        "{{ '\n\n### Response:\n' if add_generation_prompt else '' }}"
    ),
    # What axolotl's metharme.jinja (Pygmalion's format) writes: a default roleplay system text where the conversation
    # has none, and one EOS after the conversation's last turn, whatever its role (so the EOS trains after the last
    # turn only, or after an earlier one close enough to it, as axolotl looks for it in the whole conversation).
    "metharme": (
        "{{ bos_token + '<|system|>' }}{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'Enter RP "
        "mode. You shall reply to the user while staying in character. Your responses must be detailed, creative, "
        "immersive, and drive the scenario forward.' }}{% for message in messages if message['role'] in ['user', "
        "'assistant'] %}{{ ('<|user|>' if message['role'] == 'user' else '<|model|>') + message['content'].strip() }}"
        "{% endfor %}{{ '<|model|>' if add_generation_prompt else eos_token }}"
    ),
    # What axolotl's falcon_h1.jinja writes for text turns (its tools preamble aside: rows here pass no tools): ChatML
    # after a BOS, the first turn's system text alone (a later system turn is dropped). Named after a model, but
    # Falcon-H1's own template was not found to check the base against, so axolotl's text is what renders, as for
    # alpaca and metharme.
    "falcon_h1": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + "
        "'<|im_end|>\n' }}{% endif %}{% for message in messages if message['role'] != 'system' %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}
# axolotl's templates named after a model whose text is that model's own chat template: such a name renders the base
# tokenizer's own template (as tokenizer_default does), where that template writes the model's format. Each name ->
# (the family, how its format writes _PROBE; {bos}/{eos}: the tokenizer's BOS/EOS, {today:...}: today's date, as
# transformers' strftime_now gives it to a template), which the tokenizer's template must write exactly: the check
# that the base is of that family (config.json's model_type would not do: Qwen3-2507 Instruct is a qwen3 whose
# template writes no <think> block). axolotl's other model-named templates are refused by name, with why, in
# OTHER_MODEL_TEMPLATES.
_GEMMA3_TURNS = "{bos}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
_GEMMA4_TURNS = "{bos}<|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello<turn|>\n"
MODEL_TEMPLATES: dict[str, tuple[str, str]] = {
    # Qwen3's own, with a `real_last_index` axolotl passes when it renders a conversation cut short: a whole
    # conversation renders as Qwen3 writes it (an empty <think> block before the last assistant turn), and a cut one
    # as the whole writes its turns, which Qwen3's own does not (_CUT_AS_WHOLE finds them in the whole). Its generation
    # prompt (served prompts, preference prompts) differs: axolotl's opens a <think> block, Qwen3's own does not.
    "qwen3": (
        "Qwen3",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n",
    ),
    # Gemma 3's own: the system text opens the first user turn.
    "gemma3": ("Gemma 3", _GEMMA3_TURNS),
    # Gemma 3n's own: Gemma 3's text turns (its image and audio parts aside), so a Gemma 3 base passes too.
    "gemma3n": ("Gemma 3n", _GEMMA3_TURNS),
    # Gemma 4's own, every revision of it (its tools, thinking and images aside); axolotl's gemma4_unified is a later
    # revision's text. Their generation prompt (served prompts, preference prompts) with thinking off ends in an
    # empty thought channel ('<|turn>model\n<|channel>thought\n<channel|>'), in axolotl's gemma4.jinja as in
    # Gemma 4's own (llama.cpp's copies of it, models/templates/gemma4.jinja): the base's own template writes it.
    "gemma4": ("Gemma 4", _GEMMA4_TURNS),
    "gemma4_unified": ("Gemma 4", _GEMMA4_TURNS),
    # Llama 4's own (tools, images and a dated system header aside, which text rows do not reach).
    "llama4": (
        "Llama 4",
        "{bos}<|header_start|>system<|header_end|>\n\nBe brief.<|eot|><|header_start|>user<|header_end|>\n\nHi"
        "<|eot|><|header_start|>assistant<|header_end|>\n\nHello<|eot|>",
    ),
    # Command-R's own `default` template (its tokenizer also has tool_use and rag ones, which axolotl does not use).
    "cohere": (
        "Command-R",
        "{bos}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
        "<|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello<|END_OF_TURN_TOKEN|>",
    ),
    # Aya 23's and Aya Expanse's own: Command-R's format (axolotl's aya is its cohere text but for a default system
    # prompt it never writes), so a Command-R base passes too.
    "aya": (
        "Aya",
        "{bos}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>"
        "<|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello<|END_OF_TURN_TOKEN|>",
    ),
    # DeepSeek-V2-Chat-0628's own (not DeepSeek-V2-Chat's or V2-Lite-Chat's, which write "User: ... Assistant:",
    # nor V2.5's or V3's, which write no blank line after the system text).
    "deepseek_v2": ("DeepSeek-V2-Chat-0628", "{bos}Be brief.\n\n<｜User｜>Hi<｜Assistant｜>Hello{eos}"),
    # EXAONE 3.0's and 3.5's own (an empty system turn opens a conversation without one).
    "exaone": ("EXAONE 3.5", "[|system|]Be brief.[|endofturn|]\n[|user|]Hi\n[|assistant|]Hello[|endofturn|]\n"),
    # Mistral's v1 tokenizer's (Mistral-7B-Instruct v0.1 and v0.2, Mixtral-8x7B-Instruct): the system text opens
    # the first user turn. axolotl's texts of the three Mistral formats also read a message's list of text parts.
    "mistral_v1": ("Mistral-7B-Instruct-v0.1", "{bos} [INST] Be brief.\n\nHi [/INST] Hello{eos}"),
    # Mistral's v3 tokenizer's (Mistral-7B-Instruct-v0.3, Mixtral-8x22B-Instruct, Mistral-Large-2407): the system
    # text opens the last user turn, so a conversation that ends with the assistant's turn writes none. A row with a
    # system turn then trains its assistant turns, as axolotl finds them, and is an error where a user turn trains
    # (the conversation up to it writes the system text there, the whole one does not). The same for Tekken.
    "mistral_v2v3": ("Mistral-7B-Instruct-v0.3", "{bos}[INST] Hi[/INST] Hello{eos}"),
    # The Tekken tokenizer's (Mistral-Nemo-Instruct-2407): v3's without the spaces.
    "mistral_v3_tekken": ("Mistral-Nemo-Instruct-2407", "{bos}[INST]Hi[/INST]Hello{eos}"),
    # Pixtral-12B's own (mistral-community/pixtral-12b): Tekken's text turns, so a Mistral-Nemo base passes too (a
    # template that moves the system text to the first user turn, as one copy of Pixtral's does, is refused).
    "pixtral": ("Pixtral-12B", "{bos}[INST]Hi[/INST]Hello{eos}"),
    # Mistral Small 3's and 3.1's own (the V7-Tekken tokenizer's): the system text in [SYSTEM_PROMPT], and their
    # default system prompt, dated today, in a conversation without a system turn, which _DEFAULT_SYSTEM_PROBES checks
    # too (a Mistral Small 3.2 copy writes it undated, Devstral's its own: refused).
    "mistral_v7_tekken": ("Mistral Small 3", "{bos}[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hi[/INST]Hello{eos}"),
    # Qwen2-VL's and Qwen2.5-VL's own (one text): plain ChatML but for the default system text it writes into a
    # conversation without a system turn, which _DEFAULT_SYSTEM_PROBES checks too (Qwen2's text models write the same).
    "qwen2_vl": (
        "Qwen2-VL",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello"
        "<|im_end|>\n",
    ),
    # Llama 3.2 Vision's own, with today's date in the system turn; Llama 3.2's text models write the same (Llama
    # 3.1's a fixed date: refused).
    "llama3_2_vision": (
        "Llama 3.2",
        "{bos}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: "
        "{today:%d %b %Y}\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>",
    ),
}
# axolotl's other templates named after a model -> why this project does not render them: axolotl's text writes other
# text turns than the model's own template (its tokenizer_config.json, or a copy of it: llama.cpp's tests, the GGUF
# templates of huggingface.js' ollama-utils), or no copy of the model's own was found to check it against, or the
# check of the base's format cannot tell the model (plain ChatML). tokenizer_default renders the base
# model's own; chat_template_jinja takes axolotl's text.
OTHER_MODEL_TEMPLATES: dict[str, str] = {
    "phi_35": "its text writes no EOS after the last turn, where Phi-3.5's own writes one",
    "phi_4": (
        "its text writes Phi-4-reasoning's long system prompt into a conversation without a system turn, where "
        "Phi-4's own writes none (and axolotl's own config schema does not accept the name)"
    ),
    "deepseek_v3": "its text drops an assistant turn's text up to </think>, which DeepSeek-V3's own keeps",
    "command_a": (
        "its text writes Cohere's '# System Preamble' and '# Default Preamble' text around the system turn, and an "
        "opened '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' after the last turn, where Command A's own default "
        "template writes text turns with the system text alone and ends at the last <|END_OF_TURN_TOKEN|>"
    ),
    "command_a_tool_use": (
        "its text writes a text conversation as command_a does (Cohere's preambles, an opened chatbot turn at the "
        "end), where Command A's own default template does not; its own tool_use template was not found to compare"
    ),
    "command_a_rag": (
        "its text writes a text conversation as command_a does (Cohere's preambles, an opened chatbot turn at the "
        "end), where Command A's own default template does not; its own rag template was not found to compare"
    ),
    "llava": (
        "its text writes LLaVA-1.5's 'USER: ... ASSISTANT: ...' with no EOS after an answer, where the LLaVA models "
        "whose tokenizer has a template write other formats (llava-v1.6-mistral: [INST]; llava-v1.6-34b: ChatML); "
        "LLaVA-1.5's own was not found; and it reads a message's content as a list of parts only, so a text content "
        "(every turn's, as this project renders it) writes nothing but the role names"
    ),
    "nemotron_h": (
        "its text writes plain ChatML, which the check cannot tell from any ChatML model's, and Nemotron-H's own "
        "was not found to compare"
    ),
    "exaone4": (
        "its text writes a conversation's system turn twice, where EXAONE 4.0's own writes it once (axolotl dropped "
        "the {% continue %} after the first, which transformers' Jinja has); without a system turn they write the "
        "same text"
    ),
    "jamba": (
        "Jamba's own template was not found to compare axolotl's text (AI21's '<|bom|><|user|> text<|eom|>' turns "
        "after <|startoftext|>) with"
    ),
    "qwen3_5": (
        "its text keeps the whitespace around a turn's content, which Qwen3.5's own trims from every turn, and writes "
        "a system turn after the first, which Qwen3.5's own refuses (their generation prompts differ too: "
        "'<think>\\n\\n' where Qwen3.5's own writes '<think>\\n', or an empty think block in the 2B and smaller)"
    ),
}
_PROBE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
]
# MODEL_TEMPLATES names whose model writes a default system text into a conversation without a system turn, which
# _PROBE does not show (and which alone tells Qwen2-VL's format from plain ChatML): how it writes _PROBE without its
# system turn, which the tokenizer's template must write too.
_DEFAULT_SYSTEM_PROBES = {
    "mistral_v7_tekken": (
        "{bos}[SYSTEM_PROMPT]You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French "
        "startup headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is "
        "{today:%Y-%m-%d}.\n\nWhen you're not sure about some information, you say that you don't have the "
        "information and don't make up anything.\nIf the user's question is not clear, ambiguous, or does not provide "
        "enough context for you to accurately answer the question, you do not try to answer it right away and you "
        'rather ask the user to clarify their request (e.g. "What are some good restaurants around me?" => "Where are '
        'you?" or "When is the next flight to Tokyo" => "Where do you travel from?")[/SYSTEM_PROMPT][INST]Hi[/INST]'
        "Hello{eos}"
    ),
    "qwen2_vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    ),
}
TEMPLATE_CHOICES = (
    f"the base model's own where it is that model's ({', '.join(MODEL_TEMPLATES)}), tokenizer_default, "
    "tokenizer_default_fallback_<name>, jinja, a Jinja string"
)
_FALLBACK = "tokenizer_default_fallback_"  # + a name: the tokenizer's template, else the named one
# axolotl's default role names; `roles:` replaces them.
DEFAULT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
}
_TEMPLATE_ROLES = {"system", "user", "assistant", "tool"}
# Rendered in a turn's place to find where the template writes its content: private-use characters, which no
# real message starts with and no template filter (trim) changes.
_DUMMY = "\ue000\ue001"
# Names whose axolotl text renders a conversation cut at a turn as the whole conversation writes it (axolotl passes
# the whole one's last index, real_last_index), where the model's own, which renders here, does not: Qwen3's writes
# the cut's last assistant turn with a <think> block, the whole one's earlier turns without. Their turns are found
# in the whole conversation, by rendering it with the turn's content replaced, which is where axolotl finds them.
_CUT_AS_WHOLE = {"qwen3"}
# axolotl's default for both field_thinking (the row's message key) and template_thinking_key (the template's)
_THINKING = "reasoning_content"
_END_REACH = 3  # axolotl trains a turn's end token only when at most this many tokens separate it from the content
# Further than any _END_REACH tokens reach: where a turn's end token is looked for, so that a long conversation's
# later turns are not tokenized once per turn.
_END_CHARS = 1000


@dataclass(frozen=True)
class ChatDefaults:
    """The config-level chat settings a dataset falls back on."""

    template: str | None = None  # the config's top-level chat_template
    jinja: str | None = None  # the config's top-level chat_template_jinja
    base_dir: Path | None = None  # the config's folder: where a relative chat_template_jinja file may be
    eot_tokens: tuple[str, ...] = ()  # the config's eot_tokens; empty: the tokenizer's EOS ends a turn

    @classmethod
    def from_config(cls, cfg) -> ChatDefaults:
        """The config-level chat_template / chat_template_jinja / eot_tokens keys (an `AxolotlConfig`), its folder."""
        base_dir = cfg.source.resolve().parent if cfg.source else None
        return cls(cfg.chat_template, cfg.chat_template_jinja, base_dir, tuple(cfg.eot_tokens or ()))


def resolve_template(spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults) -> str:
    """The Jinja text of the spec's chat template, chosen as axolotl chooses it.

    Raises:
        ValueError: a name this project does not ship, or tokenizer_default for a tokenizer without a template.
    """
    choice, jinja, key = spec.template_choice(defaults.template, defaults.jinja)
    return _template_text(choice, jinja, tokenizer, defaults.base_dir, key)


def config_template(tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults) -> str | None:
    """The Jinja text of the config's own chat_template (for the saved tokenizer, as axolotl sets it); None when
    the config names none."""
    if not defaults.template and not defaults.jinja:
        return None
    choice = defaults.template or "jinja"
    return _template_text(choice, defaults.jinja, tokenizer, defaults.base_dir, "chat_template")


def _template_text(
    choice: str, jinja: str | None, tokenizer: PreTrainedTokenizerBase, base_dir: Path | None, key: str
) -> str:
    if choice == "tokenizer_default" or choice.startswith(_FALLBACK):
        if tokenizer.chat_template:
            return cast(str, tokenizer.chat_template)
        if choice == "tokenizer_default":
            raise ValueError(
                "chat_template: tokenizer_default, but the tokenizer has no chat template; name one "
                f"({', '.join(CHAT_TEMPLATES)}) or use {_FALLBACK}chatml"
            )
        choice = choice.removeprefix(_FALLBACK)
    if choice in MODEL_TEMPLATES:
        return _model_template(choice, tokenizer, key)
    return named_template(choice, jinja, base_dir, key)


def _model_template(choice: str, tokenizer: PreTrainedTokenizerBase, key: str) -> str:
    """The tokenizer's own template for a `MODEL_TEMPLATES` name, where it writes that model's format.

    Raises:
        ValueError: the tokenizer has no template, or one that writes another format (another family's model).
    """
    family, expected = MODEL_TEMPLATES[choice]
    why = f"{key}: {choice} is {family}'s own chat template, rendered from the base model's tokenizer"
    jinja = f"chat_template: jinja with chat_template_jinja holding {choice}'s text"
    try:
        own = tokenizer.get_chat_template()  # the `default` one of a tokenizer with several (Command-R)
    except ValueError:
        raise ValueError(
            f"{why}, but this tokenizer has no chat template: use a {family} base model, or {jinja}"
        ) from None
    probes = [(_PROBE, expected)]
    if choice in _DEFAULT_SYSTEM_PROBES:
        probes.append((_PROBE[1:], _DEFAULT_SYSTEM_PROBES[choice]))
    for probe, text in probes:
        text = text.format(bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "", today=datetime.now())
        try:
            written = repr(tokenizer.apply_chat_template(probe, chat_template=own, tokenize=False))
        except TemplateError as err:
            written = f"nothing ({err})"
        if written != repr(text):
            raise ValueError(
                f"{why}, but this tokenizer's template is not {family}'s: it writes {written} where {choice} writes "
                f"{text!r}; use a {family} base model, chat_template: tokenizer_default to train in this model's own "
                f"format, or {jinja}"
            )
    return cast(str, own)


def check_template_name(choice: str, jinja: str | None, base_dir: Path | None, key: str) -> None:
    """What can be checked of a template choice without the tokenizer: all but the tokenizer's own template (which
    a `MODEL_TEMPLATES` name renders too).

    Raises:
        ValueError: as `named_template` (a fallback's name is checked, as axolotl's schema checks it).
    """
    if choice != "tokenizer_default" and choice.removeprefix(_FALLBACK) not in MODEL_TEMPLATES:
        named_template(choice.removeprefix(_FALLBACK), jinja, base_dir, key)


def named_template(choice: str, jinja: str | None, base_dir: Path | None, key: str) -> str:
    """The text of a template given by name, as Jinja, or as `jinja` (chat_template_jinja): all but the tokenizer's
    own, so checked without a tokenizer (`llmkit validate` on a hub model not downloaded).

    Raises:
        ValueError: a name this project does not ship; a chat_template_jinja that is neither a file nor Jinja.
    """
    if choice == "jinja":
        return jinja_text(jinja, base_dir)
    if choice in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[choice]
    if "{{" in choice or "{%" in choice:
        return choice
    if choice in OTHER_MODEL_TEMPLATES:
        raise ValueError(
            f"{key}: {choice} is axolotl's copy of a model's chat template, not rendered here: "
            f"{OTHER_MODEL_TEMPLATES[choice]}; chat_template: tokenizer_default renders the base model's own, and "
            f"chat_template: jinja with chat_template_jinja holding {choice}'s text renders axolotl's"
        )
    hint = _spelled_otherwise(choice, [*CHAT_TEMPLATES, *MODEL_TEMPLATES])
    raise ValueError(
        f"{key}: {choice!r} is not one of {', '.join(CHAT_TEMPLATES)}, {TEMPLATE_CHOICES} (axolotl names more "
        "templates than this project renders: tokenizer_default renders the model's own, which a model-named template "
        "such as phi_35 or deepseek_v3 is written after; chat_template_jinja takes any other)"
        + (f"; did you mean {hint}?" if hint else "")
    )


def _spelled_otherwise(choice: str, names: list[str]) -> str | None:
    """The template name `choice` spells another way: FastChat's llama-3 for llama3, a case or separator apart."""
    squeezed = re.sub(r"[-_. ]", "", choice.lower())
    return next((name for name in names if re.sub(r"[-_. ]", "", name) == squeezed), None)


def template_for_rows(spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase, defaults: ChatDefaults) -> str:
    """`resolve_template`, and a warning when the template's turn markers are no tokens of this tokenizer: what a
    builder of the spec's rows calls, once per dataset (not `resolve_template` alone, which the cache key calls too).

    Raises:
        ValueError: as `resolve_template`.
    """
    template = resolve_template(spec, tokenizer, defaults)
    _warn_missing_markers(template, tokenizer)
    return template


_WARNED_MARKERS: set[tuple[str, str]] = set()  # (template, tokenizer) pairs warned about


def _warn_missing_markers(template: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """When `template` is a named one: its turn markers (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`) that are no
    token of this tokenizer become several ordinary tokens: the text trains, but the end of a turn is no single stop
    token. Once per dataset (get_vocab is slow), and said once per process (`validate` builds the rows twice)."""
    choice = next((name for name, text in CHAT_TEMPLATES.items() if text == template), None)
    if choice is None or (choice, tokenizer.name_or_path) in _WARNED_MARKERS:
        return
    _WARNED_MARKERS.add((choice, tokenizer.name_or_path))
    markers = dict.fromkeys(re.findall(r"<\|[a-z_]+\|>|<(?:start|end)_of_turn>", template))
    vocabulary = tokenizer.get_vocab()
    missing = [marker for marker in markers if marker not in vocabulary]
    if missing:
        LOG.warning(
            "chat_template %s: %s are not tokens of this tokenizer, so each is split into ordinary tokens and the "
            "model learns no single end-of-turn token; add them (special_tokens / tokens, with lora_modules_to_save)"
            " or use chat_template: tokenizer_default",
            choice,
            ", ".join(missing),
        )


def jinja_text(jinja: str | None, base_dir: Path | None) -> str:
    if not jinja:
        raise ValueError("chat_template: jinja needs chat_template_jinja, a Jinja template or a file holding one")
    if "{" in jinja:
        return jinja
    for folder in (Path.cwd(), base_dir):
        if folder and (folder / user_path(jinja)).is_file():  # an absolute or `~` path: that file alone
            return (folder / user_path(jinja)).read_text(encoding="utf-8")
    raise ValueError(f"chat_template_jinja: {jinja!r} is no file here, and not a Jinja template")


def _role_map(spec: DatasetSpec) -> dict[str, str]:
    """Each role name of the data -> the template role it is rendered as."""
    if speakers := _sharegpt_speakers(spec):  # more speakers, each under its own name (human/gpt as ever)
        return {
            **DEFAULT_ROLES,
            **{name: DEFAULT_ROLES.get(name, name) for names in speakers.values() for name in names},
        }
    if not spec.roles:
        return DEFAULT_ROLES
    return {source: target for target, sources in spec.roles.items() for source in sources}


def _sharegpt_speakers(spec: DatasetSpec) -> dict[str, list[str]] | None:
    """`type: sharegpt`'s `roles: {input: [...], output: [...]}`, in the meaning axolotl gave it before it dropped
    sharegpt (its ShareGPTPromptTokenizingStrategy): role names beyond human/gpt, rendered under their own names,
    `input` ones masked and `output` ones trained; not chat_template's {template role: [data names]}. Else None."""
    if spec.type is DatasetType.sharegpt and spec.roles and set(spec.roles) <= {"input", "output"}:
        return spec.roles
    return None


def chat_messages(row: RawRow, spec: DatasetSpec, read: frozenset[str] = frozenset()) -> tuple[str, list[Message]]:
    """(the messages field, the conversation as template messages, system turn added or dropped as configured).

    Reads `field_messages` (default `messages`, else ShareGPT's `conversations`), each message's keys through
    `message_property_mappings` (default role/content, or ShareGPT's from/value), and its other keys that the
    template reads (`read`: `template_message_keys`) under their own names.
    """
    field = spec.field_messages or ("messages" if "messages" in row else "conversations")
    turns = row.get(field)
    if not spec.field_messages and field not in row:  # neither default: say which field the row could mean
        fields = ", ".join(repr(name) for name in row) or "none"
        raise FieldError(
            "messages",
            f"is missing, and so is 'conversations': set field_messages to the row's list of messages "
            f"(its fields: {fields})",
        )
    if not isinstance(turns, list):
        raise FieldError(field, "must be a list of messages")
    if not turns:  # a row with nothing to train on: dropped and counted, as an empty input_output row is
        return field, []
    keys = spec.message_keys
    first = turns[0] if isinstance(turns[0], dict) else {}
    sharegpt = "from" in first or ("role" not in first and field == "conversations")
    keys.setdefault("role", "from" if sharegpt else "role")
    keys.setdefault("content", "value" if sharegpt else "content")
    # As axolotl's prompter maps it. (Its schema fills in role/content mappings, so there a reasoning key reaches the
    # template under the row's own name, where the template reads it: the same text when the two names agree, as in
    # every config seen; this honours a rename too.)
    keys.setdefault(spec.template_thinking_key or _THINKING, spec.field_thinking or _THINKING)
    roles = _role_map(spec)
    accepted = sorted({*roles, *roles.values(), *_TEMPLATE_ROLES})
    messages = [_message(turn, i, field, keys, roles, accepted, spec, read) for i, turn in enumerate(turns)]
    system = row.get(spec.field_system or "system")
    if system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": text_field(row, spec.field_system or "system")})
    if spec.drop_system_message and messages[0]["role"] == "system":
        messages = messages[1:]
    if not messages:
        raise FieldError(field, "holds only a system message, dropped by drop_system_message")
    return field, messages


# The row's column of tools that axolotl gives the template (its `field_tools` is never passed on by its loader, so
# this name is read whatever that key says).
TOOLS = "tools"


def chat_tools(row: RawRow, column: str = TOOLS) -> list | None:
    """The row's tools (a list of JSON-schema objects, OpenAI's {type: function, function: {name, description,
    parameters}}) in `column` for the template, a function's `parameters` given as JSON text read as JSON, as axolotl
    reads them; None where the row has none.

    Raises:
        FieldError: the column is not a list, or a `parameters` text is not JSON.
    """
    tools = row.get(column)
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise FieldError(column, f"must be a list of tools (objects), got {type(tools).__name__} {str(tools)[:60]!r}")
    read = []
    for j, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("parameters"), str):
            parameters = _json(function["parameters"], f"{column}[{j}].function.parameters")
            tool = {**tool, "function": {**function, "parameters": parameters}}
        read.append(tool)
    return read


def _message(
    turn: object,
    i: int,
    field: str,
    keys: dict[str, str],
    roles: dict[str, str],
    accepted: list[str],
    spec: DatasetSpec,
    read: frozenset[str],
) -> Message:
    where = f"{field}[{i}]."
    if not isinstance(turn, dict):
        raise FieldError(f"{field}[{i}]", f"must be an object, got {type(turn).__name__}")
    role = text_field(turn, keys["role"], where=where)
    if role not in accepted:
        raise FieldError(where + keys["role"], f"is {role!r}, not one of {accepted}")
    message: Message = {"role": roles.get(role, role)}
    calls = keys.get("tool_calls", "tool_calls")
    if (content := message_text(turn, keys["content"], where, bool(turn.get(calls)))) is not None:
        message["content"] = content  # a tool-call turn without text has none, as axolotl gives it
    message.update(template_fields(turn, keys, read, where))
    if spec.split_thinking and message["role"] == "assistant" and isinstance(message.get("content"), str):
        if (split := _split_thinking(message["content"])) is not None:
            message[spec.template_thinking_key or _THINKING], message["content"] = split
    if "content" not in message and "tool_calls" not in message:
        raise FieldError(
            where + keys["content"],
            "is empty: a tool-call turn, and the chat template reads no message.tool_calls, so it would write "
            "nothing of the turn (use a template that writes tool calls, e.g. the model's own: tokenizer_default)",
        )
    if spec.message_field_training and turn.get(spec.message_field_training) is not None:
        training = turn[spec.message_field_training]
        if not isinstance(training, bool):
            raise FieldError(where + spec.message_field_training, f"must be true or false, got {training!r}")
        message["training"] = training
    if (detail_key := spec.message_field_training_detail) and turn.get(detail_key) is not None:
        if not isinstance(turn.get(keys["content"]), str):  # axolotl refuses it too: its offsets are a text's
            raise FieldError(
                where + detail_key,
                f"needs the turn's {keys['content']!r} as a string: its offsets are characters of it",
            )
        message[_DETAIL] = _training_detail(turn[detail_key], where + detail_key)
    return message


def template_fields(turn: dict, keys: dict[str, str], read: frozenset[str], where: str) -> Message:
    """A message's keys beyond role and content as axolotl gives them to the template, in its SFT and preference
    strategies alike: each mapped one (message_property_mappings) under its template name, then each key no mapping
    reads that the template reads on a message (`read`: tool_calls, name, tool_call_id, a custom key of a
    chat_template_jinja) under its own name; tool calls' JSON-string arguments read as JSON. A mapped key wins over
    a key of the same name left in the row (axolotl's would overwrite it: a row with both `from` and `role`)."""
    fields = {
        key: turn[source] for key, source in keys.items() if key not in _TEXT_KEYS and turn.get(source) is not None
    }
    for key in sorted(read - set(keys.values()) - fields.keys() - _TEXT_KEYS):
        if turn.get(key) is not None:
            fields[key] = turn[key]
    if isinstance(fields.get("tool_calls"), list):
        calls = keys.get("tool_calls", "tool_calls")
        fields["tool_calls"] = [
            _json_arguments(call, f"{where}{calls}[{j}]") for j, call in enumerate(fields["tool_calls"])
        ]
    return fields


_TEXT_KEYS = frozenset({"role", "content"})  # what every message has, read by the callers of template_fields


# A message's training_detail spans, under this key until the builder takes them off (the template never sees them).
_DETAIL = "training_detail"


class DetailSpan(NamedTuple):
    """One span of axolotl's training_detail: the content's characters `begin` to `end`, both included."""

    begin: int
    end: int
    train: bool


def _training_detail(value: object, where: str) -> list[DetailSpan]:
    """A message's training_detail: a list of {begin_offset, end_offset, train}, as axolotl's docs write it."""
    if not isinstance(value, list):
        raise FieldError(
            where, f"must be a list of {{begin_offset, end_offset, train}} spans, got {short_repr(value)}"
        )
    spans = []
    for j, span in enumerate(value):
        begin, end, train = (span.get(key) for key in _SPAN_KEYS) if isinstance(span, dict) else (None, None, None)
        if not (_whole(begin) and _whole(end) and isinstance(train, bool)):
            raise FieldError(
                f"{where}[{j}]",
                "must be {begin_offset, end_offset, train}: the span's first and last character of the content "
                f"(whole numbers) and true or false, got {short_repr(span)}",
            )
        if not 0 <= begin <= end:
            raise FieldError(
                f"{where}[{j}]", f"begin_offset {begin}, end_offset {end}: needs 0 <= begin_offset <= end_offset"
            )
        spans.append(DetailSpan(begin, end, train))
    return spans


_SPAN_KEYS = ("begin_offset", "end_offset", "train")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _detail_tokens(
    tokenizer: PreTrainedTokenizerBase, content: str, detail: list[DetailSpan], on_skip: Callable[[int, int], None]
) -> list[tuple[int, int]]:
    """The character ranges (end excluded) of the content's tokens that a turn's training_detail trains, picked as
    axolotl's get_offsets_for_train_detail picks them: the content is tokenized alone; each token is taken to reach
    from its first character to the one before the next token's (the last one to the content's end); a span is
    widened to the tokens it partly covers, except one whose last character is the span's first or whose first is
    the span's last (axolotl's comparisons); the tokens inside a trained span train. A span that keeps no token
    trains nothing (`on_skip` is told); untrained spans mask what no trained span holds, as everything starts
    masked."""
    offsets: list[tuple[int, int]] = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    starts = [start for start, _ in offsets]
    ends = [following - 1 for following in starts[1:]] + [len(content) - 1]
    bounds = []  # each trained span, widened: (first character, last character)
    for span in detail:
        first = next((i for i, start in enumerate(starts) if start >= span.begin), len(starts))
        if first > 0 and ends[first - 1] > span.begin:
            first -= 1
        last = next((i for i in reversed(range(len(ends))) if ends[i] <= span.end), -1)
        if last < len(starts) - 1 and starts[last + 1] < span.end:
            last += 1
        if first > last:
            if span.train:
                on_skip(span.begin, span.end)
        elif span.train:
            bounds.append((starts[first], ends[last]))
    return [offsets[i] for i in range(len(offsets)) if any(lo <= starts[i] and ends[i] <= hi for lo, hi in bounds)]


def _detail_segments(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    message: Message,
    detail: list[DetailSpan],
    on_skip: Callable[[int, int], None],
    where: str,
) -> list[Segment]:
    """A trained turn's `text` (as `_content_span` finds it) as segments: its content's characters that
    `_detail_tokens` picks trained, the rest of the turn (the content's other characters, reasoning or tool calls
    written beside it) masked, as axolotl labels only the content's picked tokens.

    Raises:
        FieldError: the template does not write the content as it is (nor stripped), so its offsets cannot be placed;
            or it writes more of the turn before the content (its reasoning), where axolotl places the spans.
    """
    content = message.get("content") or ""
    stripped = content.strip()
    if text.endswith(content) and content:
        at = len(text) - len(content)
    elif (found := text.find(stripped) if stripped else -1) >= 0:
        at = found - (len(content) - len(content.lstrip()))  # a template that trims the content (llama3)
    else:
        raise FieldError(
            where,
            f"cannot be placed: the chat template does not write the {message['role']} turn's content as it is, so "
            "its character offsets name no characters of the text",
        )
    if at > 0:
        # axolotl counts the content's tokens from where its find_turn starts the turn, the first token that differs
        # from a dummy turn without the message's reasoning: its spans train that many tokens into the reasoning
        # (Qwen3's <think> block), not the content they name. Neither is what the row says, so it is refused.
        raise FieldError(
            where,
            f"cannot be placed as axolotl places it: the chat template writes {short_repr(text[:at], 60)} of the "
            f"{message['role']} turn before its content (its reasoning), and axolotl counts the spans' tokens from "
            "the start of that text, so they would train the reasoning's tokens, not the content's they name; drop "
            "the message's reasoning (field_thinking) or its training_detail",
        )
    trained = bytearray(len(text))
    for begin, finish in _detail_tokens(tokenizer, content, detail, on_skip):
        lo, hi = max(at + begin, 0), min(at + finish, len(text))
        trained[lo:hi] = b"\x01" * max(hi - lo, 0)
    segments, run = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or trained[i] != trained[run]:
            segments.append(Segment(text[run:i], bool(trained[run])))
            run = i
    return segments


# split_thinking's delimiters, as axolotl's: the reasoning's pairs, tried in this order, and the answer's pair within
# what follows the reasoning (Open-Thoughts' <|begin_of_solution|>)
_THINKING_TAGS = (
    ("<think>", "</think>"),
    ("<reasoning>", "</reasoning>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
)
_SOLUTION_TAGS = ("<|begin_of_solution|>", "<|end_of_solution|>")


def _split_thinking(content: str) -> tuple[str, str] | None:
    """(reasoning, answer) of an assistant's content that holds both tags of one of `_THINKING_TAGS`, as axolotl's
    split_thinking cuts it: the reasoning is what lies between the first opening and the first closing tag, stripped;
    the answer what follows the closing tag, its leading whitespace dropped, or, where that holds both
    `_SOLUTION_TAGS`, what they enclose, stripped. None: no pair in the content (left as it is)."""
    for opening, closing in _THINKING_TAGS:
        if opening in content and closing in content:
            start, end = content.find(opening), content.find(closing)
            answer = content[end + len(closing) :].lstrip()
            begin, finish = _SOLUTION_TAGS
            if begin in answer and finish in answer:
                answer = answer[answer.find(begin) + len(begin) : answer.find(finish)].strip()
            return content[start + len(opening) : end].strip(), answer
    return None


def _json_arguments(call: object, where: str) -> object:
    """A tool call whose `function.arguments` is a JSON string, with the arguments read (as axolotl reads them: a
    template writes them with `tojson`, which would quote the string); anything else as it is."""
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("arguments"), str)):
        return call
    return {**call, "function": {**function, "arguments": _json(function["arguments"], where + ".function.arguments")}}


def _json(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FieldError(
            where, f"is a string but not JSON ({err}); write the object itself or its JSON text"
        ) from None


_MESSAGE = "message"  # the loop variable whose keys axolotl's template analysis reads (`for message in messages`)


class _GenerationTags(Extension):
    """transformers' `{% generation %}` / `{% endgeneration %}` markers, read as nothing: what they enclose is parsed
    as the template's own text."""

    tags = {"generation", "endgeneration"}

    def parse(self, parser):
        return nodes.Output([], lineno=next(parser.stream).lineno)


@lru_cache(maxsize=64)
def template_message_keys(template: str) -> frozenset[str]:
    """The keys `template` reads on a message, as axolotl's JinjaTemplateAnalyzer finds them: every attribute or
    string subscript on a variable named `message` (`message.tool_calls`, `message['name']`, and the inner names of a
    chain such as `message.a.b`), wherever it is used. Its other traces (the `messages` list, assignments, other
    loop variables) find nothing in axolotl's analysis as it runs, so a template that names its messages `m` reads
    none (but the mapped keys and the reasoning key, which are given whatever the template reads)."""
    try:
        tree = Environment(extensions=[_GenerationTags, "jinja2.ext.loopcontrols"]).parse(template)
    except TemplateSyntaxError:
        return frozenset()  # rendering the first row says what is wrong with it
    keys = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        root = node.node
        while isinstance(root, (nodes.Getattr, nodes.Getitem)):
            root = root.node
        if not (isinstance(root, nodes.Name) and root.name == _MESSAGE):
            continue
        if isinstance(node, nodes.Getattr):
            keys.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            keys.add(node.arg.value)
    return frozenset(keys)


def make_chat_builder(
    spec: DatasetSpec,
    tokenizer: PreTrainedTokenizerBase,
    train_on_inputs: bool = False,
    defaults: ChatDefaults | None = None,
) -> Builder:
    """The chat_template builder for `spec`'s rows and this tokenizer; labels are final (train_on_inputs applied
    here). The template is resolved, and warned about, once: here, not per row.

    Raises:
        ValueError: the spec's chat template cannot be used (see `resolve_template`), or train_on_eot and
            train_on_eos disagree on an EOS that is one of eot_tokens.
    """
    defaults = defaults or ChatDefaults()
    template = template_for_rows(spec, tokenizer, defaults)
    ends = _turn_ends(spec, tokenizer.eos_token, defaults.eot_tokens)
    role_map = _role_map(spec)
    named = ["assistant"] if spec.roles_to_train is None else spec.roles_to_train  # [] trains no role
    if spec.roles_to_train is None and (speakers := _sharegpt_speakers(spec)):
        named = ["assistant", *speakers.get("output", [])]
    trained_roles = {role_map.get(role, role) for role in named}
    in_whole = spec.template_choice(defaults.template, defaults.jinja)[0] in _CUT_AS_WHOLE
    thinking = spec.template_thinking_key or _THINKING
    read = template_message_keys(template)
    unended = False  # warned already: the template ends a trained turn with none of eot_tokens
    unthought = False  # warned already: a row's reasoning is not in its text
    unspanned = False  # warned already: a trained training_detail span covers no whole token

    def on_skip(begin: int, end: int) -> None:
        nonlocal unspanned
        if not unspanned:
            unspanned = True
            # axolotl skips such a span too, with a warning: said once per dataset, as the span trains nothing
            LOG.warning(
                "message_field_training_detail %r: a trained span (%d..%d) holds no token of its content as axolotl "
                "widens it to tokens (a span of one token's last and the next one's first character, or past the "
                "content's end), so it trains nothing, as in axolotl",
                spec.message_field_training_detail,
                begin,
                end,
            )

    def build(row: RawRow, _spec: DatasetSpec) -> Parts:  # the Builder signature; this one is bound to `spec`
        nonlocal unended, unthought
        field, messages = chat_messages(row, spec, read)
        tools = chat_tools(row)
        # As axolotl: the message's training flag, else a training_detail (a non-empty one trains), else the role
        details: list[list[DetailSpan] | None] = [message.pop(_DETAIL, None) for message in messages]
        trains = [
            message.pop(
                "training", (train_on_inputs or message["role"] in trained_roles) if detail is None else bool(detail)
            )
            for message, detail in zip(messages, details, strict=True)
        ]
        render = _Renderer(tokenizer, template, field, tools)
        # As axolotl: the whole conversation is the row's text, and each turn is found in it by rendering the
        # conversation up to that turn, with and without its content. A template that writes more after the
        # conversation's last turn (metharme's EOS) trains what the whole conversation writes there.
        whole = render(messages) if messages else ""
        segments: list[Segment] = []
        done, last_ends = 0, {}  # how much of `whole` the segments hold; where each kind's last end token is
        every = any(policy == "all" for _, policy in ends)
        for i, (message, train) in enumerate(zip(messages, trains, strict=True)):
            if not (train or every):  # axolotl looks for a turn only where it trains, or where every end token does
                continue
            dummied = [*messages[:i], _dummy_turn(message)]
            full = whole if in_whole else render(messages[: i + 1])
            span = _content_span(full, render(dummied + messages[i + 1 :] if in_whole else dummied), done)
            # The template leaves this message out (a role it skips), or its content is empty: axolotl's find_turn
            # finds no turn, so neither the content nor the turn's end token trains.
            if span is None:
                continue
            start, end = span
            if not whole.startswith(full[:end]):
                raise FieldError(field, _unsplit(i, messages))
            segments.append(Segment(whole[done:start], False))
            if train and (detail := details[i]):
                where = f"{field}[{i}].{spec.message_field_training_detail}"
                segments += _detail_segments(tokenizer, whole[start:end], message, detail, on_skip, where)
            else:
                segments.append(Segment(whole[start:end], train))
            rest = whole[end:]
            ended = False
            for kind, (tokens, policy) in enumerate(ends):
                gap, token, rest = _split_end(tokenizer, rest, tokens)
                if token:  # the last turn looked at: an untrained one too, where an end token trains after every
                    last_ends[kind] = len(segments) + 1
                ended = ended or bool(token)
                segments += [Segment(gap, False), Segment(token, policy == "all" or (policy == "turn" and train))]
            if train and not ended and not unended:
                unended = True
                # As in axolotl; but the model then never learns to stop, so say so (once per dataset).
                LOG.warning(
                    "The chat template ends a trained turn with none of %s (eot_tokens; default: the tokenizer's "
                    "EOS), so no end-of-turn token is trained and the model may not learn to stop: set eot_tokens to "
                    "the token the template ends a turn with",
                    [token for tokens, _ in ends for token in tokens],
                )
            done = len(whole) - len(rest)
        segments.append(Segment(whole[done:], False))
        for kind, at in last_ends.items():
            if ends[kind][1] == "last":
                segments[at] = segments[at]._replace(trained=True)
        if not unthought and _thinking_left_out(whole, messages, thinking):
            unthought = True
            # axolotl passes the key and such a template writes nothing of it; said, as the data's reasoning is lost
            LOG.warning(
                "%s: a row's reasoning (field_thinking %r) is not in the text the chat template (%s) writes, so it "
                "is not trained: the template reads no %r (template_thinking_key), or not for those turns (Qwen3's "
                "writes the reasoning after the last user message only)",
                field,
                spec.field_thinking or _THINKING,
                _template_name(spec, defaults),
                thinking,
            )
        kept = tuple(segment for segment in segments if segment.text)
        return Parts(kept, add_eos=False, add_special_tokens=False, joined=True, final_labels=True)

    return build


def _turn_ends(spec: DatasetSpec, eos: str | None, eot_tokens: tuple[str, ...]) -> list[tuple[list[str], str]]:
    """What ends a turn, each with its train_on_* policy: the end-of-turn tokens (default: the EOS), then an EOS
    that is not one of them.

    Raises:
        ValueError: train_on_eot and train_on_eos disagree while the EOS is one of eot_tokens (axolotl refuses it
            too: one token, two rules).
    """
    turn_end = list(eot_tokens) or ([eos] if eos else [])
    train_on_eot = spec.train_on_eot or spec.train_on_eos
    if eos in turn_end and train_on_eot != spec.train_on_eos:
        if eot_tokens:
            which, fix = "in eot_tokens", "set them alike, or leave the EOS out of eot_tokens"
        else:
            which = "eot_tokens' default (the EOS alone)"
            fix = "set them alike, or set eot_tokens to the token the template ends a turn with"
        raise ValueError(
            f"train_on_eot: {train_on_eot} and train_on_eos: {spec.train_on_eos} disagree on the EOS {eos!r}, "
            f"{which}: {fix}"
        )
    if eos and eos not in turn_end:
        return [(turn_end, train_on_eot), ([eos], spec.train_on_eos)]
    return [(turn_end, train_on_eot)]


class _Renderer:
    """Renders message lists with one template, and the row's tools (in every render: the conversation cut at a turn
    writes them too, as axolotl's find_turn renders it); a template's refusal is the row's error."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str, field: str, tools: list | None = None):
        self.tokenizer, self.template, self.field = tokenizer, template, field
        self.extra = {"tools": tools} if tools else {}  # as axolotl: an empty list is no tools

    def __call__(self, messages: list[Message]) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False, **self.extra
            )
        except TemplateError as err:
            raise FieldError(self.field, f"is refused by the chat template: {err}") from None
        return cast(str, text)


def message_text(turn: dict, key: str, where: str, calls: bool = False) -> str | None:
    """A turn's text: a string, or OpenAI's list of parts, whose text parts are joined (other parts are refused);
    None for a turn with tool calls (`calls`) and no content."""
    parts = turn.get(key)
    if parts is None and calls:
        return None
    if not isinstance(parts, list):
        return text_field(turn, key, where=where)
    for j, part in enumerate(parts):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise FieldError(f"{where}{key}[{j}]", f"is a {kind!r} part; only text parts ({{type: text, text}}) train")
    return "".join(part["text"] for part in parts)


def _unsplit(i: int, messages: list[Message]) -> str:
    """Why a row cannot train whose whole conversation writes the text up to message `i`'s content otherwise than the
    conversation up to that message does."""
    why = (
        f"cannot be split into turns: the chat template writes the conversation up to message {i} "
        f"({messages[i]['role']}) otherwise once later messages follow, so that turn's text is not where "
        "rendering the conversation up to it finds it (axolotl's labels there fall on other tokens)"
    )
    if messages[i]["role"] == "user" and messages[0]["role"] == "system":
        why += (
            "; Mistral v3's, Tekken's and Pixtral's own templates write the system text into the last user turn "
            "only (none where the conversation ends with the assistant's): train no user turn (no train_on_inputs, "
            "roles_to_train without user, train_on_eos and train_on_eot not all), or drop the system turn "
            "(drop_system_message), or write its text into the first user message"
        )
    elif messages[i]["role"] == "assistant":
        why += (
            "; Qwen3's own template writes a <think> block before the last assistant turn only: chat_template: qwen3 "
            "finds the turns of a Qwen3 base's rows as axolotl's qwen3 text does"
        )
    return why


def _dummy_turn(message: Message) -> Message:
    """`message` as axolotl's find_turn renders its place: its role, and `_DUMMY` as its content, without its other
    keys (its reasoning, tool calls, name): what the template writes of them differs too, so they train with the
    content (a tool-call turn trains its calls)."""
    return {"role": message["role"], "content": _DUMMY}


def _content_span(full: str, dummy: str, done: int) -> tuple[int, int] | None:
    """Where the last turn's content sits in `full`, found against a render with `_DUMMY` as that content
    (`_dummy_turn`): from the first character the two differ at, so with the reasoning the template writes before the
    content (Qwen3's <think> block: the dummy's is empty), to the content's end; None when the template leaves the
    turn out or renders it empty."""
    start = len(os.path.commonprefix([full, dummy]))
    at = dummy.find(_DUMMY, start)
    if start < done or at < 0:
        return None
    tail = dummy[at + len(_DUMMY) :]
    end = len(full) - len(tail)
    return (start, end) if full.endswith(tail) and end > start else None


def _thinking_left_out(text: str, messages: list[Message], thinking: str) -> bool:
    """The messages carry reasoning, and none of it is in the row's `text` (templates may trim it)."""
    traces = [trace.strip() for message in messages if isinstance(trace := message.get(thinking), str)]
    return any(traces) and not any(trace in text for trace in traces if trace)


def _template_name(spec: DatasetSpec, defaults: ChatDefaults) -> str:
    """The spec's chat template as its config names it, for a message (a Jinja string is not repeated)."""
    choice = spec.template_choice(defaults.template, defaults.jinja)[0]
    return "a Jinja string" if "{" in choice else choice


def _split_end(tokenizer: PreTrainedTokenizerBase, tail: str, tokens: list[str]) -> tuple[str, str, str]:
    """(text before the first of `tokens` in `tail`, that token, text after it); ("", "", tail) when none is
    close enough to the turn's content to end it."""
    found = [(at, token) for token in tokens if (at := tail.find(token, 0, _END_CHARS)) >= 0]
    if not found:
        return "", "", tail
    at, token = min(found)
    if len(tokenizer(tail[:at], add_special_tokens=False)["input_ids"]) > _END_REACH:
        return "", "", tail
    return tail[:at], token, tail[at + len(token) :]
