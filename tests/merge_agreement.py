"""How close merged models come to the model QLoRA training ran: the check of `--nf4-roundtrip`, shared by the
merge and the model-family tests."""

from pathlib import Path

import torch

from llmkit.merge.verify import Agreement, agreement, reference_of


def agreement_with_trained(
    merged: dict[str, Path], base_dir: Path, adapter_dir: Path, trained_dtype: torch.dtype
) -> dict[str, Agreement]:
    """Each merged model against the NF4 base + adapter in `trained_dtype`, by name.

    This is what `--nf4-roundtrip` is for: a QLoRA adapter learned against NF4-rounded weights.
    """
    reference = reference_of(base_dir, adapter_dir, trained_dtype, quantization="nf4")
    return {name: agreement(path, trained_dtype, reference) for name, path in merged.items()}
