"""The sections of an axolotl-style config, one pydantic model per concern; `llmkit.config.schema` unites them.

Key names are axolotl's own, so that a file written for axolotl loads here unchanged. Every field carries a
description: `llmkit config-keys` prints them as the README's table.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import math
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from string import Formatter
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from llmkit.config.keys import suggest
from llmkit.core.errors import error_message, key_path
from llmkit.core.files import EMPTY_FOLDER, user_path

# Keys may be repeated as empty (`wandb_project:`) in axolotl's templates; the root treats null as "not set".
# allow_inf_nan: a learning rate of 1e400 (inf) passed every `gt=0` check.
_SECTION = ConfigDict(extra="forbid", use_enum_values=False, validate_default=True, allow_inf_nan=False)
# A folder the run writes: "~" is the home folder here too, as transformers' Trainer reads it (one folder, not two).
Folder = Annotated[str, AfterValidator(os.path.expanduser)]


# do_causal_lm_eval's metrics implemented here, named as in HF evaluate (where axolotl loads its metrics from).
CAUSAL_LM_METRICS = ("exact_match",)


@dataclass(frozen=True)
class UnfrozenPattern:
    """An `unfrozen_parameters` entry as axolotl reads it: a regex matched at the start of a parameter's name, its
    dots literal (escaped or not), then optionally `[start:end]` (or `[index]`): the rows of dim 0 that alone get
    gradients (the whole tensor still requires them, so memory counts all of it)."""

    text: str
    regex: re.Pattern[str]
    rows: tuple[int, int | None] | None

    @classmethod
    def parse(cls, text: str) -> UnfrozenPattern:
        """Raises: ValueError naming what is wrong: an invalid regex, or a range whose end is not after its start."""
        name, rows = text, None
        if ranged := re.fullmatch(r"(.+)\[([0-9]*)(?::([0-9]*))?\]", text):
            name, start, end = ranged.groups()
            if end is None and start:
                rows = (int(start), int(start) + 1)
            else:
                rows = (int(start or 0), int(end) if end else None)
                if rows[1] is not None and rows[0] >= rows[1]:
                    raise ValueError(f"{text}: the range's end must be after its start")
        try:
            return cls(text, re.compile(re.sub(r"(?<!\\)\.", r"\.", name)), rows)  # a dot already escaped stays so
        except re.error as err:
            raise ValueError(f"{text}: not a regular expression ({err})") from None

    def matches(self, name: str) -> bool:
        return self.regex.match(name) is not None


_REGEX_SYNTAX = re.compile(r"[\\\[\](){}|*+?^$]")  # in a lora_target_modules string: a regex, not a name


def one_as_list(value: object) -> object:
    """axolotl takes a single string where a list is expected (`lora_target_modules: q_proj`)."""
    return [value] if isinstance(value, str) else value


# Upper bounds far above any real run (and, multiplied, inside an int64), so that an absurd integer (10**30 written
# out, 2**63) is an error naming its key: validate passed them and train stopped on a traceback (islice's sys.maxsize)
# or looped without end. 2**20 rows a forward pass, micro-batches a step or rows a step (batch_size), 2**24 tokens a
# row (the longest contexts are 10M), rank 2**16 (no layer is that wide).
UPPER_BOUNDS = {
    "micro_batch_size": 2**20,
    "gradient_accumulation_steps": 2**20,
    "batch_size": 2**20,
    "sequence_len": 2**24,
    "lora_r": 2**16,
}


def at_most_bound(value: int | None, info: ValidationInfo) -> int | None:
    """`value` where it is at most its key's UPPER_BOUNDS entry."""
    bound = UPPER_BOUNDS[info.field_name]
    if value is not None and value > bound:
        raise ValueError(f"at most {bound:,} (2**{bound.bit_length() - 1}): no real run comes near it")
    return value


