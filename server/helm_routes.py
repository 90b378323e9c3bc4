"""HELM's API: POST /process, /tokenize, /decode and GET /health, with exactly the fields crfm-helm sends and reads
(protocol.py). Routes are thin: validate with the wire models, hand the work to the engine, time the request. HELM's
requests carry no model name: the X-Adapter header picks an adapter (else --default-adapter).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from llmkit.server.errors import error_response
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
from llmkit.server.serving import EngineDep, generate, note_ignored

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

router = APIRouter(tags=["HELM"])


@router.post("/process", responses=PROCESS_ERRORS)
async def process(body: ProcessRequest, engine: EngineDep, request: Request, response: Response) -> ProcessResponse:
    start = time.perf_counter()
    note_ignored(body, response)
    adapter = engine.adapter_for(request.headers.get(ADAPTER_HEADER))
    seq = await run_in_threadpool(lambda: engine.new_sequence(body, adapter=adapter))
    await generate([seq], request)
    result = await run_in_threadpool(engine.respond, seq)
    result.request_time = time.perf_counter() - start
    return result


@router.post("/tokenize", responses=ERRORS)
async def tokenize(body: TokenizeRequest, engine: EngineDep, response: Response) -> TokenizeResponse:
    start = time.perf_counter()
    note_ignored(body, response)
    tokens = await run_in_threadpool(engine.tokenize, body.text, body.truncation, body.max_length)
    return TokenizeResponse(tokens=tokens, request_time=time.perf_counter() - start)


@router.post("/decode", responses=ERRORS)
async def decode(body: DecodeRequest, engine: EngineDep, response: Response) -> DecodeResponse:
    start = time.perf_counter()
    note_ignored(body, response)
    text = await run_in_threadpool(engine.decode, body.tokens)
    return DecodeResponse(text=text, request_time=time.perf_counter() - start)


health_errors = {503: {"model": ErrorResponse, "description": "The engine has stopped; restart the server."}}


@router.api_route("/health", methods=["GET", "HEAD"], response_model=HealthResponse, responses=health_errors)
async def health(engine: EngineDep, request: Request) -> Any:  # HEAD: load balancers' probes
    if not engine.healthy():  # a probe (docker's HEALTHCHECK, a load balancer) must see it: every request fails
        return error_response(request.url.path, 503, engine.stopped_message)
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
        model_positions=engine.position_limit,
        stop_at_newline=engine.settings.stop_at_newline,
        memory=engine.memory(),
        batch=BatchStats(**engine.stats()),
    )
