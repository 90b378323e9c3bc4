"""OpenAI's API: POST /v1/completions, POST /v1/chat/completions (through the tokenizer's chat template) and
GET /v1/models, for OpenAI clients, lm-eval's `local-completions`, load testers and dashboards.

An OpenAI request is translated into HELM's `ProcessRequest` and run as `Sequence`s by the same engine and batch as
/process (one per prompt and choice); only the answer's shape differs. `model` names the base model or an adapter.
Streaming sends server-sent events (`data: {chunk}` ... `data: [DONE]`) as tokens settle (`Sequence.streamable`),
on either engine. Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` (errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from llmkit.server.engine import Engine
from llmkit.server.observe import account_all, completion_count, request_id
from llmkit.server.openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Delta,
    ErrorDetail,
    ModelCard,
    ModelList,
    OpenAIError,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llmkit.server.protocol import SEED_RANGE, ProcessRequest, Token
from llmkit.server.sequence import RequestError, Sequence
from llmkit.server.serving import (
    EngineDep,
    error_status,
    generate,
    note_ignored,
    run_all,
    stopping,
    unexpected_error,
)
from llmkit.server.text import is_bytes_key, key_bytes, token_key

LOG = logging.getLogger(__name__)

FLOOR_LOGPROB = -9999.0  # JSON has no -inf; OpenAI's floor
ERRORS = {status: {"model": OpenAIError} for status in (400, 404, 413, 503, 504)}
STREAMED = {**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "JSON, or with stream: events."}}

router = APIRouter(prefix="/v1", tags=["OpenAI"])


@router.get("/models")
async def models(engine: EngineDep) -> ModelList:
    return ModelList(data=_model_cards(engine))


@router.get("/models/{model:path}", responses={404: {"model": OpenAIError}})
async def model(model: str, engine: EngineDep) -> ModelCard:
    card = next((card for card in _model_cards(engine) if card.id == model), None)
    if card is None:
        raise engine.unknown_model(model)  # 404, listing the names
    return card


def _model_cards(engine: Engine) -> list[ModelCard]:
    created = int(engine.started)
    served_base = engine.base_name in engine.model_names  # not where an adapter is applied to every row
    base = [ModelCard(id=engine.base_name, created=created, root=engine.base_name)] if served_base else []
    cards = base + [
        ModelCard(id=name, created=created, root=path, parent=engine.base_name)
        for name, path in engine.adapters.items()
    ]
    return cards


@router.post("/completions", responses=STREAMED, response_model=Completion)
async def completions(body: CompletionRequest, engine: EngineDep, request: Request, response: Response):
    note_ignored(body, response)
    if body.best_of is not None and body.best_of != body.n:
        raise RequestError("best_of other than n is not supported by this server")
    adapter = engine.adapter_for(body.model)
    seqs = await run_in_threadpool(_completion_sequences, engine, body, adapter)
    answer = _Answer(f"cmpl-{request_id(request)}", body.model or adapter or engine.base_name, body.n, Completion)
    if body.stream:
        return await _stream(engine, seqs, request, answer, _completion_chunk(answer, body), _include_usage(body))
    await generate(seqs, request, body.n)
    choices = await run_in_threadpool(lambda: [_completion_choice(engine, body, i, s) for i, s in enumerate(seqs)])
    usage = answer.usage(seqs)
    return Completion(id=answer.id, created=answer.created, model=answer.model, choices=choices, usage=usage)


@router.post("/chat/completions", responses=STREAMED, response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, engine: EngineDep, request: Request, response: Response):
    note_ignored(body, response)
    adapter = engine.adapter_for(body.model)
    seqs = await run_in_threadpool(_chat_sequences, engine, body, adapter)
    name = body.model or adapter or engine.base_name
    answer = _Answer(f"chatcmpl-{request_id(request)}", name, body.n, ChatCompletionChunk)
    if body.stream:
        return await _stream(engine, seqs, request, answer, _chat_chunk(answer, body), _include_usage(body))
    await generate(seqs, request, body.n)

    def choice(index: int, seq: Sequence) -> ChatChoice:
        tokens = engine.completion_tokens(seq)
        logprobs = ChatLogprobs(content=[_chat_logprob(t) for t in tokens]) if body.logprobs else None
        message = AssistantMessage(content="".join(t.text for t in tokens))
        return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=seq.finish_reason)

    choices = await run_in_threadpool(lambda: [choice(i, seq) for i, seq in enumerate(seqs)])
    return ChatCompletion(
        id=answer.id, created=answer.created, model=answer.model, choices=choices, usage=answer.usage(seqs)
    )


# --- OpenAI request -> sequences ------------------------------------------------------------------------------------
def _completion_sequences(engine: Engine, body: CompletionRequest, adapter: str | None) -> list[Sequence]:
    engine.check_room(len(body.prompts) * body.n, "n" if len(body.prompts) == 1 else "prompt")
    seqs = []
    for prompt in body.prompts:
        ids = prompt if isinstance(prompt, list) else engine.document_start() if prompt == "" else None
        text = engine.decode(ids, "prompt") if ids is not None else prompt
        max_tokens = min(16, engine.settings.max_new_tokens_limit) if body.max_tokens is None else body.max_tokens
        for choice in range(body.n):
            request = _process_request(body, text, max_tokens, body.logprobs or 0, choice, echo=body.echo)
            options = {"adapter": adapter, "stop_at_newline": False, "max_tokens_field": "max_tokens"}
            seqs.append(engine.new_sequence(request, ids=ids, **options))
    return seqs


def _chat_sequences(engine: Engine, body: ChatCompletionRequest, adapter: str | None) -> list[Sequence]:
    engine.check_room(body.n, "n")
    ids = engine.chat_prompt([message.template_form() for message in body.messages])
    # No limit given: as many as fit the context (new_sequence cuts max_new_tokens to what fits).
    max_tokens = engine.settings.max_new_tokens_limit if body.token_limit is None else body.token_limit
    top = (body.top_logprobs or 0) if body.logprobs else 0
    limit_field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    text = engine.decode(ids)
    return [
        engine.new_sequence(
            _process_request(body, text, max_tokens, top, choice, echo=False), ids=ids, adapter=adapter,
            stop_at_newline=False, max_tokens_field=limit_field,
        )
        for choice in range(body.n)
    ]  # fmt: skip


def _process_request(body, prompt: str, max_tokens: int, top: int, choice: int, *, echo: bool) -> ProcessRequest:
    """The engine's request for one choice; with a seed, choice i samples with seed + i (distinct, reproducible)."""
    seed = body.seed
    if seed is not None:
        seed = seed + choice if seed + choice <= SEED_RANGE["le"] else seed - choice
    return ProcessRequest(
        prompt=prompt or " ",  # a token prompt's text is informative only: its ids are used ([] is refused)
        temperature=body.temperature,
        max_new_tokens=max_tokens,
        top_p=body.top_p,
        echo_prompt=echo,
        top_k_per_token=top,
        stop_sequences=body.stop_sequences,
        seed=seed,
    )


