"""The data pipeline: load each configured dataset, build its prompts, tokenize and mask, drop overlong rows,
split off a validation set, pack, and cache the result under `dataset_prepared_path`.

Used by `llmkit train` through `build_datasets(cfg, tokenizer)` and `make_collator(cfg, tokenizer)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from llmkit.data.cache import cache_key, load_prepared, save_prepared
from llmkit.data.packing import IGNORE_INDEX, make_collator, pack_dataset
from llmkit.data.prompts import CHAT_TYPES, DATASET_TYPES, FieldError, Parts, builders_for, chat_template_for
from llmkit.data.sources import DataError, load_rows, source_name

LOG = logging.getLogger(__name__)
__all__ = ["DataError", "PreparedData", "build_datasets", "make_collator", "tokenize_parts", "load_rows"]

DEFAULT_SEED = 42


@dataclass
class DatasetStats:
    source: str
    type: str
    rows: int  # rows read
    kept: int  # tokenized rows (or completion chunks) kept
    dropped_overlong: int = 0  # longer than sequence_len
    dropped_untrained: int = 0  # no token left to learn from (everything masked)


@dataclass
class DataStats:
    datasets: list[DatasetStats] = field(default_factory=list)
    train_rows: int = 0
    eval_rows: int = 0
    train_sequences: int = 0  # after packing; equals train_rows without it
    packing_efficiency: float | None = None  # real tokens / (sequences x sequence_len)
    cache: str = "off"  # off, hit or miss

    @classmethod
    def from_json(cls, text: str) -> DataStats:
        raw = json.loads(text)
        return cls(**{**raw, "datasets": [DatasetStats(**d) for d in raw["datasets"]]})


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    stats: DataStats


@dataclass
class Tokenize:
    """Tokenize a row's parts and mask them: the docs/axolotl.md rule, for every dataset type.

    The first segment (the prompt) gets the tokenizer's own special tokens (BOS where it adds one, never EOS);
    later segments get none; EOS is appended after a trained answer. Masked segments get label -100 unless
    train_on_inputs. Completion text is trained whole and cut into sequence_len pieces.
    """

    tokenizer: Any
    train_on_inputs: bool
    sequence_len: int

    def __post_init__(self) -> None:
        self.eos = self.tokenizer.eos_token_id
        probe = self.tokenizer("a")["input_ids"]
        self._strips_eos = bool(probe) and probe[-1] == self.eos and self.eos is not None

    def __call__(self, parts: Parts) -> list[tuple[list[int], list[int]]]:
        input_ids: list[int] = []
        labels: list[int] = []
        for i, (text, trained) in enumerate(parts.segments):
            ids = self.tokenizer(text, add_special_tokens=i == 0 and parts.add_special_tokens)["input_ids"]
            if i == 0 and self._strips_eos and ids and ids[-1] == self.eos:
                ids = ids[:-1]  # this tokenizer ends every text with EOS; a prompt must not end the sequence
            input_ids += ids
            labels += ids if trained or self.train_on_inputs else [IGNORE_INDEX] * len(ids)
        if parts.add_eos and self.eos is not None:
            input_ids.append(self.eos)
            labels.append(self.eos)
        if parts.chunked:
            n = self.sequence_len
            return [(input_ids[i : i + n], labels[i : i + n]) for i in range(0, len(input_ids), n)]
        return [(input_ids, labels)]


def tokenize_parts(parts: Parts, tokenizer: Any, *, train_on_inputs: bool, sequence_len: int) -> list[tuple]:
    """One-off form of `Tokenize`: (input_ids, labels) pieces of one row."""
    return Tokenize(tokenizer, train_on_inputs, sequence_len)(parts)


def _type(spec: Any) -> str:
    kind = getattr(spec.type, "value", spec.type)  # the config's enum, or a plain string
    if kind not in DATASET_TYPES:
        raise DataError(f"{source_name(spec)}: dataset type {spec.type!r} is not one of {', '.join(DATASET_TYPES)}")
    return kind


def _tokenize_spec(spec: Any, position: int, tokenizer: Any, tokenize: Tokenize) -> tuple[Dataset, DatasetStats]:
    kind = _type(spec)
    build = builders_for(tokenizer)[kind]
    source = source_name(spec)
    if kind in CHAT_TYPES:
        try:
            chat_template_for(spec, tokenizer)
        except ValueError as err:
            raise DataError(f"{source}: {err}") from None
    rows = load_rows(spec, build)

    def tokenize_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": []}
        for index, values in zip(indices, zip(*batch.values(), strict=True), strict=True):
            try:
                parts = build(dict(zip(batch, values, strict=True)), spec)
            except FieldError as err:
                raise DataError(f"{source}: row {index + 1}: {err}") from None
            for input_ids, labels in tokenize(parts):
                out["input_ids"].append(input_ids)
                out["labels"].append(labels)
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
    return _drop_unusable(tokenized, DatasetStats(source, kind, len(rows), 0), tokenize.sequence_len)


def tokenize_fingerprint(spec: Any, position: int) -> str:
    # Our own cache (dataset_prepared_path) decides reuse; a fixed name spares datasets hashing the tokenizer
    # and makes its scratch file for this dataset overwrite the last one instead of piling up.
    return "llmkit-tokenize-" + hashlib.sha256(f"{position}|{spec!r}".encode()).hexdigest()[:16]


def _drop_unusable(rows: Dataset, stats: DatasetStats, sequence_len: int) -> tuple[Dataset, DatasetStats]:
    keep = []
    for index, (ids, labels) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        if len(ids) > sequence_len:
            stats.dropped_overlong += 1
        elif all(label == IGNORE_INDEX for label in labels[1:]):
            stats.dropped_untrained += 1
        else:
            keep.append(index)
    stats.kept = len(keep)
    if stats.dropped_overlong:
        LOG.warning(
            "%s: dropped %d of %d rows longer than sequence_len %d",
            stats.source, stats.dropped_overlong, stats.rows, sequence_len,
        )  # fmt: skip
    if stats.dropped_untrained:
        LOG.warning("%s: dropped %d rows with nothing to train on", stats.source, stats.dropped_untrained)
    if not keep:
        raise DataError(f"{stats.source}: no row is left (of {stats.rows}): {stats}")
    return rows.select(keep), stats


def _split(rows: Dataset, val_set_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    if not val_set_size:
        return rows, None
    size = int(val_set_size) if val_set_size >= 1 else val_set_size  # axolotl: a fraction, or a row count
    if len(rows) < 2 or (isinstance(size, int) and size >= len(rows)):
        raise DataError(f"val_set_size {val_set_size} leaves no training rows out of {len(rows)}")
    parts = rows.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def _prepare(cfg: Any, tokenizer: Any) -> PreparedData:
    tokenize = Tokenize(tokenizer, bool(cfg.train_on_inputs), int(cfg.sequence_len))
    tokenized, stats = [], DataStats()
    for position, spec in enumerate(cfg.datasets):
        rows, spec_stats = _tokenize_spec(spec, position, tokenizer, tokenize)
        tokenized.append(rows)
        stats.datasets.append(spec_stats)
    seed = cfg.seed if cfg.seed is not None else DEFAULT_SEED
    rows = concatenate_datasets(tokenized).shuffle(seed=seed).flatten_indices()
    rows = rows.map(lambda ids: {"attention_mask": [1] * len(ids)}, input_columns="input_ids", desc="Masks",
                    load_from_cache_file=False, new_fingerprint="llmkit-attention-mask")  # fmt: skip
    train, evaluation = _split(rows, float(cfg.val_set_size or 0), seed)
    stats.train_rows, stats.eval_rows = len(train), len(evaluation) if evaluation is not None else 0
    stats.train_sequences = len(train)
    if cfg.sample_packing:
        train, stats.packing_efficiency = pack_dataset(train, tokenize.sequence_len)
        stats.train_sequences = len(train)
        if evaluation is not None:
            evaluation, _ = pack_dataset(evaluation, tokenize.sequence_len)
    return PreparedData(train, evaluation, stats)


def build_datasets(cfg: Any, tokenizer: Any) -> PreparedData:
    """Training (and validation) rows with input_ids, labels, attention_mask (+ position_ids when packed).

    Reuses `cfg.dataset_prepared_path/<key>` when the datasets, their files, the tokenizer and the settings that
    shape the rows are unchanged; writes it (atomically) otherwise.

    Raises:
        DataError: a file, row or field is bad, or nothing is left to train on.
    """
    if not cfg.datasets:
        raise DataError("datasets: the config lists no dataset")
    prepared_root = getattr(cfg, "dataset_prepared_path", None)
    key = cache_key(cfg, tokenizer) if prepared_root else None
    if key and (cached := load_prepared(Path(prepared_root), key)):
        train, evaluation, stats_json = cached
        stats = DataStats.from_json(stats_json)
        stats.cache = "hit"
        LOG.info("Reusing the prepared dataset %s/%s", prepared_root, key)
        return PreparedData(train, evaluation, stats)
    data = _prepare(cfg, tokenizer)
    if key:
        data.stats.cache = "miss"
        save_prepared(Path(prepared_root), key, data.train, data.eval, json.dumps(asdict(data.stats), indent=1))
    return data


def stats_table(stats: DataStats) -> Any:
    """The data summary as a rich table: rows read, kept and dropped per dataset, then the totals."""
    from rich.table import Table

    table = Table(title=f"Training data (prepared-dataset cache: {stats.cache})")
    for column in ("dataset", "type", "rows", "kept", "too long", "all masked"):
        table.add_column(column, justify="left" if column in ("dataset", "type") else "right")
    for d in stats.datasets:
        table.add_row(d.source, d.type, *(str(n) for n in (d.rows, d.kept, d.dropped_overlong, d.dropped_untrained)))
    packing = f", packed into {stats.train_sequences} sequences" if stats.packing_efficiency is not None else ""
    fill = f" ({stats.packing_efficiency:.0%} full)" if stats.packing_efficiency is not None else ""
    table.caption = f"train {stats.train_rows} rows{packing}{fill}, eval {stats.eval_rows} rows"
    return table
