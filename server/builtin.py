"""The built-in engine: the project's continuous-batching scheduler (scheduler.py) over a transformers model.

A /process request is tokenized on its own thread, run by the scheduler's model thread in a shared batch, and
turned back into text pieces and top-k texts on its own thread (`Engine.respond`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib import metadata

from llmkit.core.models import LoadedModel, load_for_inference
from llmkit.server.engine import Engine
from llmkit.server.protocol import ProcessRequest, ProcessResponse
from llmkit.server.scheduler import Scheduler
from llmkit.server.sequence import Sequence
from llmkit.server.settings import ServerSettings


class BuiltinEngine(Engine):
    name = "builtin"

    def __init__(self, load: Callable[[], LoadedModel], settings: ServerSettings):
        """Start the model thread, which calls `load`; returns once the model is ready (or raises its error)."""
        self.scheduler = Scheduler(load, settings)
        self.model = self.scheduler.loaded.model
        self.device = self.scheduler.device
        self.version = f"transformers {metadata.version('transformers')}, torch {metadata.version('torch')}"
        super().__init__(self.scheduler.loaded, settings)

    @classmethod
    def load(cls, settings: ServerSettings) -> BuiltinEngine:
        return cls(
            lambda: load_for_inference(
                settings.model,
                revision=settings.revision,
                adapters=settings.adapters,
                dtype=settings.dtype.value,
                quantization=settings.quantization.value,
                device=settings.device.value,
            ),
            settings,
        )

    def close(self) -> None:
        self.scheduler.close()

    def stats(self) -> dict[str, int | None]:
        return self.scheduler.stats()

    async def run(self, seq: Sequence) -> None:
        self.scheduler.submit(seq)
        try:
            await asyncio.wrap_future(seq.future)
        except asyncio.CancelledError:  # the client left: the sequence leaves the batch before the next step
            self.scheduler.cancel(seq)
            raise

    def process(self, request: ProcessRequest) -> ProcessResponse:
        """Submit, wait and answer on the calling thread (benchmarks and scripts; the routes await `run`), with the
        server's default adapter, as /process without an X-Adapter header (it used the base model)."""
        seq = self.scheduler.submit(self.new_sequence(request, adapter=self.adapter_for(None)))
        seq.future.result()
        return self.respond(seq)
