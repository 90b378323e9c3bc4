"""GRPO's data (rl: grpo): prompts as TRL's GRPOTrainer reads them, and the user's reward functions, as axolotl
loads both.

    rl: grpo
    trl:
      num_generations: 4
      reward_funcs: [rewards.correct]     # rewards.py beside the config (or in the current directory)
    datasets:
      - path: openai/gsm8k
        name: main
        type: rewards.gsm8k_transform     # rewards.py's gsm8k_transform(cfg) -> transform[, {"remove_columns": [...]}]

A dataset's `type: module.function` is called with the config (a dict whose keys read as attributes), `dataset_idx=`
the entry's position in its list (datasets or test_datasets) where it takes it or **kwargs, as axolotl passes it,
and `ds_cfg=` the dataset's entry where it takes it by name. It returns a function of one row (given `tokenizer=`
where it takes it), alone or with datasets' map options, of which `remove_columns` is read. Its result is merged
into the row as datasets' map merges it: the row TRL reads has a `prompt` (a text, or a list of messages that TRL
renders with the tokenizer's chat template) and other columns, which TRL passes to every reward function by name. A
dataset without a type has its prompts already. A prompt longer than sequence_len (as TRL renders it) is kept, as
axolotl keeps it, and counted in a warning (excess_length_strategy: raise: an error naming its row). A reward
function is called as TRL calls it: with `prompts`, `completions`, `completion_ids`, `trainer_state`, `log_extra`,
`log_metric` and the rows' other columns, all by name, and returns a float (or None) per completion.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from llmkit.config.schema import ConfigError
from llmkit.data.fields import RowError
from llmkit.data.pipeline import count_kept
from llmkit.data.preference import TOKENS, PreferenceData, merged_and_held_out
from llmkit.data.rows import RawRow
from llmkit.data.sources import DataError, convert_rows, load_rows, source_name
from llmkit.data.stats import DatasetStats, DataStats
from llmkit.data.user_strategy import ConfigView, UserStrategyError, takes, user_function

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig
    from llmkit.config.sections import DatasetSpec

LOG = logging.getLogger(__name__)

RowTransform = Callable[[RawRow], dict[str, Any]]


def reward_functions(cfg: AxolotlConfig) -> list[Callable[..., Any]]:
    """trl.reward_funcs imported from the user's files, as TRL's GRPOTrainer calls them.

    Raises:
        ConfigError: a file or function is missing, its module fails to import, or the function cannot take TRL's
            arguments by name (it needs **kwargs), naming `trl.reward_funcs[i]`.
    """
    functions, problems = [], []
    for i, name in enumerate(cfg.trl.reward_funcs if cfg.trl and cfg.trl.reward_funcs else []):
        key = f"trl.reward_funcs[{i}]"
        try:
            _, function = user_function(name, cfg, key)
        except UserStrategyError as err:
            problems.append(str(err))
            continue
        if not _takes_any_keyword(function):
            problems.append(
                f"{key} {name!r}: {function.__name__} must take **kwargs: TRL passes prompts, completions, "
                "completion_ids, trainer_state, log_extra, log_metric and the dataset's columns by name"
            )
        functions.append(_said_as_the_users(function, f"{key} {name!r}"))
    if problems:
        raise ConfigError(problems, cfg.source)
    return functions


def _said_as_the_users(function: Callable[..., Any], named: str) -> Callable[..., Any]:
    """`function` as TRL calls it, whose exception or wrong count of rewards is a DataError naming the key (one
    line), not TRL's traceback around the user's. functools.wraps keeps the name TRL logs (`rewards/<name>/mean`)
    and the signature it reads."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            rewards = function(*args, **kwargs)
        except Exception as err:  # the user's code
            raise DataError(f"{named} raised {type(err).__name__}: {err}") from err
        completions = kwargs.get("completions")
        if completions is not None and (not isinstance(rewards, list | tuple) or len(rewards) != len(completions)):
            got = f"{len(rewards)} rewards" if isinstance(rewards, list | tuple) else type(rewards).__name__
            raise DataError(
                f"{named} returned {got} for {len(completions)} completions: give one float (or None) each"
            )
        return rewards

    return call


def _takes_any_keyword(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: TRL's call is its to answer
        return True
    return any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)


def _row_transform(
    spec: DatasetSpec, position: int, cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase
) -> RowTransform:
    """The dataset's rows as TRL reads them: through the user's transform (`type: module.function`), or as they
    are; a row without a prompt is an error."""
    transform, remove = None, set()
    if spec.type is not None:  # the config allows only module.function here
        name = str(spec.type)
        path, load = user_function(name, cfg, "type")
        kwargs = {"ds_cfg": ConfigView.of(spec.model_dump(mode="json"))} if takes(load, "ds_cfg") else {}
        if takes(load, "dataset_idx") or _takes_any_keyword(load):
            # axolotl calls every RL transform with its entry's position in datasets (or test_datasets) by name
            kwargs["dataset_idx"] = position
        try:
            made = load(ConfigView.of(cfg.model_dump(mode="json")), **kwargs)
        except Exception as err:  # the user's code
            problem = f"{path}:{load.__name__}() raised {type(err).__name__}: {err}"
            raise UserStrategyError(f"type {name!r}: {problem}") from err
        transform, options = made if isinstance(made, tuple) and len(made) == 2 else (made, {})
        if not callable(transform) or not isinstance(options, Mapping):
            raise UserStrategyError(
                f"type {name!r}: {path}:{load.__name__}() returned {type(made).__name__}, not a function of a row "
                "(or a function and datasets' map options, as axolotl reads them)"
            )
        remove = set(options.get("remove_columns") or [])
        if takes(transform, "tokenizer"):
            transform = _with_tokenizer(transform, tokenizer)

    def build(row: RawRow) -> dict[str, Any]:
        out = row
        if transform is not None:
            try:
                made = transform(row)
            except Exception as err:  # the user's code
                raise RowError(f"the type's transform raised {type(err).__name__}: {err}") from err
            if not isinstance(made, Mapping):
                raise RowError(f"the type's transform returned {type(made).__name__}, not a row (a dict)")
            out = {key: value for key, value in row.items() if key not in remove} | dict(made)
        prompt = out.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
            raise RowError("no prompt: GRPO's rows need `prompt` (a text, or a list of messages)")
        return out

    return build


