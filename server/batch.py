"""The running batch's KV cache: rows of different lengths in one transformers `DynamicCache`, padded on the left.

Row i's tokens fill the last `lengths[i]` columns of every layer's keys and values; `mask` marks them. A decode
step then feeds one token per row with `attention_mask = [mask, 1]` and `position_ids = lengths`, which is what
`generate` does for a left-padded batch. Rows join (`merge`) after their prompt is prefilled and leave (`keep`) when
they finish; columns that became padding in every row are cut off, so the width follows the longest live row.

The layers are `GrowingLayer`s: a `DynamicLayer` concatenates the whole cache with each new token (a full copy
every step, a quarter of a 16-row decode step here); these write into spare capacity instead.

Caches made of plain `DynamicLayer`s and sliding-window layers can be re-padded this way. A window layer is grown
like a plain one, keeping every token rather than the last `sliding_window - 1`: the model's attention mask
(transformers' masking_utils builds it from the config's window, for every attention implementation) already keeps
a query from seeing further back, so results are the same and only the memory is a full layer's (Phi-3-mini's 2,047-
and Gemma-3's 512-token windows; the tests compare with a full forward pass). A model whose cache holds other layers
(recurrent states, chunked attention, quantized KV) is served one row at a time (`batchable` is False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

SPARE_TOKENS = 128  # capacity a GrowingLayer adds when it is full: one copy per 128 decode steps


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends new keys and values into spare capacity; `keys`/`values` are views of it.
    Assigning new tensors to `keys`/`values` (as PaddedRows does) is allowed: the next update copies them once."""

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.get_seq_length()
        new = old + key_states.shape[-2]
        buffer = self._key_buffer
        if (
            buffer is None
            or buffer.data_ptr() != self.keys.data_ptr()  # keys were replaced (rows joined or left)
            or buffer.shape[:2] != key_states.shape[:2]
            or new > buffer.shape[-2]
        ):
            # Keys and values may differ in width (multi-head latent attention: DeepSeek-V2/V3).
            capacity = new + SPARE_TOKENS
            self._key_buffer = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
            self._value_buffer = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
            if old:
                self._key_buffer[..., :old, :] = self.keys
                self._value_buffer[..., :old, :] = self.values
        self._key_buffer[..., old:new, :] = key_states
        self._value_buffer[..., old:new, :] = value_states
        self.keys, self.values = self._key_buffer[..., :new, :], self._value_buffer[..., :new, :]
        return self.keys, self.values


def new_cache(model) -> Cache:
    """An empty cache for `model`: growing layers where the model's own would be plain or sliding-window ones."""
    cache = DynamicCache(config=model.config)
    # Chunked attention (Llama-4) also keeps window layers, but its mask starts chunks at absolute positions, which
    # left padding moves; a sliding window depends only on the distance between tokens, which padding keeps.
    chunked = getattr(model.config.get_text_config(), "attention_chunk_size", None)
    if cache.layers and not chunked and all(type(layer) in _GROWABLE for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


_GROWABLE = (DynamicLayer, DynamicSlidingWindowLayer)


def batchable(cache: Cache) -> bool:
    """Whether rows of `cache` can be re-padded and joined with rows of another cache of the same model."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is GrowingLayer for layer in layers)


def cache_bytes_per_token(cache: Cache, tokens: int) -> int:
    """KV bytes one token takes, read off a cache that holds `tokens` tokens of one row."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return max(1, total // tokens)


@dataclass
class PaddedRows:
    """Left-padded KV-cache rows, one per sequence, and the token each row feeds next."""

    rows: list  # the scheduler's sequences, in row order
    cache: Cache
    mask: torch.Tensor  # [rows, width], 1 where a row has a token
    lengths: torch.Tensor  # [rows], tokens each row holds (its next position id)
    next_tokens: torch.Tensor  # [rows], each row's last chosen token, not yet in the cache

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def merge(self, other: PaddedRows) -> None:
        """Append `other`'s rows (same model, same device): both are left-padded to the wider width."""
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(other.mask, width, dim=1)])
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])
        self.rows = self.rows + other.rows

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows, and cut the leading columns that are padding in all of them."""
        if len(indices) == len(self.rows):
            return
        index = torch.tensor(indices, device=self.mask.device)
        start = self.width - int(self.lengths[index].max())
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:].contiguous()
            layer.values = layer.values[index, :, start:].contiguous()
        self.mask = self.mask[index, start:]
        self.lengths = self.lengths[index]
        self.next_tokens = self.next_tokens[index]
        self.rows = [self.rows[i] for i in indices]

    def kv_bytes(self, bytes_per_token: int) -> int:
        return len(self.rows) * self.width * bytes_per_token


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]  # F.pad lists the last dimension first
    return F.pad(tensor, pad)
