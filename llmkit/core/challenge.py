"""The challenge's facts: its limits (context, the 2-hour evaluation, the 24-hour training reproduction), the tracks
(every fact that differs between the 4090 and the A100 submission, in one table), and the projections of evaluation
time and training time against those limits."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel

from llmkit.core.devices import Dtype, Quantization


class Track(str, Enum):
    rtx4090 = "4090"
    a100 = "A100"

    @classmethod
    def _missing_(cls, value: object) -> Track | None:
        # a track in any case (`a100`, TRACK=a100) is that track, under its canonical name
        if isinstance(value, str):
            return next((track for track in cls if track.value.lower() == value.lower()), None)
        return None


class Loading(str, Enum):
    """How the submission's server holds the weights on the GPU (its --dtype/--quantization flags)."""

    bf16 = "bf16"
    int8 = "int8"  # bitsandbytes LLM.int8(): half the memory of bf16, noticeably slower
    nf4 = "nf4"  # bitsandbytes 4-bit NF4, double quantization: what QLoRA trained against

    @property
    def quantization(self) -> str:
        return (Quantization.none if self is Loading.bf16 else Quantization(self.value)).value

    @property
    def server_flags(self) -> list[str]:
        # Quantized layers compute in bf16 too (bnb_4bit_compute_dtype follows --dtype).
        return ["--dtype", Dtype.bfloat16.value, "--quantization", self.quantization]


PYPI = "https://pypi.org/simple"
# PyPI's Linux wheel of torch 2.13.0 is the CUDA 13.0 build (it depends on cuda-toolkit==13.0.3 and cuDNN 9 wheels),
# so the base image only needs the CUDA 13.0 user-space driver shims: the `base` flavour. CUDA 13 needs an NVIDIA
# driver >= 580 on the host and supports sm_80 and sm_89. The torch version is pyproject.toml's pin.
CUDA_BASE_IMAGE = "nvidia/cuda:13.0.2-base-ubuntu24.04"
# nf4 comes before int8: it needs less memory and bitsandbytes' 4-bit kernels decode faster than LLM.int8(), which
# matters for the 2-hour HELM limit.
LOADINGS = (Loading.bf16, Loading.nf4, Loading.int8)


@dataclass(frozen=True)
class TrackSpec:
    name: str
    gpu: str
    memory_gib: float  # what the card reports usable, not the marketing number
    compute_capability: str  # TORCH_CUDA_ARCH_LIST entry
    bf16_tflops: float  # dense BF16 tensor-core peak with FP32 accumulate, for training-speed projections
    memory_bandwidth_gbs: float  # peak GPU-memory bandwidth in GB/s, for the pace of decoding in training (GRPO)
    cuda_base_image: str = CUDA_BASE_IMAGE  # pinned base image of the submission's Dockerfile
    torch_index: str = PYPI  # where the CUDA build of torch comes from
    loadings: tuple[Loading, ...] = LOADINGS  # default loading: the first of these whose memory estimate fits

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024**3)

    @property
    def capability(self) -> tuple[int, int]:
        """compute_capability as torch.cuda.get_device_capability gives it: (major, minor)."""
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)


TRACKS: dict[Track, TrackSpec] = {
    Track.rtx4090: TrackSpec(
        name="4090", gpu="NVIDIA RTX 4090", memory_gib=23.6, compute_capability="8.9",
        bf16_tflops=165.2,  # dense, FP32 accumulate: https://waredb.com/processor/nvidia-geforce-rtx-4090 (165.15)
        memory_bandwidth_gbs=1008,  # GDDR6X: NVIDIA Ada Lovelace GPU Architecture whitepaper, table 1
    ),
    Track.a100: TrackSpec(
        name="A100", gpu="NVIDIA A100 40GB", memory_gib=39.4, compute_capability="8.0",
        bf16_tflops=312,  # NVIDIA A100 Tensor Core GPU datasheet (40GB and 80GB alike)
        memory_bandwidth_gbs=1555,  # HBM2: NVIDIA A100 Tensor Core GPU datasheet (the 40GB's; the 80GB's is more)
    ),
}  # fmt: skip


