"""The FastAPI app speaking HELM's HTTP API: `python -m llmkit.server` runs it (see server/__main__.py).

Routes are thin: validate with the wire models, hand the work to the engine (whose scheduler batches concurrent
requests on one model thread), time the request. A client that disconnects takes its request out of the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated
from urllib.parse import quote

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from llmkit.server.engine import Engine, load_engine
from llmkit.server.protocol import (
    BatchStats,
    DecodeRequest,
    DecodeResponse,
    ErrorResponse,
    HealthResponse,
    ProcessRequest,
    ProcessResponse,
    TokenizeRequest,
    TokenizeResponse,
    WireModel,
)
from llmkit.server.sequence import ClientGone, QueueFull, RequestError, RequestTimeout
from llmkit.server.settings import ServerSettings

LOG = logging.getLogger(__name__)
IGNORED_HEADER_CHARS = 1024  # HELM's client (http.client) cannot read a header line over 64 KB
ERRORS = {
    400: {"model": ErrorResponse, "description": "The request body is not UTF-8."},
    413: {"model": ErrorResponse, "description": "The request body is over the server's --max-body-bytes."},
    422: {"model": ErrorResponse, "description": "The request is malformed or cannot be served as asked."},
    500: {"model": ErrorResponse, "description": "A bug in the server; the connection is closed after it."},
}
PROCESS_ERRORS = {
    **ERRORS,
    503: {"model": ErrorResponse, "description": "The batch and its wait queue are full; see Retry-After."},
    504: {"model": ErrorResponse, "description": "The request ran past the server's --request-timeout-s."},
}


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def _note_ignored(body: WireModel, response: Response) -> None:
    """Log unknown fields (repr-escaped) and list them in a header, percent-encoded and cut to a safe length."""
    names = body.ignored_fields
    if not names:
        return
    LOG.warning("Ignoring %d unknown request field(s): %s", len(names), ", ".join(repr(n[:100]) for n in names[:20]))
    listed, shown = "", 0
    for name in names:
        encoded = quote(name, safe="")
        if len(listed) + len(encoded) + 1 > IGNORED_HEADER_CHARS:
            continue  # counted below; a shorter name may still fit
        listed, shown = f"{listed},{encoded}" if listed else encoded, shown + 1
    if shown < len(names):
        listed += f"{',' if listed else ''}...{len(names) - shown}%20more"
    response.headers["X-Ignored-Fields"] = listed


def _validation_errors(err: RequestValidationError) -> list[dict]:
    """What was wrong, field by field, without echoing the input (a NaN or a huge value cannot go back as JSON)."""
    return [{"loc": [str(part) for part in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in err.errors()]


class AssumeJSONMiddleware:
    """Read every POST body as JSON: `curl -d` and some harness probes send no or a form content type."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answer 413 to a POST body over `max_bytes` before any of it is parsed (Content-Length first; a chunked body
    is counted as it arrives), so a huge prompt never reaches the tokenizer."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        try:
            b"".join(m.get("body", b"") for m in messages).decode("utf-8")
        except UnicodeDecodeError as err:
            detail = f"request body is not UTF-8: byte {err.start} cannot be decoded"
            return await JSONResponse(status_code=400, content={"detail": detail})(scope, receive, send)
        replay = iter(messages)

        async def replay_then_receive():
            return next(replay, None) or await receive()

        await self.app(scope, replay_then_receive, send)

    async def _too_large(self, scope, receive, send) -> None:
        detail = f"request body is over {self.max_bytes} bytes (--max-body-bytes)"
        await JSONResponse(status_code=413, content={"detail": detail})(scope, receive, send)


async def _unless_disconnected(work: Awaitable[None], request: Request) -> None:
    """Await the engine's `work`; if the client disconnects first, cancel it (the engine drops the request)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled (server shutdown)
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done():
        raise ClientGone("client disconnected")
    task.result()  # the engine's error, if any


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The app; it loads the model at start-up unless an engine is given (tests share one)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = engine or load_engine(settings)
        yield
        if engine is None:
            app.state.engine.close()

    app = FastAPI(title="HELM model server", version="1", lifespan=lifespan)
    app.add_middleware(AssumeJSONMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_errors(err)})

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        LOG.error("Unexpected error", exc_info=err)
        # The keep-alive connection is closed after a 500; say so, so that the client opens a new one.
        headers = {"Connection": "close"}
        return JSONResponse(status_code=500, content={"detail": "internal server error"}, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(err)})

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, err: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after_s)}
        return JSONResponse(status_code=503, content={"detail": str(err)}, headers=headers)

    @app.exception_handler(RequestTimeout)
    async def request_timeout(_: Request, err: RequestTimeout) -> JSONResponse:
        return JSONResponse(status_code=504, content={"detail": f"{err} (--request-timeout-s)"})

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, err: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.post("/process", responses=PROCESS_ERRORS)
    async def process(
        body: ProcessRequest, engine: EngineDep, request: Request, response: Response
    ) -> ProcessResponse:
        start = time.perf_counter()
        _note_ignored(body, response)
        seq = await run_in_threadpool(engine.new_sequence, body)
        await _unless_disconnected(engine.run(seq), request)
        result = await run_in_threadpool(engine.respond, seq)
        result.request_time = time.perf_counter() - start
        return result

    @app.post("/tokenize", responses=ERRORS)
    async def tokenize(body: TokenizeRequest, engine: EngineDep, response: Response) -> TokenizeResponse:
        start = time.perf_counter()
        _note_ignored(body, response)
        tokens = await run_in_threadpool(engine.tokenize, body.text, body.truncation, body.max_length)
        return TokenizeResponse(tokens=tokens, request_time=time.perf_counter() - start)

    @app.post("/decode", responses=ERRORS)
    async def decode(body: DecodeRequest, engine: EngineDep, response: Response) -> DecodeResponse:
        start = time.perf_counter()
        _note_ignored(body, response)
        text = await run_in_threadpool(engine.decode, body.tokens)
        return DecodeResponse(text=text, request_time=time.perf_counter() - start)

    @app.get("/health")
    async def health(engine: EngineDep) -> HealthResponse:
        loaded = engine.loaded
        return HealthResponse(
            status="ok",
            engine=engine.name,
            engine_version=engine.version,
            model=loaded.source.model_id,
            revision=loaded.source.revision,
            adapter=loaded.adapter,
            dtype=loaded.dtype,
            quantization=loaded.quantization,
            device=loaded.device,
            max_context=engine.settings.max_context,
            stop_at_newline=engine.settings.stop_at_newline,
            memory=engine.memory(),
            batch=BatchStats(**engine.stats()),
        )

    def openapi() -> dict:
        """The generated schema, with the limits this server's settings put on the wire fields."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            fields = schema["components"]["schemas"]["ProcessRequest"]["properties"]
            fields["max_new_tokens"]["maximum"] = settings.max_new_tokens_limit
            token_ids = schema["components"]["schemas"]["DecodeRequest"]["properties"]["tokens"]["items"]
            token_ids["maximum"] = len(app.state.engine.tokenizer) - 1
            token_ids.pop("exclusiveMaximum", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app


def serve(settings: ServerSettings) -> None:
    """Load the model, then answer on settings.host:settings.port until stopped."""
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
