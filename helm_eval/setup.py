"""crfm-helm in a virtual environment of its own: `llmkit helm-setup` (`make helm-setup`).

HELM is only an HTTP client of the server, as in the challenge where it ran in its own container, and its
dependencies (torch, datasets~=3.1, spacy, ...) clash with the training environment. The venv is a
`llmkit.core.venvs.ToolVenv`: ~/.cache/llmkit/helm-venv-<version>[-cpu] (`HELM_VENV` overrides it), shared by every
clone on the machine. On a machine without an NVIDIA GPU it holds torch's CPU build of this environment's torch
version (1.9 GB instead of 6.4 GB), and no torchvision: only HELM's image metrics import it, and PyPI's build does not
load beside torch's CPU build.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from llmkit.core.cpu_torch import cpu_requirements, cpu_torch_index
from llmkit.core.venvs import ToolVenv, ToolVenvError, has_cuda

HELM_VERSION = "0.5.16"
HelmSetupError = ToolVenvError


def helm_venv(cuda: bool | None = None) -> ToolVenv:
    """HELM's venv on this machine (with CUDA: crfm-helm and what it pulls in; without: torch's CPU build)."""
    cuda = has_cuda() if cuda is None else cuda
    requirement = f"crfm-helm=={HELM_VERSION}"
    where = {"env_var": "HELM_VENV", "marker": "bin/helm-run", "setup_command": "make helm-setup"}
    if cuda:
        return ToolVenv(directory=f"helm-venv-{HELM_VERSION}", requirements=(requirement,), **where)
    torch_pin = f"torch=={version('torch').split('+')[0]}"
    requirements_file, _ = cpu_requirements(f"{torch_pin}\n{requirement}\n", cpu_torch_index())
    return ToolVenv(
        directory=f"helm-venv-{HELM_VERSION}-cpu",
        requirements=(),
        remove=("torchvision",),
        requirements_file=requirements_file,
        name=f"{requirement} (with {torch_pin}, CPU build)",
        **where,
    )


def helm_executable(name: str) -> Path:
    """A console script of the HELM venv, e.g. helm-run."""
    return helm_venv().executable(name)


def require_helm() -> Path:
    """The venv, or a clear error saying how to create it (tests and helm-eval call this before helm-run)."""
    return helm_venv().require()


def helm_setup(*, force: bool = False) -> Path:
    """Create the venv and install crfm-helm unless the stamp says it is there; return the venv."""
    return helm_venv().install(force=force)