def untransformed_check(cfg: AxolotlConfig, spec: DatasetSpec, position: int) -> RowTransform | None:
    """What a dataset's rows must hold that no tokenizer is needed to check (`llmkit validate`, where the tokenizer
    is not here): rows used as they are need a prompt; None for rows through the user's transform, which may take
    the tokenizer."""
    return _row_transform(spec, position, cfg, None) if spec.type is None else None  # type: ignore[arg-type]


def _with_tokenizer(transform: Callable[..., Any], tokenizer: PreTrainedTokenizerBase) -> RowTransform:
    return lambda row: transform(row, tokenizer=tokenizer)


def spec_prompts(
    cfg: AxolotlConfig, spec: DatasetSpec, key: str, position: int, tokenizer: PreTrainedTokenizerBase
) -> tuple[Dataset, DatasetStats]:
    """One dataset's prompts, with their tokens (the TOKENS column), those longer than sequence_len kept, as axolotl
    keeps them, and counted in a warning (excess_length_strategy: raise: an error naming the row)."""
    source = source_name(spec)
    try:
        build = _row_transform(spec, position, cfg, tokenizer)
    except UserStrategyError as err:
        raise DataError(f"{source}: {err}") from None
    rows = load_rows(spec, build, cfg.seed, f"{key}[{position}]")
    try:
        columns = tuple(build(rows[0]))
    except RowError as err:
        raise DataError(f"{source}: row 1: {err}") from None
    tokens, limit = _prompt_tokens(tokenizer), cfg.sequence_len

    def convert(row: RawRow) -> list[dict[str, Any]]:
        made = build(row)
        if set(made) != set(columns):
            raise RowError(f"columns {sorted(made)}, where the first row has {sorted(columns)}")
        length = tokens(made["prompt"])
        if length > limit and cfg.excess_length_strategy == "raise":
            raise RowError(
                f"the prompt is {length} tokens long, longer than sequence_len {limit}, and excess_length_strategy "
                "is raise"
            )
        return [{**made, TOKENS: length}]

    prompts = convert_rows(rows, source, convert, (*columns, TOKENS), f"GRPO prompts of {Path(source).name}")
    lengths: list[int] = prompts[TOKENS]
    stats = DatasetStats(source, spec.type_name if spec.type else "prompt as it is", len(rows), 0)
    count_kept(stats, [True] * len(lengths), lengths, limit)
    # axolotl keeps every GRPO prompt (its long-row filter passes them all) and TRL's GRPOTrainer neither cuts nor
    # drops one: a long prompt is trained, its completions generated past sequence_len, and said
    if long := [length for length in lengths if length > limit]:
        LOG.warning(
            "%s: %d of %d prompts are longer than sequence_len %d (up to %d tokens), kept as axolotl keeps them: "
            "their completions are generated past it (excess_length_strategy: raise makes them an error)",
            source, len(long), len(lengths), limit, max(long),
        )  # fmt: skip
    return prompts, stats


def _prompt_tokens(tokenizer: PreTrainedTokenizerBase) -> Callable[[str | list[dict[str, Any]]], int]:
    """A prompt's tokens as TRL renders it: a text as it is, messages through the chat template with the
    generation prompt."""

    def tokens(prompt: str | list[dict[str, Any]]) -> int:
        if isinstance(prompt, str):
            return len(tokenizer(prompt)["input_ids"])
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return tokens


def measured_prompts(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> PreferenceData:
    """Every dataset's prompts, each one's tokens in the TOKENS column (counted once, as they are read), concatenated,
    shuffled with `seed` (shuffle_merged_datasets); evaluated: the last `val_set_size` of them held out, or
    test_datasets' prompts (llmkit.data.preference.build_preference_datasets removes the column).

    Raises:
        DataError: a file, row or transform is bad, a row has no prompt, or datasets' columns differ.
    """
    prompts: dict[str, list[Dataset]] = {"datasets": [], "test_datasets": []}
    stats = DataStats()
    for key, position, spec in cfg.dataset_entries():
        rows, counted = spec_prompts(cfg, spec, key, position, tokenizer)
        prompts[key].append(rows)
        (stats.datasets if key == "datasets" else stats.eval_datasets).append(counted)
    return merged_and_held_out(cfg, prompts, stats, "prompts")
