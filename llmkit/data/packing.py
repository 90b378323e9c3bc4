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

from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

IGNORE_INDEX = -100  # label of tokens the loss skips (transformers' convention)
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
    """Pack tokenized rows into sequences of at most `capacity` tokens; returns them and the fill ratio."""
    input_ids, labels = list(rows["input_ids"]), list(rows["labels"])
    bins = plan_bins([len(ids) for ids in input_ids], capacity)
    packed: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": [], "attention_mask": []}
    for members in bins:
        seq_ids, seq_labels, positions = [], [], []
        for i in members:
            seq_ids += input_ids[i]
            # The first token of a row is no target: otherwise the previous row's last token would predict it.
            seq_labels += [IGNORE_INDEX, *labels[i][1:]]
            positions += range(len(input_ids[i]))
        packed["input_ids"].append(seq_ids)
        packed["labels"].append(seq_labels)
        packed["position_ids"].append(positions)
        packed["attention_mask"].append([1] * len(seq_ids))
    total = sum(len(ids) for ids in input_ids)
    return Dataset.from_dict(packed), total / max(1, len(bins) * capacity)


def _pad(values: list[list[int]], width: int, fill: int) -> torch.Tensor:
    return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)


@dataclass
class PaddingCollator:
    """Unpacked rows: right-pad to the longest row (or to `length`), mask the padding out of attention and loss."""

    pad_id: int
    length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = self.length or max(len(r["input_ids"]) for r in rows)
        return {
            "input_ids": _pad([r["input_ids"] for r in rows], width, self.pad_id),
            "labels": _pad([r["labels"] for r in rows], width, IGNORE_INDEX),
            "attention_mask": _pad([[1] * len(r["input_ids"]) for r in rows], width, 0),
        }


@dataclass
class PackedCollator:
    """Packed rows: position_ids carry the row boundaries; no attention_mask, no KV cache (see module doc).

    Padding becomes a sequence of its own (positions restart at 0, labels ignored), so it never touches real rows.
    `flatten` joins the whole batch into one row, the only layout flash attention's varlen path accepts.
    """

    pad_id: int
    length: int | None = None
    flatten: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.flatten:
            rows = [{key: sum((list(r[key]) for r in rows), []) for key in ("input_ids", "labels", "position_ids")}]
            width = len(rows[0]["input_ids"])
        else:
            width = self.length or max(len(r["input_ids"]) for r in rows)
        positions = [list(r["position_ids"]) + list(range(width - len(r["position_ids"]))) for r in rows]
        return {
            "input_ids": _pad([list(r["input_ids"]) for r in rows], width, self.pad_id),
            "labels": _pad([list(r["labels"]) for r in rows], width, IGNORE_INDEX),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "use_cache": False,
        }


def make_collator(cfg: Any, tokenizer: Any) -> PaddingCollator | PackedCollator:
    """The collator for `build_datasets`' rows under this config (packed or not, padded to sequence_len or not)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = cfg.sequence_len if getattr(cfg, "pad_to_sequence_len", False) else None
    if getattr(cfg, "sample_packing", False):
        return PackedCollator(pad_id or 0, length, flatten=bool(getattr(cfg, "flash_attention", False)))
    return PaddingCollator(pad_id or 0, length)
