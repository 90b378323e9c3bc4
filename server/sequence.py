"""A request on its way through an engine, and the rule for when its completion ends. No torch here.

Both engines (the built-in scheduler and vLLM) feed chosen tokens, one at a time, through `record`: one rule for
EOS, stop sequences, HELM's newline rule and max_new_tokens, so the engines end completions in the same place.
HELM's /process and the OpenAI routes both make `Sequence`s (an OpenAI request is translated into a
`ProcessRequest`); `listener`, when set, hears of every recorded token (streaming).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.server.protocol import ProcessRequest
from llmkit.server.text import IncrementalDecoder, cut_pieces, stop_index


class RequestError(ValueError):
    """A request the model cannot serve as asked (too long, bad token id...): answered with HTTP 422 (OpenAI's
    routes: 400, with `field` as the error's param)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class QueueFull(RuntimeError):
    """Every batch row is busy and the wait queue is full: answered with HTTP 503 and Retry-After."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownModel(LookupError):
    """A request names a model or adapter this server does not serve: answered with HTTP 404 (OpenAI's routes: code
    model_not_found, param model)."""

    field = "model"


class RequestTimeout(RuntimeError):
    """The request ran past `request_timeout_s`: answered with HTTP 504."""


class ServerStopping(RuntimeError):
    """The server is shutting down and the request ran past its grace period: answered with HTTP 503, the
    connection closed, so that the client retries on a fresh one (a restarted server)."""


class ClientGone(RuntimeError):
    """The client disconnected; nobody reads this answer."""


@dataclass
class Scores:
    """Token ids with their raw logprobs and top alternatives (ids and logprobs, likeliest first)."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)

    def add(self, token: int, logprob: float, top_ids: list[int], top_logprobs: list[float]) -> None:
        self.ids.append(token)
        self.logprobs.append(logprob)
        self.top_ids.append(top_ids)
        self.top_logprobs.append(top_logprobs)

    def truncate(self, count: int) -> None:
        for values in (self.ids, self.logprobs, self.top_ids, self.top_logprobs):
            del values[count:]


@dataclass(eq=False)
class Sequence:
    """One request on its way through the batch."""

    request: ProcessRequest
    ids: list[int]  # the prompt, leading special tokens included
    added: int  # how many leading special tokens (BOS) the tokenizer added: not echoed
    max_new: int  # 0: score the prompt only
    deadline: float | None
    stop_at_newline: bool = False  # HELM's newline rule (`text.stop_index`); /process takes the server's setting
    adapter: str | None = None  # the peft adapter's name; None: the base model
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)
    prompt: Scores = field(default_factory=Scores)  # echo: the prompt's tokens after `added`
    completion: Scores = field(default_factory=Scores)
    pieces: list[str] = field(default_factory=list)  # the completion's text, a piece per token, cut at a stop
    cancelled: bool = False
    prefilled: int = 0  # prompt tokens already in the cache (a long prompt goes in chunks)
    cache: object = None  # its own cache while prefilling in chunks
    decoder: IncrementalDecoder | None = None
    generator: object = None  # a torch.Generator when the request samples (built-in engine)
    eos: Scores = field(default_factory=Scores)  # the EOS that ended the completion, if one did (OpenAI lists it)
    finish_reason: str | None = None  # OpenAI's: "stop" (EOS, a stop sequence, the newline rule) or "length"
    listener: Callable[[], None] | None = None  # called on the recording thread after each token and at the end
    streamable: int = 0  # completion tokens that no later token can change (`_settled`); kept with a listener

    @property
    def asks_nothing(self) -> bool:
        """No new token and no echo (max_new_tokens 0, or a prompt that fills the context): the answer is empty
        whatever the model says, so no engine runs it."""
        return self.max_new == 0 and not self.request.echo_prompt

    @property
    def final_length(self) -> int:
        return len(self.ids) + self.max_new

    def add_prompt_token(self, position: int, token: int, logprob: float, top: tuple[list[int], list[float]]):
        """Echo: the prompt token at `position` (predicted from the ones before it); leading BOS is not echoed.
        The first token has nothing to condition on: call with position 0 and logprob 0.0."""
        if position >= self.added:
            self.prompt.add(token, logprob, *top)

    def record(self, token: int, logprob: float, top_ids: list[int], top_logprobs: list[float], *,
               eos_ids: set[int]) -> bool:  # fmt: skip
        """Add a chosen token to the completion; False when the sequence is finished."""
        if token in eos_ids:
            self.eos.add(token, logprob, top_ids, top_logprobs)
            return self.end("stop")
        self.completion.add(token, logprob, top_ids, top_logprobs)
        self.pieces.append(self.decoder.push(token))
        end = stop_index("".join(self.pieces), self.request.stop_sequences, self.stop_at_newline)
        if end is not None:
            self.pieces = cut_pieces(self.pieces, end)
            self.completion.truncate(len(self.pieces))
            self.finish_reason = "stop"
            self._notify()
            return False
        if len(self.completion.ids) >= self.max_new:
            return self.end()
        self._notify()
        return True

    def end(self, reason: str = "length") -> bool:
        """Generation ended (EOS, max_new_tokens): flush what the decoder held back; returns False."""
        if self.pieces:  # a character still incomplete when generation ended
            self.pieces[-1] += self.decoder.flush()
        self.finish_reason = reason
        self._notify()
        return False

    def _settled(self) -> int:
        """How many completion tokens can no longer change: a stop sequence may still cut the text's last
        `longest stop - 1` characters, and the decoder may still add to the last piece."""
        if self.finish_reason is not None:
            return len(self.pieces)
        pieces = self.pieces[:-1] if self.decoder is not None and self.decoder.holding else self.pieces
        keep = max((len(s) for s in self.request.stop_sequences), default=1) - 1
        limit, length, count = sum(map(len, pieces)) - keep, 0, 0
        for piece in pieces:
            length += len(piece)
            if length > limit:
                break
            count += 1
        return count

    def _notify(self) -> None:
        # Counted here, on the recording thread, between tokens: a reader on another thread then sends
        # pieces[:streamable] and their scores, which no later token changes. Only for a stream (a listener):
        # counting walks every piece, work a request nobody streams need not pay for at each token.
        if self.listener is not None:
            self.streamable = self._settled()
            self.listener()

    def finish(self, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is None:
            self.future.set_result(self)
        else:
            self.future.set_exception(error)


def eos_ids(generation_config, tokenizer, adapters: Iterable[str] = ()) -> set[int]:
    """Every token that ends a completion: the generation config's (one or a list), the tokenizer's, and those of
    each adapter folder's own generation_config.json (training writes one for a config's eot_tokens)."""
    configs = [getattr(generation_config, "eos_token_id", None)]
    for folder in adapters:
        path = Path(folder) / "generation_config.json"
        if path.is_file():
            configs.append(json.loads(path.read_text()).get("eos_token_id"))
    ids = {tokenizer.eos_token_id}
    for configured in configs:
        ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