def track_table() -> str:
    """The tracks as the README's Markdown table (a test checks that the README holds this text)."""
    from llmkit.core.project import pinned_version  # the project's metadata: not in a submission image

    rows = ["| track | GPU | usable memory | base image | torch | default loading |", "|---|---|---|---|---|---|"]
    for spec in TRACKS.values():
        cuda = ".".join(spec.cuda_base_image.split(":")[1].split(".")[:2])  # the image's CUDA, torch's build
        source = "PyPI" if spec.torch_index == PYPI else spec.torch_index
        rows.append(
            f"| {spec.name} | {spec.gpu.removeprefix('NVIDIA ')}, sm_{spec.compute_capability.replace('.', '')} "
            f"| {spec.memory_gib} GiB | `{spec.cuda_base_image}` "
            f"| {pinned_version('torch')} (CUDA {cuda} wheels from {source}) "
            f"| {', else '.join(loading.value for loading in spec.loadings)} |"
        )
    return "\n".join(rows)


TIME_LIMIT_S = 2 * 3600  # challenge rule: the whole HELM run of the sample conf within 2 hours on the track GPU
# The open evaluation's sample conf (run_specs_full_coarse_600_budget): 600 instances, one request each (its adapters
# are generation and joint multiple choice); helm_eval's `open` task list reproduces it (tests/helm_eval).
OPEN_SUITE_INSTANCES = 600
OPEN_SUITE_RUNS = 88  # its run entries
# Its 55 MMLU entries (216 of the instances) say data_augmentation=canonical: HELM (helm/benchmark/run_expander.py)
# also sends each of those questions perturbed 4 ways (mild_mix typos, AAVE dialect, female pronouns, other first
# names), skipping a copy its perturbation left unchanged. The projection takes the worst case, every copy sent.
CANONICAL_AUGMENTATION_COPIES = 4
OPEN_SUITE_AUGMENTED_INSTANCES = 216
OPEN_SUITE_REQUESTS = OPEN_SUITE_INSTANCES + CANONICAL_AUGMENTATION_COPIES * OPEN_SUITE_AUGMENTED_INSTANCES  # 1,464
OPEN_SUITE_REQUESTS_NOTE = (
    f"at most: {OPEN_SUITE_INSTANCES} instances, and {CANONICAL_AUGMENTATION_COPIES} perturbed copies of each of "
    f"MMLU's {OPEN_SUITE_AUGMENTED_INSTANCES}"
)
CONTEXT_TOKENS = 2048  # prompt + completion, the challenge's limit
HELM_CLIENT_THREADS = 4  # helm-run's --num-threads as the challenge ran it: requests in flight at once
CONTAINER_PORT = 80  # the harness maps the submission container's port 80 to 8080
MAX_SUBMISSIONS = 3  # per track, by the challenge's rules


def _within_or_over(ratio: float) -> str:
    """How a duration stands against its limit, as a projection's verdict says it: "1.0× over" read as no overrun
    at 102%, so a multiple only from twice the limit on (the percentage beside it says how far)."""
    if ratio <= 1:
        return "within"
    return f"{ratio:.1f}× over" if ratio >= 2 else "over"


class Projection(BaseModel):
    """The open suite's duration at a per-request pace measured here, and what that pace was measured from."""

    open_requests: int
    seconds_per_request: float
    projected_s: float
    limit_s: int = TIME_LIMIT_S
    basis: str  # where seconds_per_request comes from, as a phrase after "s/request"
    caveat: str  # why the real run will take longer or shorter

    @property
    def ratio(self) -> float:
        return self.projected_s / self.limit_s

    def verdict(self) -> str:
        within = _within_or_over(self.ratio)
        return (
            f"about {_duration(self.projected_s)}, {within} the challenge's {_duration(self.limit_s)} limit "
            f"({self.ratio:.0%} of it)"
        )

    def sentence(self) -> str:
        return (
            f"Open evaluation ({self.open_requests} requests, {OPEN_SUITE_REQUESTS_NOTE}) at "
            f"{self.seconds_per_request:.2f} s/request "
            f"{self.basis}: {self.verdict()}. {self.caveat}"
        )


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def project(seconds_per_request: float, *, basis: str, caveat: str) -> Projection:
    """The open suite's duration at `seconds_per_request`; `basis` and `caveat` say what that pace is worth."""
    requests = OPEN_SUITE_REQUESTS
    projected_s = seconds_per_request * requests
    return Projection(
        open_requests=requests,
        seconds_per_request=seconds_per_request,
        projected_s=projected_s,
        basis=basis,
        caveat=caveat,
    )


TRAINING_LIMIT_S = 24 * 3600  # challenge rule: the organisers re-run the top entries' training within 24 hours


