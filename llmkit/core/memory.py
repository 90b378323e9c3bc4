"""The one GPU-memory model, from the model's shape alone (`llmkit.core.shapes`, built from config.json): what
serving a submission needs (`estimate_memory`, the fit check) and what training a config needs (`estimate_training`,
printed by `llmkit validate`) on one GPU of a track. Both add up the same parts; with h the hidden size, kv the
key/value width, i the MLP width a token passes through (MoE: times its active experts), V the vocabulary,
L layers, T tokens and b bytes per value:

- weights (`weight_bytes`): the linear layers transformers hands to bitsandbytes (exactly nn.Linear or Conv1D; a
  subclass such as Falcon's FalconLinear stays in 16 bits) at
  `linear_bytes_per_param` (NF4 with double quantization 0.5159 bytes; int8 1 byte + an fp32 scale per output
  row); every other tensor unquantized: embeddings, lm_head, norms, and MoE experts held as fused 3-D parameters
  (transformers 5 stores Mixtral's and Qwen-MoE's experts so, and bitsandbytes leaves them in 16 bits).
- KV cache: 2 x L x kv x 2 bytes per token (`ModelShape.kv_cache_bytes_per_token`); training keeps none.
- activations: one decoder layer's tensors, A = b x (6h + 4kv + 4i) per token (no T x T scores: attention runs in
  SDPA's flash or memory-efficient kernel on sm_80/sm_89), and the logits T x V x (b + 8): the logits, an fp32
  copy and one more fp32 tensor (their log-softmax when scoring, their gradient when training).
- overhead: 1 GiB of CUDA context + 5% allocator slack on all of the above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel, computed_field

from llmkit.core.challenge import CONTEXT_TOKENS, TRACKS, Loading, Track, TrackSpec
from llmkit.core.shapes import ModelShape

LOG = logging.getLogger(__name__)

GIB = 1024**3
# The fit check counts one full-context request: the server's scheduler batches more requests only as far as the
# memory left after the weights allows (its KV budget), so one request is what a submission must hold to work.
CONCURRENT_REQUESTS = 1
CUDA_CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspaces, bitsandbytes kernels
ALLOCATOR_SLACK = 0.05  # PyTorch's caching allocator never packs tensors perfectly
# Optimizer state per trainable parameter in fp32 bytes (8-bit variants: a quarter); unknown names count as AdamW.
# The first key found in the name wins, so the specific names come first; GaLore and APOLLO keep low-rank state and
# are counted as AdamW (an upper bound).
_STATE_BYTES = {
    "grokadamw": 12,
    "schedule_free_sgd": 4,
    "lomo": 0,  # lomo, adalomo: fused updates, no per-parameter state
    "adamw": 8,
    "ademamix": 12,
    "lion": 4,
    "adagrad": 4,
    "rmsprop": 4,
    "adafactor": 0,
    "sgd": 0,
}


def linear_bytes_per_param(loading: Loading, *, double_quant: bool = True, float_bytes: int = 2) -> float:
    """Bytes per weight of a decoder layer's linear layer held at `loading` (bf16: unquantized, `float_bytes`)."""
    if loading is Loading.nf4:
        # 4 bits + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax blocks (without double
        # quantization: an fp32 absmax per 64 weights)
        return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
    if loading is Loading.int8:
        return 1.0  # plus one fp32 scale per output row, counted by weight_bytes
    return float_bytes


def weight_bytes(shape: ModelShape, loading: Loading, *, float_bytes: int = 2, double_quant: bool = True) -> float:
    """Bytes of the weights: linear layers at the loading's precision, the rest at `float_bytes` (bf16: 2)."""
    linear = shape.quantizable_params
    other = shape.num_params - linear  # embeddings, lm_head (bitsandbytes leaves it unquantized), norms, experts
    scales = sum(m.fan_out for m in shape.linear if m.quantizable) * 4 if loading is Loading.int8 else 0
    per_param = linear_bytes_per_param(loading, double_quant=double_quant, float_bytes=float_bytes)
    return linear * per_param + other * float_bytes + scales


def layer_activation_bytes(shape: ModelShape, dtype_bytes: int, extra_width: int = 0) -> int:
    """Bytes per token of one decoder layer's activations (extra_width: more saved inputs, e.g. dropout's)."""
    kv = shape.num_kv_heads * shape.head_size
    return dtype_bytes * (6 * shape.hidden_size + 4 * kv + 4 * shape.mlp_width + extra_width)


def logits_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
    """The logits in the compute dtype, their fp32 copy and one more fp32 tensor (log-softmax or gradient)."""
    return tokens * shape.vocab_size * (dtype_bytes + 8)


def overhead_bytes(allocated: float) -> float:
    return CUDA_CONTEXT_GIB * GIB + ALLOCATOR_SLACK * allocated


