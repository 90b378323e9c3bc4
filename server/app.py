"""The FastAPI app: `python -m llmkit.server` runs it (see server/__main__.py).

It puts together HELM's API (helm_routes.py) and OpenAI's (openai_routes.py), both served by one engine whose
scheduler batches concurrent requests on one model thread; the middleware (middleware.py) and error handlers
(errors.py) that every route shares; /metrics and the access log (observe.py). A client that disconnects takes its
request out of the batch; a shutdown gives requests in flight a time limit (`DrainingServer`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse

from llmkit.server.engine import Engine, load_engine
from llmkit.server.errors import add_error_handlers
from llmkit.server.helm_routes import router as helm_router
from llmkit.server.middleware import AssumeJSONMiddleware, BodyLimitMiddleware, header_timeout_protocol
from llmkit.server.observe import AccessLogMiddleware, Metrics
from llmkit.server.openai_routes import router as openai_router
from llmkit.server.settings import EngineName, ServerSettings
from llmkit.server.vllm_engine import VLLM_MAX_TEMPERATURE

LOG = logging.getLogger(__name__)
BACKSTOP_S = 2.0  # past --shutdown-timeout-s, uvicorn cancels what still runs
DOCKER_STOP_S = 10.0  # docker stop's SIGKILL after its SIGTERM
EXIT_S = 1.0  # after the drain and the engine's close: the 503s sent, uvicorn's shutdown, the interpreter's exit


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
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.state.metrics = Metrics(app)  # counts what the body limit refuses too
    app.add_middleware(AccessLogMiddleware)  # outermost: logs and ids every answer
    add_error_handlers(app)
    app.include_router(helm_router)
    app.include_router(openai_router)

    def openapi() -> dict:
        """The generated schema, with the limits this server's settings put on the wire fields."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            fields = schema["components"]["schemas"]["ProcessRequest"]["properties"]
            max_new_tokens, limit = fields["max_new_tokens"], settings.max_new_tokens_limit
            max_new_tokens["maximum"], max_new_tokens["default"] = limit, min(max_new_tokens["default"], limit)
            if settings.engine is EngineName.vllm:
                fields["temperature"]["maximum"] = VLLM_MAX_TEMPERATURE
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
    # adapter or device that can't be used ends in one line naming it, not in the lifespan's traceback; the address
    # is tried first, so that a typo in --host or a busy --port is not found only after minutes of loading.
    try:
        _check_address(settings.host, settings.port)
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
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=False,
            http=header_timeout_protocol(settings.body_timeout_s),  # a request's headers get the body's time limit
        )
        DrainingServer(config, app.state.stopping, drain_s(settings, engine)).run()
    except KeyboardInterrupt:  # Ctrl-C with requests in flight: asyncio re-raises it once the server has drained
        raise SystemExit(130) from None
    finally:
        close_once()


def drain_s(settings: ServerSettings, engine: Engine) -> float:
    """How long a SIGTERM's drain lasts: --shutdown-timeout-s, unless it is left at its default and the engine's close
    would then end past docker stop's SIGKILL (vLLM's takes seconds: VLLM_CLOSE_S); the drain then gets what the
    close leaves, so that the close and the cleanup after it (vLLM's socket folder) happen. A value given is kept
    (a `docker stop -t` longer than 10 s)."""
    if "shutdown_timeout_s" in settings.model_fields_set:
        return settings.shutdown_timeout_s
    left = max(0.0, DOCKER_STOP_S - engine.close_s - EXIT_S)
    if left < settings.shutdown_timeout_s:
        LOG.info(
            "On SIGTERM requests in flight get %g s to finish, not --shutdown-timeout-s' default %g s: the %s engine "
            "takes up to %g s to stop, and docker stop kills at %g s",
            left,
            settings.shutdown_timeout_s,
            engine.name,
            engine.close_s,
            DOCKER_STOP_S,
        )
    return min(left, settings.shutdown_timeout_s)


def _check_address(host: str, port: int) -> None:
    """Raise OSError, naming the address, unless uvicorn could listen on host:port: each address the host resolves to
    (as asyncio's create_server binds them all) is bound, with SO_REUSEADDR as uvicorn's, and released."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
    except OSError as err:
        raise OSError(f"cannot listen on {host} port {port}: {err.strerror or err}") from None
