"""The data pipeline: load each configured dataset, build its prompts, tokenize and mask, drop overlong rows,
split off a validation set, pack, and cache the result under `dataset_prepared_path`.

Used by `llmkit train` through `build_datasets(cfg, tokenizer)` and `make_collator(cfg, tokenizer)`. The rows
each stage hands to the next are typed in `llmkit.data.rows`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset, concatenate_datasets

from llmkit.core.files import sha256_bytes
from llmkit.data.cache import cache_key, load_prepared, save_prepared
from llmkit.data.packing import make_collator, pack_dataset
from llmkit.data.prompts import CHAT_TYPES, FieldError, builders_for, chat_template_for
from llmkit.data.rows import IGNORE_INDEX, Parts, RawColumns, TokenizedColumns, TokenizedRow
from llmkit.data.sources import DataError, load_rows, source_name
from llmkit.data.stats import DatasetStats, DataStats, stats_table

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig
    from llmkit.config.sections import DatasetSpec

LOG = logging.getLogger(__name__)
__all__ = ["DataError", "DataStats", "PreparedData", "build_datasets", "load_rows", "make_collator", "stats_table"]


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
        input_ids: list[int] = []
        labels: list[int] = []
        for i, (text, trained) in enumerate(parts.segments):
            ids: list[int] = self.tokenizer(text, add_special_tokens=i == 0 and parts.add_special_tokens)["input_ids"]
            if i == 0 and self._strips_eos and ids and ids[-1] == self.eos:
                ids = ids[:-1]  # this tokenizer ends every text with EOS; a prompt must not end the sequence
            input_ids += ids
            labels += ids if trained or self.train_on_inputs else [IGNORE_INDEX] * len(ids)
        if parts.add_eos and self.eos is not None:
            input_ids.append(self.eos)
            labels.append(self.eos)
        if parts.chunked:
            n = self.sequence_len
            return [
                TokenizedRow(input_ids=input_ids[i : i + n], labels=labels[i : i + n])
                for i in range(0, len(input_ids), n)
            ]
        return [TokenizedRow(input_ids=input_ids, labels=labels)]


def _tokenize_spec(spec: DatasetSpec, position: int, tokenize: Tokenize) -> tuple[Dataset, DatasetStats]:
    """One dataset's rows, tokenized and masked, without the rows that cannot be trained on."""
    build = builders_for(tokenize.tokenizer)[spec.type]
    source = source_name(spec)
    if spec.type in CHAT_TYPES:
        try:  # a bad template name is the spec's error, not every row's: say so once, before reading
            chat_template_for(spec, tokenize.tokenizer)
        except ValueError as err:
            raise DataError(f"{source}: {err}") from None
    rows = load_rows(spec, build)

    def tokenize_batch(batch: RawColumns, indices: list[int]) -> TokenizedColumns:
        out = TokenizedColumns(input_ids=[], labels=[])
        for index, values in zip(indices, zip(*batch.values(), strict=True), strict=True):
            try:
                parts = build(dict(zip(batch, values, strict=True)), spec)
            except FieldError as err:
                raise DataError(f"{source}: row {index + 1}: {err}") from None
            for row in tokenize(parts):
                out["input_ids"].append(row["input_ids"])
                out["labels"].append(row["labels"])
        return out

    tokenized = rows.map(
        tokenize_batch,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        desc=f"Tokenizing {Path(source).name}",
        load_from_cache_file=False,
        new_fingerprint=tokenize_fingerprint(spec, position),
    )
    stats = DatasetStats(source, spec.type.value, len(rows), 0)
    return _drop_unusable(tokenized, stats, tokenize.sequence_len)


def tokenize_fingerprint(spec: DatasetSpec, position: int) -> str:
    # Our own cache (dataset_prepared_path) decides reuse; a fixed name spares datasets hashing the tokenizer
    # and makes its scratch file for this dataset overwrite the last one instead of piling up.
    return "llmkit-tokenize-" + sha256_bytes(f"{position}|{spec!r}".encode())[:16]


