"""The FastAPI app speaking HELM's HTTP API: `python -m llmkit.server` runs it (see server/__main__.py).

Routes are thin: validate with the wire models, hand the work to the engine (whose scheduler batches concurrent
requests on one model thread), time the request. A client that disconnects takes its request out of the batch.
OpenAI's API (openai_routes.py) is served by the same engine; /metrics and the access log come from observe.py.
HELM's requests carry no model name: the X-Adapter header picks an adapter (else --default-adapter).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit.core.errors import error_message, is_union_branch
from llmkit.server.engine import Engine, load_engine
from llmkit.server.observe import AccessLogMiddleware, Metrics
from llmkit.server.openai_routes import openai_error
from llmkit.server.openai_routes import router as openai_router
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
)
from llmkit.server.sequence import ClientGone, QueueFull, RequestError, RequestTimeout, ServerStopping, UnknownModel
from llmkit.server.serving import EngineDep, error_status, generate, note_ignored
from llmkit.server.settings import ServerSettings

LOG = logging.getLogger(__name__)
BACKSTOP_S = 2.0  # past --shutdown-timeout-s, uvicorn cancels what still runs
ADAPTER_HEADER = "X-Adapter"  # /process: the adapter (or the base model's name) a HELM request is served by
ERRORS = {
    400: {"model": ErrorResponse, "description": "The request body is not UTF-8."},
    413: {"model": ErrorResponse, "description": "The request body is over the server's --max-body-bytes."},
    415: {"model": ErrorResponse, "description": "The request body is compressed (Content-Encoding)."},
    422: {"model": ErrorResponse, "description": "The request is malformed or cannot be served as asked."},
    500: {"model": ErrorResponse, "description": "A bug in the server; the connection is closed after it."},
}
PROCESS_ERRORS = {
    **ERRORS,
    503: {
        "model": ErrorResponse,
        "description": "The batch and its wait queue are full (see Retry-After), or the server is shutting down.",
    },
    504: {"model": ErrorResponse, "description": "The request ran past the server's --request-timeout-s."},
}
PROCESS_ERRORS[404] = {"model": ErrorResponse, "description": "X-Adapter names no adapter served here."}


def error_response(
    path: str, status: int, detail: str | list, headers: dict | None = None, param: str | None = None
) -> JSONResponse:
    """HELM's `{"detail": ...}`, or under /v1/ OpenAI's `{"error": {...}}` (where a 422 is OpenAI's 400).

    A 422's detail is always FastAPI's list of field errors, so that a client parses one shape."""
    if path.startswith("/v1/"):
        return openai_error(status, detail, headers, param)
    if status == 422 and isinstance(detail, str):
        detail = [{"loc": ["body", param] if param else ["body"], "msg": detail, "type": "value_error"}]
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def _validation_errors(err: RequestValidationError) -> list[dict]:
    """What was wrong, field by field, without echoing the input (a NaN or a huge value cannot go back as JSON)."""
    errors = []
    for e in err.errors():
        if e["type"] == "json_invalid":  # FastAPI puts the character offset where a field name would be
            # json's messages end in "at" ("Invalid control character at"), which the offset completes
            at, reason = e["loc"][-1], (e.get("ctx") or {}).get("error", "").removesuffix(" at")
            errors.append({"loc": [], "msg": f"body is not valid JSON: {reason} at character {at}", "type": e["type"]})
            continue
        loc = [str(part) for part in e["loc"] if not is_union_branch(part)]
        error = {"loc": loc, "msg": error_message(e), "type": e["type"]}
        if error not in errors:  # each branch of a union repeats the field
            errors.append(error)
    return errors


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
        encoding = dict(scope["headers"]).get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
        if encoding not in ("", "identity"):
            detail = f"Content-Encoding {encoding} is not supported: send the body uncompressed"
            return await error_response(scope["path"], 415, detail)(scope, receive, send)
        try:
            b"".join(m.get("body", b"") for m in messages).decode("utf-8")
        except UnicodeDecodeError as err:
            detail = f"request body is not UTF-8: byte {err.start} cannot be decoded"
            return await error_response(scope["path"], 400, detail)(scope, receive, send)
        replay = iter(messages)

        async def replay_then_receive():
            return next(replay, None) or await receive()

        await self.app(scope, replay_then_receive, send)

    async def _too_large(self, scope, receive, send) -> None:
        detail = f"request body is over {self.max_bytes} bytes (--max-body-bytes)"
        await error_response(scope["path"], 413, detail)(scope, receive, send)


def create_app(
    settings: ServerSettings, engine: Engine | None = None, on_shutdown: Callable[[], None] | None = None
) -> FastAPI:
    """The app; it loads the model at start-up unless an engine is given (tests share one), and closes the engine
    it loaded (or calls `on_shutdown`) when it shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = engine or load_engine(settings)
        yield
        if engine is None:
            app.state.engine.close()
        elif on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="HELM model server", version="1", lifespan=lifespan)
    app.state.stopping = asyncio.Event()  # set by DrainingServer when a shutdown's grace period ends
    app.add_middleware(AssumeJSONMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.state.metrics = Metrics(app)  # counts what the body limit refuses too
    app.add_middleware(AccessLogMiddleware)  # outermost: logs and ids every answer
    app.include_router(openai_router)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 422, _validation_errors(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # Routing's 404/405 and FastAPI's body parsing; under /v1 in OpenAI's shape too.
        status, detail = err.status_code, err.detail
        if isinstance(err.__cause__, RecursionError):
            status, detail = 422, "body is not usable JSON: nested too deeply to parse"
        return error_response(request.url.path, status, detail, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        LOG.error("Unexpected error", exc_info=err)
        # The keep-alive connection is closed after a 500; say so, so that the client opens a new one.
        headers = {"Connection": "close"}
        return JSONResponse(status_code=500, content={"detail": "internal server error"}, headers=headers)

    @app.exception_handler(RequestError)
    @app.exception_handler(UnknownModel)
    async def request_error(request: Request, err: RequestError | UnknownModel) -> JSONResponse:
        return error_response(request.url.path, error_status(err), str(err), param=getattr(err, "field", None))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after_s)}
        return error_response(request.url.path, 503, str(err), headers)

    @app.exception_handler(ServerStopping)
    async def server_stopping(request: Request, err: ServerStopping) -> JSONResponse:
        return error_response(request.url.path, 503, str(err), {"Connection": "close"})

    @app.exception_handler(RequestTimeout)
    async def request_timeout(request: Request, err: RequestTimeout) -> JSONResponse:
        return error_response(request.url.path, 504, f"{err} (--request-timeout-s)")

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, err: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.post("/process", responses=PROCESS_ERRORS)
    async def process(
        body: ProcessRequest, engine: EngineDep, request: Request, response: Response
    ) -> ProcessResponse:
        start = time.perf_counter()
        note_ignored(body, response)
        adapter = engine.adapter_for(request.headers.get(ADAPTER_HEADER))
        seq = await run_in_threadpool(lambda: engine.new_sequence(body, adapter=adapter))
        await generate([seq], request)
        result = await run_in_threadpool(engine.respond, seq)
        result.request_time = time.perf_counter() - start
        return result

    @app.post("/tokenize", responses=ERRORS)
    async def tokenize(body: TokenizeRequest, engine: EngineDep, response: Response) -> TokenizeResponse:
        start = time.perf_counter()
        note_ignored(body, response)
        tokens = await run_in_threadpool(engine.tokenize, body.text, body.truncation, body.max_length)
        return TokenizeResponse(tokens=tokens, request_time=time.perf_counter() - start)

    @app.post("/decode", responses=ERRORS)
    async def decode(body: DecodeRequest, engine: EngineDep, response: Response) -> DecodeResponse:
        start = time.perf_counter()
        note_ignored(body, response)
        text = await run_in_threadpool(engine.decode, body.tokens)
        return DecodeResponse(text=text, request_time=time.perf_counter() - start)

    health_errors = {503: {"model": ErrorResponse, "description": "The engine has stopped; restart the server."}}

    @app.api_route("/health", methods=["GET", "HEAD"], response_model=HealthResponse, responses=health_errors)
    async def health(engine: EngineDep, request: Request) -> Any:  # HEAD: load balancers' probes
        if not engine.healthy():  # a probe (docker's HEALTHCHECK, a load balancer) must see it: every request fails
            return error_response(request.url.path, 503, f"the {engine.name} engine has stopped: restart the server")
        loaded = engine.loaded
        return HealthResponse(
            status="ok",
            engine=engine.name,
            engine_version=engine.version,
            model=loaded.source.model_id,
            revision=loaded.source.revision,
            adapter=engine.adapters.get(engine.settings.default_adapter_name or ""),
            adapters=engine.adapters,
            default_adapter=engine.settings.default_adapter_name,
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


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a time limit on a shutdown (SIGTERM, Ctrl-C): requests still running when the grace
    period ends are answered 503 (their sequences leave the batch), where uvicorn would wait for them without limit,
    or, with its own timeout, cut them off with a 500."""

    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event, grace_s: float):
        # uvicorn's own limit stays as a backstop, for a handler that does not end once `stopping` is set.
        config.timeout_graceful_shutdown = grace_s + BACKSTOP_S
        super().__init__(config)
        self.stopping, self.grace_s = stopping, grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().call_later(self.grace_s, self.stopping.set)
        await super().shutdown(sockets)


def serve(settings: ServerSettings) -> None:
    """Load the model, then answer on settings.host:settings.port until stopped."""
    # Loaded before uvicorn starts (uvicorn binds the port only after its start-up anyway), so that a model,
    # adapter or device that can't be used ends in one line naming it, not in the lifespan's traceback.
    try:
        engine = load_engine(settings)
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        LOG.debug("Loading failed", exc_info=err)
        raise SystemExit(f"Error: cannot serve: {err}") from None
    closed = []

    def close_once() -> None:
        if not closed:
            closed.append(True)
            engine.close()

    try:
        # Closed at the app's shutdown: after a SIGTERM, uvicorn re-raises the signal once it has shut down, which
        # ends the process before any code after uvicorn.run (vLLM's engine processes were left running).
        # access_log off: AccessLogMiddleware writes one richer line per request instead of uvicorn's
        app = create_app(settings, engine, on_shutdown=close_once)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
        DrainingServer(config, app.state.stopping, settings.shutdown_timeout_s).run()
    finally:
        close_once()