# --- sequences -> OpenAI answer -------------------------------------------------------------------------------------
class _Answer:
    """What every chunk and the final answer of one request share; `chunk_class` wraps a stream's choices."""

    def __init__(self, answer_id: str, model: str, n: int, chunk_class: type[Completion | ChatCompletionChunk]):
        self.id, self.model, self.n, self.created = answer_id, model, n, int(time.time())
        self.chunk_class = chunk_class

    def chunk(self, choices: list, usage: Usage | None = None) -> str:
        chunk = self.chunk_class(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return chunk.model_dump_json()

    def usage(self, seqs: list[Sequence]) -> Usage:
        prompt = sum(len(seq.ids) for seq in seqs[:: self.n])  # each prompt once, however many choices
        completion = sum(completion_count(seq) for seq in seqs)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _completion_choice(engine: Engine, body: CompletionRequest, index: int, seq: Sequence) -> CompletionChoice:
    prompt = engine.prompt_tokens(seq) if body.echo else []
    completion = engine.completion_tokens(seq)
    text = "".join(t.text for t in prompt + completion)
    logprobs = None
    if body.logprobs is not None:
        # The first prompt token has nothing to condition on (unless a BOS, not echoed, precedes it): null.
        first_unscored = body.echo and seq.added == 0
        logprobs = _completion_logprobs(prompt + completion + engine.eos_tokens(seq), first_unscored, offset=0)
    return CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=seq.finish_reason)


