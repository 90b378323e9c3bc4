"""The challenge's tracks: every fact that differs between the 4090 and the A100 submission, in one table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Track(str, Enum):
    rtx4090 = "4090"
    a100 = "A100"


class Loading(str, Enum):
    """How the submission's server holds the weights on the GPU (its --dtype/--quantization flags)."""

    bf16 = "bf16"
    int8 = "int8"  # bitsandbytes LLM.int8(): half the memory of bf16, noticeably slower
    nf4 = "nf4"  # bitsandbytes 4-bit NF4, double quantization: what QLoRA trained against

    @property
    def quantization(self) -> str:
        return "none" if self is Loading.bf16 else self.value

    @property
    def server_flags(self) -> list[str]:
        # Quantized layers compute in bf16 too (bnb_4bit_compute_dtype follows --dtype).
        return ["--dtype", "bfloat16", "--quantization", self.quantization]

    @property
    def linear_bytes_per_param(self) -> float:
        """Bytes per weight of a quantized linear layer; embeddings, lm_head and norms stay bf16."""
        if self is Loading.nf4:
            # 4 bits + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax blocks (double quantization)
            return 0.5 + 1 / 64 + 4 / (64 * 256)
        if self is Loading.int8:
            return 1.0  # plus one fp32 scale per output row, counted by fit.py
        return 2.0


@dataclass(frozen=True)
class TrackSpec:
    name: str
    gpu: str
    memory_gib: float  # what the card reports usable, not the marketing number
    compute_capability: str  # TORCH_CUDA_ARCH_LIST entry
    bandwidth_gbs: float  # memory bandwidth, for decode-speed projections
    cuda_base_image: str  # pinned base image of the submission's Dockerfile
    torch_index: str  # where the CUDA build of torch comes from
    torch_version: str  # the version the project is tested with (pyproject.toml), as a CUDA build
    loadings: tuple[Loading, ...]  # default loading: the first of these whose memory estimate fits

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024**3)


PYPI = "https://pypi.org/simple"
# PyPI's Linux wheel of torch 2.13.0 is the CUDA 13.0 build (it depends on cuda-toolkit==13.0.3 and cuDNN 9 wheels),
# so the base image only needs the CUDA 13.0 user-space driver shims: the `base` flavour. CUDA 13 needs an NVIDIA
# driver >= 580 on the host and supports sm_80 and sm_89. nf4 comes before int8: it needs less memory and
# bitsandbytes' 4-bit kernels decode faster than LLM.int8(), which matters for the 2-hour HELM limit.
TRACKS: dict[Track, TrackSpec] = {
    Track.rtx4090: TrackSpec(
        name="4090", gpu="NVIDIA RTX 4090", memory_gib=23.6, compute_capability="8.9", bandwidth_gbs=1008,
        cuda_base_image="nvidia/cuda:13.0.2-base-ubuntu24.04", torch_index=PYPI, torch_version="2.13.0",
        loadings=(Loading.bf16, Loading.nf4, Loading.int8),
    ),
    Track.a100: TrackSpec(
        name="A100", gpu="NVIDIA A100 40GB", memory_gib=39.4, compute_capability="8.0", bandwidth_gbs=1555,
        cuda_base_image="nvidia/cuda:13.0.2-base-ubuntu24.04", torch_index=PYPI, torch_version="2.13.0",
        loadings=(Loading.bf16, Loading.nf4, Loading.int8),
    ),
}  # fmt: skip
