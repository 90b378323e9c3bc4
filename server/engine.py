"""The model work behind the HTTP API: generate with logprobs, score prompts, tokenize, decode. No FastAPI here.

One decode loop with a KV cache serves greedy and sampled generation: every step reads the model's raw logits, so
logprobs are log p(token | prefix) under the untempered distribution, whatever temperature/top-p/top-k choose.
Model work runs one request at a time on a single worker thread: the event loop never waits on the model, and
concurrent requests give exactly what they give one by one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil
import torch

from llmkit.core.models import LoadedModel, load_for_inference
from llmkit.server.protocol import ProcessRequest, ProcessResponse, Token
from llmkit.server.settings import ServerSettings
from llmkit.server.text import IncrementalDecoder, cut_pieces, stop_index

LOG = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot serve as asked (too long, bad token id...): answered with HTTP 422."""


@dataclass
class _Scored:
    """Tokens with their text pieces, logprobs and top alternatives, in order."""

    pieces: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[dict[str, float]] = field(default_factory=list)

    def add(self, piece: str, logprob: float, top: dict[str, float]) -> None:
        self.pieces.append(piece)
        self.logprobs.append(logprob)
        self.tops.append(top)

    def tokens(self, count: int | None = None) -> list[Token]:
        pieces = self.pieces[:count] if count is not None else self.pieces
        rows = zip(pieces, self.logprobs, self.tops, strict=False)  # pieces may be cut shorter
        return [Token(text=p, logprob=lp, top_logprob=t) for p, lp, t in rows]