def optimizer_state_bytes(optimizer: str, param_bytes: int = 4) -> float:
    """Bytes of optimizer state per trainable parameter for a transformers optimizer name.

    Args:
        optimizer: transformers' name; a 8bit/4bit/32bit suffix fixes the bytes per state value.
        param_bytes: bytes of the trained parameter, which torch's optimizers keep their state in (2 for a 16-bit
            full fine-tune).
    """
    family = next((key for key in _STATE_BYTES if key in optimizer), "adamw")
    suffixed = {"8bit": 1, "4bit": 0.5, "32bit": 4}
    per_value = next((size for suffix, size in suffixed.items() if optimizer.endswith(suffix)), param_bytes)
    return _STATE_BYTES[family] / 4 * per_value


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


def estimate_memory(shape: ModelShape, loading: Loading, track: Track, extra_weight_bytes: int = 0) -> MemoryEstimate:
    """Peak GPU memory of serving `shape` at `loading` on `track` (extra_weight_bytes: an unmerged adapter).

    As the server runs: bf16 compute, a KV cache of up to 2048 tokens (the challenge's prompt + completion limit)
    for one request (the batch grows into the memory left), and echo_prompt scoring of a full prompt's logits.
    Under no_grad nothing is kept between layers, so one layer's activations are live at a time.
    """
    weights = weight_bytes(shape, loading) + extra_weight_bytes
    kv_cache = shape.kv_cache_bytes_per_token(2) * CONTEXT_TOKENS * CONCURRENT_REQUESTS
    per_request = CONTEXT_TOKENS * layer_activation_bytes(shape, 2) + logits_bytes(shape, CONTEXT_TOKENS, 2)
    activations = per_request * CONCURRENT_REQUESTS
    return MemoryEstimate(
        loading=loading,
        weights_gib=round(weights / GIB, 2),
        kv_cache_gib=round(kv_cache / GIB, 2),
        activations_gib=round(activations / GIB, 2),
        overhead_gib=round(overhead_bytes(weights + kv_cache + activations) / GIB, 2),
        available_gib=TRACKS[track].memory_gib,
    )