def _completion_logprobs(tokens: list[Token], first_unscored: bool, offset: int) -> CompletionLogprobs:
    logprobs = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for i, token in enumerate(tokens):
        key = token_key(token._bytes)
        # Part of a character: named by its bytes, as OpenAI does and as top_logprobs names it (its text is "" or
        # "\ufffd"), so that top_logprobs[i][tokens[i]] finds it; text_offset still counts the text's characters.
        logprobs.tokens.append(key if is_bytes_key(key) else token.text)
        logprobs.text_offset.append(offset)
        offset += len(token.text)
        if i == 0 and first_unscored:
            logprobs.token_logprobs.append(None)
            logprobs.top_logprobs.append(None)
            continue
        logprob = max(token.logprob, FLOOR_LOGPROB)
        top = {text: max(value, FLOOR_LOGPROB) for text, value in token.top_logprob.items()}
        top.setdefault(key, logprob)  # OpenAI: the chosen token is always listed (logprobs + 1)
        logprobs.token_logprobs.append(logprob)
        logprobs.top_logprobs.append(top)
    return logprobs


def _chat_logprob(token: Token) -> TokenLogprob:
    # `bytes` is each token's own (part of a character included), so that a client can rebuild split characters.
    top = [
        TopLogprob(token=text, logprob=max(value, FLOOR_LOGPROB), bytes=list(key_bytes(text)))
        for text, value in token.top_logprob.items()
    ]
    logprob = max(token.logprob, FLOOR_LOGPROB)
    return TokenLogprob(token=token.text, logprob=logprob, bytes=list(token._bytes), top_logprobs=top)


# --- streaming ------------------------------------------------------------------------------------------------------
@dataclass
class _ChoiceStream:
    """One choice of a stream: its sequence, and what was sent of it so far."""

    index: int
    seq: Sequence
    sent: int = 0  # completion tokens sent
    offset: int = 0  # characters sent (text_offset)
    started: bool = False


# A chunk maker gets a choice, its newly settled tokens (with the echoed prompt first in its first chunk, and the EOS
# last in its last) and whether it is finished; it returns the chunk's JSON, or None when there is nothing to send.
ChunkMaker = Callable[[_ChoiceStream, list[Token], list[Token], list[Token], bool], str | None]


def _include_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _completion_chunk(answer: _Answer, body: CompletionRequest) -> ChunkMaker:
    def chunk(choice: _ChoiceStream, echoed: list[Token], tokens: list[Token], eos: list[Token], finished: bool):
        shown = echoed + tokens
        if not shown and not finished:
            return None
        text = "".join(t.text for t in shown)
        logprobs = None
        if body.logprobs is not None:
            first_unscored = bool(echoed) and choice.seq.added == 0
            logprobs = _completion_logprobs(shown + eos, first_unscored, offset=choice.offset)
        choice.offset += len(text)
        reason = choice.seq.finish_reason if finished else None
        return answer.chunk([CompletionChoice(index=choice.index, text=text, logprobs=logprobs, finish_reason=reason)])

    return chunk


def _chat_chunk(answer: _Answer, body: ChatCompletionRequest) -> ChunkMaker:
    def chunk(choice: _ChoiceStream, echoed: list[Token], tokens: list[Token], eos: list[Token], finished: bool):
        first = not choice.started
        if not tokens and not first and not finished:
            return None
        delta = Delta(role="assistant" if first else None, content="".join(t.text for t in tokens))
        logprobs = ChatLogprobs(content=[_chat_logprob(t) for t in tokens]) if body.logprobs and tokens else None
        reason = choice.seq.finish_reason if finished else None
        data = ChatChunkChoice(index=choice.index, delta=delta, logprobs=logprobs, finish_reason=reason)
        return answer.chunk([data])

    return chunk


