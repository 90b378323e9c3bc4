"""Tools whose pins clash with the project's, each in a virtual environment of its own: crfm-helm, vLLM, and a
submission zip's own requirements (its smoke test).

The venv lives outside the repository, in the cache, keyed by the tool's version (an environment variable
overrides where), so every clone and CI run on a machine shares one install. A stamp file written after a
successful install makes set-up idempotent; a lock lets two clones set up at once (the second waits, then finds
the stamp).

On a machine without an NVIDIA GPU (`has_cuda`), a venv that would hold torch takes its CPU build
(`llmkit.core.cpu_torch`). This module ships in vLLM submissions (the server's launcher): it imports only the
standard library and `llmkit.core.files`, which is standard library at import time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmkit.core.files import cache_dir

LOG = logging.getLogger(__name__)

_STAMP = ".llmkit-installed"
_REQUIREMENTS = "llmkit-requirements.txt"


class ToolVenvError(RuntimeError):
    """A tool's venv is missing or could not be installed."""


@dataclass(frozen=True)
class ToolVenv:
    """One tool's venv: what to install in it, and how to tell it is there."""

    directory: str  # under the cache, e.g. "helm-venv-0.5.16"
    env_var: str  # names another place for it, e.g. HELM_VENV
    requirements: tuple[str, ...]  # pip requirement specifiers
    marker: str  # a file the install must leave, relative to the venv (e.g. "bin/helm-run")
    setup_command: str  # what the user runs to install it, for error messages
    no_deps: tuple[str, ...] = ()  # installed without their dependencies (whose own pins do not matter here)
    remove: tuple[str, ...] = ()  # packages the install pulls in but whose import breaks the tool
    # A requirements file's text (pins and pip options such as --extra-index-url), written into the venv and
    # installed with `pip install -r` after `requirements`: a submission zip's own requirements.txt.
    requirements_file: str = ""
    name: str = ""  # what it holds, for messages (default: the requirements)

    @property
    def description(self) -> str:
        """What the venv holds, for messages."""
        return self.name or " ".join(self.requirements) or f"the requirements in {self.path / _REQUIREMENTS}"

    @property
    def path(self) -> Path:
        return Path(os.environ.get(self.env_var) or cache_dir() / self.directory)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def executable(self, name: str) -> Path:
        return self.path / "bin" / name

    def _stamp_text(self) -> str:
        return "\n".join([*self.requirements, *self.no_deps]) + "\n" + self.requirements_file

    def is_installed(self) -> bool:
        stamp = self.path / _STAMP
        return stamp.is_file() and stamp.read_text() == self._stamp_text() and (self.path / self.marker).is_file()

    def require(self) -> Path:
        """The venv, or a clear error saying how to create it."""
        if not self.is_installed():
            raise ToolVenvError(f"{self.description} is not installed in {self.path}: run `{self.setup_command}`")
        return self.path

    def install(self, *, force: bool = False) -> Path:
        """Create the venv and install the requirements unless the stamp says they are there; return the venv."""
        venv = self.path
        try:
            if self.is_installed() and not force:
                LOG.info("%s already installed in %s", self.description, venv)
                return venv
            return self._install(venv, force)
        except OSError as err:  # a venv path that is a file, or under one we may not write in
            where = f" ({self.env_var}={os.environ[self.env_var]})" if os.environ.get(self.env_var) else ""
            raise ToolVenvError(f"cannot install {self.description} in {venv}{where}: {err}") from None

    def _install(self, venv: Path, force: bool) -> Path:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv_lock(venv), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.is_installed() and not force:
                return venv
            started = time.monotonic()
            (venv / _STAMP).unlink(missing_ok=True)
            if not self.python.is_file():
                LOG.info("Creating %s", venv)
                _run([sys.executable, "-m", "venv", str(venv)])
            LOG.info("Installing %s into %s (minutes, GBs)", self.description, venv)
            if self.requirements:
                _run([str(self.python), "-m", "pip", "install", *self.requirements])
            if self.requirements_file:
                (venv / _REQUIREMENTS).write_text(self.requirements_file)
                _run([str(self.python), "-m", "pip", "install", "--requirement", str(venv / _REQUIREMENTS)])
            if self.no_deps:
                _run([str(self.python), "-m", "pip", "install", "--no-deps", *self.no_deps])
            if self.remove:
                _run([str(self.python), "-m", "pip", "uninstall", "-y", *self.remove])
            (venv / _STAMP).write_text(self._stamp_text())
            LOG.info("%s ready in %.0f s", venv, time.monotonic() - started)
        return venv


def venv_lock(venv: Path) -> Path:
    """The file a venv's install holds locked (flock): beside the venv, so that removing the venv leaves it."""
    return venv.parent / f".{venv.name}.lock"


def has_cuda() -> bool:
    """Whether this machine has an NVIDIA GPU (asked of the driver: the project's torch may be a CPU build)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").is_file()


def _run(command: list[str]) -> None:
    # pip's own output streams through: it is the progress display for a long install.
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ToolVenvError(f"`{' '.join(command)}` failed with exit code {result.returncode}")
