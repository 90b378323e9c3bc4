"""ASGI middleware that runs before a route sees a request: every POST body read as JSON, and a body over the
size limit, compressed or not UTF-8 refused before it is parsed; and the HTTP protocol's time limit on headers."""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmkit.server.errors import error_response


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

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        messages, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            message = await _receive_before(receive, deadline, scope["app"].state.stopping)
            if message is None:  # the rest of the body never came, or the server is stopping meanwhile
                stopping = scope["app"].state.stopping.is_set()
                status, detail = (
                    (503, "the server is shutting down; retry on a new connection")
                    if stopping
                    else (408, f"request body incomplete after {self.timeout_s:g} s (--body-timeout-s)")
                )
                return await error_response(scope["path"], status, detail, {"Connection": "close"})(
                    scope, receive, send
                )
            if message["type"] == "http.disconnect":  # the client left mid-body: logged as those leaving later are
                return await Response(status_code=499)(scope, receive, send)
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


async def _receive_before(receive, deadline: float, stopping: asyncio.Event):
    """The next ASGI message, or None when `deadline` passes or `stopping` is set first."""
    message = asyncio.ensure_future(receive())
    stop = asyncio.ensure_future(stopping.wait())
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    done, _ = await asyncio.wait({message, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if message in done:
        return message.result()
    message.cancel()
    return None


def header_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a time limit on each request's headers, `timeout_s` from the first byte of a
    connection or of its next request: uvicorn times only the idle wait between requests, so a client that never
    finished its headers held its connection (and a file descriptor) for good; BodyLimitMiddleware times what
    follows the headers."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._awaiting_headers():
                self._stop_header_timer()
            elif self._header_timer is None and not self.transport.is_closing():  # a next request has begun
                self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                # h11 sends a response only to a request it has read: the 408 is written as it is
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    return HeaderTimeoutProtocol
