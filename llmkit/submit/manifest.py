"""manifest.json at a submission zip's root: what the image serves, how, on which track, and each file's sha256."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llmkit.core.challenge import Loading, Track
from llmkit.core.memory import MemoryEstimate
from llmkit.server.settings import EngineName

MANIFEST_NAME = "manifest.json"
# Where bundled weights sit in the zip, and where the image keeps weights it serves from a directory.
ZIP_MODEL_DIR, ZIP_ADAPTER_DIR = "model", "adapter"
IMAGE_MODEL_DIR, IMAGE_ADAPTER_DIR = "/opt/model", "/opt/adapter"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz")


class WeightsSource(BaseModel):
    """A model or adapter: a hub id with the revision the image downloads, or bundled local files."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Hub id, or the local directory the bundled files were copied from.")
    revision: str | None = Field(None, description="Hub revision the image downloads; None when bundled.")
    bundled: bool = Field(False, description="The files are in the zip (self-hosting only).")
    base_model: str | None = Field(None, description="For merged weights: the base model the adapter was merged into.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    track: Track
    gpu: str
    model: WeightsSource
    adapter: WeightsSource | None = None
    loading: Loading
    dtype: str = "bfloat16"
    quantization: str
    engine: EngineName = Field(EngineName.builtin, description="What generates in the image (the CMD's --engine).")
    engine_version: str | None = Field(None, description="vLLM's version (its image's tag); None: built-in.")
    estimated_gpu_memory: MemoryEstimate
    bundled_weights: bool = Field(description="True when weight files are in the zip; the challenge refuses that.")
    files: dict[str, str] = Field(description="sha256 of every other file in the zip, by path.")

    def to_json(self) -> bytes:
        # The built-in engine's manifest leaves the engine fields out (absent means built-in), so its zips are the
        # bytes they were before vLLM could be chosen.
        exclude = {"engine", "engine_version"} if self.engine is EngineName.builtin else None
        return (self.model_dump_json(indent=2, exclude=exclude) + "\n").encode()


def is_weight_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES)
