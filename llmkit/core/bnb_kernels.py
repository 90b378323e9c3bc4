"""Which bitsandbytes kernel a 4-bit model runs on, for the stages that need its exact arithmetic (training and a
merge's verification); not imported by the server, whose vLLM image has no bitsandbytes."""

from __future__ import annotations


def dequantizing_4bit_kernel(model) -> None:
    """Keep every bitsandbytes 4-bit layer of `model` on the kernel that dequantizes its stored weight.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight the first time it runs in eval mode
    without gradients, and every later forward uses that kernel, which has no backward and computes in bfloat16.
    Training needs the gradient: measured here on the default config, the first step's gradient norm fell from 11.5
    to 3.0 after one evaluation and the loss stopped falling. A merge's verification needs the arithmetic of the
    merged weights: measured here, the repacked float32 reference was 0.16 to 0.17 logits off an exact merge.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