@dataclass(frozen=True)
class Throughput:
    """Training tokens per second of one model on one GPU, and where the figure comes from."""

    tokens_per_s: float
    params: float  # parameters of the model it was measured on
    tflops: float  # the GPU's dense BF16 peak (TrackSpec.bf16_tflops)
    source: str  # a measurement on a GPU, or a published figure with its reference


_QWEN_PROFILE = (
    "Qwen-7B on one A100-SXM4-80G, 8 x 2048 tokens per step, flash-attention 2; QwenLM/Qwen README, 'Profiling of "
    "Memory and Speed': https://github.com/QwenLM/Qwen#profiling-of-memory-and-speed"
)
_A100_TFLOPS = TRACKS[Track.a100].bf16_tflops  # the A100-SXM4-80G's dense BF16 peak is the 40GB's
# Published figures, by how the weights are trained: 8 x 2048 tokens per step at 7.0 s/step (Q-LoRA, a 4-bit base)
# and 5.2 s/step (LoRA, a 16-bit base). A measurement on a track's GPU (issue #17, item 4) belongs here, in its place.
TRAINING_THROUGHPUT: dict[str, Throughput] = {
    "qlora": Throughput(
        8 * 2048 / 7.0, 7e9, _A100_TFLOPS, f"published: Q-LoRA (a GPTQ 4-bit base) 7.0 s/step, {_QWEN_PROFILE}"
    ),
    "lora": Throughput(8 * 2048 / 5.2, 7e9, _A100_TFLOPS, f"published: LoRA 5.2 s/step, {_QWEN_PROFILE}"),
}
# FLOPs per token, in multiples of the parameters (Kaplan et al. 2020, "Scaling Laws for Neural Language Models",
# section 2.1: a trained token costs about 6N, the forward pass 2N and the backward pass twice that): the backward
# pass computes the activations' gradients (2N) and the weights' (2N), which an adapter's frozen base skips. So a
# full fine-tune's step is 6N a token, an adapter's 4N, and a forward pass without gradients (a reference model's,
# KTO's KL pass) 2N: a third of a full fine-tune's step, half of an adapter's.
_FORWARD_FLOPS, _ADAPTER_STEP_FLOPS, _FULL_STEP_FLOPS = 2, 4, 6
_FULL_FINE_TUNE_FACTOR = _ADAPTER_STEP_FLOPS / _FULL_STEP_FLOPS


@dataclass(frozen=True)
class Decoding:
    """Generation inside training (rl: grpo's completions, transformers' generate): `calls` calls, each
    `new_tokens` decode steps, a step one token of each of `batch` sequences through the model, which reads its
    weights and the KV cache so far from GPU memory, `bytes_per_step` in all."""

    calls: int
    batch: int
    new_tokens: int  # each completion at its longest (trl.max_completion_length): an upper bound
    bytes_per_step: float


class TrainingProjection(BaseModel):
    """How long a config trains on one GPU of a track, against the 24-hour reproduction limit."""

    track: Track
    tokens: int | None  # None: unknown (a hub dataset offline); the verdict then says what 24 hours hold
    tokens_basis: str  # where the token count comes from, or why it is unknown
    tokens_per_s: float
    throughput_basis: str  # where tokens_per_s comes from, and how it was scaled
    generation_s: float = 0  # decoding in training (rl: grpo), on top of the tokens trained
    generation_basis: str = ""  # how generation_s was worked out; empty: the run generates nothing
    limit_s: int = TRAINING_LIMIT_S

    @property
    def projected_s(self) -> float | None:
        return None if self.tokens is None else self.tokens / self.tokens_per_s + self.generation_s

    @property
    def ratio(self) -> float | None:
        return None if self.projected_s is None else self.projected_s / self.limit_s

    @property
    def fits(self) -> bool | None:
        return None if self.ratio is None else self.ratio <= 1

    def verdict(self) -> str:
        if self.projected_s is None:
            held = f"{_duration(self.limit_s)} hold {self.tokens_per_s * self.limit_s:,.0f} tokens"
            less = " trained, less the generation's time" if self.generation_basis else ""
            return f"tokens unknown; {held}{less}"
        within = _within_or_over(self.ratio)
        generation = f" ({_duration(self.generation_s)} of it generating)" if self.generation_basis else ""
        limit = f"{within} the {_duration(self.limit_s)} limit ({self.ratio:.0%})"
        return f"about {_duration(self.projected_s)}{generation}, {limit}"

    def sentence(self) -> str:
        tokens = "unknown tokens" if self.tokens is None else f"{self.tokens:,} tokens"
        generation = f"; {self.generation_basis}" if self.generation_basis and self.tokens is not None else ""
        return (
            f"{tokens} ({self.tokens_basis}) at {self.tokens_per_s:,.0f} tokens/s on the "
            f"{TRACKS[self.track].gpu} ({self.throughput_basis}){generation}: {self.verdict()}"
        )


