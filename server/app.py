"""The FastAPI app speaking HELM's HTTP API: `python -m llmkit.server` runs it (see server/__main__.py).

Routes are thin: validate with the wire models, hand the work to the engine's model thread, time the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from llmkit.server.engine import Engine, RequestError
from llmkit.server.protocol import (
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
from llmkit.server.settings import ServerSettings

LOG = logging.getLogger(__name__)
ERRORS = {422: {"model": ErrorResponse, "description": "The request is malformed or cannot be served as asked."}}


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def _note_ignored(body: WireModel, response: Response) -> None:
    if body.ignored_fields:
        LOG.warning("Ignoring unknown request fields: %s", ", ".join(body.ignored_fields))
        response.headers["X-Ignored-Fields"] = ",".join(body.ignored_fields)


class AssumeJSONMiddleware:
    """Read every POST body as JSON: `curl -d` and some harness probes send no or a form content type."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The app; it loads the model at start-up unless an engine is given (tests share one)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = engine or Engine.load(settings)
        yield
        if engine is None:
            app.state.engine.close()

    app = FastAPI(title="HELM model server", version="1", lifespan=lifespan)
    app.add_middleware(AssumeJSONMiddleware)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(err)})

    @app.post("/process", responses=ERRORS)
    async def process(body: ProcessRequest, engine: EngineDep, response: Response) -> ProcessResponse:
        start = time.perf_counter()
        _note_ignored(body, response)
        result = await engine.run(engine.process, body)
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
            model=loaded.source.model_id,
            revision=loaded.source.revision,
            adapter=loaded.adapter,
            dtype=loaded.dtype,
            quantization=loaded.quantization,
            device=loaded.device,
            max_context=engine.settings.max_context,
            stop_at_newline=engine.settings.stop_at_newline,
            memory=engine.memory(),
        )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app


def serve(settings: ServerSettings) -> None:
    """Load the model, then answer on settings.host:settings.port until stopped."""
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
