"""Token ids to text pieces, and where a completion must end. No torch, no FastAPI."""

from __future__ import annotations

import copy
import itertools
import queue
import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens
_BYTES_KEY = "bytes:"


class TokenBytes:
    """The UTF-8 bytes one token id stands for on its own, part of a character included (OpenAI's `bytes`).

    Decoding one id gives U+FFFD for part of a character, so the bytes come from the token's vocabulary entry:
    byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) maps its alphabet back to bytes; SentencePiece has its byte
    tokens (`<0xE3>`) and `▁` for a space.
    """

    def __init__(self, tokenizer):
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        # the decoder's own JSON (the whole tokenizer's, vocabulary and merges, took half a second for SmolLM2's)
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self.byte_level = decoder is not None and '"ByteLevel"' in decoder.__getstate__().decode()
        self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self._cache: dict[int, bytes] = {}

    def __call__(self, tokenizer, token_id: int) -> bytes:
        raw = self._cache.get(token_id)
        if raw is None:
            raw = self._cache[token_id] = self._bytes(tokenizer.convert_ids_to_tokens(token_id))
        return raw

    def _bytes(self, piece: str | bytes | None) -> bytes:
        if piece is None:  # an id past the tokenizer's vocabulary (a padded embedding: Qwen2.5, random-model) decodes
            return b""  # to nothing
        if isinstance(piece, bytes):  # tiktoken-style tokenizers keep their vocabulary as bytes
            return piece
        if byte := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(byte.group(1), 16)])
        if self.byte_level and all(char in self._byte_of for char in piece):
            return bytes(self._byte_of[char] for char in piece)
        return piece.replace("\u2581", " ").encode()


def token_key(raw: bytes) -> str:
    """A token's name among top-k alternatives: its text, or for part of a character OpenAI's `bytes:\\xe3\\x83`
    (as text every such token would be "\ufffd", and the alternatives would overwrite each other)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _BYTES_KEY + "".join(f"\\x{byte:02x}" for byte in raw)


class TopCandidates:
    """How many of a position's likeliest token ids an engine records for top_k_per_token = k, so that
    `Engine._top_texts` lists k distinct texts (`token_key`s) whatever the model ranks first.

    Ids may share a text: a byte-fallback tokenizer's "a" and <0x61>, a token added beside the vocabulary's own
    with a space where it has "▁" ("  " and "▁▁", four ids for two spaces with "▁ " and " ▁"), added tokens
    that are bytes of one another. The k - 1 largest groups of ids sharing a text hold S ids together, so the S + 1
    likeliest ids always hold k texts, and no fewer always do. The groups are counted once, from the tokenizer:
    a tokenizer whose texts are all its own (GPT-2's) asks for k, a byte-fallback one (Llama-2's) under 2k.
    """

    def __init__(self, tokenizer):
        names = TokenBytes(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        groups = Counter(token_key(names._bytes(piece)) for piece in pieces)
        self.ids, self.texts = len(tokenizer), len(groups)
        # _shared[j]: how many ids the j largest groups hold past one each
        shared = sorted((size - 1 for size in groups.values() if size > 1), reverse=True)
        self._shared = list(itertools.accumulate(shared, initial=0))

    def __call__(self, k: int) -> int:
        if k == 0:
            return 0
        if k > self.texts:  # fewer texts than asked for: every id, and all the texts there are
            return self.ids
        return k + self._shared[min(k - 1, len(self._shared) - 1)]


def is_bytes_key(key: str) -> bool:
    """Whether a `token_key` names part of a character by its bytes."""
    return key.startswith(_BYTES_KEY + "\\x")


def key_bytes(key: str) -> bytes:
    """The bytes a `token_key` names."""
    if is_bytes_key(key):
        return bytes.fromhex(key[len(_BYTES_KEY) :].replace("\\x", ""))
    return key.encode()


class IncrementalDecoder:
    """Turns token ids, one at a time, into text pieces whose concatenation is the decoded text.

    Decoding a token alone loses context (SentencePiece drops a leading space; a multi-byte character split over
    byte tokens decodes to U+FFFD), so each piece is the text a token adds after a few tokens of context, and a
    piece that ends in an incomplete character is held back until the character completes.
    """

    def __init__(self, tokenizer, context_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context_ids)
        self.prefix_offset = max(0, len(self.ids) - 6)
        self.read_offset = len(self.ids)
        self._anchor: list[int] | None = None  # a plain token to decode new ones after (`_window`)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id: int, final: bool = False) -> str:
        self.ids.append(token_id)
        prefix, text = self._window()
        if len(text) > len(prefix) and (final or not text.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    @property
    def holding(self) -> bool:
        """Whether pushed tokens are held back (an incomplete character): the next piece or `flush` has them."""
        return self.read_offset < len(self.ids)

    def flush(self) -> str:
        """Text held back at the end (an incomplete character), so nothing decoded is lost."""
        if self.read_offset == len(self.ids):
            return ""
        prefix, text = self._window()
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]

    def _window(self) -> tuple[str, str]:
        """(the emitted context, it and the tokens not yet emitted), decoded; the latter starts with the former."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if text.startswith(prefix):
            return prefix, text
        # A byte-fallback decoder (Llama-2, Mistral) reads a run of byte tokens as one: a character already emitted
        # and an invalid byte after it became one U+FFFD per byte. Decode the new tokens after a plain one instead,
        # which keeps a leading space as it would be mid-text and merges no byte into the context.
        if self._anchor is None:
            self._anchor = self.tokenizer.encode("a", add_special_tokens=False)[-1:]
        prefix = self._decode(self._anchor)
        return prefix, self._decode(self._anchor + self.ids[self.read_offset :])