def _takes_int(annotation: Any) -> bool:
    """Whether a field's type holds int and not bool (`int | None`, `int | float | None`)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    choices = get_args(annotation) if isinstance(annotation, UnionType) or get_origin(annotation) is Union else ()
    choices = choices or (annotation,)
    return int in choices and bool not in choices


def whole_numbers(cls: type[BaseModel], value: object, info: ValidationInfo) -> object:
    """`value`, unless it is true or false for an integer key: pydantic reads true as 1, so `lora_r: yes` (a YAML
    boolean) trained a rank-1 adapter. Used as `field_validator("*", mode="before")` by each model with int keys."""
    if isinstance(value, bool) and info.field_name and _takes_int(cls.model_fields[info.field_name].annotation):
        raise ValueError("a whole number, not true or false (YAML reads yes, no, on and off as true or false)")
    return value


# load_config's context key: a local model path that is not on this machine is kept (validate, where a config written
# for the GPU box is checked on a laptop), for the caller to say that train would stop on it here.
MODELS_ELSEWHERE = "models_elsewhere"
MODEL_PATH_KEYS = ("base_model", "base_model_config", "tokenizer_config")


def model_path_problem(value: str) -> str | None:
    """Why `value` (a MODEL_PATH_KEYS value) names no model from here: neither a hub id nor a path here."""
    from llmkit.core.models import is_hub_id

    if is_hub_id(value) or user_path(value).exists():
        return None
    return "no such folder here, and not a hub id (owner/name)"


class Adapter(str, Enum):
    lora = "lora"  # adapter on a 16-bit (or 8-bit) base
    qlora = "qlora"  # adapter on a 4-bit NF4 base; requires load_in_4bit


# axolotl's other `adapter:` values, named in the error instead of a bare "should be 'lora' or 'qlora'".
UNIMPLEMENTED_ADAPTERS = {
    "ia3": "axolotl's IA3 adapter",
    "llama-adapter": "axolotl's LLaMA-Adapter",
    "qalora": "axolotl's QA-LoRA adapter, group-wise quantization-aware LoRA",
}


class PeftMethod(str, Enum):
    lora = "lora"  # LoRA (optionally DoRA / rsLoRA through peft_use_dora / peft_use_rslora)
    vera = "vera"  # VeRA: frozen shared random A/B, trained scaling vectors
    prompt_tuning = "prompt_tuning"  # trained virtual-token embeddings, base untouched


class DatasetType(str, Enum):
    """A dataset type as axolotl names it; the README's "Dataset types" table says what each one's rows and prompt
    are. Names that take a `:<style>` suffix are in `STYLED_TYPES`."""

    alpaca = "alpaca"  # {instruction, input, output}
    alpaca_instruct = "alpaca_instruct"  # alpaca, instruct style
    alpaca_chat = "alpaca_chat"  # alpaca, chat style (or `conversation:`)
    alpaca_chat_qa = "alpaca_chat.load_qa"  # {question, answer}: alpaca_chat's concise system prompt
    alpaca_chat_concise = "alpaca_chat.load_concise"  # alpaca rows, the concise system prompt
    alpaca_chat_camel_ai = "alpaca_chat.load_camel_ai"  # {message_1, message_2}
    alpaca_chat_no_prompt = "alpaca_chat.load_no_prompt"  # alpaca rows, chat style, no system prompt
    alpaca_w_system = "alpaca_w_system"  # {system, instruction, input, output}, chat style
    alpaca_w_system_instruct = "alpaca_w_system.load_instruct"
    alpaca_w_system_chat = "alpaca_w_system.load_chat"
    alpaca_w_system_open_orca = "alpaca_w_system.load_open_orca"  # {system_prompt, question, response}
    alpaca_w_system_open_orca_chatml = "alpaca_w_system.load_open_orca_chatml"
    oasst = "oasst"  # {INSTRUCTION, RESPONSE}: alpaca prompt
    gpteacher = "gpteacher"  # {instruction, input, response}: alpaca prompt
    jeopardy = "jeopardy"  # {question, category, answer}: alpaca prompt, "what is " + answer
    summarizetldr = "summarizetldr"  # {article, summary}
    explainchoice = "explainchoice"  # {question, choices, solution | explanation}
    concisechoice = "concisechoice"  # {question, choices, solution | explanation}
    gpt4all = "gpt4all"  # {prompt, response} (alpaca_lora_4bit's ds_type, not axolotl's)
    completion = "completion"  # {text}: every token trained
    input_output = "input_output"  # {segments: [{label, text}]}
    chat_template = "chat_template"  # {messages: [{role, content}]}: assistant turns trained
    sharegpt = "sharegpt"  # axolotl's older name for chat_template


class PromptStyle(str, Enum):
    """How an alpaca-style prompt is laid out: the `<type>:<style>` suffix (axolotl's AlpacaPrompter styles)."""

    instruct = "instruct"  # ### Instruction: / ### Input: / ### Response:
    chat = "chat"  # SYSTEM: / USER: / ASSISTANT:
    chatml = "chatml"  # <|im_start|>system / user / assistant
    phi = "phi"  # <|system|> / <|user|> / <|assistant|>


# Types whose name takes `:<style>` (axolotl's generic alpaca-prompter path); the style defaults to instruct.
STYLED_TYPES = (
    DatasetType.alpaca,
    DatasetType.oasst,
    DatasetType.gpteacher,
    DatasetType.jeopardy,
    DatasetType.summarizetldr,
    DatasetType.explainchoice,
    DatasetType.concisechoice,
)
# axolotl's own prompt-strategy modules: `<module>.<name>` with one of these is a built-in name, never a user's file.
_AXOLOTL_MODULES = frozenset(
    "alpaca_chat alpaca_instruct alpaca_w_system chat_template completion context_qa creative_acr input_output "
    "llama2_chat messages metharme orcamini pygmalion reflection sharegpt sharegpt_jokes stepwise_supervised "
    "user_defined bradley_terry".split()
)
# Modules of axolotl's preference (DPO/KTO/ORPO) strategies: those types need a top-level `rl:`.
_PREFERENCE_MODULES = frozenset(
    "chatml llama3 zephyr chat_template user_defined passthrough mistral dpo kto orpo".split()
)


def dataset_type_names() -> list[str]:
    """Every dataset type name, styled variants included (`alpaca:chat`)."""
    names = [member.value for member in DatasetType]
    names += [f"{kind.value}:{style.value}" for kind in STYLED_TYPES for style in PromptStyle]
    return names


def parse_dataset_type(name: str) -> tuple[DatasetType, PromptStyle | None] | None:
    """A type name as (type, style); None for `module.function`, a user's Python file (found when data is built).

    Raises:
        ValueError: a name that is neither, with a "did you mean" and the supported names.
    """
    base, _, style = name.partition(":")
    if base in DatasetType._value2member_map_ and (not style or DatasetType(base) in STYLED_TYPES):
        if not style:
            return DatasetType(base), None
        if style in PromptStyle._value2member_map_:
            return DatasetType(base), PromptStyle(style)
    module = name.split(".")[0]
    if "." in name and ":" not in name and all(part.isidentifier() for part in name.split(".")):
        if module not in _AXOLOTL_MODULES | _PREFERENCE_MODULES | set(DatasetType._value2member_map_):
            return None
    raise ValueError(_unknown_type(name, module))


def _unknown_type(name: str, module: str) -> str:
    base, _, style = name.partition(":")
    if ":load_" in name:
        hint = f" (did you mean {name.replace(':load_', '.load_')}?)"
    elif style and base in DatasetType._value2member_map_:
        styled = DatasetType(base) in STYLED_TYPES
        hint = f" (styles: {', '.join(PromptStyle._value2member_map_)})" if styled else f" ({base} takes no :style)"
    elif module in ("bradley_terry", "stepwise_supervised"):
        return f"dataset type {name!r} is reward-model data (axolotl's reward_model): not implemented here"
    elif module in _PREFERENCE_MODULES and "." in name:
        hint = " (a preference-data type: it needs a top-level rl, e.g. rl: dpo)"
    elif module in _AXOLOTL_MODULES and module not in {member.value.split(".")[0] for member in DatasetType}:
        # axolotl has it: say so, or a user reads "unknown" as a typo of theirs
        return f"dataset type {name!r} is axolotl's {module} prompt strategy: not implemented here" + _supported()
    else:
        match = suggest(name, dataset_type_names())
        hint = f" (did you mean {match}?)" if match else ""
    return f"unknown dataset type {name!r}{hint}" + _supported()


def _supported() -> str:
    styled = "|".join(style.value for style in PromptStyle)
    names = [f"{member.value}[:{styled}]" if member in STYLED_TYPES else member.value for member in DatasetType]
    return (
        f"; supported: {', '.join(names)}; or a mapping "
        "{field_instruction, field_input, field_output, field_system, format, no_input_format, system_format, "
        "system_prompt}; or module.function naming a Python file beside the config"
    )


# Data file suffixes and the `datasets` builder that reads each (axolotl's get_ds_type: .txt is text).
LOCAL_DATA_SUFFIXES = {
    ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".txt": "text"
}  # fmt: skip
# Compressions `datasets` reads a text file through (a.jsonl.gz is JSON lines), each with the standard library's
# opener (llmkit.data.sources checks the text inside with it).
COMPRESSIONS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

# What reading a data file raises when its bytes cannot be had: gzip's BadGzipFile and bz2's invalid stream
# (OSErrors), a stream cut short (EOFError), corrupt deflate or xz data. The data stage's reader
# (llmkit.data.sources.open_data_file) turns them into its DataError.
UNREADABLE = (OSError, EOFError, zlib.error, lzma.LZMAError)


def data_file_builder(name: str) -> str | None:
    """The `datasets` builder of a data file, by its suffix (under a compression's: a.jsonl.gz is json)."""
    suffixes = [suffix.lower() for suffix in Path(name).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return LOCAL_DATA_SUFFIXES.get(suffixes[-1]) if suffixes else None


def data_files_pattern(entry: str, folder: Path | None = None) -> str:
    """A `data_files` entry as the `datasets` pattern the data stage reads it by: an entry that names a file (in
    `folder`, the dataset's, where given) is that file alone, glob characters and all (`rows[1].jsonl`, escaped:
    datasets globs every entry); any other entry is a glob pattern (under `folder`'s literal path). A leading `~` is
    the home folder (datasets read `~/r.jsonl` as a folder `~` here)."""
    if entry.startswith("~"):  # only then: a URL (hf://, https://) is no path to normalise
        entry = str(user_path(entry))
    path = Path(entry) if folder is None else folder / entry
    if path.is_file():
        return glob.escape(str(path))
    return entry if folder is None else f"{glob.escape(str(folder))}/{entry}"


def local_data_files(data_files: list[str], folder: Path | None = None) -> list[Path]:
    """The local files that `data_files` entries are read from (`data_files_pattern`), entry by entry, each
    pattern's files sorted: what the plan counts and the prepared-data cache hashes."""
    found = []
    for entry in data_files:
        matches = sorted(glob.glob(data_files_pattern(entry, folder), recursive=True))
        found += [Path(match) for match in matches if Path(match).is_file()]
    return found


class DsType(str, Enum):
    json = "json"  # .json or .jsonl
    csv = "csv"
    parquet = "parquet"
    arrow = "arrow"
    text = "text"


class Optimizer(str, Enum):
    """Every optimizer name of transformers' `OptimizerNames` (a test checks the two lists are equal).

    Written out instead of imported: importing transformers' training arguments takes seconds and loads torch, and
    a config must load in a fraction of that. Names that need a package beyond torch and bitsandbytes are checked
    when training starts (`llmkit.train.optimizers`).
    """

    adamw_torch = "adamw_torch"
    adamw_torch_fused = "adamw_torch_fused"
    adamw_torch_xla = "adamw_torch_xla"
    adamw_torch_npu_fused = "adamw_torch_npu_fused"
    adafactor = "adafactor"
    adamw_anyprecision = "adamw_anyprecision"
    adamw_torch_4bit = "adamw_torch_4bit"
    adamw_torch_8bit = "adamw_torch_8bit"
    ademamix = "ademamix"
    sgd = "sgd"
    adagrad = "adagrad"
    adamw_bnb_8bit = "adamw_bnb_8bit"
    adamw_8bit = "adamw_8bit"
    ademamix_8bit = "ademamix_8bit"
    lion_8bit = "lion_8bit"
    lion_32bit = "lion_32bit"
    paged_adamw_32bit = "paged_adamw_32bit"
    paged_adamw_8bit = "paged_adamw_8bit"
    paged_ademamix_32bit = "paged_ademamix_32bit"
    paged_ademamix_8bit = "paged_ademamix_8bit"
    paged_lion_32bit = "paged_lion_32bit"
    paged_lion_8bit = "paged_lion_8bit"
    rmsprop = "rmsprop"
    rmsprop_bnb = "rmsprop_bnb"
    rmsprop_bnb_8bit = "rmsprop_bnb_8bit"
    rmsprop_bnb_32bit = "rmsprop_bnb_32bit"
    galore_adamw = "galore_adamw"
    galore_adamw_8bit = "galore_adamw_8bit"
    galore_adafactor = "galore_adafactor"
    galore_adamw_layerwise = "galore_adamw_layerwise"
    galore_adamw_8bit_layerwise = "galore_adamw_8bit_layerwise"
    galore_adafactor_layerwise = "galore_adafactor_layerwise"
    lomo = "lomo"
    adalomo = "adalomo"
    grokadamw = "grokadamw"
    schedule_free_radam = "schedule_free_radam"
    schedule_free_adamw = "schedule_free_adamw"
    schedule_free_sgd = "schedule_free_sgd"
    apollo_adamw = "apollo_adamw"
    apollo_adamw_layerwise = "apollo_adamw_layerwise"
    stable_adamw = "stable_adamw"


# axolotl's own optimizer names that are a transformers optimizer under another name (both are torchao's AdamW).
OPTIMIZER_ALIASES = {"ao_adamw_4bit": "adamw_torch_4bit", "ao_adamw_8bit": "adamw_torch_8bit"}
# axolotl's own optimizers that transformers does not implement: what each is, and the nearest name trained here.
AXOLOTL_ONLY_OPTIMIZERS = {
    "optimi_adamw": ("torch-optimi's AdamW, with Kahan-summed updates for 16-bit weights", "adamw_torch"),
    "ao_adamw_fp8": ("torchao's AdamW with FP8 optimizer state", "adamw_torch_8bit"),
    "adopt_adamw": ("axolotl's own ADOPT optimizer", "adamw_torch"),
    "came_pytorch": ("the CAME optimizer of the came-pytorch package", "adafactor"),
    "muon": ("axolotl's Muon (orthogonalised momentum for 2-D weights, AdamW for the rest)", "adamw_torch"),
    "dion": ("axolotl's Dion optimizer", "adamw_torch"),
}


def optimizer_name(value: object) -> object:
    """axolotl's names mapped to transformers' where they are the same optimizer; axolotl-only names refused."""
    if not isinstance(value, str):
        return value
    if value in AXOLOTL_ONLY_OPTIMIZERS:
        what, nearest = AXOLOTL_ONLY_OPTIMIZERS[value]
        raise ValueError(
            f"{value} is {what}, which only axolotl implements and llmkit does not; the nearest optimizer "
            f"trained here is {nearest} (set optimizer: {nearest})"
        )
    return OPTIMIZER_ALIASES.get(value, value)


class RLMethod(str, Enum):
    """Preference and RL training methods (axolotl's `rl:` values): DPO's by TRL's DPOTrainer, ORPO by its
    ORPOTrainer, SimPO by its CPOTrainer, KTO by its KTOTrainer, GRPO by its GRPOTrainer."""

    dpo = "dpo"  # DPO, sigmoid loss
    ipo = "ipo"  # DPO with the IPO loss (TRL loss_type ipo)
    orpo = "orpo"  # ORPO: the chosen answers' NLL plus a weighted odds-ratio loss, no reference model
    simpo = "simpo"  # SimPO (CPO's loss_type simpo): length-averaged log-probabilities with a margin, no reference
    # KTO: unpaired rows (a prompt, one answer, whether it is desirable), each answer's log-ratio to the reference
    # against the batch's KL estimate
    kto = "kto"
    # GRPO: prompts only; the model generates trl.num_generations completions of each, the user's reward functions
    # score them, and each completion is trained by its reward against its group's mean
    grpo = "grpo"

    @property
    def has_reference(self) -> bool:
        """Whether the loss compares the model with a frozen reference (DPO's, KTO's); ORPO's and SimPO's do not."""
        return self in (RLMethod.dpo, RLMethod.ipo, RLMethod.kto)

    @property
    def is_dpo(self) -> bool:
        """DPO's loss (TRL's DPOTrainer): the one that reads rpo_alpha and dpo_use_weighting."""
        return self in (RLMethod.dpo, RLMethod.ipo)

    @property
    def paired(self) -> bool:
        """Whether a row is a pair (prompt, chosen, rejected), both answers trained in one batch; KTO's row is one
        answer with its label; GRPO's a prompt."""
        return self not in (RLMethod.kto, RLMethod.grpo)

    @property
    def rows_noun(self) -> str:
        """What the method trains on, as the CLI and the log count it."""
        if self is RLMethod.grpo:
            return "GRPO prompts"
        return "preference pairs" if self.paired else "KTO rows"

    @property
    def trainer_adds_bos(self) -> bool:
        """Whether TRL's trainer tokenizes the prompt and an answer without the tokenizer's special tokens and puts
        BOS first itself where the prompt lacks it (ORPOTrainer's and CPOTrainer's `add_bos_token_if_needed`), not
        with the tokenizer's own special tokens (DPOTrainer's), so a row is measured as it is trained."""
        return self in (RLMethod.orpo, RLMethod.simpo)

    @property
    def title(self) -> str:
        """The method's name as its paper writes it (the loss curve's and the plan's)."""
        return "SimPO" if self is RLMethod.simpo else self.value.upper()


# axolotl's DPO types that are not read here, and why (each refused by name, not as an unknown type).
REFUSED_PREFERENCE_TYPES = {
    "zephyr.nectar": "axolotl's zephyr.nectar sorts Nectar's answers by rank and takes the last two, the worst "
    "ranked (rank 1 is Nectar's best), as chosen and rejected; not implemented",
    "mistral.prompt_pairs": "axolotl cannot load it (its loader passes a dataset_idx the function does not take); "
    "not implemented (mistral.argilla_chat is)",
}


# TRL 1.16's DPO losses (DPOConfig.loss_type), which dpo_loss_type names; TRL refuses another only mid-training.
DPOLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]  # fmt: skip
# The ones that read label_smoothing (dpo_label_smoothing); the others leave it unread.
SMOOTHED_DPO_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
# dpo_norm_loss: each loss on the answers' log-probabilities averaged over their tokens (the model's and the
# reference's), as axolotl's DPO trainer computed them under it (TRL's ipo averaging, whatever the loss). TRL 1.16
# averages them in sigmoid_norm (sigmoid's loss on them) and ipo only; sft's NLL is a per-token mean whatever it says.
NORMALISED_DPO_LOSSES = {"sigmoid": "sigmoid_norm", "sigmoid_norm": "sigmoid_norm", "ipo": "ipo", "sft": "sft"}


# axolotl's other `rl:` values: what each is, and why it is not implemented here.
UNSUPPORTED_RL = {
    "ebft": "axolotl's EBFT (energy-based fine-tuning) runs a trainer of axolotl's own, which TRL 1.16 has no "
    "counterpart of",
    "kto_pair": "axolotl's older kto_pair (DPO's trainer with the kto_pair loss) needs a loss TRL 1.16's DPOTrainer "
    "no longer has; rl: kto trains KTO on unpaired rows",
}
# axolotl's rl: gdpo is its GRPO trainer with each reward normalized within its group before the rewards are weighed
# and summed (TRL's multi_objective_aggregation: normalize_then_sum) where trl: does not say otherwise: read so.
GDPO_AGGREGATION = "normalize_then_sum"


def rl_method(value: object) -> object:
    """`rl: dpo|ipo|orpo|simpo|kto|grpo`; false/none/empty: no preference training; axolotl's other methods refused by
    name."""
    if value is False or (isinstance(value, str) and value.lower() in ("", "none", "false")):
        return None
    if isinstance(value, str) and value in UNSUPPORTED_RL:
        supported = ", ".join(method.value for method in RLMethod)
        raise ValueError(f"{value}: {UNSUPPORTED_RL[value]}: not implemented here; supported: {supported}, gdpo")
    return value


class PreferenceType(str, Enum):
    """Preference dataset types, axolotl's `prompt_strategies/dpo` names (and `orpo`'s chat_template.argilla): rows
    become prompt/chosen/rejected."""

    chat_template_default = "chat_template.default"  # {messages, chosen, rejected}, the tokenizer's chat template
    # {chosen: [turns..., answer], rejected: [..., answer]}: the prompt chosen's turns before its answer; template
    chat_template_argilla_chat = "chat_template.argilla_chat"
    # ORPO's (axolotl's orpo/chat_template.py): {system?, prompt?, chosen: [turns], rejected: [turns]}, chat template
    chat_template_argilla = "chat_template.argilla"
    chatml_intel = "chatml.intel"  # {system?, question, chosen, rejected}
    chatml_argilla = "chatml.argilla"  # {system?, prompt|input|question|instruction, chosen|chosen_response, ...}
    chatml_default = "chatml.default"  # axolotl's name for the same reading as chatml.argilla
    chatml_argilla_chat = "chatml.argilla_chat"  # {chosen: [user, assistant], rejected: [user, assistant]}
    chatml_icr = "chatml.icr"  # {system?, input, chosen, rejected}
    chatml_prompt_pairs = "chatml.prompt_pairs"  # {system?, prompt, chosen, rejected}
    chatml_ultra = "chatml.ultra"  # {system?, prompt, chosen: [user, assistant], rejected: [user, assistant]}
    llama3_intel = "llama3.intel"
    llama3_argilla = "llama3.argilla"
    llama3_default = "llama3.default"
    llama3_argilla_chat = "llama3.argilla_chat"
    llama3_icr = "llama3.icr"
    llama3_prompt_pairs = "llama3.prompt_pairs"
    llama3_ultra = "llama3.ultra"
    mistral_argilla_chat = "mistral.argilla_chat"  # as chatml.argilla_chat, in [INST] ... [/INST], answers + "</s>"
    passthrough_default = "passthrough.default"  # rows already {prompt, chosen, rejected}, as with no type

    @classmethod
    def read_by(cls, method: RLMethod) -> list[PreferenceType]:
        """The types `rl: method` reads: axolotl loads ORPO's from its `orpo` strategies, DPO's from `dpo`."""
        if method is RLMethod.orpo:
            return [cls.chat_template_argilla]
        return [kind for kind in cls if kind is not cls.chat_template_argilla]


class KTOType(str, Enum):
    """KTO dataset types, axolotl's `prompt_strategies/kto` names: rows become TRL's {prompt, completion, label}, the
    row's `label` (true: a desirable answer) kept as it is. The names are DPO's, the rows not: one `completion`."""

    chatml_argilla = "chatml.argilla"  # {system?, instruction, completion, label}
    chatml_argilla_chat = "chatml.argilla_chat"  # {completion: [user, assistant], label}
    chatml_intel = "chatml.intel"  # {system?, question, completion, label}
    chatml_prompt_pairs = "chatml.prompt_pairs"  # {system?, prompt, completion, label}
    chatml_ultra = "chatml.ultra"  # {system?, prompt, completion, label}
    llama3_argilla = "llama3.argilla"
    llama3_argilla_chat = "llama3.argilla_chat"  # {completion: [turns..., answer], label}: every turn before it
    llama3_intel = "llama3.intel"
    llama3_prompt_pairs = "llama3.prompt_pairs"
    llama3_ultra = "llama3.ultra"


class LoftQSettings(BaseModel):
    model_config = _SECTION

    loftq_bits: Literal[4, 8] = Field(
        4, description="Bits of the quantized base LoftQ fits the adapter to (NF4, int8)."
    )


class PeftSettings(BaseModel):
    """axolotl's `peft:` mapping."""

    model_config = _SECTION

    loftq_config: LoftQSettings | None = Field(
        None, description="Initialise LoRA with LoftQ (peft init_lora_weights loftq); the base loads unquantized."
    )
    backend: Literal["bnb"] | None = Field(None, description="Quantization backend: bnb (bitsandbytes) only.")


GRPO_DEFAULT_GENERATIONS = 8  # TRL's GRPOConfig.num_generations, which the batch rule checks when it is unset
GRPO_DEFAULT_COMPLETION_TOKENS = 512  # TRL's GRPOConfig.max_completion_length, which the plan takes when it is unset

# The trl: keys axolotl's GRPO strategy passes to TRL's GRPOConfig under their own names, each when it is set (unset:
# TRL's default, which axolotl leaves too); reward_funcs goes to the trainer, use_vllm is false here, and
# sync_ref_model brings the two keys of GRPO_SYNC_DEFAULTS.
GRPO_CONFIG_KEYS = (
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "generation_kwargs",
    "reward_weights",
    "scale_rewards",
    "multi_objective_aggregation",
    "loss_type",
    "importance_sampling_level",
    "mask_truncated_completions",
    "num_iterations",
    "epsilon",
    "epsilon_high",
    "off_policy_mask_threshold",
    "use_bias_correction_kl",
    "num_completions_to_print",
)
# axolotl's own defaults of the reference model's sync (TRL's are 0.6 and 512), passed only with sync_ref_model: true
GRPO_SYNC_DEFAULTS = {"ref_model_mixup_alpha": 0.9, "ref_model_sync_steps": 64}

# axolotl's trl: keys of its vLLM generation, which it reads only with trl.use_vllm: true (an error here): without it
# they change nothing, there as here (axolotl's own config dumps hold the server's host and port), so they are
# reported as ignored keys.
VLLM_TRL_KEYS = (
    "vllm_mode",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_server_timeout",
    "vllm_guided_decoding_regex",
    "vllm_enable_sleep_mode",
    "vllm_device",
    "vllm_gpu_memory_utilization",
    "vllm_dtype",
    "vllm_max_model_len",
    "vllm_enable_prefix_caching",
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_cap",
    "vllm_sync_interval",
    "vllm_lora_sync",
)
# axolotl's trl: keys that cannot work here, each refused by name with the reason when set (null or false: nothing).
REFUSED_TRL_KEYS = {
    **dict.fromkeys(
        ("async_prefetch", "prefetch_depth", "streaming_partial_batch", "streaming_min_groups"),
        "axolotl's asynchronous GRPO trainer, which generates with vLLM; TRL's GRPOTrainer generates in the step",
    ),
    "rollout_func": "a custom rollout replaces TRL's generation (axolotl runs it through vLLM); the model generates "
    "its own completions here",
    "reward_processing_classes": "tokenizers of reward models; trl.reward_funcs here are Python functions, not "
    "reward models",
    "use_liger_loss": "TRL 1.16's GRPOConfig has no liger loss (its use_liger_kernel is deprecated); TRL's own loss "
    "runs here",
}
_LOSS_TYPES = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
# GRPO's own: the group size and the generation length are trl.num_generations and trl.max_completion_length
_GENERATION_OWN = {"num_return_sequences": "trl.num_generations", "max_new_tokens": "trl.max_completion_length"}


class TrlSettings(BaseModel):
    """axolotl's `trl:` mapping: the keys DPO's loss reads (beta) and GRPO's (generation, rewards and its loss)."""

    model_config = _SECTION
    _whole_numbers = field_validator("*", mode="before")(whole_numbers)

    beta: float | None = Field(
        None, ge=0, description="rl: the loss's beta (same as rl_beta; wins); grpo: the KL penalty (TRL's 0: none)."
    )
    reward_funcs: list[str] | None = Field(
        None,
        description="rl: grpo: the reward functions, each module.function of a Python file beside the config or in "
        "the current directory, called as TRL calls them: (prompts, completions, completion_ids, **columns).",
    )
    reward_weights: list[float] | None = Field(
        None, description="rl: grpo: a weight per reward function (TRL's default: 1 each)."
    )
    num_generations: int | None = Field(
        None, ge=2, description="rl: grpo: completions generated per prompt, compared in their group (TRL's 8)."
    )
    max_completion_length: int | None = Field(
        None, ge=1, description="rl: grpo: most tokens generated per completion (TRL's 512)."
    )
    temperature: float | None = Field(None, gt=0, description="rl: grpo: sampling temperature (TRL's 1.0).")
    top_p: float | None = Field(None, gt=0, le=1, description="rl: grpo: nucleus sampling's top-p (TRL's 1.0: off).")
    top_k: int | None = Field(None, ge=0, description="rl: grpo: sample from the k likeliest tokens (TRL's 0: off).")
    min_p: float | None = Field(
        None, ge=0, le=1, description="rl: grpo: least probability kept, times the likeliest's (TRL's none)."
    )
    repetition_penalty: float | None = Field(
        None, gt=0, description="rl: grpo: >1 penalizes tokens already in the prompt or completion (TRL's 1.0)."
    )
    generation_kwargs: dict[str, Any] | None = Field(
        None, description="rl: grpo: more GenerationConfig settings for the completions (they win over the above)."
    )
    scale_rewards: bool | None = Field(
        None, description="rl: grpo: divide the advantages by their group's standard deviation (TRL's true)."
    )
    multi_objective_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] | None = Field(
        None, description="rl: grpo: weigh and sum the rewards, then normalize (TRL's), or normalize each (GDPO)."
    )
    loss_type: _LOSS_TYPES | None = Field(
        None, description="rl: grpo: TRL's loss: grpo, dr_grpo, dapo (TRL's), bnpo, cispo, sapo, luspo or vespo."
    )
    importance_sampling_level: Literal["token", "sequence"] | None = Field(
        None, description="rl: grpo: importance ratios per token (TRL's) or per sequence (GSPO)."
    )
    mask_truncated_completions: bool | None = Field(
        None, description="rl: grpo: leave completions cut at max_completion_length out of the loss (TRL's false)."
    )
    num_iterations: int | None = Field(
        None, ge=1, description="rl: grpo: optimizer passes over each generation batch (μ; TRL's 1)."
    )
    epsilon: float | None = Field(None, ge=0, description="rl: grpo: the ratio's clipping range (TRL's 0.2).")
    epsilon_high: float | None = Field(
        None, ge=0, description="rl: grpo: the upper clipping range (TRL's: epsilon; DAPO's 0.28)."
    )
    off_policy_mask_threshold: float | None = Field(
        None, gt=0, description="rl: grpo: mask sequences with negative advantage past this KL (TRL's none: off)."
    )
    use_bias_correction_kl: bool | None = Field(
        None, description="rl: grpo: weigh the KL term by the importance ratio (TRL's true)."
    )
    sync_ref_model: bool = Field(
        False, description="rl: grpo: mix the model into its reference every ref_model_sync_steps (TR-DPO)."
    )
    ref_model_mixup_alpha: float | None = Field(
        None, gt=0, le=1, description="rl: grpo: the model's share in each sync of the reference (axolotl's 0.9)."
    )
    ref_model_sync_steps: int | None = Field(
        None, ge=1, description="rl: grpo: steps between syncs of the reference model (axolotl's 64)."
    )
    use_vllm: bool = Field(False, description="rl: grpo: only false: generation runs in the trainer here.")
    log_completions: bool = Field(False, description="rl: grpo: print sample completions and rewards when logging.")
    num_completions_to_print: int | None = Field(
        None, ge=1, description="rl: grpo: completions printed with log_completions (TRL's: all)."
    )

    @model_validator(mode="before")
    @classmethod
    def _only_known(cls, data: Any) -> Any:
        # axolotl passes every trl: key to TRL; a key that changes the loss or the generation must not be dropped in
        # silence (`rl:` picks the loss: dpo, ipo, orpo, ...).
        if not isinstance(data, dict):
            return data
        refused = [
            f"trl.{key}: {reason}"
            for key, reason in REFUSED_TRL_KEYS.items()
            if data.get(key) not in (None, False)  # null or false asks for nothing
        ]
        if refused:
            raise ValueError("not implemented here: " + "; ".join(refused))
        skipped = REFUSED_TRL_KEYS.keys() | set(VLLM_TRL_KEYS)  # the vLLM keys: reported by the config as ignored
        others = sorted(str(key) for key in data if key not in cls.model_fields and key not in skipped)
        if others:
            read = ", ".join(f"trl.{key}" for key in cls.model_fields)
            raise ValueError(f"not implemented here: {', '.join(others)} (read: {read}; rl: picks the loss)")
        return {key: value for key, value in data.items() if key not in skipped}

    @field_validator("use_vllm")
    @classmethod
    def _no_vllm(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "true: vLLM is not used here; GRPO's generation runs in the trainer (the model generates its own "
                "completions); set it false or remove it"
            )
        return value

    @field_validator("generation_kwargs")
    @classmethod
    def _generation_settings(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if not value:
            return value
        from transformers import GenerationConfig  # only where the key is set: transformers is slow to import

        known = GenerationConfig().to_dict()
        problems = [f"{key}: GRPO's own, set {own}" for key, own in _GENERATION_OWN.items() if key in value]
        unknown = sorted(key for key in value if key not in known and key not in _GENERATION_OWN)
        if unknown:
            problems.append(f"{', '.join(unknown)}: not transformers' GenerationConfig settings")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def grpo_keys(self) -> list[str]:
        """The GRPO-only keys this mapping sets."""
        keys = ("reward_funcs", *GRPO_CONFIG_KEYS, *GRPO_SYNC_DEFAULTS)
        set_keys = [f"trl.{key}" for key in keys if getattr(self, key) is not None]
        flags = [f"trl.{key}" for key in ("sync_ref_model", "log_completions") if getattr(self, key)]
        return set_keys + flags

    def grpo_settings(self) -> dict[str, Any]:
        """GRPOConfig's settings from these keys, as axolotl passes them (GRPO_CONFIG_KEYS when set, the reference
        model's sync at axolotl's defaults); generation runs in the trainer (no vLLM)."""
        settings = {key: getattr(self, key) for key in GRPO_CONFIG_KEYS if getattr(self, key) is not None}
        if self.sync_ref_model:
            settings["sync_ref_model"] = True
            for key, default in GRPO_SYNC_DEFAULTS.items():
                settings[key] = default if getattr(self, key) is None else getattr(self, key)
        return settings | {"use_vllm": False, "log_completions": self.log_completions}


class LrScheduler(str, Enum):
    """transformers' scheduler names (SchedulerType)."""

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    cosine_with_min_lr = "cosine_with_min_lr"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"


# Schedules axolotl accepts that this project does not run, and why: each refused by name, not as a typo.
UNIMPLEMENTED_SCHEDULERS = {
    "one_cycle": "axolotl's own OneCycleLR schedule",
    "rex": "axolotl's own REX schedule",
    "reduce_lr_on_plateau": "it steps on evaluation losses, not optimizer steps",
    "warmup_stable_decay": "it needs num_decay_steps through lr_scheduler_kwargs",
    "cosine_warmup_with_min_lr": "it needs its floor through lr_scheduler_kwargs; cosine with cosine_min_lr_ratio "
    "is the same schedule",
}


Auto = Literal["auto"]


class SpecialTokens(BaseModel):
    model_config = _SECTION

    bos_token: str | None = Field(None, description="Beginning-of-sequence token.")
    eos_token: str | None = Field(None, description="End-of-sequence token (appended after each response).")
    pad_token: str | None = Field(None, description="Padding token; the EOS token is used when none is set.")
    unk_token: str | None = Field(None, description="Unknown token.")


class BnbConfigKwargs(BaseModel):
    model_config = _SECTION

    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type (NF4 for QLoRA).")
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the 4-bit block scales too (~0.4 bit/param).")
    llm_int8_has_fp16_weight: bool = Field(False, description="8-bit: keep a 16-bit copy of the weights.")


class GradientCheckpointingKwargs(BaseModel):
    model_config = _SECTION

    use_reentrant: bool = Field(
        False, description="Reentrant checkpointing; false is required for DDP with QLoRA (see docs/axolotl.md)."
    )


class _FormatMapping(BaseModel):
    """A `type:` given as a mapping of fields and formats; PLACEHOLDERS: each format key and the names it takes."""

    model_config = _SECTION
    PLACEHOLDERS: ClassVar[dict[str, set[str]]] = {}

    @model_validator(mode="after")
    def _check_placeholders(self) -> _FormatMapping:
        """Each format key uses only its own placeholders, with balanced braces."""
        for key, names in self.PLACEHOLDERS.items():
            try:
                used = {field for _, field, _, _ in Formatter().parse(getattr(self, key)) if field is not None}
            except ValueError as err:  # an unmatched brace
                raise ValueError(f"{key}: {err}") from None
            if used - names:
                wrong, right = (", ".join(f"{{{name}}}" for name in sorted(group)) for group in (used - names, names))
                raise ValueError(f"{key}: unknown placeholder {wrong}; use {right}")
        return self


class CustomPrompt(_FormatMapping):
    """A `type:` given as a mapping: axolotl's user-defined prompt (its defaults, its placeholders).

    The prompt is `system_format` (when the row gives a system text, or the data has no `field_system` field and
    `system_prompt` gives one), then `format` when the
    row has an input, else `no_input_format`; the output follows, trained, then EOS.
    """

    PLACEHOLDERS: ClassVar[dict[str, set[str]]] = {
        "format": {"instruction", "input"},
        "no_input_format": {"instruction"},
        "system_format": {"system"},
    }

    system_prompt: str = Field("", description="System text where the data has no field_system field.")
    system_format: str = Field("{system}", description="How the system text is written; placeholder {system}.")
    field_system: str = Field("system", description="Row field holding a system text.")
    field_instruction: str = Field("instruction", description="Row field holding the instruction (required).")
    field_input: str = Field("input", description="Row field holding the input (optional).")
    field_output: str = Field("output", description="Row field holding the response (optional: empty).")
    format: str = Field("{instruction} {input} ", description="Prompt for rows with an input.")
    no_input_format: str = Field("{instruction} ", description="Prompt for rows without an input.")
    field: str | None = Field(None, description="Accepted for axolotl compatibility; unused there too.")


class _PromptedMapping(_FormatMapping):
    """The prompt of axolotl's user-defined preference and KTO formats: its field, the row's system field, and how
    they are written."""

    field_prompt: str = Field("prompt", description="Row field holding the prompt.")
    field_system: str = Field("system", description="Row field holding a system text (optional).")
    prompt_format: str = Field("{prompt}", description="How the prompt is written; placeholders {prompt}, {system}.")


class PreferencePrompt(_PromptedMapping):
    """A `type:` given as a mapping under `rl`: axolotl's user-defined preference format (dpo/user_defined.py).

    The pair is the row's prompt, chosen and rejected fields, each written with its format; `{system}` in
    prompt_format is the row's system field ("" where the row has none). Nothing else is added: no chat template.
    """

    PLACEHOLDERS: ClassVar[dict[str, set[str]]] = {
        "prompt_format": {"prompt", "system"},
        "chosen_format": {"chosen"},
        "rejected_format": {"rejected"},
    }

    field_chosen: str = Field("chosen", description="Row field holding the preferred answer.")
    field_rejected: str = Field("rejected", description="Row field holding the worse answer.")
    chosen_format: str = Field("{chosen}", description="How the preferred answer is written; placeholder {chosen}.")
    rejected_format: str = Field("{rejected}", description="How the worse answer is written; placeholder {rejected}.")


class KTOPrompt(_PromptedMapping):
    """A `type:` given as a mapping under rl: kto: axolotl's user-defined KTO format (kto/user_defined.py, as its
    RLHF docs write it).

    The row is its prompt and completion fields, each written with its format, and its label field; `{system}` in
    prompt_format is the row's system field ("" where the row has none). Nothing else is added: no chat template.
    """

    PLACEHOLDERS: ClassVar[dict[str, set[str]]] = {
        "prompt_format": {"prompt", "system"},
        "completion_format": {"completion"},
    }

    field_completion: str = Field("completion", description="Row field holding the answer.")
    field_label: str = Field("label", description="Row field holding true (a desirable answer) or false.")
    completion_format: str = Field("{completion}", description="How the answer is written; placeholder {completion}.")


# `type:` given as a mapping: axolotl's user-defined SFT prompt, DPO pair or KTO row.
TYPE_MAPPINGS = (CustomPrompt, PreferencePrompt, KTOPrompt)
# The keys that make a `type:` mapping the preference one (the rest it shares with CustomPrompt, or has none), and
# the KTO one (the rest it shares with the preference one).
_PREFERENCE_ONLY = frozenset(PreferencePrompt.model_fields) - frozenset(CustomPrompt.model_fields)
_KTO_ONLY = frozenset(KTOPrompt.model_fields) - frozenset(PreferencePrompt.model_fields)


def _mapping_problem(error: ErrorDetails, mapping: type[BaseModel]) -> str:
    key = key_path(error["loc"])
    if error["type"] == "extra_forbidden":
        match = suggest(key, list(mapping.model_fields))
        return f"{key}: unknown key" + (f" (did you mean {match}?)" if match else "")
    message = error_message(error)
    return f"{key}: {message}" if key else message


def _eos_choice_not_yes_no(value: object) -> object:
    # A YAML true/false is not one of the names, in axolotl either (its schema takes all, turn, last or null); say
    # which name each means rather than list the names alone: true trains the EOS after trained turns (turn,
    # axolotl's default for chat_template), false trains none.
    if isinstance(value, bool):
        meant = "turn (after each trained turn, axolotl's default for chat_template)" if value else "none"
        raise ValueError(f"Input should be 'turn', 'all', 'last' or 'none', not {str(value).lower()}: write {meant}")
    return value


TrainOnEos = Annotated[Literal["turn", "all", "last", "none"], BeforeValidator(_eos_choice_not_yes_no)]


class DatasetSpec(BaseModel):
    """One entry of `datasets:`; axolotl's keys. A relative local `path` is resolved by `load_config`."""

    model_config = _SECTION
    _whole_numbers = field_validator("*", mode="before")(whole_numbers)

    path: str = Field(description="Hub dataset id, or a local file or folder.")
    type: str | CustomPrompt | PreferencePrompt | KTOPrompt | None = Field(
        None,
        description="Prompt format: a name from the README's dataset-type table (alpaca, alpaca:chat, "
        "alpaca_chat.load_qa, chat_template, ...), a user-defined {field_instruction, format, ...} mapping (under "
        "rl: {field_prompt, field_chosen, field_rejected, prompt_format, ...}; rl: kto: {field_prompt, "
        "field_completion, field_label, prompt_format, completion_format, ...}), or module.function of a Python file "
        "beside the config. Required, except under rl: there, left out, the rows are already {prompt, chosen, "
        "rejected} texts, used as they are.",
    )
    ds_type: DsType | None = Field(None, description="File format of local files; guessed from the suffix if unset.")
    data_files: list[str] | None = Field(None, description="Files to read inside `path` (hub repo or local folder).")
    split: str = Field("train", description="Split to train on.")
    name: str | None = Field(None, description="Hub dataset configuration name.")
    revision: str | None = Field(None, description="Hub dataset: the branch, tag or commit read (default: main).")
    shards: int | None = Field(
        None, ge=1, description="Train on one of this many shards of the rows, shuffled with `seed` (a subset)."
    )
    shards_idx: int = Field(0, ge=0, description="With shards: which shard, from 0.")
    conversation: str | None = Field(
        None, description="alpaca_chat: prompt style (instruct, chat, chatml, phi); sharegpt: chat template name."
    )
    chat_template: str | None = Field(
        None,
        description="chat_template: tokenizer_default (default), tokenizer_default_fallback_<name>, a shipped "
        "template (chatml, gemma, llama3, phi_3, qwen_25, alpaca, metharme, falcon_h1), a model's own (qwen3, "
        "gemma3, gemma3n, gemma4, gemma4_unified, llama4, cohere, aya, deepseek_v2, exaone, mistral_v1, mistral_v2v3, "
        "mistral_v3_tekken, pixtral, mistral_v7_tekken, qwen2_vl, llama3_2_vision), jinja (with chat_template_jinja), "
        "or a Jinja string.",
    )
    chat_template_jinja: str | None = Field(None, description="chat_template jinja: the template, or a file path.")
    field: str | None = Field(None, description="completion: the text field (default `text`).")
    field_instruction: str | None = Field(None, description="alpaca: field holding the instruction.")
    field_input: str | None = Field(None, description="alpaca: field holding the input.")
    field_output: str | None = Field(None, description="alpaca: field holding the response.")
    field_system: str | None = Field(
        None, description="chat_template: row field with a system prompt, used as the first turn (default `system`)."
    )
    field_messages: str | None = Field(None, description="chat_template: field holding the message list.")
    field_tools: str | None = Field(
        None,
        description="rl: chat_template.default / chat_template.argilla_chat: field holding the row's tools for the "
        "template (default `tools`); type: chat_template reads `tools` whatever this says (axolotl's SFT loader "
        "never passes it on).",
    )
    field_chosen: str | None = Field(None, description="rl: field holding the preferred answer (default chosen).")
    field_rejected: str | None = Field(None, description="rl: field holding the worse answer (default rejected).")
    message_property_mappings: dict[str, str] | None = Field(
        None, description="chat_template: message keys to read, {role: from, content: value}."
    )
    message_field_role: str | None = Field(None, description="chat_template: role key (older spelling).")
    message_field_content: str | None = Field(None, description="chat_template: content key (older spelling).")
    message_field_training: str | None = Field(
        None, description="chat_template: message key holding true/false: train that turn (over roles_to_train)."
    )
    message_field_training_detail: str | None = Field(
        None,
        description="chat_template: message key holding [{begin_offset, end_offset, train}] spans of the turn's "
        "content (character positions, both ends counted): only the trained spans' tokens train; the turn trains "
        "when the list is not empty (message_field_training wins).",
    )
    field_thinking: str | None = Field(
        None,
        description="chat_template: message key holding a reasoning trace (default `reasoning_content`), given to "
        "the template under template_thinking_key; trained with its turn where the template writes it.",
    )
    template_thinking_key: str | None = Field(
        None,
        description="chat_template: message key the template reads the reasoning trace from (default "
        "`reasoning_content`; gpt-oss: `thinking`).",
    )
    split_thinking: bool = Field(
        False,
        description="chat_template: an assistant turn's reasoning written in its content between `<think>` and "
        "`</think>` (or `<reasoning>` tags, or Open-Thoughts' begin/end_of_thought ones) becomes its reasoning "
        "(template_thinking_key), the text after it its content (or what the begin/end_of_solution tags enclose).",
    )
    roles: dict[str, list[str]] | None = Field(
        None,
        description="chat_template: role names in the data for each template role, {user: [human, user]}; sharegpt's "
        "{input: [...], output: [...]}: more speakers, masked or trained.",
    )
    roles_to_train: list[str] | None = Field(None, description="chat_template: roles trained (default assistant).")
    train_on_eos: TrainOnEos = Field(
        "turn", description="chat_template: EOS after trained turns (turn), every turn (all), the last, or none."
    )
    train_on_eot: TrainOnEos | None = Field(
        None,
        description="chat_template: the end-of-turn token (eot_tokens) after trained turns, every turn, the last, "
        "or none; default: train_on_eos.",
    )
    drop_system_message: bool = Field(False, description="chat_template: drop a leading system message.")

    _lists = field_validator("data_files", "roles_to_train", mode="before")(one_as_list)

    @field_validator("path")
    @classmethod
    def _named_path(cls, value: str) -> str:
        if not value.strip():  # the config's folder to a path: validate scanned it for 25 s, then failed obscurely
            raise ValueError("empty")
        return value

    @model_validator(mode="before")
    @classmethod
    def _path_for_data_files(cls, data: object) -> object:
        # axolotl's schema lets `path` be absent beside `data_files`; what it then reads is not documented, so a
        # config that does this is asked for the path its files are in rather than guessed at.
        if isinstance(data, dict) and data.get("path") is None and data.get("data_files"):
            files = one_as_list(data["data_files"])
            hint = f" (path: {files[0]}, if that is the hub dataset meant)" if len(files) == 1 else ""
            raise ValueError(
                f"path: missing; data_files ({', '.join(map(str, files))}) name files inside path: set path to the "
                f"hub dataset or local folder that holds them{hint}"
            )
        return data

    @field_validator("type", mode="before")
    @classmethod
    def _mapping_type(cls, value: object) -> object:
        # Validated here so that its errors read `datasets[0].type: format: ...`, not as a failed union branch. A
        # mapping with a KTO key (field_completion, field_label, completion_format) is the KTO one, with another
        # preference key the preference one (the config's rl check says if rl is not set or is another); one
        # without either is the SFT one, which the rl check turns into the rl's own where it can be read as one.
        if not isinstance(value, dict):
            return value
        mapping: type[_FormatMapping] = (
            KTOPrompt if _KTO_ONLY & value.keys() else PreferencePrompt if _PREFERENCE_ONLY & value.keys()
            else CustomPrompt
        )  # fmt: skip
        try:
            return mapping.model_validate(value)
        except ValidationError as err:
            raise ValueError("; ".join(_mapping_problem(error, mapping) for error in err.errors())) from None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | BaseModel | None) -> str | BaseModel | None:
        # Known names become DatasetType members; other strings stay as written for the config's check (which
        # knows whether `rl` is set) and for user modules.
        if value == "sharegpt:chat":  # axolotl 2023's usual spelling: chat was its ShareGPT prompter's only style
            value = DatasetType.sharegpt.value
        return DatasetType(value) if isinstance(value, str) and value in DatasetType._value2member_map_ else value

    @field_validator("roles", mode="before")
    @classmethod
    def _role_lists(cls, value: object) -> object:
        return {k: one_as_list(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _alpaca_chat_style(self) -> DatasetSpec:
        if self.type is DatasetType.alpaca_chat and self.conversation:
            if self.conversation not in PromptStyle._value2member_map_:
                styles = ", ".join(PromptStyle._value2member_map_)
                wrong = self.conversation
                raise ValueError(f"conversation: alpaca_chat takes a prompt style ({styles}), not {wrong!r}")
        return self

    @model_validator(mode="after")
    def _shard_exists(self) -> DatasetSpec:
        if self.shards_idx and not self.shards:
            raise ValueError(f"shards_idx: {self.shards_idx} without shards (how many shards the rows are cut in)")
        if self.shards and self.shards_idx >= self.shards:
            raise ValueError(
                f"shards_idx: {self.shards_idx} is not one of the {self.shards} shards (0..{self.shards - 1})"
            )
        return self

    @model_validator(mode="after")
    def _one_spelling_per_message_key(self) -> DatasetSpec:
        mapped = self.message_property_mappings or {}
        for key, old in (("role", self.message_field_role), ("content", self.message_field_content)):
            if old and mapped.get(key, old) != old:
                raise ValueError(
                    f"message_field_{key} {old!r} and message_property_mappings.{key} {mapped[key]!r} disagree"
                )
        return self

    def type_problem(self) -> str | None:
        """What is wrong with `type`, or None (a user module is only looked for when the data is built)."""
        if isinstance(self.type, (DatasetType, *TYPE_MAPPINGS)):
            return None
        try:
            parse_dataset_type(self.type)
        except ValueError as err:
            return str(err)
        return None

    @property
    def missing_local_path(self) -> bool:
        """`path` is written as a local path (./, /, ~, or a data file's suffix) that does not exist: not a hub id,
        so the hub is not asked for it."""
        local = user_path(self.path)
        written_local = self.path.startswith((".", "/", "~")) or data_file_builder(self.path) is not None
        return written_local and not local.exists()

    @property
    def read_here(self) -> bool:
        """Its rows come from this machine alone: a local file or folder, or a `datasets` builder (`path: json`)
        over data_files that are no URLs. Only such data is read by `llmkit validate`, which never downloads."""
        if user_path(self.path).exists():
            return True
        return self.path in DsType._value2member_map_ and not any("://" in f for f in self.data_files or [])

    @property
    def base_type(self) -> DatasetType | None:
        """The named type without its `:style`; None for a mapping or a user's module."""
        if isinstance(self.type, TYPE_MAPPINGS):
            return None
        parsed = parse_dataset_type(self.type)
        return parsed[0] if parsed else None

    @property
    def user_module(self) -> str | None:
        """The `module.function` naming the user's own strategy, or None."""
        if self.type is None or isinstance(self.type, (*TYPE_MAPPINGS, DatasetType)):
            return None  # None: rl's rows as they are
        return self.type if parse_dataset_type(self.type) is None else None

    @property
    def type_name(self) -> str:
        """`type` as the stats table shows it."""
        if isinstance(self.type, TYPE_MAPPINGS):
            return "custom"
        if self.type is None:
            return "prompt/chosen/rejected as they are"
        return self.type.value if isinstance(self.type, DatasetType) else self.type

    @property
    def message_keys(self) -> dict[str, str]:
        """Template property -> message key, with the older role/content spellings folded in."""
        keys = dict(self.message_property_mappings or {})
        if self.message_field_role:
            keys["role"] = self.message_field_role
        if self.message_field_content:
            keys["content"] = self.message_field_content
        return keys

    def template_choice(self, default: str | None, default_jinja: str | None) -> tuple[str, str | None, str]:
        """(the chat template a chat entry renders with, its Jinja text or file, the key that names it), as axolotl
        chooses: the entry's chat_template (or chat_template_jinja), sharegpt's older `conversation`, else the
        config's top-level `default` (or `default_jinja`), else tokenizer_default."""
        if choice := self.chat_template or ("jinja" if self.chat_template_jinja else None):
            return choice, self.chat_template_jinja, "chat_template"
        if self.type is DatasetType.sharegpt and self.conversation:
            choice = FASTCHAT_TEMPLATES.get(self.conversation, self.conversation)
            return choice, self.chat_template_jinja, "conversation"
        return default or ("jinja" if default_jinja else "tokenizer_default"), default_jinja, "chat_template"


# sharegpt's `conversation` named a FastChat template, as axolotl's sharegpt strategy read it (get_conv_template):
# FastChat's names for templates rendered here under another name, the same text (llama-3: Llama 3's headers, each
# turn's content stripped, <|eot_id|> after it).
FASTCHAT_TEMPLATES = {"llama-3": "llama3"}


class ModelSection(BaseModel):
    model_config = _SECTION

    base_model: str = Field(description="Hub id or local path of the model to fine-tune.")
    base_model_config: str | None = Field(None, description="Where config.json comes from; default base_model.")
    revision_of_model: str | None = Field(None, description="Hub revision (branch, tag or commit) of base_model.")
    model_type: str | None = Field(None, description="transformers model class, e.g. LlamaForCausalLM; default Auto.")
    tokenizer_type: str | None = Field(
        None,
        description="transformers tokenizer class; default AutoTokenizer. One that reads the model's tokenizer "
        "files unlike AutoTokenizer (a sample text comes back otherwise) is refused.",
    )
    tokenizer_config: str | None = Field(
        None,
        description="Where the tokenizer comes from (a folder of tokenizer files alone will do); default base_model.",
    )
    special_tokens: SpecialTokens | None = Field(None, description="Tokens to set on the tokenizer.")
    tokens: list[str] | None = Field(
        None, description="New tokens added to the tokenizer (their embeddings need lora_modules_to_save)."
    )
    trust_remote_code: bool = Field(
        False,
        description="Passed to transformers; a model that needs its repo's own code is refused (llmkit runs none).",
    )
    tokenizer_legacy: bool | None = Field(None, description="The tokenizer's `legacy` flag (Llama/T5 sentencepiece).")
    overrides_of_model_config: dict[str, Any] | None = Field(
        None, description="Values set on the model's config.json before loading (axolotl's older key: model_config)."
    )
    rope_scaling: dict[str, Any] | None = Field(
        None, description="The model config's rope_scaling, e.g. {type: linear, factor: 2.0}."
    )
    unfrozen_parameters: list[str] | None = Field(
        None, description="Full fine-tune: train only parameters whose name matches one of these regexes."
    )
    bfloat16: bool = Field(False, description="Hold the weights in bfloat16 (a full fine-tune: no float32 copy).")
    float16: bool = Field(False, description="Hold the weights in float16 (a full fine-tune: no float32 copy).")
    attn_implementation: str | None = Field(
        None,
        description="Attention: eager, sdpa, flash_attention_2, flash_attention_3, flex_attention, or axolotl's "
        "xformers; default: transformers' choice (sdpa where the model supports it), also where the machine lacks "
        "the asked one (a warning; an error under strict).",
    )
    attention: str | None = Field(None, description="axolotl's short spelling: eager, sdpa, flash, flex, xformers.")
    flash_attention: bool = Field(False, description="attn_implementation: flash_attention_2.")
    sdp_attention: bool = Field(False, description="attn_implementation: sdpa.")
    flex_attention: bool = Field(False, description="attn_implementation: flex_attention.")
    eager_attention: bool = Field(False, description="attn_implementation: eager.")
    xformers_attention: bool = Field(
        False, description="axolotl's xformers kernel; transformers has none: the default (sdpa) runs, with a warning."
    )

    _token_lists = field_validator("tokens", "unfrozen_parameters", mode="before")(one_as_list)

    @field_validator("unfrozen_parameters")
    @classmethod
    def _unfrozen_patterns(cls, patterns: list[str] | None) -> list[str] | None:
        for text in patterns or []:
            UnfrozenPattern.parse(text)
        return patterns

    @field_validator(*MODEL_PATH_KEYS)
    @classmethod
    def _folder_or_hub_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A path that is not here: validate passed it, and preprocess and train stopped on a traceback. Relative
        # paths are the current directory's, as from_pretrained reads them.
        from llmkit.core.models import local_model_dir

        if value is None:
            return value
        if not value.strip():  # "" is the current folder to Path: validate passed it, train found no model there
            raise ValueError("empty")
        local = user_path(value)
        if info.field_name == "base_model" and local.exists():
            try:  # a folder without config.json: the same refusal train's model loading gives, said at load
                local_model_dir(value)
            except OSError as err:
                raise ValueError(str(err)) from None
        if info.field_name == "base_model_config" and local.is_dir() and not (local / "config.json").is_file():
            raise ValueError(f"{local} is a directory but holds no config.json")
        if not (problem := model_path_problem(value)) or (info.context or {}).get(MODELS_ELSEWHERE):
            return value  # elsewhere: validate warns that train would stop here (machine.check_model_paths)
        raise ValueError(problem)

    @field_validator("rope_scaling")
    @classmethod
    def _rope_scaling(cls, scaling: dict[str, Any] | None) -> dict[str, Any] | None:
        # Checked here: an unknown type stopped train with a KeyError traceback from the model's rotary embedding,
        # after validate passed it. The types are the ones transformers computes (modeling.model_config passes
        # them on), plus its "default", unscaled.
        if scaling is None:
            return scaling
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        known = ["default", *ROPE_INIT_FUNCTIONS]
        rope_type = scaling.get("rope_type") or scaling.get("type")
        if rope_type not in known:
            said = "no type" if rope_type is None else f"type {rope_type!r}"
            raise ValueError(f"{said}: give type: one of {', '.join(known)}")
        factor = scaling.get("factor")
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 0):
            raise ValueError(f"factor {factor!r}: give a number above 0 (2.0 stretches the context twofold)")
        return scaling

    @field_validator("tokenizer_type")
    @classmethod
    def _tokenizer_class(cls, name: str | None) -> str | None:
        # Checked here, not when the tokenizer loads: validate must refuse what train would fail on (axolotl too
        # looks the name up in transformers). Whether the class reads the model's tokenizer files as the model's own
        # class does is checked where they load (llmkit.data.tokenizer): it needs the files.
        import transformers

        if name is None or hasattr(getattr(transformers, name, None), "from_pretrained"):
            return name
        classes = [each for each in dir(transformers) if each.endswith(("Tokenizer", "TokenizerFast"))]
        match = suggest(name, classes)
        hint = f"did you mean {match}? " if match else ""
        raise ValueError(f"{name} is not a transformers tokenizer class ({hint}leave it out to use AutoTokenizer)")


class LoraSection(BaseModel):
    model_config = _SECTION

    load_in_8bit: bool = Field(False, description="Load the base in 8-bit (bitsandbytes LLM.int8()).")
    load_in_4bit: bool = Field(
        False, description="Load the base in 4-bit: NF4, double quantized (qlora); FP4 (lora, as axolotl)."
    )
    bnb_config_kwargs: BnbConfigKwargs | None = Field(None, description="bitsandbytes options for 4/8-bit loading.")
    adapter: Adapter | None = Field(None, description="lora, qlora, or none/empty for a full fine-tune.")
    peft_method: PeftMethod = Field(
        PeftMethod.lora, description="PEFT method trained by the adapter: lora, vera or prompt_tuning."
    )
    peft: PeftSettings | None = Field(None, description="axolotl's peft options: {loftq_config: {loftq_bits}}.")
    lora_model_dir: Folder | None = Field(
        None, description="Start from this trained adapter (folder or hub id) instead of a new one."
    )
    lora_fan_in_fan_out: bool = Field(False, description="peft fan_in_fan_out: weights stored (in, out) (GPT-2).")
    peft_layers_to_transform: list[int] | None = Field(
        None, description="Wrap only these layer indices (default: every layer)."
    )
    peft_layers_pattern: list[str] | None = Field(
        None, description="Name of the layer list peft_layers_to_transform indexes (e.g. layers)."
    )
    peft_init_lora_weights: bool | str | None = Field(
        None, description="peft init_lora_weights: true, false, gaussian or orthogonal (default true)."
    )
    loraplus_lr_ratio: float | None = Field(
        None, gt=0, description="LoRA+: B matrices learn at learning_rate x this ratio (2^4 recommended)."
    )
    loraplus_lr_embedding: float | None = Field(
        1e-6, gt=0, description="LoRA+: learning rate of adapted embedding layers."
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scale numerator: scale = alpha/r (alpha/sqrt(r), rsLoRA).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input.")
    lora_target_modules: list[str] | str | None = Field(
        None,
        description="Module names to wrap (q_proj, v_proj, ...); or one regular expression that the full module "
        "names must match, as peft reads a string (model.layers.[0-9]+.self_attn.(q|v)_proj).",
    )
    lora_target_linear: bool = Field(False, description="Wrap every linear layer except lm_head, plus the list.")
    lora_target_parameters: list[str] | None = Field(
        None,
        description="Fused MoE expert parameters to train with LoRA (peft target_parameters), by full name or a "
        "dotted suffix of it (mlp.experts.gate_up_proj, mlp.experts.down_proj); they are no linear layers.",
    )
    lora_modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full (embed_tokens, lm_head)."
    )
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (adds a magnitude vector).")
    peft_use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale alpha/sqrt(r).")
    peft_vera_r: int = Field(256, gt=0, description="peft_method vera: rank of the shared random projections.")
    peft_vera_d_initial: float = Field(0.1, gt=0, description="peft_method vera: initial value of the d vector.")
    peft_num_virtual_tokens: int = Field(20, gt=0, description="peft_method prompt_tuning: number of virtual tokens.")
    peft_prompt_tuning_init_text: str | None = Field(
        None, description="peft_method prompt_tuning: initialise the virtual tokens from this text (random if unset)."
    )

    @field_validator("adapter", mode="before")
    @classmethod
    def _none_means_full(cls, value):
        return None if isinstance(value, str) and value.lower() in ("none", "") else value

    @field_validator("adapter", mode="before")
    @classmethod
    def _other_axolotl_adapters(cls, value):
        if isinstance(value, str) and value.lower() in UNIMPLEMENTED_ADAPTERS:
            raise ValueError(
                f"{value} ({UNIMPLEMENTED_ADAPTERS[value.lower()]}) is not implemented here; use lora or qlora (with "
                "peft_method: lora, vera or prompt_tuning), or leave it empty for a full fine-tune"
            )
        return value

    _lists = field_validator(
        "lora_modules_to_save",
        "lora_target_parameters",
        "peft_layers_pattern",
        "peft_layers_to_transform",
        mode="before",
    )(one_as_list)
    _bounded_rank = field_validator("lora_r")(at_most_bound)

    @field_validator("peft_init_lora_weights")
    @classmethod
    def _lora_init_llmkit_merges(cls, value: bool | str | None) -> bool | str | None:
        # Inits that move the base weights at the start: the adapter then fits the moved base, and merging it onto
        # the base as loaded folds a model that was never trained (peft redoes the move when it loads the adapter).
        moved = "moves part of the base weights into the adapter before training (the base trained on is not the "
        moved += "one merged onto: llmkit's merge would fold a model that was never trained); not implemented"
        refused = {
            "pissa": moved,
            "olora": moved,
            "corda": "a data-driven init (a pass over the data before training) that also moves base weights; "
            "not implemented",
            "eva": "a data-driven init (a pass over the data before training); not implemented",
            "mica": "freezes the LoRA B matrices; not implemented",
        }
        if not isinstance(value, str):
            return value
        if value in ("gaussian", "orthogonal", "loftq"):  # loftq: with peft.loftq_config (the config's check)
            return value
        name = "pissa" if value.startswith("pissa_niter_") else value
        if name in refused:
            raise ValueError(f"{value!r}: {refused[name]}; use true (the default), gaussian or orthogonal")
        known = ", ".join(["true", "false", "gaussian", "orthogonal", "loftq", *refused])
        raise ValueError(f"{value!r} is not one of peft's LoRA inits: {known}")

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _names_or_regex(cls, value: object) -> object:
        """A list of names; one name alone (a list of one); or, as axolotl hands a string to peft, a regular
        expression the full module names must match (a string with regex syntax beyond dots)."""
        if not isinstance(value, str) or not _REGEX_SYNTAX.search(value):
            return one_as_list(value)
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"{value!r} is not a regular expression ({err})") from None
        return value

    @field_validator("peft_layers_to_transform", mode="before")
    @classmethod
    def _one_layer(cls, value: object) -> object:
        return [value] if isinstance(value, int) else value


