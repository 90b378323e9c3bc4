"""torch's CPU build for a tool venv on a machine without an NVIDIA GPU (HELM's venv, a zip's smoke-test venv).

PyPI's Linux wheel of torch is the CUDA build, which pulls GBs of CUDA wheels that such a machine cannot use. A
requirements file is rewritten to leave those wheels out and take the same torch version's `+cpu` build from
PyTorch's CPU index when it answers, else whatever build pip finds for the pin (a local CPU wheel, or PyPI's CUDA
build, which runs on the CPU too).
"""

from __future__ import annotations

import functools
import re

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# What only torch's CUDA build needs: its CUDA libraries as wheels, and Triton (GPU kernels).
CUDA_ONLY_PACKAGES = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


@functools.cache
def cpu_torch_index() -> str | None:
    """PyTorch's CPU wheel index if it answers from here, else None (asked once per process).

    pip would otherwise retry an unreachable index for every package it resolves: minutes for crfm-helm.
    """
    import httpx

    try:
        answers = httpx.head(CPU_TORCH_INDEX + "/torch/", timeout=5, follow_redirects=True).status_code < 400
    except httpx.HTTPError:
        answers = False
    return CPU_TORCH_INDEX if answers else None


def cpu_requirements(text: str, cpu_index: str | None) -> tuple[str, str]:
    """Requirements file `text` for a machine without CUDA, and where torch comes from, in words.

    torch's CUDA-only dependencies are dropped; with `cpu_index`, torch's `==` pin becomes the same version's `+cpu`
    build from there. Without it pip takes the pin as it finds it (a local wheel of the CPU build, or PyPI's CUDA
    build, which runs on the CPU too).
    """
    lines, torch_pin = [], None
    for line in text.splitlines():
        requirement = _requirement(line)
        name = canonicalize_name(requirement.name) if requirement else ""
        if CUDA_ONLY_PACKAGES.match(name):
            continue
        if name == "torch" and cpu_index is not None:
            torch_pin = next((s.version.split("+")[0] for s in requirement.specifier if s.operator == "=="), None)
            if torch_pin is not None:
                line = f"torch=={torch_pin}+cpu"
        lines.append(line)
    if torch_pin is not None:
        lines.insert(0, f"--extra-index-url {cpu_index}")
        return "\n".join(lines) + "\n", f"torch {torch_pin}+cpu from {cpu_index}, its CUDA wheels left out"
    reason = "PyTorch's CPU index did not answer" if cpu_index is None else "torch is not pinned with =="
    return "\n".join(lines) + "\n", f"torch as pip finds the pin ({reason}), its CUDA wheels left out"


def _requirement(line: str) -> Requirement | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None