class Engine:
    """A loaded model and everything the routes ask of it."""

    def __init__(self, loaded: LoadedModel, settings: ServerSettings):
        self.loaded, self.settings = loaded, settings
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.device = torch.device(loaded.device)
        self.eos_ids = self._eos_ids()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # Fast tokenizers are Rust objects; a call that changes their settings while another thread encodes fails
        # with "Already borrowed", so every tokenizer call takes this lock.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def load(cls, settings: ServerSettings) -> Engine:
        loaded = load_for_inference(
            settings.model,
            revision=settings.revision,
            adapter=settings.adapter,
            dtype=settings.dtype.value,
            quantization=settings.quantization.value,
            device=settings.device.value,
        )
        return cls(loaded, settings)

    def _eos_ids(self) -> set[int]:
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids = set(configured if isinstance(configured, list) else [configured])
        ids.add(self.tokenizer.eos_token_id)
        return {i for i in ids if i is not None}

    async def run(self, fn, *args):
        """Run model work on the worker thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    # --- tokenizer ---------------------------------------------------------------------------------------------
    def encode(self, text: str, *, special: bool = False) -> list[int]:
        with self._tokenizer_lock:
            return self.tokenizer.encode(text, add_special_tokens=special)

    def decode(self, ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise RequestError(f"tokens {bad[:5]} are outside the vocabulary (0..{vocab - 1})")
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def tokenize(self, text: str, truncation: bool, max_length: int) -> list[int]:
        ids = self.encode(text)
        return ids[:max_length] if truncation else ids

    def _piece_decoder(self, context: list[int]) -> IncrementalDecoder:
        lock = self._tokenizer_lock

        class _Locked(IncrementalDecoder):
            def _decode(self, ids):
                with lock:
                    return super()._decode(ids)

        return _Locked(self.tokenizer, context)

    def memory(self) -> dict[str, int]:
        used = {"rss_bytes": psutil.Process().memory_info().rss}
        if self.device.type == "cuda":
            used["cuda_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
        return used

    # --- /process ----------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """The prompt as the model sees it, and how many leading special tokens (BOS) the tokenizer added."""
        plain = self.encode(prompt)
        full = self.encode(prompt, special=True)
        added = len(full) - len(plain) if full[len(full) - len(plain) :] == plain else 0
        if not full:
            raise RequestError("prompt is empty: there is no token to condition on")
        if len(full) > self.settings.max_context:
            raise RequestError(f"prompt is {len(full)} tokens, over the context limit of {self.settings.max_context}")
        return full, added

    @torch.inference_mode()
    def process(self, request: ProcessRequest) -> ProcessResponse:
        if request.max_new_tokens > self.settings.max_new_tokens_limit:
            raise RequestError(
                f"max_new_tokens {request.max_new_tokens} is over this server's limit "
                f"{self.settings.max_new_tokens_limit}"
            )
        ids, added = self.prompt_ids(request.prompt)
        prompt = self._score_prompt(ids, added, request.top_k_per_token) if request.echo_prompt else _Scored()
        completion = self._generate(ids, request)
        tokens = prompt.tokens() + completion.tokens()
        return ProcessResponse(
            text="".join(t.text for t in tokens),
            tokens=tokens,
            logprob=sum(completion.logprobs),
            request_time=0.0,  # the route sets the wall time, queueing included
        )

    def _forward(self, input_ids: list[int], cache, keep_all: bool):
        batch = torch.tensor([input_ids], device=self.device)
        out = self.model(input_ids=batch, cache=cache, use_cache=True, logits_to_keep=0 if keep_all else 1)
        return out.logits[0].float(), out.cache

    def _top(self, logprobs: torch.Tensor, k: int) -> dict[str, float]:
        if k == 0:
            return {}
        values, indices = torch.topk(logprobs, k)
        top: dict[str, float] = {}
        with self._tokenizer_lock:
            for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                top.setdefault(self.tokenizer.decode([index]), value)  # two ids may share a text: keep the likelier
        return top

    def _score_prompt(self, ids: list[int], added: int, k: int) -> _Scored:
        """Logprobs of the prompt's own tokens (after any BOS), from one forward pass over the prompt."""
        logits, _ = self._forward(ids, None, keep_all=True)
        logprobs = torch.log_softmax(logits, dim=-1)
        decoder, scored = self._piece_decoder(ids[:added]), _Scored()
        for pos in range(added, len(ids)):
            piece = decoder.push(ids[pos]) + (decoder.flush() if pos == len(ids) - 1 else "")
            if pos == 0:  # nothing to condition on: documented as 0.0
                scored.add(piece, 0.0, {})
            else:
                scored.add(piece, logprobs[pos - 1, ids[pos]].item(), self._top(logprobs[pos - 1], k))
        return scored

    def _generate(self, ids: list[int], request: ProcessRequest) -> _Scored:
        max_new = min(request.max_new_tokens, self.settings.max_context - len(ids))
        scored = _Scored()
        if max_new <= 0:
            return scored
        stops = [s for s in request.stop_sequences if s]
        decoder, generator = self._piece_decoder(ids), self._generator(request)
        logits, cache = self._forward(ids, None, keep_all=False)
        for step in range(max_new):
            logprobs = torch.log_softmax(logits[-1], dim=-1)
            token = self._choose(logits[-1], request, generator)
            if token in self.eos_ids:
                break
            scored.add(decoder.push(token), logprobs[token].item(), self._top(logprobs, request.top_k_per_token))
            end = stop_index("".join(scored.pieces), stops, self.settings.stop_at_newline)
            if end is not None:
                scored.pieces = cut_pieces(scored.pieces, end)
                del scored.logprobs[len(scored.pieces) :], scored.tops[len(scored.pieces) :]
                return scored
            if step + 1 < max_new:
                logits, cache = self._forward([token], cache, keep_all=False)
        if scored.pieces:  # a character still incomplete when generation ended
            scored.pieces[-1] += decoder.flush()
        return scored

    def _generator(self, request: ProcessRequest) -> torch.Generator | None:
        if request.greedy:
            return None
        generator = torch.Generator(device=self.device)
        if request.seed is not None:
            generator.manual_seed(request.seed)
        else:
            generator.seed()
        return generator

    def _choose(self, logits: torch.Tensor, request: ProcessRequest, generator: torch.Generator | None) -> int:
        if generator is None:
            return int(torch.argmax(logits))
        scaled = logits / request.temperature
        if request.top_k:
            kth = torch.topk(scaled, min(request.top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if request.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the tokens before it already cover top_p; the most likely one always stays.
            drop = (torch.cumsum(probs, dim=-1) - probs) >= request.top_p
            scaled = scaled.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))