def _drop_unusable(rows: Dataset, stats: DatasetStats, sequence_len: int) -> tuple[Dataset, DatasetStats]:
    keep = []
    for index, (ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        if len(ids) > sequence_len:
            stats.dropped_overlong += 1
        elif all(label == IGNORE_INDEX for label in labels[1:]):  # the first token is never a target
            stats.dropped_untrained += 1
        else:
            keep.append(index)
    stats.kept = len(keep)
    if stats.dropped_overlong:
        message = "%s: dropped %d of %d rows longer than sequence_len %d"
        LOG.warning(message, stats.source, stats.dropped_overlong, stats.rows, sequence_len)
    if stats.dropped_untrained:
        LOG.warning("%s: dropped %d rows with nothing to train on", stats.source, stats.dropped_untrained)
    if not keep:
        raise DataError(f"{stats.source}: no row is left (of {stats.rows}): {stats}")
    return rows.select(keep), stats


def _split(rows: Dataset, val_set_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out the fraction `val_set_size` (the config keeps it in [0, 1)) of the rows, shuffled with `seed`."""
    if not val_set_size:
        return rows, None
    try:
        parts = rows.train_test_split(test_size=val_set_size, seed=seed, shuffle=True)
    except ValueError:  # datasets refuses a split whose training side would be empty
        raise DataError(f"val_set_size {val_set_size} leaves no training rows out of {len(rows)}") from None
    return parts["train"], parts["test"]


def _with_attention_mask(input_ids: list[int]) -> dict[str, list[int]]:
    # All ones: rows are unpadded here; the collator pads each batch and masks that padding.
    return {"attention_mask": [1] * len(input_ids)}


def _prepare(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    tokenize = Tokenize(tokenizer, cfg.train_on_inputs, cfg.sequence_len)
    tokenized: list[Dataset] = []
    stats = DataStats()
    for position, spec in enumerate(cfg.datasets):
        rows, spec_stats = _tokenize_spec(spec, position, tokenize)
        tokenized.append(rows)
        stats.datasets.append(spec_stats)
    rows = concatenate_datasets(tokenized).shuffle(seed=cfg.seed).flatten_indices()
    rows = rows.map(
        _with_attention_mask,
        input_columns="input_ids",
        desc="Masks",
        load_from_cache_file=False,
        new_fingerprint="llmkit-attention-mask",
    )
    train, evaluation = _split(rows, cfg.val_set_size, cfg.seed)
    stats.train_rows, stats.eval_rows = len(train), len(evaluation) if evaluation is not None else 0
    stats.train_sequences = len(train)
    if cfg.sample_packing:
        train, stats.packing_efficiency = pack_dataset(train, cfg.sequence_len)
        stats.train_sequences = len(train)
        if evaluation is not None:
            evaluation, _ = pack_dataset(evaluation, cfg.sequence_len)
    return PreparedData(train, evaluation, stats)


def build_datasets(cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Training (and validation) rows with input_ids, labels, attention_mask (+ position_ids when packed).

    Reuses `cfg.dataset_prepared_path/<key>` when the datasets, their files, the tokenizer and the settings that
    shape the rows are unchanged; writes it (atomically) otherwise.

    Raises:
        DataError: a file, row or field is bad, or nothing is left to train on.
    """
    if not cfg.dataset_prepared_path:
        return _prepare(cfg, tokenizer)
    root, key = Path(cfg.dataset_prepared_path), cache_key(cfg, tokenizer)
    if cached := load_prepared(root, key):
        train, evaluation, stats_json = cached
        stats = DataStats.from_json(stats_json)
        stats.cache = "hit"
        LOG.info("Reusing the prepared dataset %s/%s", root, key)
        return PreparedData(train, evaluation, stats)
    data = _prepare(cfg, tokenizer)
    data.stats.cache = "miss"
    save_prepared(root, key, data.train, data.eval, data.stats.to_json())
    return data
