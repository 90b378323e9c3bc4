"""Where a model runs and in what precision: the one home of the device, dtype and bitsandbytes rules.

- device: "auto" is cuda where torch sees a CUDA device, else cpu; "cuda" asked for without one is an error.
- dtype: "auto" is bfloat16 on an Ampere-or-newer GPU, float16 on older GPUs, float32 on the CPU.
- bitsandbytes: NF4/FP4 4-bit (double quantization, a compute dtype) or LLM.int8() 8-bit.

Training (`llmkit.train`), merging (`llmkit.merge`), the config (`llmkit.config`) and the server all call these.
This module ships in the submission image beside `llmkit.server`, so it imports only torch and transformers (which
the server needs anyway), and lazily: reading a config must not pay for importing torch.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig

AMPERE = (8, 0)  # compute capability that brought bfloat16 and TF32 tensor cores


class Device(str, Enum):
    """Where a model runs; "auto": see `resolve_device`."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Dtype(str, Enum):
    """The dtype weights are loaded, trained and merged in; "auto": chosen for the device, see `auto_dtype`."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Quantization(str, Enum):
    """How a loaded model holds its weights (bitsandbytes), as the server's --quantization offers it."""

    none = "none"
    nf4 = "nf4"  # 4-bit NF4 with double quantization: what QLoRA trains against
    int8 = "int8"  # 8-bit LLM.int8()


DTYPES = tuple(dtype.value for dtype in Dtype if dtype is not Dtype.auto)  # the ones torch has
# bnb_config also takes FP4, bitsandbytes' other 4-bit data type: axolotl trains `adapter: lora` with
# `load_in_4bit` in it. Nothing serves it, so it is no `Quantization`.
BNB_QUANTIZATIONS = (Quantization.none.value, Quantization.nf4.value, "fp4", Quantization.int8.value)


def quiet_bitsandbytes_kernel_notice() -> None:
    """Silence bitsandbytes' import-time warning on CPUs with AVX512-BF16: it tries to fetch an optional faster CPU
    4-bit kernel from the hub with the `kernels` package and, without it, asks to `pip install kernels`. 4-bit works
    without it, and importing peft (every stage does) would otherwise open each command's output with that line."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def resolve_device(device: str = "auto") -> str:
    """The device to use: "auto" is "cuda" where torch sees a CUDA device, else "cpu"; other names are checked.

    Raises:
        RuntimeError: "cuda" (or "cuda:N") was asked for on a machine without CUDA.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if is_cuda(device) and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for, but torch sees no CUDA device")
    return device


def is_cuda(device: str) -> bool:
    """Whether a device name ("cuda", "cuda:1", "cpu") names a CUDA device."""
    return device.partition(":")[0] == "cuda"


def cuda_capability() -> tuple[int, int]:
    """The local GPU's compute capability, e.g. (8, 9); (0, 0) without CUDA, which is older than every GPU."""
    import torch

    return torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)


def ampere_or_newer(capability: tuple[int, int] | None = None) -> bool:
    """Whether a GPU (default: the local one) has bfloat16 and TF32 tensor cores, compute capability 8.0 or more.

    The capability decides, not `torch.cuda.is_bf16_supported()`: that also says yes on older GPUs, where bfloat16
    is emulated and slower than float16.
    """
    return (cuda_capability() if capability is None else tuple(capability)) >= AMPERE


def auto_dtype(device: str, capability: tuple[int, int] | None = None, *, bf16: bool = True, fp16: bool = True) -> str:
    """The dtype "auto" means on a device: bfloat16 on Ampere or newer, float16 on older GPUs, float32 on the CPU.

    Args:
        device: "cpu" or "cuda" (as from `resolve_device`).
        capability: the GPU's compute capability; default: the local GPU's.
        bf16, fp16: whether each half type may be chosen (a config's `bf16: false` rules bfloat16 out).
    """
    if not is_cuda(device):
        return "float32"  # half precision on the CPU is slow, and mixed precision there gains nothing
    if bf16 and ampere_or_newer(capability):
        return "bfloat16"
    return "float16" if fp16 else "float32"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name in `DTYPES`.

    Raises:
        ValueError: any other name (torch has more dtypes than a model is loaded in).
    """
    import torch

    return getattr(torch, dtype_name(name))


def dtype_name(name: str) -> str:
    """`name` when it is in `DTYPES` (checked without importing torch).

    Raises:
        ValueError: any other name.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected bfloat16, float16 or float32")
    return name


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """A dtype name, or "auto" resolved for the device (see `auto_dtype`), as a torch dtype."""
    return torch_dtype(auto_dtype(device) if dtype == "auto" else dtype)


def bnb_config(
    quantization: str,
    compute_dtype: torch.dtype,
    *,
    double_quant: bool = True,
    int8_has_fp16_weight: bool = False,
    skip_modules: list[str] | None = None,
) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for transformers' `from_pretrained`; None for "none".

    Args:
        quantization: "nf4" or "fp4" (4-bit data type, QLoRA uses nf4), "int8" (LLM.int8()), or "none".
        compute_dtype: what 4-bit layers compute in, dequantizing their weights to it (the model's dtype).
        double_quant: 4-bit: quantize the block scales too (~0.4 bit per parameter saved).
        int8_has_fp16_weight: 8-bit: keep a 16-bit copy of the weights (needed to train them in full).
        skip_modules: full module names left unquantized, instead of transformers' default (the output head).
    """
    if quantization not in BNB_QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r}: expected one of {', '.join(BNB_QUANTIZATIONS)}")
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_has_fp16_weight=int8_has_fp16_weight)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip_modules,
    )


def device_name(device: str = "auto") -> str:
    """What a report calls the device: the GPU's name ("NVIDIA H100 80GB HBM3"), or "cpu"."""
    import torch

    device = resolve_device(device)
    return torch.cuda.get_device_name(torch.device(device)) if is_cuda(device) else device
