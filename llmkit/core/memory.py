"""Will the model fit on the track's GPU? Weights at the chosen loading + KV cache + activations + CUDA overhead.

The estimate follows what server/engine.py does: one request at a time (a single model worker thread), a KV cache
of up to 2048 tokens (the challenge's prompt + completion limit), and for echo_prompt scoring the full prompt's
logits upcast to float32 and log-softmaxed. It needs only the model's shape, so it works offline for the bases
in `llmkit.core.shapes.KNOWN_SHAPES` and for any local model directory.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, computed_field

from llmkit.core.challenge import CONTEXT_TOKENS, TRACKS, Loading, Track
from llmkit.core.shapes import ModelShape

LOG = logging.getLogger(__name__)

GIB = 1024**3
CONCURRENT_REQUESTS = 1  # server/engine.py runs model work on one worker thread: one KV cache at a time
CUDA_CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspaces, bitsandbytes kernels
ALLOCATOR_SLACK = 0.05  # PyTorch's caching allocator never packs weights and cache perfectly


class FitError(ValueError):
    """The model does not fit the track's GPU at the asked (or any) loading; the message has the numbers."""


class MemoryEstimate(BaseModel):
    """Estimated peak GPU memory of the submission's server, in GiB."""

    loading: Loading
    weights_gib: float
    kv_cache_gib: float
    activations_gib: float
    overhead_gib: float
    available_gib: float
    context_tokens: int = CONTEXT_TOKENS
    concurrent_requests: int = CONCURRENT_REQUESTS

    @computed_field
    @property
    def total_gib(self) -> float:
        return round(self.weights_gib + self.kv_cache_gib + self.activations_gib + self.overhead_gib, 2)

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.available_gib

    def breakdown(self) -> str:
        return (
            f"weights {self.weights_gib:.2f} + KV cache {self.kv_cache_gib:.2f} ({self.context_tokens} tokens x "
            f"{self.concurrent_requests} request) + activations {self.activations_gib:.2f} + CUDA overhead "
            f"{self.overhead_gib:.2f} = {self.total_gib:.2f} GiB"
        )


def weight_bytes(shape: ModelShape, loading: Loading) -> float:
    """Bytes of the weights on the GPU: linear layers at the loading's precision, everything else in bf16."""
    layers = shape.linear_layers().values()
    linear = shape.num_layers * sum(i * o for i, o in layers)
    other = shape.num_params - linear  # embeddings, lm_head (bitsandbytes leaves it unquantized), norms
    scales = shape.num_layers * sum(o for _, o in layers) * 4 if loading is Loading.int8 else 0
    return linear * loading.linear_bytes_per_param + other * 2 + scales


def estimate_memory(shape: ModelShape, loading: Loading, track: Track, extra_weight_bytes: int = 0) -> MemoryEstimate:
    """Peak GPU memory of serving `shape` at `loading` on `track` (extra_weight_bytes: an unmerged adapter)."""
    weights = weight_bytes(shape, loading) + extra_weight_bytes
    kv_cache = shape.kv_cache_bytes_per_token(2) * CONTEXT_TOKENS * CONCURRENT_REQUESTS
    # Scoring a full prompt: bf16 logits, their float32 copy and its log-softmax (2 + 4 + 4 bytes per entry);
    # one layer's MLP and residual tensors; attention scores in case SDPA falls back to the math kernel.
    per_request = (
        CONTEXT_TOKENS * shape.vocab_size * 10
        + CONTEXT_TOKENS * (3 * shape.intermediate_size + 4 * shape.hidden_size) * 2
        + shape.num_heads * CONTEXT_TOKENS**2 * 2
    )
    activations = per_request * CONCURRENT_REQUESTS
    overhead = CUDA_CONTEXT_GIB * GIB + ALLOCATOR_SLACK * (weights + kv_cache)
    return MemoryEstimate(
        loading=loading,
        weights_gib=round(weights / GIB, 2),
        kv_cache_gib=round(kv_cache / GIB, 2),
        activations_gib=round(activations / GIB, 2),
        overhead_gib=round(overhead / GIB, 2),
        available_gib=TRACKS[track].memory_gib,
    )


def choose_loading(
    model: str, shape: ModelShape, track: Track, loading: Loading | None = None, extra_weight_bytes: int = 0
) -> MemoryEstimate:
    """The estimate for `loading`, or for the track's default (the first of its loadings that fits).

    Raises:
        FitError: with the numbers of every loading and a suggestion (another loading or the other track).
    """
    estimates = {each: estimate_memory(shape, each, track, extra_weight_bytes) for each in Loading}
    if loading is not None:
        if estimates[loading].fits:
            return estimates[loading]
        raise FitError(_refusal(model, shape, track, loading, estimates, extra_weight_bytes))
    for candidate in TRACKS[track].loadings:
        if estimates[candidate].fits:
            first = TRACKS[track].loadings[0]
            if candidate is not first:
                LOG.warning(
                    "%s in %s needs %.2f GiB, over the %s track's %.2f GiB: serving it in %s (%.2f GiB)",
                    model, first.value, estimates[first].total_gib, track.value, TRACKS[track].memory_gib,
                    candidate.value, estimates[candidate].total_gib,
                )  # fmt: skip
            return estimates[candidate]
    smallest = min(estimates.values(), key=lambda e: e.total_gib).loading
    raise FitError(_refusal(model, shape, track, smallest, estimates, extra_weight_bytes))


def _refusal(
    model: str,
    shape: ModelShape,
    track: Track,
    loading: Loading,
    estimates: dict[Loading, MemoryEstimate],
    extra_weight_bytes: int,
) -> str:
    spec = TRACKS[track]
    summary = ", ".join(
        f"{e.loading.value} {e.total_gib:.2f} GiB" + ("" if e.fits else " (too big)") for e in estimates.values()
    )
    lines = [
        f"{model} ({shape.num_params / 1e9:.2f}B parameters) in {loading.value} does not fit the {spec.name} track "
        f"({spec.gpu}, {spec.memory_gib} GiB usable): {estimates[loading].breakdown()}.",
        f"Estimates on this track: {summary}",
    ]
    fitting = [estimates[each] for each in spec.loadings if estimates[each].fits]  # in the track's preference order
    if fitting:
        best = fitting[0].loading
        lines.append(f"Suggestion: it fits in {best.value} ({fitting[0].total_gib:.2f} GiB): --loading {best.value}.")
    for other in Track:
        elsewhere = estimate_memory(shape, loading, other, extra_weight_bytes)
        if other is not track and elsewhere.fits:
            lines.append(
                f"Suggestion: on the {other.value} track ({TRACKS[other].memory_gib} GiB) {loading.value} fits "
                f"({elsewhere.total_gib:.2f} GiB): --track {other.value}."
            )
    if len(lines) == 2:
        lines.append("Suggestion: no loading fits on either track; pick a smaller base model.")
    return "\n".join(lines)
