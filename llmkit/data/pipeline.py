"""The data pipeline: load each configured dataset, build its prompts, tokenize and mask, drop overlong rows,
split off a validation set, pack, and cache the result under `dataset_prepared_path`.

Used by `llmkit train` through `build_datasets(cfg, tokenizer)` and `make_collator(cfg, tokenizer)`. The rows
each stage hands to the next are typed in `llmkit.data.rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, concatenate_datasets

from llmkit.config.plan import TokenizedSplit
from llmkit.core.files import check_folder_target, user_path
from llmkit.data.cache import cache_key, load_prepared, save_prepared
from llmkit.data.chat import ChatDefaults
from llmkit.data.packing import make_collator, pack_dataset
from llmkit.data.prompts import builder_for
from llmkit.data.rows import IGNORE_INDEX, Parts, RawRow, TokenizedRow
from llmkit.data.sources import (
    DataError,
    convert_rows,
    load_rows,
    row_texts,
    source_name,
    split_held_out,
    step_fingerprint,
)
from llmkit.data.stats import DatasetStats, DataStats, stats_table
from llmkit.data.user_strategy import UserStrategyError, load_strategy, tokenize_row

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig
    from llmkit.config.sections import DatasetSpec

LOG = logging.getLogger(__name__)
__all__ = [
    "DataError",
    "DataStats",
    "PreparedData",
    "build_datasets",
    "epoch_tokens",
    "load_rows",
    "make_collator",
    "row_texts",
    "spec_problems",
    "stats_table",
]


KEEP = "_keep"  # a column marking the rows that can be trained on, until they are dropped


@dataclass
class PreparedData:
    train: Dataset  # TrainingRow, or PackedRow with sample_packing
    eval: Dataset | None  # the same kind of rows as train
    stats: DataStats


@dataclass
class Tokenize:
    """Tokenize a row's parts and mask them: the docs/axolotl.md rule, for every dataset type.

    The first segment (the prompt) gets the tokenizer's own special tokens (BOS where it adds one, never EOS);
    later segments get none; EOS is appended after a trained answer. Masked segments get label -100 unless
    train_on_inputs. Completion text is trained whole and cut into sequence_len pieces.
    """

    tokenizer: PreTrainedTokenizerBase
    train_on_inputs: bool
    sequence_len: int
    eos: int | None = field(init=False)
    _strips_eos: bool = field(init=False)  # the tokenizer appends EOS to every text (add_eos_token=True)

    def __post_init__(self) -> None:
        self.eos = self.tokenizer.eos_token_id
        probe = self.tokenizer("a")["input_ids"]
        self._strips_eos = bool(probe) and probe[-1] == self.eos and self.eos is not None

    def __call__(self, parts: Parts) -> list[TokenizedRow]:
        input_ids, labels = self._joined(parts) if parts.joined and self.tokenizer.is_fast else self._pieces(parts)
        # An answer that already ends with EOS (data written with </s>) gets no second one, as in axolotl.
        if parts.add_eos and self.eos is not None and input_ids[-1:] != [self.eos]:
            input_ids.append(self.eos)
            labels.append(self.eos)
        if parts.chunked:
            n = self.sequence_len
            return [
                TokenizedRow(input_ids=input_ids[i : i + n], labels=labels[i : i + n])
                for i in range(0, len(input_ids), n)
            ]
        return [TokenizedRow(input_ids=input_ids, labels=labels)]

    def _trained(self, parts: Parts, trained: bool) -> bool:
        return trained or (self.train_on_inputs and not parts.final_labels)

    def _pieces(self, parts: Parts) -> tuple[list[int], list[int]]:
        """Each segment tokenized alone (axolotl tokenizes prompt and response apart)."""
        input_ids: list[int] = []
        labels: list[int] = []
        for i, (text, trained) in enumerate(parts.segments):
            ids: list[int] = self.tokenizer(text, add_special_tokens=i == 0 and parts.add_special_tokens)["input_ids"]
            if i == 0 and self._strips_eos and ids and ids[-1] == self.eos:
                ids = ids[:-1]  # this tokenizer ends every text with EOS; a prompt must not end the sequence
            input_ids += ids
            labels += ids if self._trained(parts, trained) else [IGNORE_INDEX] * len(ids)
        return input_ids, labels

    def _joined(self, parts: Parts) -> tuple[list[int], list[int]]:
        """The segments tokenized as one text; a token is trained when any of its characters is."""
        text = "".join(segment.text for segment in parts.segments)
        trained_chars = bytearray(len(text))
        at = 0
        for segment in parts.segments:
            if self._trained(parts, segment.trained):
                trained_chars[at : at + len(segment.text)] = b"\x01" * len(segment.text)
            at += len(segment.text)
        encoded = self.tokenizer(text, add_special_tokens=parts.add_special_tokens, return_offsets_mapping=True)
        input_ids: list[int] = encoded["input_ids"]
        spans: list[tuple[int, int]] = encoded["offset_mapping"]
        labels = [t if any(trained_chars[a:b]) else IGNORE_INDEX for t, (a, b) in zip(input_ids, spans, strict=True)]
        return input_ids, labels


def _row_tokens(cfg: AxolotlConfig, spec: DatasetSpec, tokenize: Tokenize) -> Callable[[RawRow], list[TokenizedRow]]:
    """What turns one of the spec's rows into training rows: its type's builder, then `Tokenize`; or the user's
    own strategy.

    Raises:
        ValueError: the spec's chat template or user module cannot be used (said once, before any row is read).
    """
    if spec.user_module:
        strategy = load_strategy(spec, cfg, tokenize.tokenizer)
        return lambda row: tokenize_row(strategy, row)
    build = builder_for(spec, tokenize.tokenizer, cfg.train_on_inputs, ChatDefaults.from_config(cfg))
    return lambda row: tokenize(build(row, spec))


def _checked_row_tokens(
    cfg: AxolotlConfig, spec: DatasetSpec, entry: str, tokenize: Tokenize
) -> Callable[[RawRow], list[TokenizedRow]]:
    """`_row_tokens`, its errors as DataErrors naming the dataset's `entry` (`datasets[0]`, `test_datasets[1]`)."""
    try:
        return _row_tokens(cfg, spec, tokenize)
    except UserStrategyError as err:
        raise DataError(f"{entry}.{err}") from None
    except ValueError as err:  # a chat template this project cannot use: the spec's error, not every row's
        raise DataError(f"{entry}.{err} ({source_name(spec)})") from None


