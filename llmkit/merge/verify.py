"""Does a merged model compute what base + adapter computed? Logits and greedy tokens on a few prompts.

The reference (base + unmerged adapter, through peft) generates a greedy continuation of each prompt; both models
then score prompt + continuation in one forward pass, and we compare every position's logits and argmax token.
Models are loaded one after the other, the reference's logits kept, so verifying needs one model's memory.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llmkit.core.bnb_kernels import dequantizing_4bit_kernel
from llmkit.core.models import load_for_inference
from llmkit.data.prompts import ALPACA_NO_INPUT

if TYPE_CHECKING:
    from llmkit.merge.weights import Nf4Options

LOG = logging.getLogger(__name__)

PROMPTS = (
    "The capital of France is",
    ALPACA_NO_INPUT.format(instruction="Name three primary colors."),
    "Question: What is 12 plus 7?\nAnswer:",
    "def fibonacci(n):\n",
)
NEW_TOKENS = 8


@dataclass(frozen=True)
class Tolerance:
    max_logit_diff: float  # largest |logit difference| over every position and vocabulary entry
    min_token_agreement: float  # fraction of positions whose argmax token is the same


# Why these values: merging rounds W + delta to the merge dtype once, while base + adapter rounds W, runs the
# adapter's path apart and adds the activations, each rounded; in bfloat16 (8-bit mantissa) that alone moves
# SmolLM2-135M's logits by up to 1.2-2.0 (mean 0.14) and flips 2-3% of argmax tokens where the top two nearly tie.
# The same model without its adapter (LoRA B ~ N(0, 0.02..0.05)) is 4-6 logits and 7-13% of tokens away, a wrong
# adapter further: so bfloat16 allows 3.0 and 90%. float16 has 3 more mantissa bits, float32 16 more. Subtler
# mistakes (a slightly wrong scale) hide in bfloat16's noise; the tests compare the arithmetic with peft's own
# merge_and_unload bit for bit instead.
TOLERANCES = {
    torch.bfloat16: Tolerance(max_logit_diff=3.0, min_token_agreement=0.9),
    torch.float16: Tolerance(max_logit_diff=0.5, min_token_agreement=0.95),
    torch.float32: Tolerance(max_logit_diff=0.05, min_token_agreement=0.99),
}


@dataclass(frozen=True)
class Agreement:
    max_logit_diff: float
    mean_logit_diff: float
    token_agreement: float
    positions: int

    def within(self, tolerance: Tolerance) -> bool:
        return (
            self.max_logit_diff <= tolerance.max_logit_diff and self.token_agreement >= tolerance.min_token_agreement
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """What base + adapter made of the prompts: token sequences (prompt + greedy continuation) and their logits."""

    sequences: list[torch.Tensor]
    logits: list[torch.Tensor]
    pad: int


class VerificationError(RuntimeError):
    """The merged model disagrees with base + adapter beyond the tolerance."""


@torch.inference_mode()
def _score(model, sequences: list[torch.Tensor], pad: int) -> list[torch.Tensor]:
    """Logits (float32) at every position of each sequence, from one right-padded batch: one forward pass."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, sequence in enumerate(sequences):
        ids[i, : len(sequence)], mask[i, : len(sequence)] = sequence, 1
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return [logits[i, : len(sequence)] for i, sequence in enumerate(sequences)]


@torch.inference_mode()
def _reference_outputs(model, tokenizer, prompts, new_tokens: int) -> Reference:
    # Batched (left-padded) generation: a 4-bit model dequantizes every weight per step, so steps are the cost.
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    generated = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    width, sequences = batch.input_ids.shape[1], []
    for row, mask in zip(generated, batch.attention_mask, strict=True):
        continuation = row[width:].tolist()
        ends = [i for i, token in enumerate(continuation) if token in (pad, tokenizer.eos_token_id)]
        continuation = continuation[: ends[0] + 1] if ends else continuation  # up to the first end of text
        sequences.append(torch.cat([row[int((mask == 0).sum()) : width], torch.tensor(continuation)]))
    return Reference(sequences, _score(model, sequences, pad), pad)


def _non_finite(logits: list[torch.Tensor]) -> str | None:
    """How many positions' logits hold NaN or inf ("N of M positions"); None if none do. NaN compares as no
    difference (Python's max(0.0, nan) is 0.0) and all-NaN rows share their argmax: a model of NaNs agreed 100%."""
    bad = sum(int((~torch.isfinite(rows)).any(-1).sum()) for rows in logits)
    return f"{bad} of {sum(len(rows) for rows in logits)} positions" if bad else None


