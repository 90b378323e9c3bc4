"""What every generating route shares, HELM's (helm_routes.py) and OpenAI's (openai_routes.py): the engine, running
sequences while their client stays, counting their tokens, and reporting ignored request fields. No model work here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request, Response

from llmkit.server.engine import Engine
from llmkit.server.observe import account_all
from llmkit.server.protocol import WireModel
from llmkit.server.sequence import (
    ClientGone,
    QueueFull,
    RequestError,
    RequestTimeout,
    Sequence,
    ServerStopping,
    UnknownModel,
)

LOG = logging.getLogger(__name__)
IGNORED_HEADER_CHARS = 1024  # HELM's client (http.client) cannot read a header line over 64 KB
# The HTTP status of each error a request can meet in the engine (499: nginx's "client closed request").
ERROR_STATUS = {
    RequestError: 422,
    UnknownModel: 404,
    QueueFull: 503,
    ServerStopping: 503,
    RequestTimeout: 504,
    ClientGone: 499,
}


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


def stopping(request: Request) -> asyncio.Event:
    """Set when the server is shutting down and the grace period for requests in flight has ended (app.py)."""
    return request.app.state.stopping


async def generate(seqs: list[Sequence], request: Request, choices: int = 1) -> None:
    """Run the sequences in the engine's batch until all are done, or cancel them if the client disconnects.
    `seqs` are `choices` per prompt, in prompt order (OpenAI's n)."""
    await unless_disconnected(run_all(get_engine(request), seqs, stopping(request)), request)
    account_all(request, seqs, choices)


async def run_all(engine: Engine, seqs: list[Sequence], stop: asyncio.Event) -> None:
    """Run the sequences together; when one fails (a full queue...), `stop` is set (ServerStopping) or this is
    cancelled, the others leave too."""
    for seq in seqs:
        if seq.asks_nothing:  # not queued: a full prompt's prefill (a minute on a CPU) for an empty answer
            seq.finish()
    tasks = [asyncio.ensure_future(engine.run(seq)) for seq in seqs if not seq.asks_nothing]
    together = asyncio.gather(*tasks)
    # Once cancelled, a gather ends with a CancelledError that asyncio would log as "never retrieved".
    together.add_done_callback(lambda done: done.cancelled() or done.exception())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({together, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        together.cancel()  # no-op once done (a sequence failed): then its unfinished siblings are cancelled here
        for task in tasks:
            task.cancel()
    if not together.done() or together.cancelled():
        raise ServerStopping("the server is shutting down; retry on a new connection")
    together.result()  # the first sequence's error, if any
    for seq in seqs:
        seq.finish_reason = seq.finish_reason or "length"  # a prompt scored alone (max_new 0) ends at its length


async def unless_disconnected(work: Awaitable[object], request: Request) -> None:
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


def note_ignored(body: WireModel, response: Response) -> None:
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


def error_status(err: BaseException) -> int:
    return next((status for kind, status in ERROR_STATUS.items() if isinstance(err, kind)), 500)


def unexpected_error(engine: Engine | None) -> tuple[int, str]:
    """What a client is told of an error that is none of ERROR_STATUS's: 503 "restart the server" when the engine
    has stopped (vLLM's engine process died: not this request's doing), else a 500 that shows no internals."""
    if engine is not None and not engine.healthy():
        return 503, engine.stopped_message
    return 500, "internal server error"
