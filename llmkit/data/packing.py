"""Sample packing and the batch collators.

Packing puts several tokenized rows into one sequence of at most sequence_len tokens. Each packed row carries
position_ids that restart at 0 for every original row; no attention mask is passed, so transformers reads the
restarts as sequence boundaries (`masking_utils.find_packed_sequence_indices` for eager/sdpa, varlen kernels for
flash attention) and no token attends across rows.

That detection only runs when the model gets no KV cache, and Llama-style configs default to use_cache=True, which
makes a cache even in training: packed rows then attend to each other silently. The packed collator therefore puts
`use_cache=False` into every batch, so the batch alone is correct whatever the model's config says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import torch
from datasets import Dataset
from transformers.utils.generic import is_flash_attention_requested

from llmkit.data.rows import IGNORE_INDEX, Batch, PackedBatch, PackedColumns, PackedRow, TrainingRow
from llmkit.data.sources import say_step_when_piped, step_fingerprint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from llmkit.config.schema import AxolotlConfig

__all__ = ["IGNORE_INDEX", "PackedCollator", "PaddingCollator", "make_collator", "pack_dataset", "plan_bins"]

_BIN_WINDOW = 64  # first-fit looks at the last few open sequences only: linear time, near-optimal fill


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group row indices into sequences of at most `capacity` tokens, first fit, keeping the rows' order."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        for b in range(max(0, len(bins) - _BIN_WINDOW), len(bins)):
            if room[b] >= length:
                bins[b].append(index)
                room[b] -= length
                break
        else:
            bins.append([index])
            room.append(capacity - length)
    return bins


def pack_dataset(rows: Dataset, capacity: int) -> tuple[Dataset, float]:
    """Pack tokenized rows into `PackedRow`s of at most `capacity` tokens; returns them and the fill ratio."""
    input_ids: list[list[int]] = list(rows["input_ids"])
    labels: list[list[int]] = list(rows["labels"])
    bins = plan_bins([len(ids) for ids in input_ids], capacity)

    def pack(batch: dict[str, list[list[int]]]) -> PackedColumns:
        packed = PackedColumns(input_ids=[], labels=[], position_ids=[], attention_mask=[])
        for members in batch["members"]:
            seq_ids: list[int] = []
            seq_labels: list[int] = []
            positions: list[int] = []
            for i in members:
                seq_ids += input_ids[i]
                # The first token of a row is no target: otherwise the previous row's last token would predict it.
                seq_labels += [IGNORE_INDEX, *labels[i][1:]]
                positions += range(len(input_ids[i]))
            packed["input_ids"].append(seq_ids)
            packed["labels"].append(seq_labels)
            packed["position_ids"].append(positions)
            packed["attention_mask"].append([1] * len(seq_ids))
        return packed

    say_step_when_piped("Packing", len(input_ids))
    # A map, for its "Packing" bar on a terminal (off when piped, as every bar of the data stage): packing 20,000
    # rows took seconds with nothing shown between the tokenizing bar and the table. The fingerprint names the
    # result without datasets hashing `pack`, whose closure holds every row.
    if not bins:  # a map over no rows returns no columns either
        return Dataset.from_dict(dict(pack({"members": []}))), 0.0
    packed = Dataset.from_dict({"members": bins}).map(
        pack,
        batched=True,
        remove_columns=["members"],
        desc="Packing",
        load_from_cache_file=False,
        new_fingerprint=step_fingerprint(f"llmkit-pack-{capacity}-{rows._fingerprint}"),
    )
    total = sum(len(ids) for ids in input_ids)
    return packed, total / max(1, len(bins) * capacity)


def _pad(values: list[list[int]], width: int, fill: int) -> torch.Tensor:
    return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)


@dataclass
class PaddingCollator:
    """Unpacked rows: right-pad to the longest row (or to `length`), mask the padding out of attention and loss."""

    pad_id: int
    length: int | None = None

    def __call__(self, rows: Sequence[TrainingRow]) -> Batch:
        width = self.length or max(len(r["input_ids"]) for r in rows)
        return Batch(
            input_ids=_pad([r["input_ids"] for r in rows], width, self.pad_id),
            labels=_pad([r["labels"] for r in rows], width, IGNORE_INDEX),
            attention_mask=_pad([[1] * len(r["input_ids"]) for r in rows], width, 0),
        )


def _flatten(rows: Sequence[PackedRow]) -> PackedRow:
    """The batch's packed rows as one row: position_ids still restart at every original row."""
    input_ids = list(chain.from_iterable(r["input_ids"] for r in rows))
    return PackedRow(
        input_ids=input_ids,
        labels=list(chain.from_iterable(r["labels"] for r in rows)),
        position_ids=list(chain.from_iterable(r["position_ids"] for r in rows)),
        attention_mask=[1] * len(input_ids),
    )


@dataclass
class PackedCollator:
    """Packed rows: position_ids carry the row boundaries; no attention_mask, no KV cache (see module doc).

    Padding becomes a sequence of its own (positions restart at 0, labels ignored), so it never touches real rows.
    `flatten` joins the whole batch into one row, the only layout flash attention's varlen path accepts.
    """

    pad_id: int
    length: int | None = None
    flatten: bool = False

    def __call__(self, rows: Sequence[PackedRow] | Sequence[TrainingRow]) -> PackedBatch | Batch:
        if "position_ids" not in rows[0]:  # the evaluation rows, left unpacked by eval_sample_packing: false
            return PaddingCollator(self.pad_id, self.length)(rows)
        if self.flatten:
            rows = [_flatten(rows)]
            width = len(rows[0]["input_ids"])
        else:
            width = self.length or max(len(r["input_ids"]) for r in rows)
        positions = [r["position_ids"] + list(range(width - len(r["position_ids"]))) for r in rows]
        return PackedBatch(
            input_ids=_pad([r["input_ids"] for r in rows], width, self.pad_id),
            labels=_pad([r["labels"] for r in rows], width, IGNORE_INDEX),
            position_ids=torch.tensor(positions, dtype=torch.long),
            use_cache=False,
        )


def make_collator(
    cfg: AxolotlConfig, tokenizer: PreTrainedTokenizerBase, attention: str | None = None
) -> PaddingCollator | PackedCollator:
    """The collator for `build_datasets`' rows under this config (packed or not, padded to sequence_len or not).

    Args:
        attention: the attention the model runs (default: the config's): flash attention (a hub flash kernel
            too) takes packed rows flattened into one, the others a batch of rows.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = pad_id or 0  # a tokenizer with neither: any id will do, padding is masked out of attention and loss
    length = cfg.sequence_len if cfg.pad_to_sequence_len else None
    if cfg.sample_packing:
        # transformers' own test (any name with "flash": flash_attention_2/3 and the hub's flash kernels, such as
        # gpt-oss's kernels-community/vllm-flash-attn3), whose packed path reads position_ids only in a batch of one
        flash = is_flash_attention_requested(
            requested_attention_implementation=attention or cfg.attention_implementation
        )
        return PackedCollator(pad_id, length, flatten=flash)
    return PaddingCollator(pad_id, length)