def _compare(model, reference: Reference) -> Agreement:
    scores = _score(model, reference.sequences, reference.pad)
    if bad := _non_finite(scores):
        raise VerificationError(
            f"The merged model gives NaN or infinite logits at {bad} (base + adapter's are finite): its weights are "
            "not finite, or overflow the merge dtype"
        )
    max_diff, total_diff, agree, positions = 0.0, 0.0, 0, 0
    for logits, expected in zip(scores, reference.logits, strict=True):
        if logits.shape != expected.shape:
            raise VerificationError(f"logits shaped {list(logits.shape)}, base + adapter gave {list(expected.shape)}")
        diff = (logits - expected).abs()
        max_diff = max(max_diff, diff.max().item())
        total_diff += diff.mean().item() * len(logits)
        agree += (logits.argmax(-1) == expected.argmax(-1)).sum().item()
        positions += len(logits)
    return Agreement(max_diff, total_diff / positions, agree / positions, positions)


def _load(
    model_dir: Path,
    dtype: torch.dtype,
    adapter: Path | None = None,
    quantization: str = "none",
    unquantized: list[str] | None = None,
    double_quant: bool = True,
):
    # The device is load_for_inference's "auto" (llmkit.core.devices): the GPU where there is one, else the CPU.
    loaded = load_for_inference(
        str(model_dir),
        adapters={"default": str(adapter)} if adapter else None,
        dtype=str(dtype).removeprefix("torch."),
        quantization=quantization,
        unquantized=unquantized,
        double_quant=double_quant,
    )
    return loaded.model, loaded.tokenizer


def reference_of(
    base_dir: Path,
    adapter_dir: Path,
    dtype: torch.dtype,
    *,
    quantization: str = "none",
    unquantized: list[str] | None = None,
    double_quant: bool = True,
):
    """Greedy continuations and their logits from base + unmerged adapter (the base 4-bit for quantization nf4 or
    fp4, double quantized or not, but for the `unquantized` modules)."""
    model, tokenizer = _load(base_dir, dtype, adapter_dir, quantization, unquantized, double_quant)
    if quantization != "none":
        dequantizing_4bit_kernel(model)  # the merged weights' arithmetic, not a repacked bfloat16 kernel's
    reference = _reference_outputs(model, tokenizer, PROMPTS, NEW_TOKENS)
    del model, tokenizer
    gc.collect()  # free one model before the next is loaded
    if bad := _non_finite(reference.logits):
        raise VerificationError(
            f"base + adapter ({base_dir} + {adapter_dir}) gives NaN or infinite logits at {bad} in {dtype}, so "
            "there is nothing to check the merge against: the base's or the adapter's weights are not finite, or "
            "overflow this dtype"
        )
    return reference


def agreement(model_dir: Path, dtype: torch.dtype, reference) -> Agreement:
    """How closely the model at `model_dir` reproduces a reference from `reference_of`."""
    model, _ = _load(model_dir, dtype)
    result = _compare(model, reference)
    del model
    gc.collect()
    return result


def verify_merge(
    merged_dir: Path, base_dir: Path, adapter_dir: Path, dtype: torch.dtype, *, round_trip: Nf4Options | None = None
) -> Agreement:
    """Compare the merged model with base + adapter in the same dtype; raise if beyond `TOLERANCES[dtype]`.

    `round_trip`: how the merge round-tripped the base through 4 bits, as training quantized it (data type, double
    quantization, from training's dtype). The reference is then what training ran, that 4-bit base + adapter, and
    both models compute in training's dtype; the tolerance stays the merged weights' dtype's, the rounding being
    compared.
    """
    compute = getattr(torch, round_trip.dtype) if round_trip else dtype
    reference = reference_of(
        base_dir,
        adapter_dir,
        compute,
        quantization=round_trip.quant_type if round_trip else "none",
        unquantized=_not_round_tripped(base_dir, adapter_dir) if round_trip else None,
        double_quant=round_trip.double_quant if round_trip else True,
    )
    result = agreement(merged_dir, compute, reference)
    base = f"{round_trip.quant_type.upper()} base" if round_trip else "base"
    tolerance = TOLERANCES[dtype]
    LOG.info("Merged vs %s + adapter (%s): %s", base, compute, result)
    if not result.within(tolerance):
        raise VerificationError(
            f"The merged model disagrees with {base} + adapter in {compute}: largest logit "
            f"difference {result.max_logit_diff:.3g} (tolerance {tolerance.max_logit_diff}), greedy-token agreement "
            f"{result.token_agreement:.1%} (at least {tolerance.min_token_agreement:.0%} required)"
        )
    return result


def _not_round_tripped(base_dir: Path, adapter_dir: Path) -> list[str] | None:
    """The 4-bit layers the adapter does not target, which the 4-bit round-trip leaves at the base's precision (and
    the output head, as transformers leaves it): the reference keeps them so too, or it would differ from the
    merge by their 4-bit rounding (0.11 logits in float32 on a tiny model targeting 5 of its 7 linear layers).
    None: every 4-bit layer is targeted, and the reference is training's own 4-bit base."""
    from llmkit.core.shapes import model_shape
    from llmkit.merge.weights import base_layout, load_lora_adapter

    layout = base_layout(base_dir)
    untargeted = sorted(layout.quantizable - load_lora_adapter(adapter_dir, layout).modules.keys())
    if not untargeted:
        return None
    head = model_shape(str(base_dir)).head
    return untargeted + ([head.name] if head else [])