@dataclass(frozen=True)
class TrainingSetup:
    """What one training process holds (`llmkit.config.plan` fills it in from the config)."""

    loading: Loading  # the frozen base: nf4 (load_in_4bit), int8 (load_in_8bit), bf16 (16-bit at dtype_bytes)
    dtype_bytes: int  # of the compute dtype: 2 for bf16/fp16, 4 for float32
    trainable_params: int
    optimizer: str  # transformers' optimizer name
    tokens: int  # micro_batch_size x sequence_len
    gradient_checkpointing: bool
    full_fine_tune: bool = False
    trained_bytes: int = 4  # per trained weight: 4 (adapters, float32 master weights), 2 (a 16-bit full fine-tune)
    double_quant: bool = True
    dropout_width: int = 0  # summed input widths of the adapted layers when lora_dropout > 0 (dropout keeps a copy)
    reference_model: bool = False  # preference training of a full fine-tune: TRL keeps a frozen copy of the model
    # lora_target_parameters: the expert parameters peft's ParamWrapper rebuilds as weight + B @ A in every forward,
    # and per layer the summed input widths of their matmuls per token (experts per token x in_features)
    rebuilt_params: int = 0
    expert_input_width: int = 0
    logits_tokens: int | None = None  # of `tokens`, those whose logits training computes (None: all)
    # rl: grpo's generation: sequences one generate() call decodes at once, each its prompt and completion tokens
    generated_sequences: int = 0
    generated_context: int = 0
    generated_prompt: int = 0


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated peak training memory on one GPU of a track, in bytes, by part."""

    track: TrackSpec
    weights: int  # the frozen weights + the copies autocast keeps of fp32 weights
    trainable: int  # trainable weights + their gradients + optimizer states
    activations: int
    overhead: int
    generation: int = 0  # rl: grpo: generation's KV cache and prefill, live while training's activations are not

    @property
    def total(self) -> int:
        return self.weights + self.trainable + max(self.activations, self.generation) + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.track.memory_bytes


def estimate_training(shape: ModelShape, setup: TrainingSetup, track: Track) -> TrainingMemory:
    """Peak training memory of `setup` on one GPU of `track`: the serving parts plus the trainable state.

    - weights: an adapter's frozen base, its unquantized tensors at r: fp32 after peft's
      prepare_model_for_kbit_training upcast them (a quantized base, `llmkit.train.modeling`), else b; a full
      fine-tune's frozen weights (those unfrozen_parameters leaves out) at w. Plus the b-byte copies autocast makes
      of the fp32 weights its matmuls use (adapters, an upcast lm_head; every weight of a full fine-tune with fp32
      master weights), kept for backward.
    - trainable: N x (w weight + w gradient + optimizer state) bytes, w = `trained_bytes`: adapters are fp32; a
      full fine-tune trains its weights in their loaded dtype (bf16 as axolotl loads them, or fp32 masters under
      fp16). Optimizer state, per fp32 parameter: 8 for AdamW, 2 for 8-bit AdamW, 4 for Lion, 0 for
      SGD/Adafactor; torch's optimizers keep it in the parameter's dtype (`optimizer_state_bytes`).
    - preference training (DPO): `tokens` counts the chosen and the rejected answers (one batch); the reference
      policy's forward runs without gradients and keeps nothing, and is the base itself for an adapter.
    - generation in training (rl: grpo): before the steps that train on them, transformers' generate decodes a
      batch of sequences with a KV cache (in b, its prompt and completion tokens each), after prefilling their
      prompts one layer at a time (A at r a token) and the logits of each one's last token. Training's activations
      are freed by then (and generation's before training runs), so the peak counts the larger of the two.
    - activations at r, the residual stream's dtype (it follows the embeddings and norms: fp32 beside a quantized
      base or fp32 master weights): backward needs every layer's A (T x L x A); with gradient checkpointing only
      each layer's input (T x L x r x h) and one recomputed layer (T x A). Plus the logits at b, and, for LoRA on
      fused MoE experts (lora_target_parameters), each targeted parameter rebuilt with its delta at r: all layers'
      without gradient checkpointing, one layer's with it; and the inputs of their matmuls (a token's, once per
      expert it uses) in A, which a frozen expert's matmul does not keep.
    """
    b = setup.dtype_bytes
    w = setup.trained_bytes
    r = _residual_bytes(setup)
    weights = _frozen_bytes(shape, setup) + _autocast_copies(shape, setup, r)
    if setup.reference_model:  # a deep copy of a full fine-tune's weights (an adapter's reference is the base itself)
        weights += w * shape.num_params
    trainable = setup.trainable_params * (w + w + optimizer_state_bytes(setup.optimizer, w))
    per_layer = layer_activation_bytes(shape, r, setup.dropout_width + setup.expert_input_width)
    if setup.gradient_checkpointing:
        layers = setup.tokens * (shape.num_layers * r * shape.hidden_size + per_layer)
    else:
        layers = setup.tokens * shape.num_layers * per_layer
    # LoRA on fused experts (peft's ParamWrapper) makes each targeted parameter anew, weight + B @ A in its dtype (r:
    # fp32 once a quantized base is prepared), and the experts' matmuls keep it for backward: every layer's without
    # gradient checkpointing, the recomputed layer's with it (measured: tests/core/test_memory.py)
    rebuilt = setup.rebuilt_params * r
    logits = logits_bytes(shape, setup.tokens if setup.logits_tokens is None else setup.logits_tokens, b)
    activations = layers + logits + (rebuilt // shape.num_layers if setup.gradient_checkpointing else rebuilt)
    sequences = setup.generated_sequences
    generation = (
        sequences * setup.generated_context * int(shape.kv_cache_bytes_per_token(b))
        + sequences * setup.generated_prompt * layer_activation_bytes(shape, r)
        + logits_bytes(shape, sequences, b)
    )
    overhead = overhead_bytes(weights + trainable + max(activations, generation))
    return TrainingMemory(TRACKS[track], int(weights), int(trainable), activations, int(overhead), generation)


def model_bytes(shape: ModelShape, setup: TrainingSetup) -> float:
    """Bytes of the model as training holds it, its frozen and its trained weights, each once (no autocast copy,
    no reference copy): what each decode step of generation in training (rl: grpo) reads."""
    return _frozen_bytes(shape, setup) + setup.trainable_params * setup.trained_bytes


def _residual_bytes(setup: TrainingSetup) -> int:
    """r: the residual stream's bytes, which follow the embeddings and norms: a full fine-tune's trained dtype; fp32
    beside a quantized base (peft's preparation upcasts them); else the compute dtype."""
    if setup.full_fine_tune:
        return setup.trained_bytes
    return setup.dtype_bytes if setup.loading is Loading.bf16 else 4


def _frozen_bytes(shape: ModelShape, setup: TrainingSetup) -> float:
    """The frozen weights: an adapter's base, its unquantized tensors at r; those of a full fine-tune that
    unfrozen_parameters leaves out, at its trained dtype."""
    if setup.full_fine_tune:
        return (shape.num_params - setup.trainable_params) * setup.trained_bytes
    r = _residual_bytes(setup)
    return weight_bytes(shape, setup.loading, float_bytes=r, double_quant=setup.double_quant)


def _autocast_copies(shape: ModelShape, setup: TrainingSetup, residual_bytes: int) -> int:
    if setup.dtype_bytes == 4:
        return 0  # float32 training: no autocast
    if setup.full_fine_tune:  # 16-bit weights are used as they are
        return setup.dtype_bytes * shape.num_params if setup.trained_bytes == 4 else 0
    lm_head = shape.vocab_size * shape.hidden_size if residual_bytes == 4 else 0  # upcast with the embeddings
    return setup.dtype_bytes * (setup.trainable_params + lm_head)


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
                    model,
                    first.value,
                    estimates[first].total_gib,
                    track.value,
                    TRACKS[track].memory_gib,
                    candidate.value,
                    estimates[candidate].total_gib,
                )
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
