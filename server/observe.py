"""What the server tells the people who run it: Prometheus metrics at GET /metrics, one access-log line per request,
and a request id on every answer.

Metrics: prometheus-fastapi-instrumentator counts requests by route, method and status and times them
(`http_requests_total`, `http_request_duration_seconds`); this module adds the model's side: prompt and completion
tokens by model (base or adapter), requests by finish reason, and the engine's batch (running, prefilling, waiting
rows, KV-cache bytes) read from `Engine.stats()` at each scrape (a figure the engine does not report, as vLLM's
queue, is left out). Each app has its own registry, so several apps in one process (the tests) do not collide.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_fastapi_instrumentator import Instrumentator

from llmkit.server.sequence import Sequence

ACCESS_LOG = logging.getLogger("llmkit.server.access")
REQUEST_ID_HEADER = "X-Request-Id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # a client's id is echoed only when it is this plain
# Generation takes seconds: the default 0.1/0.5/1 s buckets would put every request in +Inf.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ENGINE_GAUGES = {
    "running": "Sequences in the decode batch (vLLM: requests in flight).",
    "prefilling": "Admitted sequences whose prompt is being prefilled.",
    "waiting": "Requests queued for a batch row.",
    "max_batch_size": "Rows the batch may hold (--max-batch-size).",
    "kv_cache_bytes_used": "KV-cache bytes the batch holds.",
    "kv_cache_bytes_budget": "KV-cache bytes the batch may use (--kv-cache-bytes).",
}


class Metrics:
    """The app's registry: HTTP metrics from the instrumentator, token counters, and the engine's batch."""

    def __init__(self, app: FastAPI):
        self.registry = CollectorRegistry()
        Instrumentator(
            should_group_status_codes=False, excluded_handlers=["/metrics"], registry=self.registry
        ).instrument(app, latency_lowr_buckets=LATENCY_BUCKETS).expose(app, include_in_schema=False)
        self.prompt_tokens = Counter(
            "llmkit_prompt_tokens", "Prompt tokens of finished requests.", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "llmkit_completion_tokens", "Generated tokens of finished requests.", ["model"], registry=self.registry
        )
        self.sequences = Counter(
            "llmkit_sequences", "Finished sequences (one per choice).", ["model", "finish_reason"],
            registry=self.registry,
        )  # fmt: skip
        self.registry.register(_EngineCollector(app))

    def count(self, seq: Sequence, model: str, prompt: bool = True) -> None:
        if prompt:
            self.prompt_tokens.labels(model).inc(len(seq.ids))
        self.completion_tokens.labels(model).inc(completion_count(seq))
        self.sequences.labels(model, seq.finish_reason or "length").inc()


class _EngineCollector:
    """The engine's batch, read when Prometheus scrapes."""

    def __init__(self, app: FastAPI):
        self.app = app

    def describe(self) -> list:
        return []  # unknown until the engine is loaded; an empty describe keeps registration lazy

    def collect(self):
        engine = getattr(self.app.state, "engine", None)
        if engine is None:
            return
        for name, value in engine.stats().items():
            if name in ENGINE_GAUGES and value is not None:
                yield GaugeMetricFamily(f"llmkit_batch_{name}", ENGINE_GAUGES[name], value=value)


def completion_count(seq: Sequence) -> int:
    """Generated tokens, the EOS that ended the completion included (OpenAI's usage counts it)."""
    return len(seq.completion.ids) + len(seq.eos.ids)


def account_all(request: Request, seqs: list[Sequence], choices: int = 1) -> None:
    """Count a request's finished sequences, `choices` per prompt in prompt order (OpenAI's n): each prompt's tokens
    once, however many choices it has, as OpenAI's usage counts them."""
    for index, seq in enumerate(seqs):
        account(request, seq, prompt=index % choices == 0)


def account(request: Request, seq: Sequence, prompt: bool = True) -> None:
    """Count a finished sequence: in /metrics, and in the request's access-log line; its prompt's tokens only with
    `prompt`."""
    engine = request.app.state.engine
    model = seq.adapter or engine.base_name
    request.app.state.metrics.count(seq, model, prompt)
    tokens = request.state.tokens
    tokens["prompt_tokens"] = tokens.get("prompt_tokens", 0) + (len(seq.ids) if prompt else 0)
    tokens["completion_tokens"] = tokens.get("completion_tokens", 0) + completion_count(seq)
    tokens["model"] = model


def request_id(request: Request) -> str:
    return request.state.request_id


class AccessLogMiddleware:
    """Give every request an id (the client's X-Request-Id when it is plain, else a new one), echo it in the
    answer's X-Request-Id, and log one JSON line when the answer is sent: id, method, path, status, tokens, time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state.update(request_id=rid, tokens={})
        status = 500  # an error no handler answered

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            line = {"request_id": rid, "method": scope["method"], "path": scope["path"], "status": status}
            line.update(state["tokens"])
            line["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
            ACCESS_LOG.info(json.dumps(line))
