"""crfm-helm in a virtual environment of its own: `llmkit helm-setup` (`make helm-setup`).

HELM is only an HTTP client of the server, as in the challenge where it ran in its own container, and its
dependencies (torch, datasets~=3.1, spacy, ...) clash with the training environment. The venv lives outside the
repository, in a cache keyed by version (`HELM_VENV` overrides it), so every clone and CI run on a machine shares
one ~6 GB install. A stamp file written after a successful install makes setup idempotent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from llmkit.core.models import cache_dir

LOG = logging.getLogger(__name__)

HELM_VERSION = "0.5.16"
HELM_REQUIREMENT = f"crfm-helm=={HELM_VERSION}"
_STAMP = ".llmkit-installed"


class HelmSetupError(RuntimeError):
    """crfm-helm is missing or could not be installed."""


def helm_venv_dir() -> Path:
    return Path(os.environ.get("HELM_VENV") or cache_dir() / f"helm-venv-{HELM_VERSION}")


def helm_executable(name: str, venv: Path | None = None) -> Path:
    """A console script of the HELM venv, e.g. helm-run."""
    return (venv or helm_venv_dir()) / "bin" / name


def is_installed(venv: Path | None = None) -> bool:
    venv = venv or helm_venv_dir()
    stamp = venv / _STAMP
    return (
        stamp.is_file()
        and stamp.read_text().strip() == HELM_REQUIREMENT
        and helm_executable("helm-run", venv).is_file()
    )


def require_helm(venv: Path | None = None) -> Path:
    """The venv, or a clear error saying how to create it (tests and helm-eval call this before helm-run)."""
    venv = venv or helm_venv_dir()
    if not is_installed(venv):
        raise HelmSetupError(f"{HELM_REQUIREMENT} is not installed in {venv}: run `make helm-setup`")
    return venv


def helm_setup(*, force: bool = False) -> Path:
    """Create the venv and install crfm-helm unless the stamp says it is there; return the venv.

    Args:
        force: reinstall even when the stamp is present.
    """
    venv = helm_venv_dir()
    if is_installed(venv) and not force:
        LOG.info("%s already installed in %s", HELM_REQUIREMENT, venv)
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two clones (or a CI run beside a developer) may set up at once: the second waits, then finds the stamp.
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(venv) and not force:
            return venv
        started = time.monotonic()
        (venv / _STAMP).unlink(missing_ok=True)
        if not (venv / "bin" / "python").is_file():
            LOG.info("Creating %s", venv)
            _run([sys.executable, "-m", "venv", str(venv)])
        LOG.info("Installing %s into %s (several minutes and ~6 GB the first time)", HELM_REQUIREMENT, venv)
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", HELM_REQUIREMENT])
        (venv / _STAMP).write_text(HELM_REQUIREMENT + "\n")
        LOG.info("HELM venv ready in %.0f s", time.monotonic() - started)
    return venv


def _run(command: list[str]) -> None:
    # pip's own output streams through: it is the progress display for a long install.
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise HelmSetupError(f"`{' '.join(command)}` failed with exit code {result.returncode}")