def project_training(
    track: Track,
    *,
    tokens: int | None,
    tokens_basis: str,
    params: float,
    method: str,
    forward_only: float = 0,
    decoding: Decoding | None = None,
) -> TrainingProjection:
    """Training time of `tokens` tokens for a model of `params` parameters on one GPU of `track`.

    Args:
        method: "qlora" (a 4- or 8-bit base with an adapter), "lora" (a 16-bit base with an adapter) or "full".
        forward_only: sequences that go through a model without gradients per sequence trained (DPO's reference
            passes, KTO's KL and reference passes, GRPO's prefill of a prompt), each a forward pass's share of a
            step's FLOPs.
        decoding: the completions the run generates (rl: grpo), timed by `_decode_step_s`.

    The reference figure (TRAINING_THROUGHPUT) is scaled by the GPUs' BF16 peaks and by parameters (the FLOPs per
    token are proportional to them): an order of magnitude, not a measurement of this config.
    """
    reference = TRAINING_THROUGHPUT["lora" if method == "full" else method]
    spec = TRACKS[track]
    tokens_per_s = reference.tokens_per_s * (spec.bf16_tflops / reference.tflops) * (reference.params / params)
    scaling = [f"x {reference.params / params:.3g} for {params / 1e9:.3g}B parameters"]
    if spec.bf16_tflops != reference.tflops:
        scaling.append(f"x {spec.bf16_tflops / reference.tflops:.2f} for the BF16 peak ({spec.bf16_tflops:g} TFLOPS)")
    if method == "full":
        tokens_per_s *= _FULL_FINE_TUNE_FACTOR
        scaling.append("x 2/3 for a full fine-tune's weight gradients")
    share = _FORWARD_FLOPS / (_FULL_STEP_FLOPS if method == "full" else _ADAPTER_STEP_FLOPS)
    forward_s = share / tokens_per_s  # a token's forward pass without gradients
    if forward_only:
        tokens_per_s /= 1 + forward_only * share
        scaling.append(
            f"/ {1 + forward_only * share:.3g} for {forward_only:g} forward-only pass(es) per trained sequence (each "
            f"{share:.2g} of a step)"
        )
    basis = f"{reference.tokens_per_s:,.0f} tokens/s {reference.source}, " + ", ".join(scaling)
    generation_s, generation_basis = 0.0, ""
    if decoding is not None:
        step_s, bound = _decode_step_s(spec, decoding, forward_s)
        generation_s = decoding.calls * decoding.new_tokens * step_s
        generation_basis = (
            f"generation: {decoding.calls:,} calls x {decoding.new_tokens:,} decode steps of {decoding.batch:,} "
            f"sequences, {step_s * 1e3:.3g} ms a step ({bound})"
        )
    return TrainingProjection(
        track=track,
        tokens=tokens,
        tokens_basis=tokens_basis,
        tokens_per_s=tokens_per_s,
        throughput_basis=basis,
        generation_s=generation_s,
        generation_basis=generation_basis,
    )


def _decode_step_s(spec: TrackSpec, decoding: Decoding, forward_s: float) -> tuple[float, str]:
    """One decode step's seconds, and what bounds it. A step moves one token of each sequence, so it is bound by
    reading the weights and the KV cache from GPU memory at the card's bandwidth (TrackSpec.memory_bandwidth_gbs),
    until the batch is large enough for its forward passes (`forward_s` a token, at the training throughput) to
    take longer. A floor: transformers' generate also spends time launching each layer's kernels, which for a small
    model is most of a step."""
    read_s = decoding.bytes_per_step / (spec.memory_bandwidth_gbs * 1e9)
    compute_s = decoding.batch * forward_s
    if read_s >= compute_s:
        gb = decoding.bytes_per_step / 1e9
        return read_s, f"memory-bound: {gb:.3g} GB read at the {spec.gpu}'s {spec.memory_bandwidth_gbs:g} GB/s"
    return compute_s, f"compute-bound: {decoding.batch:,} tokens' forward passes at the training throughput"
