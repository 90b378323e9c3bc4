"""Shapes of decoder-only base models: enough to count parameters and estimate memory without the weights.

Known bases are listed so that planning works offline; any other model's shape is read from its config.json
(a local directory, or the hub where it is reachable).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder (Llama, Mistral, Qwen2, SmolLM...): attention + gated MLP per layer."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear module in one decoder layer, by module name."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def layer_params(self) -> int:
        linear = sum(i * o for i, o in self.linear_layers().values())
        return linear + 2 * self.hidden_size  # two RMSNorm weights

    @property
    def num_params(self) -> int:
        return self.embedding_params + self.num_layers * self.layer_params + self.hidden_size

    def kv_cache_bytes_per_token(self, bytes_per_value: float = 2) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_size * bytes_per_value

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        try:
            return cls(
                hidden_size=config["hidden_size"],
                num_layers=config["num_hidden_layers"],
                num_heads=config["num_attention_heads"],
                num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                intermediate_size=config["intermediate_size"],
                vocab_size=config["vocab_size"],
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                head_dim=config.get("head_dim"),
            )
        except KeyError as err:
            raise ValueError(f"config.json lacks {err}: not a Llama-style decoder this project can size") from err


# Offline table for the bases of the shipped configs and their neighbours (values from each model's config.json).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ModelShape(576, 30, 9, 3, 1536, 49152, tie_word_embeddings=True),
    "HuggingFaceTB/SmolLM2-135M": ModelShape(576, 30, 9, 3, 1536, 49152, tie_word_embeddings=True),
    "meta-llama/Llama-2-7b-hf": ModelShape(4096, 32, 32, 32, 11008, 32000),
    "meta-llama/Llama-2-13b-hf": ModelShape(5120, 40, 40, 40, 13824, 32000),
    "meta-llama/Llama-2-70b-hf": ModelShape(8192, 80, 64, 8, 28672, 32000),
    "mistralai/Mistral-7B-v0.1": ModelShape(4096, 32, 32, 8, 14336, 32000),
}


def model_shape(model: str) -> ModelShape:
    """Shape of `model`: a local directory's config.json, the offline table, or the hub's config.json."""
    local = Path(model).expanduser()
    if (local / "config.json").is_file():
        return ModelShape.from_config(json.loads((local / "config.json").read_text()))
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json")
    except Exception as err:  # offline, gated or missing: say which model and why
        raise LookupError(
            f"Unknown base model {model!r}: not in the offline table ({', '.join(KNOWN_SHAPES)}) "
            f"and its config.json could not be fetched ({type(err).__name__}: {err})"
        ) from err
    return ModelShape.from_config(json.loads(Path(path).read_text()))
