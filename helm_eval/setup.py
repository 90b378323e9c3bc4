"""crfm-helm in a virtual environment of its own: `llmkit helm-setup` (`make helm-setup`).

HELM is only an HTTP client of the server, as in the challenge where it ran in its own container, and its
dependencies (torch, datasets~=3.1, spacy, ...) clash with the training environment. The venv is a
`llmkit.core.venvs.ToolVenv`: ~/.cache/llmkit/helm-venv-<version> (`HELM_VENV` overrides it), ~6 GB, shared by every
clone on the machine.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.core.venvs import ToolVenv, ToolVenvError

HELM_VERSION = "0.5.16"
HELM_VENV = ToolVenv(
    directory=f"helm-venv-{HELM_VERSION}",
    env_var="HELM_VENV",
    requirements=(f"crfm-helm=={HELM_VERSION}",),
    marker="bin/helm-run",
    setup_command="make helm-setup",
)
HelmSetupError = ToolVenvError


def helm_executable(name: str) -> Path:
    """A console script of the HELM venv, e.g. helm-run."""
    return HELM_VENV.executable(name)


def require_helm() -> Path:
    """The venv, or a clear error saying how to create it (tests and helm-eval call this before helm-run)."""
    return HELM_VENV.require()


def helm_setup(*, force: bool = False) -> Path:
    """Create the venv and install crfm-helm unless the stamp says it is there; return the venv."""
    return HELM_VENV.install(force=force)