async def _stream(
    engine: Engine, seqs: list[Sequence], request: Request, answer: _Answer, chunk: ChunkMaker, include_usage: bool
) -> StreamingResponse:
    """Start the sequences; once the first token settles (or an error comes first, answered as a plain HTTP error),
    send server-sent events as tokens settle, then each choice's finish_reason, the usage if asked, and [DONE]."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    for seq in seqs:
        seq.listener = lambda: loop.call_soon_threadsafe(changed.set)
    run = asyncio.ensure_future(run_all(engine, seqs, stopping(request)))
    try:
        await _next_change(run, changed)
    except BaseException:
        run.cancel()
        raise
    if run.done() and run.exception() is not None:
        raise run.exception()  # nothing sent yet: a full queue or a bad request gets its HTTP status
    choices = [_ChoiceStream(index, seq) for index, seq in enumerate(seqs)]

    def settled(choice: _ChoiceStream, finished: bool) -> tuple[list[Token], list[Token], list[Token], int]:
        seq = choice.seq
        upto = len(seq.pieces) if finished else seq.streamable
        echoed = engine.prompt_tokens(seq) if not choice.started and seq.request.echo_prompt else []
        eos = engine.eos_tokens(seq) if finished else []
        return echoed, engine.completion_tokens(seq, choice.sent, upto), eos, upto

    async def events() -> AsyncIterator[str]:
        try:
            while True:
                finished = run.done()
                if finished and run.exception() is not None:
                    yield _sse(_error_event(run.exception(), engine))
                    return
                for choice in choices:
                    echoed, tokens, eos, upto = await run_in_threadpool(settled, choice, finished)
                    data = chunk(choice, echoed, tokens, eos, finished)
                    choice.sent = upto
                    if data is not None:
                        choice.started = True
                        yield _sse(data)
                if finished:
                    break
                await _next_change(run, changed)
            account_all(request, seqs, answer.n)
            if include_usage:  # OpenAI's last chunk: no choices, the usage
                yield _sse(answer.chunk([], answer.usage(seqs)))
            yield _sse("[DONE]")
        finally:  # the client left (a send failed) or the stream ended: nothing runs on for nobody
            run.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _next_change(run: asyncio.Future, changed: asyncio.Event) -> None:
    """Wait until a sequence records a token or the run ends."""
    waiter = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    changed.clear()


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


def _error_event(err: BaseException, engine: Engine) -> str:
    """An error after the stream began (its status line is sent): an event in OpenAI's error shape."""
    status, message = error_status(err), str(err)
    if status == 500:
        LOG.error("Unexpected error in a stream", exc_info=err)
        status, message = unexpected_error(engine)
    return _error_body(status, message).model_dump_json()


# --- errors ---------------------------------------------------------------------------------------------------------
def openai_error(
    status: int, detail: str | list[dict], headers: dict | None = None, param: str | None = None
) -> JSONResponse:
    """An error in OpenAI's shape; FastAPI's field errors (`detail` a list) become one message naming the field."""
    if isinstance(detail, list):
        fields = [".".join(part for part in error["loc"] if part != "body") for error in detail]
        param = next((field for field in fields if field), None)  # an error of the whole body names no field
        messages = [f"{field}: {e['msg']}" if field else e["msg"] for field, e in zip(fields, detail, strict=True)]
        detail = "; ".join(messages)
    status = 400 if status == 422 else status  # OpenAI answers a request it cannot serve with 400
    return JSONResponse(status_code=status, content=_error_body(status, detail, param).model_dump(), headers=headers)


def _error_body(status: int, message: str, param: str | None = None) -> OpenAIError:
    kind = "invalid_request_error" if status < 500 else "server_error"
    codes = {404: "not_found", 413: "request_too_large", 503: "server_busy", 504: "timeout"}
    code = "model_not_found" if status == 404 and param == "model" else codes.get(status)  # UnknownModel's field
    return OpenAIError(error=ErrorDetail(message=message, type=kind, param=param, code=code))
