"""How the server answers what goes wrong: one error shape per API (HELM's `{"detail": ...}`, OpenAI's under /v1/),
and the exception handler for each error a request can meet, from FastAPI's validation to the engine's."""

from __future__ import annotations

import logging
import sys

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmkit.core.errors import error_message, is_union_branch
from llmkit.server.openai_routes import openai_error
from llmkit.server.sequence import ClientGone, QueueFull, RequestError, RequestTimeout, ServerStopping, UnknownModel
from llmkit.server.serving import error_status, unexpected_error

LOG = logging.getLogger(__name__)


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


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 422, _validation_errors(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # Routing's 404/405 and FastAPI's body parsing; under /v1 in OpenAI's shape too.
        status, detail = err.status_code, err.detail
        if isinstance(err.__cause__, RecursionError):
            status, detail = 422, "body is not usable JSON: nested too deeply to parse"
        elif isinstance(err.__cause__, ValueError) and "integer string conversion" in str(err.__cause__):
            status, detail = 422, f"body is not usable JSON: a number of over {sys.get_int_max_str_digits()} digits"
        return error_response(request.url.path, status, detail, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        status, message = unexpected_error(getattr(request.app.state, "engine", None))
        if status == 503:
            LOG.error("%s: %s (%s)", request.url.path, message, type(err).__name__)
        else:
            LOG.error("Unexpected error", exc_info=err)
        # The keep-alive connection is closed after an unexpected error; say so, so that the client opens a new one.
        return error_response(request.url.path, status, message, {"Connection": "close"})

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
        error = {"loc": loc, "msg": _body_not_an_object(e) if loc == ["body"] else error_message(e), "type": e["type"]}
        if error not in errors:  # each branch of a union repeats the field
            errors.append(error)
    return [error for error in errors if not _other_branch(error, errors)]


def _other_branch(error: dict, errors: list[dict]) -> bool:
    """A union branch whose type the value is not ("Input should be a valid list" of a text), where another branch
    took the value and found what is wrong with it (at the same field or inside it): only that one is said."""
    loc = error["loc"]
    return error["type"].endswith("_type") and any(
        other["loc"][: len(loc)] == loc and not other["type"].endswith("_type") for other in errors
    )


def _body_not_an_object(e) -> str:
    """The body as a whole is no object of fields: FastAPI says "Field required" for an empty body (and, in the
    FastAPI of vLLM's venv, for `null`), and "a valid dictionary or object to extract fields from" for a list."""
    if e["type"] == "missing":
        got = "an empty body (or null)"
    elif e["type"] in ("model_attributes_type", "dict_type", "model_type"):
        value = e.get("input")
        got = "null" if value is None else f"a JSON {_JSON_NAMES.get(type(value), type(value).__name__)}"
    else:
        return error_message(e)
    return f"the body must be a JSON object of the request's fields, got {got}"


_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