DATASET_LISTS = ("datasets", "test_datasets")  # the keys whose entries are DatasetSpecs: training, evaluation


class DataSection(BaseModel):
    model_config = _SECTION

    datasets: list[DatasetSpec] = Field(min_length=1, description="Training data, concatenated.")
    test_datasets: list[DatasetSpec] | None = Field(
        None,
        description="Evaluation data, instead of val_set_size's held-out rows; an entry reads split `test` unless "
        "it names one (as in axolotl: a local file's only split is `train`).",
    )
    dataset_prepared_path: Folder | None = Field(None, description="Cache folder for the tokenized dataset.")
    val_set_size: float = Field(
        0.0, ge=0, description="Rows held out for evaluation: a fraction below 1, a whole number of rows above 1."
    )
    sequence_len: int = Field(512, gt=0, description="Maximum tokens per row; longer rows are dropped.")
    sample_packing: bool = Field(False, description="Pack several rows per sequence, without cross-attention.")
    eval_sample_packing: bool | None = Field(
        None,
        description="Pack the evaluation rows too; default: as sample_packing (axolotl's default). false evaluates "
        "them one row per sequence while training packs.",
    )
    pad_to_sequence_len: bool = Field(False, description="Pad every batch to sequence_len (steady memory).")
    train_on_inputs: bool = Field(False, description="Train on prompt tokens too; false masks them (label -100).")
    chat_template: str | None = Field(
        None,
        description="Chat template of every chat dataset that names none, and of the saved tokenizer: the values "
        "of datasets[].chat_template.",
    )
    chat_template_jinja: str | None = Field(None, description="chat_template: jinja: the template, or a file path.")
    eot_tokens: list[str] | None = Field(
        None, description="chat_template: the tokens that end a turn (train_on_eot); default: the tokenizer's EOS."
    )
    excess_length_strategy: Literal["drop", "truncate", "raise"] = Field(
        "drop", description="A row longer than sequence_len: dropped, cut to sequence_len, or an error."
    )
    dataset_exact_deduplication: bool = Field(False, description="Drop rows that are exact duplicates.")
    shuffle_before_merging_datasets: bool = Field(
        False, description="Shuffle each dataset with `seed` before they are concatenated."
    )
    shuffle_merged_datasets: bool = Field(True, description="Shuffle the concatenated datasets (false: keep order).")

    _eot_list = field_validator("eot_tokens", mode="before")(one_as_list)
    _bounded_length = field_validator("sequence_len")(at_most_bound)

    @field_validator("val_set_size")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value == 1:  # axolotl reads values above 1 as a count, up to 1 as a fraction: 1 would hold out every row
            raise ValueError("1 would hold out every row: give a fraction below 1 or a number of rows above 1")
        if value > 1 and not value.is_integer():  # axolotl's train_test_split refuses it; int() took 1.5 as 1 row
            raise ValueError(
                f"{value:g} is neither a fraction below 1 nor a whole number of rows: give a fraction (0.05: 5% of "
                "the rows) or a number of rows (50)"
            )
        return value

    @field_validator("test_datasets", mode="before")
    @classmethod
    def _test_split(cls, value: object) -> object:
        # axolotl loads test_datasets asking for the split "test" where an entry names none.
        if not isinstance(value, list):
            return value
        return [{"split": "test", **entry} if isinstance(entry, dict) and entry.get("split") is None else entry
                for entry in value]  # fmt: skip

    @model_validator(mode="after")
    def _one_evaluation_set(self) -> DataSection:
        if self.test_datasets and self.val_set_size:
            raise ValueError(
                "test_datasets and val_set_size: both choose the evaluation rows; set one (axolotl's rule)"
            )
        return self

    def dataset_entries(self) -> list[tuple[str, int, DatasetSpec]]:
        """(key, position, spec) of every dataset entry: the training ones, then test_datasets."""
        return [(key, i, spec) for key in DATASET_LISTS for i, spec in enumerate(getattr(self, key) or [])]

    @property
    def has_eval(self) -> bool:
        """Whether the run evaluates: rows held out by val_set_size, or test_datasets."""
        return bool(self.val_set_size or self.test_datasets)

    @property
    def eval_split_size(self) -> float | int:
        """val_set_size as datasets' train_test_split takes it: a count of rows above 1 (axolotl's rule), else a
        fraction."""
        return int(self.val_set_size) if self.val_set_size > 1 else self.val_set_size

    def held_out_rows(self, rows: int) -> int:
        """How many of `rows` the evaluation split takes (a fraction rounds up, as train_test_split rounds it)."""
        size = self.eval_split_size
        return min(size, rows) if isinstance(size, int) else math.ceil(rows * size)


