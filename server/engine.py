"""The model work behind the HTTP API: generate with logprobs, score prompts, tokenize, decode. No FastAPI here.

A /process request is tokenized on its own thread, run by the scheduler's model thread in a shared batch
(scheduler.py: continuous batching), and turned back into text pieces and top-k texts on its own thread. Logprobs
are log p(token | prefix) under the model's raw (untempered) distribution, whatever temperature/top-p/top-k choose.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import torch

from llmkit.core.models import LoadedModel, load_for_inference
from llmkit.server.protocol import ProcessRequest, ProcessResponse, Token
from llmkit.server.scheduler import RequestError, Scheduler, Scores, Sequence
from llmkit.server.settings import ServerSettings
from llmkit.server.text import IncrementalDecoder, TokenizerPool

TOKENIZER_COPIES = 4  # crfm-helm sends 4 requests at once (helm-run --num-threads 4)


class Engine:
    """A loaded model, its scheduler, and everything the routes ask of them."""

    def __init__(self, load: Callable[[], LoadedModel], settings: ServerSettings):
        """Start the model thread, which calls `load`; returns once the model is ready (or raises its error)."""
        self.settings = settings
        self.scheduler = Scheduler(load, settings)
        self.loaded = self.scheduler.loaded
        self.model, self.tokenizer = self.loaded.model, self.loaded.tokenizer
        self.device = torch.device(self.loaded.device)
        self.tokenizers = TokenizerPool(self.tokenizer, TOKENIZER_COPIES)
        self._token_texts: dict[int, str] = {}  # a top-k alternative's text, by id

    @classmethod
    def load(cls, settings: ServerSettings) -> Engine:
        return cls(
            lambda: load_for_inference(
                settings.model,
                revision=settings.revision,
                adapter=settings.adapter,
                dtype=settings.dtype.value,
                quantization=settings.quantization.value,
                device=settings.device.value,
            ),
            settings,
        )

    def close(self) -> None:
        self.scheduler.close()

    # --- tokenizer ---------------------------------------------------------------------------------------------
    def encode(self, text: str, *, special: bool = False) -> list[int]:
        with self.tokenizers.borrow() as tokenizer:
            return tokenizer.encode(text, add_special_tokens=special)

    def decode(self, ids: list[int]) -> str:
        vocab = len(self.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise RequestError(f"tokens {bad[:5]} are outside the vocabulary (0..{vocab - 1})")
        with self.tokenizers.borrow() as tokenizer:
            return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def tokenize(self, text: str, truncation: bool, max_length: int) -> list[int]:
        ids = self.encode(text)
        return ids[:max_length] if truncation else ids

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

    def submit(self, request: ProcessRequest) -> Sequence:
        """Tokenize and queue a request (on the caller's thread); its `future` completes when the model is done."""
        if request.max_new_tokens > self.settings.max_new_tokens_limit:
            raise RequestError(
                f"max_new_tokens {request.max_new_tokens} is over this server's limit "
                f"{self.settings.max_new_tokens_limit}"
            )
        ids, added = self.prompt_ids(request.prompt)
        timeout = self.settings.request_timeout_s
        return self.scheduler.submit(
            Sequence(
                request=request,
                ids=ids,
                added=added,
                max_new=max(0, min(request.max_new_tokens, self.settings.max_context - len(ids))),
                deadline=time.monotonic() + timeout if timeout else None,
            )
        )

    def respond(self, seq: Sequence) -> ProcessResponse:
        """The wire answer for a finished sequence: text pieces and top-k texts are made here, off the model thread."""
        with self.tokenizers.borrow() as tokenizer:
            prompt = []
            if seq.request.echo_prompt:
                decoder = IncrementalDecoder(tokenizer, seq.ids[: seq.added])
                last = len(seq.prompt.ids) - 1
                pieces = [
                    decoder.push(t) + (decoder.flush() if i == last else "") for i, t in enumerate(seq.prompt.ids)
                ]
                prompt = self._tokens(tokenizer, pieces, seq.prompt)
            completion = self._tokens(tokenizer, seq.pieces, seq.completion)
        tokens = prompt + completion
        return ProcessResponse(
            text="".join(t.text for t in tokens),
            tokens=tokens,
            logprob=sum(seq.completion.logprobs),
            request_time=0.0,  # the route sets the wall time, queueing included
        )

    def process(self, request: ProcessRequest) -> ProcessResponse:
        """Submit, wait and answer on the calling thread (benchmarks and scripts; the routes await instead)."""
        seq = self.submit(request)
        seq.future.result()
        return self.respond(seq)

    def _tokens(self, tokenizer, pieces: list[str], scores: Scores) -> list[Token]:
        return [
            Token(text=piece, logprob=logprob, top_logprob=self._top_texts(tokenizer, ids, values))
            for piece, logprob, ids, values in zip(
                pieces, scores.logprobs, scores.top_ids, scores.top_logprobs, strict=True
            )
        ]

    def _top_texts(self, tokenizer, ids: list[int], values: list[float]) -> dict[str, float]:
        top: dict[str, float] = {}
        for token, value in zip(ids, values, strict=True):
            text = self._token_texts.get(token)
            if text is None:
                text = self._token_texts[token] = tokenizer.decode([token])
            top.setdefault(text, value)  # two ids may share a text: keep the likelier
        return top
