"""The rows that flow between the data stages, as types.

    file --load_rows--> RawRow --prompt builder--> Parts --Tokenize--> TokenizedRow
         --attention mask--> TrainingRow --pack_dataset--> PackedRow --collator--> Batch | PackedBatch

A `datasets.Dataset` stores rows column-wise: `RawColumns`, `TokenizedColumns` and `PackedColumns` are the same
rows as the column dicts that `Dataset.map(batched=True)` hands over and `Dataset.from_dict` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100  # label of tokens the loss skips (transformers' convention)

# A row as the user's file holds it: field names to arbitrary JSON. `Any` on purpose: nothing about a value is
# known until the type's prompt builder checks the fields it reads (and names the bad one in its error).
RawRow = dict[str, Any]
RawColumns = dict[str, list[Any]]


class Segment(NamedTuple):
    """A piece of a row's text: `trained` pieces are learned, the others are masked (unless train_on_inputs)."""

    text: str
    trained: bool


@dataclass(frozen=True)
class Parts:
    """What a prompt builder makes of a row: its text as segments, and how to tokenize them."""

    segments: tuple[Segment, ...]
    add_eos: bool = True  # append EOS after the last segment
    add_special_tokens: bool = True  # BOS etc. on the first segment; off where a chat template writes its own
    chunked: bool = False  # completion text: split into sequence_len pieces instead of dropping long rows
    # Tokenize the segments as one text and label each token by the segments its characters come from: a chat
    # template's text then gives exactly the tokens it gives whole (a token may span two segments).
    joined: bool = False
    final_labels: bool = False  # the builder applied train_on_inputs itself (chat turns): masked stays masked

    @classmethod
    def prompt_response(cls, prompt: str, response: str) -> Parts:
        """The instruction types' shape: a masked prompt, then the trained response and EOS.

        An empty response gets no EOS either: axolotl tokenizes the response alone, and `_tokenize("")` gives no
        tokens, so the row has nothing to train (and is dropped) rather than a lone EOS.
        """
        return cls((Segment(prompt, False), Segment(response, True)), add_eos=bool(response))


class TokenizedRow(TypedDict):
    """A row (or a completion chunk) after tokenizing and masking; `labels` holds IGNORE_INDEX where masked."""

    input_ids: list[int]
    labels: list[int]


class TrainingRow(TokenizedRow):
    """A row as `build_datasets` returns it unpacked (and as the cache stores it)."""

    attention_mask: list[int]  # all ones: padding is added per batch, by the collator


class PackedRow(TrainingRow):
    """Several training rows in one sequence of at most sequence_len tokens."""

    position_ids: list[int]  # restart at 0 where each original row starts: the boundaries attention respects


class TokenizedColumns(TypedDict):
    input_ids: list[list[int]]
    labels: list[list[int]]


class PackedColumns(TokenizedColumns):
    position_ids: list[list[int]]
    attention_mask: list[list[int]]


class Batch(TypedDict):
    """The padding collator's batch: (rows, width) tensors, padding masked out of attention and loss."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


class PackedBatch(TypedDict):
    """The packed collator's batch: position_ids mark the row boundaries; no attention mask and no KV cache."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    use_cache: bool


class LabelledText(TypedDict):
    """One segment of an `input_output` row as its file holds it."""

    label: bool  # true: trained
    text: str


class InputOutputRow(TypedDict):
    """An `input_output` row as written to a file (the default dataset's rows)."""

    segments: list[LabelledText]