def optim_args_text(value: str | dict[str, Any] | None) -> str | None:
    """optim_args as transformers reads it, `key=value,key=value`; axolotl also takes a mapping."""
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    return value


class TrainingSection(BaseModel):
    model_config = _SECTION

    micro_batch_size: int = Field(1, gt=0, description="Rows (or packed sequences) per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    batch_size: int | None = Field(
        None, gt=0, description="Rows per optimizer step (older key): gradient_accumulation_steps = it / micro_batch."
    )
    num_epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; wins over num_epochs.")
    optimizer: Optimizer = Field(
        Optimizer.adamw_torch,
        description="transformers optimizer name (OptimizerNames); axolotl's ao_adamw_4bit/8bit are "
        "adamw_torch_4bit/8bit.",
    )
    optim_args: str | dict[str, Any] | None = Field(
        None, description="Extra optimizer arguments, `k=v,k2=v2` or a mapping (transformers optim_args)."
    )
    optim_target_modules: list[str] | Literal["all_linear"] | None = Field(
        None, description="GaLore/APOLLO: module names (or regexes) whose weights the optimizer projects."
    )
    adam_beta1: float | None = Field(None, ge=0, lt=1, description="Adam beta1 (default 0.9).")
    adam_beta2: float | None = Field(None, ge=0, lt=1, description="Adam beta2 (default 0.999).")
    adam_epsilon: float | None = Field(None, gt=0, description="Adam epsilon (default 1e-8).")
    lr_scheduler: LrScheduler = Field(LrScheduler.cosine, description="transformers learning-rate schedule.")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    cosine_min_lr_ratio: float | None = Field(
        None, ge=0, lt=1, description="lr_scheduler cosine: decay to learning_rate x this instead of 0."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warmup steps (exclusive with warmup_ratio); neither: 3% of the steps, max 100."
    )
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warmup as a fraction of all steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    group_by_length: bool = Field(False, description="Batch rows of similar length together (less padding).")
    bf16: bool | Auto = Field("auto", description="bfloat16 mixed precision; auto: where the GPU supports it.")
    fp16: bool | Auto = Field("auto", description="float16 mixed precision; auto: on GPUs without bfloat16.")
    tf32: bool | Auto = Field(False, description="Allow TF32 matmuls on Ampere or newer; auto: where supported.")
    gradient_checkpointing: bool | Literal["offload", "unsloth", "offload_disk"] = Field(
        False,
        description="Recompute activations in backward to save memory; offload: also keep the saved layer inputs "
        "in CPU memory (unsloth: axolotl's older name for offload; offload_disk: offload here).",
    )
    gradient_checkpointing_kwargs: GradientCheckpointingKwargs | None = Field(
        None, description="Options for gradient checkpointing."
    )
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune noise scale on input embeddings; 0 or false: no noise."
    )
    noisy_embedding_alpha: float | None = Field(
        None, gt=0, description="axolotl's older name for neftune_noise_alpha."
    )
    use_dynamic_finetuning: bool = Field(
        False,
        description="DFT loss: each target token's cross-entropy times its own probability (detached), summed and "
        "divided by the step's target tokens, as in axolotl.",
    )
    output_dir: Folder = Field("./model-out", description="Adapter, checkpoints and logs.")
    save_strategy: Literal["steps", "epoch", "best", "no"] | None = Field(
        None, description="When to checkpoint; default steps with save_steps/saves_per_epoch, else epoch."
    )
    save_steps: int | float | None = Field(
        None, gt=0, description="Checkpoint every N steps (a fraction < 1: of all)."
    )
    saves_per_epoch: int | None = Field(
        None, gt=0, description="Checkpoints per epoch: save_steps = 1 / (saves_per_epoch x num_epochs) of all steps."
    )
    save_total_limit: int | None = Field(None, gt=0, description="Keep at most this many checkpoints.")
    eval_strategy: Literal["steps", "epoch", "no"] | None = Field(
        None,
        description="When to evaluate (with val_set_size or test_datasets); default steps with eval_steps, else "
        "epoch.",
    )
    eval_steps: int | float | None = Field(None, gt=0, description="Evaluate every N steps (a fraction < 1: of all).")
    evals_per_epoch: int | None = Field(
        None, ge=0, description="Evaluations per epoch: eval_steps = 1 / (evals_per_epoch x num_epochs) of all steps."
    )
    load_best_model_at_end: bool = Field(
        False, description="Publish the checkpoint with the best metric_for_best_model, not the last one."
    )
    metric_for_best_model: str | None = Field(None, description="Metric that picks the best checkpoint (eval_loss).")
    greater_is_better: bool | None = Field(None, description="Whether a larger metric_for_best_model is better.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without improvement of metric_for_best_model."
    )
    do_causal_lm_eval: bool = Field(
        False,
        description="At each evaluation, the model answers every held-out row's prompt (greedy) and "
        "eval_causal_lm_metrics scores the answers against the rows' trained text (logged like eval_loss).",
    )
    eval_causal_lm_metrics: list[str] = Field(
        default_factory=lambda: ["exact_match"],
        description="do_causal_lm_eval: the metrics; implemented here: exact_match (the default).",
    )
    eval_max_new_tokens: int = Field(128, gt=0, description="do_causal_lm_eval: longest answer generated.")
    logging_steps: int | None = Field(None, gt=0, description="Log the loss every N steps.")
    seed: int = Field(42, description="Seed for shuffling, initialisation and dropout.")
    resume_from_checkpoint: Folder | None = Field(None, description="Checkpoint folder to resume training from.")
    hub_model_id: str | None = Field(None, description="Push the adapter to this hub repo after training.")
    wandb_project: str | None = Field(None, description="Weights & Biases project; empty: no W&B logging.")
    wandb_entity: str | None = Field(None, description="Weights & Biases team or user.")
    wandb_watch: str | None = Field(None, description="W&B model watching: gradients, parameters, all.")
    wandb_name: str | None = Field(None, description="W&B run name.")
    wandb_run_id: str | None = Field(None, description="W&B run id (to resume a run).")
    wandb_log_model: str | None = Field(None, description="W&B: upload checkpoints (checkpoint, end).")

    _optimizer = field_validator("optimizer", mode="before")(optimizer_name)
    _bounded_batch = field_validator("micro_batch_size", "gradient_accumulation_steps", "batch_size")(at_most_bound)

    @field_validator("neftune_noise_alpha", "noisy_embedding_alpha", mode="before")
    @classmethod
    def _no_noise(cls, value: object) -> object:
        """0 or false is NEFTune off: axolotl's check_neftune moves noisy_embedding_alpha only where it is truthy,
        and a noise scale of 0 adds nothing (`noisy_embedding_alpha: false` was refused as not greater than 0)."""
        return None if value is False or (type(value) in (int, float) and value == 0) else value

    @field_validator("output_dir")
    @classmethod
    def _named_output_dir(cls, value: str) -> str:
        if value == "":  # as --output-dir "": train stopped on a FileNotFoundError traceback
            raise ValueError(EMPTY_FOLDER)
        return value

    @field_validator("lr_scheduler", mode="before")
    @classmethod
    def _scheduler_name(cls, value: object) -> object:
        if isinstance(value, str) and value in UNIMPLEMENTED_SCHEDULERS:
            supported = ", ".join(member.value for member in LrScheduler)
            raise ValueError(
                f"{value} is not implemented here ({UNIMPLEMENTED_SCHEDULERS[value]}); supported: {supported}"
            )
        return value

    _target_modules = field_validator("optim_target_modules", mode="before")(
        lambda value: value if value == "all_linear" else one_as_list(value)
    )

    @field_validator("optim_args")
    @classmethod
    def _optim_args_pairs(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        """transformers splits optim_args (`optim_args_text`) at every comma, then each piece at `=`: a piece
        without one `=` (a value holding a comma, `betas=(0.9,0.95)`) raised its ValueError traceback as the
        optimizer was made, once the data was prepared and the model loaded."""
        pieces = (optim_args_text(value) or "").replace(" ", "").split(",") if value else []
        if bad := next((piece for piece in pieces if piece.count("=") != 1), None):
            raise ValueError(
                f"{bad!r} is no key=value pair: transformers splits optim_args at each comma, then at '=', so a "
                "value can hold neither (Adam's betas are adam_beta1 and adam_beta2)"
            )
        return value

    @field_validator("eval_causal_lm_metrics", mode="before")
    @classmethod
    def _causal_lm_metrics(cls, value: object) -> object:
        if value is None:  # an empty key: the default
            return ["exact_match"]
        unknown = [name for name in one_as_list(value) if name not in CAUSAL_LM_METRICS]
        if unknown:  # axolotl's defaults (sacrebleu, comet, ter, chrf) need packages or downloads this run lacks
            raise ValueError(f"{unknown} not implemented here; implemented: {', '.join(CAUSAL_LM_METRICS)}")
        return one_as_list(value)

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _strategy_name(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class RLSection(BaseModel):
    """Preference and RL training (axolotl's `rl:`), run by TRL's DPOTrainer, ORPOTrainer, CPOTrainer (SimPO),
    KTOTrainer or GRPOTrainer."""

    model_config = _SECTION

    rl: RLMethod | None = Field(
        None,
        description="Preference training: dpo, ipo (DPO with the IPO loss), orpo, simpo or kto; datasets need "
        "preference types (kto: KTO's); grpo: online RL, the model's own completions scored by trl.reward_funcs; "
        "gdpo (axolotl's GDPO): grpo with trl.multi_objective_aggregation normalize_then_sum unless trl: sets it.",
    )
    rl_beta: float | None = Field(None, gt=0, description="rl: beta of the preference loss (TRL beta; default 0.1).")
    dpo_beta: float | None = Field(None, gt=0, description="rl: axolotl's older name for rl_beta.")
    orpo_alpha: float | None = Field(
        None, gt=0, description="rl: orpo: weight of the odds-ratio loss (TRL's ORPO beta; rl_beta and trl.beta win)."
    )
    simpo_gamma: float | None = Field(
        None, ge=0, description="rl: simpo: target reward margin of the SimPO loss (TRL simpo_gamma); required."
    )
    cpo_alpha: float | None = Field(
        None, ge=0, description="rl: simpo: weight of the chosen answers' NLL added to it (TRL cpo_alpha; default 1)."
    )
    kto_desirable_weight: float | None = Field(
        None, gt=0, description="rl: kto: weight of the desirable answers' losses (TRL desirable_weight; default 1)."
    )
    kto_undesirable_weight: float | None = Field(
        None, gt=0, description="rl: kto: weight of the undesirable answers' losses (TRL undesirable_weight; 1)."
    )
    trl: TrlSettings | None = Field(None, description="axolotl's TRL options; DPO reads beta, GRPO its own keys.")
    dpo_use_weighting: bool = Field(False, description="rl: WPO weighting of the pairs (TRL use_weighting).")
    rpo_alpha: float | None = Field(
        None,
        ge=0,
        description="rl: add the chosen answers' NLL loss x rpo_alpha (RPO; TRL sft loss, weighted; 0: none, as in "
        "axolotl).",
    )
    dpo_loss_type: list[DPOLoss] | None = Field(
        None,
        min_length=1,
        description="rl: dpo: TRL's DPO losses, summed (TRL loss_type; default [sigmoid]).",
    )
    dpo_loss_weights: list[float] | None = Field(
        None, min_length=1, description="rl: dpo: a weight per dpo_loss_type loss (TRL loss_weights; default 1 each)."
    )
    dpo_label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="rl: dpo: TRL label_smoothing, read by the robust, exo_pair (required there), aot and "
        "aot_unpaired losses only.",
    )
    dpo_norm_loss: bool = Field(
        False,
        description="rl: dpo, ipo: the loss on each answer's log-probability averaged over its tokens (the model's "
        "and the reference's), as axolotl's; TRL's sigmoid_norm for the sigmoid loss (ipo already averages; the "
        "other losses cannot).",
    )

    _rl = field_validator("rl", mode="before")(rl_method)
    _loss_list = field_validator("dpo_loss_type", "dpo_loss_weights", mode="before")(one_as_list)

    @field_validator("kto_desirable_weight", "kto_undesirable_weight", mode="before")
    @classmethod
    def _kto_weight_not_zero(cls, value: object, info: ValidationInfo) -> object:
        # axolotl passes `weight or 1.0`: its 0 trains those rows at TRL's 1.0, where 0 asks for them untrained
        if value == 0 and not isinstance(value, bool):
            raise ValueError(
                f"0 trains those rows at weight 1.0 in axolotl (it passes {info.field_name} or 1.0), not at 0; "
                "remove the key for 1.0, or give a weight above 0 (rows that should not train belong out of the data)"
            )
        return value