def spec_problems(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """What stops a dataset's rows being built with this tokenizer (its chat template, its user module), checked as
    preprocessing checks it before reading a row; one line per dataset (`llmkit validate` reports them)."""
    if cfg.rl:  # preference rows are built by llmkit.data.preference, which checks its templates itself
        return []
    tokenize = Tokenize(tokenizer, cfg.train_on_inputs, cfg.sequence_len)
    problems = []
    for key, position, spec in cfg.dataset_entries():
        try:
            _checked_row_tokens(cfg, spec, f"{key}[{position}]", tokenize)
        except DataError as err:
            problems.append(str(err))
    return problems


def check_local_datasets(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Each local dataset of a config that also reads the hub's, read and tokenized alone as training tokenizes it
    (its file, rows, fields, lengths), the hub's left unread: `llmkit validate` downloads no dataset, and passed a
    bad local file beside a hub dataset that training then stopped on. What depends on every dataset's rows (the
    held-out split, packing) is not checked. Preference pairs and GRPO prompts are read by their own dataset step.

    Raises:
        DataError: as `build_datasets` (`build_preference_datasets`) would raise it for that dataset.
    """
    from llmkit.config.sections import RLMethod
    from llmkit.data.grpo import spec_prompts
    from llmkit.data.preference import spec_pairs

    tokenize = Tokenize(tokenizer, cfg.train_on_inputs, cfg.sequence_len)
    key = None  # hashes every local file and the tokenizer: once, and only where SFT rows are tokenized
    for list_key, position, spec in cfg.dataset_entries():
        if not spec.read_here:
            continue
        if cfg.rl is RLMethod.grpo:
            spec_prompts(cfg, spec, list_key, position, tokenizer)
        elif cfg.rl:
            spec_pairs(cfg, spec, f"{list_key}[{position}]", tokenizer)
        else:
            key = key or f"local-{cache_key(cfg, tokenizer)}"
            _tokenize_spec(cfg, spec, (list_key, position), tokenize, key)


def check_local_rows(cfg: AxolotlConfig) -> list[str]:
    """Each local dataset read as training reads it (its file, split, shard; a bad JSON line named) and each row
    checked for what its type needs of it that no tokenizer is needed to check (`prompts.fields_check`;
    preference and GRPO rows by their own step's): `llmkit validate`'s data check where the tokenizer is not here,
    which passed rows without the fields their type needs that training stopped on. Returns the entries
    (`datasets[1]`) whose rows only the tokenizer can check (a user's module, a chat template's rendering).

    Raises:
        DataError: as training would raise it for that dataset's file or row.
    """
    from llmkit.config.sections import RLMethod
    from llmkit.data import grpo, preference
    from llmkit.data.prompts import fields_check

    unchecked = []
    for list_key, position, spec in cfg.dataset_entries():
        if not spec.read_here:
            continue
        entry = f"{list_key}[{position}]"
        if cfg.rl is RLMethod.grpo:
            check = grpo.untransformed_check(cfg, spec, position)
        else:
            check = preference.fields_check(cfg, spec) if cfg.rl else fields_check(spec)
        rows = load_rows(spec, check or (lambda row: None), cfg.seed, entry)
        if check is None:
            unchecked.append(entry)
            continue
        source = source_name(spec)

        def checked(row: RawRow, check: Callable[[RawRow], object] = check) -> list[dict]:
            check(row)
            return []

        convert_rows(rows, source, checked, (), desc=f"Checking {Path(source).name}")
    return unchecked


def _tokenize_spec(
    cfg: AxolotlConfig, spec: DatasetSpec, entry: tuple[str, int], tokenize: Tokenize, key: str
) -> tuple[Dataset, DatasetStats]:
    """One dataset's rows, tokenized and masked, each marked in a `_keep` column whether it can be trained on
    (dropped after the shuffle, as axolotl drops them); `entry` is where the config lists it (`("datasets", 0)`)."""
    source = source_name(spec)
    to_rows = _checked_row_tokens(cfg, spec, f"{entry[0]}[{entry[1]}]", tokenize)
    rows = load_rows(spec, to_rows, cfg.seed, f"{entry[0]}[{entry[1]}]")

    tokenized = convert_rows(
        rows,
        source,
        to_rows,
        ("input_ids", "labels"),
        desc=f"Tokenizing {Path(source).name}",
        fingerprint=f"llmkit-tokenize-{key}-{entry[0]}-{entry[1]}",
    )
    stats = DatasetStats(source, spec.type_name, len(rows), 0)
    tokenized = _excess_length(cfg, tokenized, source, f"{key}-{entry[0]}-{entry[1]}")
    return tokenized.add_column(KEEP, _usable(tokenized, stats, cfg.sequence_len)), stats


def _excess_length(cfg: AxolotlConfig, rows: Dataset, source: str, name: str) -> Dataset:
    """excess_length_strategy as axolotl applies it: rows longer than sequence_len left to be dropped (drop), cut
    to it (truncate; kept if a trained token is left), or an error (raise)."""
    if cfg.excess_length_strategy == "drop":  # `_usable` drops them; the column is not read twice
        return rows
    n = cfg.sequence_len
    long = [len(ids) for ids in rows["input_ids"] if len(ids) > n]
    if not long:
        return rows
    if cfg.excess_length_strategy == "raise":
        raise DataError(
            f"{source}: {len(long)} rows are longer than sequence_len {n} (the longest {max(long)} tokens), and "
            "excess_length_strategy is raise"
        )
    LOG.warning("%s: cut %d rows to sequence_len %d (excess_length_strategy: truncate)", source, len(long), n)
    return rows.map(
        lambda ids, labels: {"input_ids": ids[:n], "labels": labels[:n]},
        input_columns=["input_ids", "labels"],
        desc="Truncating",
        load_from_cache_file=False,
        new_fingerprint=step_fingerprint(f"llmkit-truncate-{name}"),
    )


def _usable(rows: Dataset, stats: DatasetStats, sequence_len: int) -> list[bool]:
    """Which rows can be trained on (not too long, a trained token), counted in `stats`; none is an error."""
    keep = []
    for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True):
        overlong = len(ids) > sequence_len
        untrained = not overlong and all(label == IGNORE_INDEX for label in labels[1:])  # the first is no target
        stats.dropped_overlong += overlong
        stats.dropped_untrained += untrained
        keep.append(not (overlong or untrained))
    count_kept(stats, keep, [len(ids) for ids in rows["input_ids"]], sequence_len)
    return keep


# Why a row can have no trained token, and what trains it: SFT rows; preference pairs say their own.
UNTRAINED_ROWS = (
    "with no trained token (every token masked: check the rows' answers, or the type's roles_to_train / segment "
    "labels; train_on_inputs: true trains the prompt too)"
)


def count_kept(
    stats: DatasetStats, keep: list[bool], lengths: list[int], sequence_len: int, untrained: str = UNTRAINED_ROWS
) -> None:
    """The kept rows counted in `stats` (whose dropped counts are filled), the dropped ones logged; none kept is an
    error saying what dropped them (`lengths`: each row's tokens; `untrained`: what a row with nothing to train is).

    Raises:
        DataError: no row is kept.
    """
    stats.kept = sum(keep)
    if stats.dropped_overlong:
        message = "%s: dropped %d of %d rows longer than sequence_len %d"
        LOG.warning(message, stats.source, stats.dropped_overlong, stats.rows, sequence_len)
    if stats.dropped_untrained:
        LOG.warning("%s: dropped %d rows with nothing to train on", stats.source, stats.dropped_untrained)
    if not stats.kept:
        why = _why_none_left(lengths, stats, sequence_len, untrained)
        raise DataError(f"{stats.source}: no row is left of {stats.rows}: {why}")


def _kept(rows: Dataset) -> Dataset:
    """The rows marked to keep, in their order, without the mark."""
    return rows.select([i for i, keep in enumerate(rows[KEEP]) if keep]).remove_columns(KEEP)


def _why_none_left(lengths: list[int], stats: DatasetStats, sequence_len: int, untrained: str) -> str:
    """What dropped every row, with the setting that would keep them."""
    reasons = []
    if stats.dropped_overlong:
        shortest = min(length for length in lengths if length > sequence_len)
        reasons.append(
            f"{stats.dropped_overlong} longer than sequence_len {sequence_len} (the shortest of them has {shortest} "
            f"tokens: raise sequence_len to at least that, or shorten the rows)"
        )
    if stats.dropped_untrained:
        reasons.append(f"{stats.dropped_untrained} {untrained}")
    return "; ".join(reasons)


def _drop_duplicates(rows: Dataset) -> Dataset:
    """The rows without exact repeats (same tokens, same labels), first occurrences kept, as axolotl's
    dataset_exact_deduplication does."""
    seen: set[int] = set()
    keep = []
    for index, (ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        row = hash((tuple(ids), tuple(labels)))
        if row not in seen:
            seen.add(row)
            keep.append(index)
    if len(keep) < len(rows):
        LOG.info("dataset_exact_deduplication: dropped %d duplicate rows of %d", len(rows) - len(keep), len(rows))
    return rows.select(keep)


def _with_attention_masks(rows: Dataset, name: str) -> Dataset:
    # All ones: rows are unpadded here; the collator pads each batch and masks that padding.
    return rows.map(
        lambda input_ids: {"attention_mask": [1] * len(input_ids)},
        input_columns="input_ids",
        desc="Masks",
        load_from_cache_file=False,
        new_fingerprint=step_fingerprint(f"llmkit-attention-mask-{name}"),
    )


def _prepare(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase, key: str) -> PreparedData:
    """The rows, computed. `key` (everything that shapes them, `cache_key`) names every step's result for
    `datasets`, which spares it hashing the tokenizer and lets it reuse a step's scratch file only when the inputs
    are the same: a fixed name would hand later steps (flatten_indices, the split) a file of an earlier run."""
    tokenize = Tokenize(tokenizer, cfg.train_on_inputs, cfg.sequence_len)
    stats = DataStats()
    tokenized: dict[str, list[Dataset]] = {"datasets": [], "test_datasets": []}
    for list_key, position, spec in cfg.dataset_entries():
        rows, spec_stats = _tokenize_spec(cfg, spec, (list_key, position), tokenize, key)
        tokenized[list_key].append(rows)
        (stats.datasets if list_key == "datasets" else stats.eval_datasets).append(spec_stats)
    # axolotl's order, which decides the held-out rows and the training order: merge, shuffle the merged rows with
    # seed, then drop the unusable ones and duplicates, then hold out the last val_set_size rows.
    parts = tokenized["datasets"]
    if cfg.shuffle_before_merging_datasets and len(parts) > 1:
        parts = [part.shuffle(seed=cfg.seed) for part in parts]
    rows = concatenate_datasets(parts)
    if cfg.shuffle_merged_datasets:
        rows = rows.shuffle(seed=cfg.seed)
    rows = _kept(rows)
    if cfg.dataset_exact_deduplication:
        rows = _drop_duplicates(rows)
    rows = _with_attention_masks(rows.flatten_indices(), f"{key}-train")
    if tokenized["test_datasets"]:  # evaluated as they are: test_datasets and val_set_size exclude each other
        train = rows
        evaluation = _with_attention_masks(_kept(concatenate_datasets(tokenized["test_datasets"])), f"{key}-test")
    else:
        train, evaluation = split_held_out(rows, cfg)
    stats.train_rows, stats.eval_rows = len(train), len(evaluation) if evaluation is not None else 0
    stats.train_sequences = len(train)
    if cfg.sample_packing:
        train, stats.packing_efficiency = pack_dataset(train, cfg.sequence_len)
        stats.train_sequences = len(train)
        if evaluation is not None and cfg.eval_sample_packing is not False:  # axolotl's default: as training
            evaluation, _ = pack_dataset(evaluation, cfg.sequence_len)
    return PreparedData(train, evaluation, stats)


def build_datasets(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Training (and validation) rows with input_ids, labels, attention_mask (+ position_ids when packed).

    Reuses `cfg.dataset_prepared_path/<key>` when the datasets, their files, the tokenizer and the settings that
    shape the rows are unchanged; writes it (atomically) otherwise.

    Raises:
        DataError: a file, row or field is bad, or nothing is left to train on.
    """
    key = cache_key(cfg, tokenizer)
    if not cfg.dataset_prepared_path:
        return _prepare(cfg, tokenizer, key)
    root = Path(cfg.dataset_prepared_path)
    try:  # before minutes of tokenizing, not when saving them
        check_folder_target(user_path(root))
    except OSError as err:
        raise DataError(f"dataset_prepared_path: {err}") from None
    if cached := load_prepared(root, key):
        train, evaluation, stats_json = cached
        stats = DataStats.from_json(stats_json)
        stats.cache = "hit"
        LOG.info("Reusing the prepared dataset %s/%s", root, key)
        for warning in stats.warnings:  # what preparing it said (a template that trains no end of turn) still holds
            LOG.warning(warning)
        return PreparedData(train, evaluation, stats)
    with _warnings_logged() as said:
        data = _prepare(cfg, tokenizer, key)
    data.stats.cache = "miss"
    data.stats.warnings = list(dict.fromkeys(said))
    save_prepared(root, key, data.train, data.eval, data.stats.to_json())
    return data


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextmanager
def _warnings_logged() -> Iterator[list[str]]:
    """The warnings the data stage logs meanwhile, to keep with the prepared data: a run that reuses it skips the
    code that said them."""
    said: list[str] = []
    handler = _Collect(said)
    logger = logging.getLogger("llmkit.data")
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)


def epoch_tokens(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> TokenizedSplit:
    """One epoch of the training split, tokenized (and packed) as training will; nothing is written (the prepared
    dataset cache is neither read nor filled)."""
    data = build_datasets(cfg.model_copy(update={"dataset_prepared_path": None}), tokenizer)
    return TokenizedSplit(tokens=sum(len(ids) for ids in data.train["input_ids"]), sequences=len(data.train))