def prompt_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """An echoed prompt's text pieces, one per token, which concatenate to the prompt as written. Decoded without
    the BOS before them: a SentencePiece decoder (Llama, Mistral) strips the space it prepended only at the start of
    the decoded text, so after "<s>" the first word would gain a space the prompt does not have."""
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids]
    if pieces:
        pieces[-1] += decoder.flush()
    return pieces


def stop_index(text: str, stop_sequences: Sequence[str], stop_at_newline: bool) -> int | None:
    """Where the completion `text` must end, or None to go on.

    Args:
        stop_sequences: the request's; the completion ends before the first occurrence of any of them (an empty
            one never matches, but is still one: the newline rule is off).
        stop_at_newline: with no stop sequences, end at the first newline after non-blank text. HELM's
            multiple-choice requests name no stop sequence and compare the whole stripped completion with the
            gold letter, so " B\\n\\nQuestion: ..." would score 0 although the model answered B.
    """
    cuts = [i for i in (text.find(s) for s in stop_sequences if s) if i >= 0]
    if stop_at_newline and not stop_sequences:
        start = len(text) - len(text.lstrip())
        newline = text.find("\n", start)
        if start < len(text) and newline >= 0:
            cuts.append(newline)
    return min(cuts) if cuts else None


def cut_pieces(pieces: list[str], end: int) -> list[str]:
    """The pieces covering text[:end]: later pieces dropped, the one straddling `end` trimmed."""
    kept, start = [], 0
    for piece in pieces:
        if start >= end:
            break
        kept.append(piece[: end - start])
        start += len(piece)
    return kept


class TokenizerPool:
    """Up to `size` copies of one tokenizer, each lent to one thread at a time.

    A fast tokenizer is a Rust object: a call that changes its settings while another thread encodes fails with
    "Already borrowed", and one long text keeps it busy for seconds. With copies, request threads tokenize in
    parallel with each other and with the model thread, which has a copy of its own.

    A copy is made when a thread finds none free, until there are `size`: a copy of a 49,152-token tokenizer takes
    a few tenths of a second of CPU, and a server whose requests never overlap needs one, not `size` made at start.
    `tokenizer` itself is only copied (read), never lent.
    """

    def __init__(self, tokenizer, size: int):
        self._tokenizer, self._left = tokenizer, size
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()

    def _take(self):
        """A free copy, a new one while fewer than `size` exist, else the next one given back."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._left > 0
                self._left -= make
            return copy.deepcopy(self._tokenizer) if make else self._free.get()

    @contextmanager
    def borrow(self) -> Iterator:
        tokenizer = self._take()
        try:
            yield tokenizer
        finally:
            self._free.put(tokenizer)
