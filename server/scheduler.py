"""Continuous batching: one model thread serves every /process request in a shared batch.

Each pass of the loop (iteration-level scheduling):
1. drops sequences whose client left or whose time ran out, so that their places are free for
2. admitting waiting sequences while the batch has a free row and their worst-case KV cache fits the budget;
3. prefills prompts: short ones together in one left-padded pass, a long one alone in `prefill_chunk_tokens`
   chunks so the running rows keep decoding in between; a prefilled sequence chooses its first token and joins;
4. runs one decode step for every running row and retires the rows that finished.

Why not transformers' `ContinuousBatchingManager`: it returns only the chosen token's (tempered) logprob, no top-k
alternatives and no prompt logprobs, and samples with one global generator; HELM needs all three raw, and a seed
must make a request reproducible whatever else is in the batch.

Results do not depend on batching: every row reads its own raw logits (padding is masked out), so greedy text is
the same and logprobs agree with a one-row batch to float rounding. The model thread works on numbers only, apart
from decoding each chosen token to check stop sequences (with its own tokenizer copy); prompts are tokenized and
alternatives turned into text on the request's thread (`engine.py`).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import psutil
import torch

from llmkit.core.models import LoadedModel
from llmkit.server.batch import SPARE_TOKENS, PaddedRows, batchable, cache_bytes_per_token, new_cache
from llmkit.server.protocol import ProcessRequest
from llmkit.server.sequence import (
    ClientGone,
    QueueFull,
    RequestError,
    RequestTimeout,
    Sequence,
    eos_ids,
)
from llmkit.server.settings import ServerSettings
from llmkit.server.text import IncrementalDecoder, TopCandidates

LOG = logging.getLogger(__name__)


class Scheduler:
    """Owns the model thread, the wait queue and the running batch."""

    def __init__(self, load: Callable[[], LoadedModel], settings: ServerSettings):
        self.settings = settings
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.batch: PaddedRows | None = None
        self._seconds_per_request = 1.0  # running mean, for Retry-After
        self._stats: dict[str, int] = {}
        self._answered: list[Sequence] = []  # finished this step: answered once the step's snapshot is taken
        self._wake = threading.Condition()
        self._admitted = 0  # submitted and not yet answered: waiting, prefilling or in the batch
        self._closed = False
        self._calls: deque[tuple[Callable, Future]] = deque()
        self._ready: Future = Future()
        self._thread = threading.Thread(target=self._main, args=(load,), name="model", daemon=True)
        self._thread.start()
        try:
            self.loaded: LoadedModel = self._ready.result()  # the model thread's load error, if any, is raised here
        except BaseException:
            # Ctrl-C while the model loads: the thread ends once loaded rather than sit inside torch as the
            # interpreter exits, which aborts it ("terminate called without an active exception").
            self.close()
            raise

    def _setup(self, loaded: LoadedModel) -> None:
        self.model, self.device = loaded.model, torch.device(loaded.device)
        self.has_adapters = bool(self.settings.adapters)  # the model is a PeftModel holding them by name
        self.tokenizer = copy.deepcopy(loaded.tokenizer)  # the model thread's own, for stop sequences
        # The ids that are tokens: an embedding padded past the tokenizer (Qwen2.5's 151,936 rows for 151,665
        # tokens, Phi-2's 51,200 for 50,295) has logits for rows no token maps to, which are never chosen nor listed
        self.vocabulary = len(self.tokenizer)
        self.top_candidates = TopCandidates(self.tokenizer)
        self.eos_ids = eos_ids(loaded.model.generation_config, loaded.tokenizer, self.settings.adapters.values())
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        )
        self.padded = False  # until the probe shows a cache whose rows can be re-padded
        with torch.inference_mode():  # one token through the model: warms it up and shows its cache
            probe = self._forward(torch.tensor([[self.pad_id]], device=self.device), self._new_cache(), rows=[])
        self.bytes_per_token = cache_bytes_per_token(probe.cache, tokens=1)
        self.padded = batchable(probe.cache)
        self.max_batch_size = self.settings.max_batch_size if self.padded else 1
        if self.max_batch_size < self.settings.max_batch_size:
            LOG.warning("This model's KV cache (%s) cannot be re-padded: serving one request at a time",
                        type(probe.cache.layers[0]).__name__)  # fmt: skip
        self.kv_budget = self.settings.kv_cache_bytes or _free_memory(self.device)
        self._snapshot()

    def _snapshot(self) -> None:
        batch = self.batch
        used = batch.kv_bytes(self.bytes_per_token) if batch else 0
        used += sum(seq.prefilled * self.bytes_per_token for seq in self.prefilling)
        self._stats = {
            "running": len(batch.rows) if batch else 0,
            "prefilling": len(self.prefilling),
            "max_batch_size": self.max_batch_size,
            "max_queue": self.settings.max_queue,
            "kv_cache_bytes_used": used,
            "kv_cache_bytes_budget": self.kv_budget,
        }

    # --- any thread --------------------------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> Sequence:
        need = (seq.final_length + SPARE_TOKENS) * self.bytes_per_token
        if need > self.kv_budget:
            raise RequestError(
                f"prompt plus max_new_tokens ({seq.final_length} tokens) needs {need / 2**20:.0f} MiB of KV cache, "
                f"over this server's budget of {self.kv_budget / 2**20:.0f} MiB (--kv-cache-bytes)"
            )
        with self._wake:
            # Counted here, not from the last step's snapshot: the model thread moves waiting requests into the batch
            # between snapshots, and a burst then got past --max-queue by up to a batch.
            if self._admitted >= self.max_batch_size + self.settings.max_queue:
                retry = math.ceil(self._seconds_per_request * (len(self.waiting) + 1) / self.max_batch_size)
                raise QueueFull(
                    f"server busy: {self._admitted} requests in flight (--max-batch-size {self.max_batch_size} plus "
                    f"--max-queue {self.settings.max_queue}); retry later",
                    retry_after_s=max(1, retry),
                )
            self._admitted += 1
            self.waiting.append(seq)
            self._wake.notify()
        seq.future.add_done_callback(self._release)
        return seq

    def _release(self, _future: Future) -> None:
        with self._wake:
            self._admitted -= 1

    def cancel(self, seq: Sequence) -> None:
        """The client left: the sequence leaves the batch before the next decode step."""
        seq.cancelled = True
        with self._wake:
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        """One consistent snapshot: every request in flight counted once, as waiting, prefilling or running."""
        with self._wake:  # waiting only changes under the lock, and admission retakes the snapshot under it
            return {**self._stats, "waiting": len(self.waiting)}

    def call(self, fn: Callable, *args):
        """Run `fn(*args)` on the model thread between steps and return its result (benchmarks use it: torch work
        must stay on that one thread, see `_main`)."""
        future: Future = Future()
        with self._wake:
            self._calls.append((lambda: fn(*args), future))
            self._wake.notify()
        return future.result()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # --- the model thread --------------------------------------------------------------------------------------
    def _main(self, load: Callable[[], LoadedModel]) -> None:
        # Every torch op of the process runs on this thread, loading included. On the CPU, OpenMP gives each thread
        # that runs parallel ops its own team of workers; a second team (the main thread's) over-subscribes the
        # cores, and libgomp then stops spinning between ops: decoding here measured 40% slower.
        try:
            loaded = load()
            self._setup(loaded)
        except BaseException as err:  # handed to the thread that waits for the model
            self._ready.set_exception(err)
            return
        self._ready.set_result(loaded)
        self._loop()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not (self.waiting or self.prefilling or self.batch or self._calls):
                    self._wake.wait()
                if self._closed:
                    break
            with torch.inference_mode():
                # Before admission: the place of a row whose client left (or whose time ran out) goes to a waiting
                # request in this pass; dropped after it, the row held the place for one more pass
                self._drop_abandoned()
            with self._wake:
                self._admit()
                # Retaken with the queue it leaves: the requests just admitted are prefilled within this pass, and the
                # last pass's snapshot counted them nowhere until it ended (a 40-request burst showed 37).
                self._snapshot()
                calls, self._calls = list(self._calls), deque()
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except Exception as err:  # the caller gets it
                    future.set_exception(err)
            with torch.inference_mode():
                self._guarded(self._prefill_step)
                self._guarded(self._decode_step)
            self._snapshot()
            # After the snapshot: a client that has its answer and asks /health at once saw its row still running.
            answered, self._answered = self._answered, []
            for seq in answered:
                seq.finish()
        for seq in [*self.waiting, *self._in_flight()]:
            seq.finish(RuntimeError("server shutting down"))

    def _guarded(self, step) -> None:
        """Run a step; if the model fails (out of memory...), fail the sequences in flight and go on serving."""
        try:
            step()
        except Exception as err:  # one failed step must not stop the model thread
            in_flight = self._in_flight()
            LOG.exception("Model step failed; failing the %d requests in flight", len(in_flight))
            for seq in in_flight:
                seq.finish(err)
            self.prefilling, self.batch = [], None

    def _admit(self) -> None:
        while self.waiting and len(self._in_flight()) < self.max_batch_size:
            seq = self.waiting[0]
            if not self._fits(seq):
                return  # its worst-case KV cache waits for running rows to finish
            self.prefilling.append(self.waiting.popleft())

    def _in_flight(self) -> list[Sequence]:
        """The admitted sequences: those being prefilled and the running batch's rows."""
        return [*self.prefilling, *(self.batch.rows if self.batch else [])]

    def _fits(self, seq: Sequence) -> bool:
        # Left padding makes the cache rows x the longest row's width; every row may still grow to its final length.
        rows = [*self._in_flight(), seq]
        width = max(s.final_length for s in rows) + SPARE_TOKENS
        return len(rows) * width * self.bytes_per_token <= self.kv_budget

    def _drop_abandoned(self) -> None:
        now = time.monotonic()

        def gone(seq: Sequence) -> bool:
            if seq.cancelled:
                seq.finish(ClientGone("client disconnected"))
            elif seq.deadline is not None and now > seq.deadline:
                seq.finish(RequestTimeout(f"request took over {self.settings.request_timeout_s:g} s"))
            return seq.future.done()

        with self._wake:
            self.waiting = deque(seq for seq in self.waiting if not gone(seq))
        self.prefilling = [seq for seq in self.prefilling if not gone(seq)]
        if self.batch:
            self._retire([i for i, seq in enumerate(self.batch.rows) if not gone(seq)])

    # --- prefill -----------------------------------------------------------------------------------------------
    def _prefill_step(self) -> None:
        if not self.prefilling:
            return
        chunk = self.settings.prefill_chunk_tokens
        first = self.prefilling[0]
        if first.prefilled or len(first.ids) > chunk:
            self._prefill_chunk(first, chunk)
            return
        group, width = [], 0
        for seq in self.prefilling:
            if seq.prefilled or len(seq.ids) > chunk or (len(group) + 1) * max(width, len(seq.ids)) > chunk:
                break
            group.append(seq)
            width = max(width, len(seq.ids))
        self._prefill_group(group, width)

    def _prefill_chunk(self, seq: Sequence, chunk: int) -> None:
        """The next `chunk` tokens of one long prompt, on its own cache."""
        start, end = seq.prefilled, min(len(seq.ids), seq.prefilled + chunk)
        ids = torch.tensor([seq.ids[start:end]], device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        cache = seq.cache if seq.cache is not None else self._new_cache()
        out = self._forward(ids, cache, [seq], positions=positions, keep_all=seq.request.echo_prompt)
        seq.cache, seq.prefilled = out.cache, end
        if seq.request.echo_prompt:
            self._score_prompt(seq, out.logits[0], first_position=start)
        if end == len(seq.ids):
            mask = torch.ones(1, end, dtype=torch.long, device=self.device)
            seq.cache = None  # the batch holds it now (or its rows, copied): do not keep it alive twice
            self._start_decoding([seq], out.cache, mask, out.logits[:, -1])
            self.prefilling.remove(seq)

    def _prefill_group(self, group: list[Sequence], width: int) -> None:
        """Whole prompts in one pass, left-padded to the longest."""
        ids = torch.full((len(group), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(group), width), dtype=torch.long, device=self.device)
        for row, seq in enumerate(group):
            ids[row, width - len(seq.ids) :] = torch.tensor(seq.ids, device=self.device)
            mask[row, width - len(seq.ids) :] = 1
            seq.prefilled = len(seq.ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep_all = any(seq.request.echo_prompt for seq in group)
        out = self._forward(ids, self._new_cache(), group, mask=mask, positions=positions, keep_all=keep_all)
        for row, seq in enumerate(group):
            if seq.request.echo_prompt:
                self._score_prompt(seq, out.logits[row, width - len(seq.ids) :], first_position=0)
        self._start_decoding(group, out.cache, mask, out.logits[:, -1])
        self.prefilling = [seq for seq in self.prefilling if seq not in group]

    def _score_prompt(self, seq: Sequence, logits: torch.Tensor, first_position: int) -> None:
        """Prompt logprobs from the logits at positions first_position..; position p predicts token p + 1."""
        if first_position == 0:  # the first token has nothing to condition on: 0.0
            seq.add_prompt_token(0, seq.ids[0], 0.0, ([], []))
        count = min(logits.shape[0], len(seq.ids) - 1 - first_position)  # the last logits predict the completion
        if count <= 0:  # a one-token prompt: nothing in it is predicted
            return
        targets = seq.ids[first_position + 1 : first_position + 1 + count]
        logprobs = torch.log_softmax(logits[:count].float(), dim=-1)
        chosen = logprobs[torch.arange(count), torch.tensor(targets, device=logprobs.device)].tolist()
        top_ids, top_values = _top(logprobs[:, : self.vocabulary], self.top_candidates(seq.request.top_k_per_token))
        for offset, token in enumerate(targets):
            top = (top_ids[offset], top_values[offset])
            seq.add_prompt_token(first_position + 1 + offset, token, chosen[offset], top)

    def _start_decoding(self, group: list[Sequence], cache, mask: torch.Tensor, last_logits: torch.Tensor) -> None:
        """Choose each prefilled sequence's first token; the ones that go on join the running batch."""
        decoding = [i for i, seq in enumerate(group) if seq.max_new > 0]
        for seq in group:
            if seq.max_new == 0:
                self._answered.append(seq)
        if not decoding:
            return
        for i in decoding:
            group[i].decoder = IncrementalDecoder(self.tokenizer, group[i].ids)
            group[i].generator = _generator(group[i].request, self.device)
        rows = PaddedRows(
            rows=group,
            cache=cache,
            mask=mask,
            lengths=mask.sum(-1),
            next_tokens=torch.zeros(len(group), dtype=torch.long, device=self.device),
        )
        rows.keep(decoding)
        rows.next_tokens, going_on = self._choose(rows.rows, last_logits[decoding])
        if not going_on:
            return
        rows.keep(going_on)
        if self.batch is None:
            self.batch = rows
        else:
            self.batch.merge(rows)

    # --- decode ------------------------------------------------------------------------------------------------
    def _decode_step(self) -> None:
        batch = self.batch
        if batch is None:
            return
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        out = self._forward(
            batch.next_tokens[:, None], batch.cache, batch.rows, mask=mask, positions=batch.lengths[:, None]
        )
        batch.cache, batch.mask, batch.lengths = out.cache, mask, batch.lengths + 1
        tokens, going_on = self._choose(batch.rows, out.logits[:, -1])
        batch.next_tokens = tokens
        self._retire(going_on)

    def _retire(self, going_on: list[int]) -> None:
        if not going_on:
            self.batch = None
        else:
            self.batch.keep(going_on)

    def _choose(self, rows: list[Sequence], logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Each row's next token from its raw logits; records it; returns the tokens and the rows that go on."""
        logits = logits.float()
        # Logprobs are the model's own softmax, over every row (as transformers, vLLM and HELM's HuggingFace client
        # count them); the choice and the alternatives are among tokens (`vocabulary`)
        logprobs = torch.log_softmax(logits, dim=-1)
        logits, tokens = logits[:, : self.vocabulary], logprobs[:, : self.vocabulary]
        chosen = logits.argmax(dim=-1)
        for row, seq in enumerate(rows):
            if seq.generator is not None:
                chosen[row] = sample_token(logits[row], seq.request, seq.generator)
        chosen_logprobs = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        top_ids, top_values = _top(tokens, max(self.top_candidates(seq.request.top_k_per_token) for seq in rows))
        going_on = []
        for row, (seq, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            n = self.top_candidates(seq.request.top_k_per_token)
            if seq.record(token, chosen_logprobs[row], top_ids[row][:n], top_values[row][:n], eos_ids=self.eos_ids):
                going_on.append(row)
            else:
                self._answered.append(seq)
                self._seconds_per_request += 0.1 * (time.monotonic() - seq.submitted - self._seconds_per_request)
        return chosen, going_on

    def _new_cache(self):
        return new_cache(self.model)

    def _forward(self, ids, cache, rows: list[Sequence], *, mask=None, positions=None, keep_all: bool = False):
        # Adapters: peft applies each row's own (or none: "__base__") within the one batched pass.
        adapters = {"adapter_names": [seq.adapter or "__base__" for seq in rows]} if self.has_adapters and rows else {}
        return self.model(
            input_ids=ids,
            # One row at a time, never padded, needs no mask; and a recurrent layer (Mamba's) multiplies its input by
            # the mask, so a decode step's one token given the whole row's mask became as many tokens as the row.
            attention_mask=mask if self.padded else None,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if keep_all else 1,
            **adapters,
        )


def _top(logprobs: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The k likeliest token ids of each row, and their logprobs."""
    if k == 0:
        return [[] for _ in range(len(logprobs))], [[] for _ in range(len(logprobs))]
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))  # a k over a small vocabulary
    return ids.tolist(), values.tolist()


def _generator(request: ProcessRequest, device: torch.device) -> torch.Generator | None:
    if request.greedy:
        return None
    generator = torch.Generator(device=device)
    if request.seed is not None:
        generator.manual_seed(request.seed)
    else:
        generator.seed()
    return generator


def sample_token(logits: torch.Tensor, request: ProcessRequest, generator: torch.Generator) -> int:
    """One token from temperature-scaled logits, after top-k and nucleus (top-p) filtering."""
    scaled = logits / request.temperature
    if request.top_k:
        kth = torch.topk(scaled, min(request.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if request.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already cover top_p; the most likely one always stays.
        drop = (torch.cumsum(probs, dim=-1) - probs) >= request.top_p
        drop[0] = False  # a top_p that rounds to 0 in float32 would drop it too, leaving nothing to sample
        scaled = scaled.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _free_memory(device: torch.device) -> int:
    """The default KV budget: what is free once the weights are loaded, with room left for activations."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)
    return int(psutil.virtual_memory().available * 0.5)
