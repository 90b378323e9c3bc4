"""The challenge's tracks: every fact that differs between the 4090 and the A100 submission, in one table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Track(str, Enum):
    rtx4090 = "4090"
    a100 = "A100"


@dataclass(frozen=True)
class TrackSpec:
    name: str
    gpu: str
    memory_gib: float  # what the card reports usable, not the marketing number
    compute_capability: str  # TORCH_CUDA_ARCH_LIST entry
    bandwidth_gbs: float  # memory bandwidth, for decode-speed projections
    cuda_base_image: str  # pinned base image for docker/
    torch_index: str  # where the CUDA build of torch comes from
    torch_version: str

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024**3)


TRACKS: dict[Track, TrackSpec] = {
    Track.rtx4090: TrackSpec(
        name="4090", gpu="NVIDIA RTX 4090", memory_gib=23.6, compute_capability="8.9", bandwidth_gbs=1008,
        cuda_base_image="nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
        torch_index="https://download.pytorch.org/whl/cu124", torch_version="2.5.1",
    ),
    Track.a100: TrackSpec(
        name="A100", gpu="NVIDIA A100 40GB", memory_gib=39.4, compute_capability="8.0", bandwidth_gbs=1555,
        cuda_base_image="nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04",
        torch_index="https://download.pytorch.org/whl/cu124", torch_version="2.5.1",
    ),
}  # fmt: skip
