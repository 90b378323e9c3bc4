"""The zip's own environment for the smoke test: a venv built from its requirements.txt alone, and `docker build`.

The image installs the zip's requirements.txt and nothing else, so the smoke test does the same: a fresh venv
(llmkit.core.venvs.ToolVenv, in the cache, keyed by the sha256 of the requirements file) runs the Dockerfile's CMD,
with only the unpacked zip on its path. A package missing from requirements.txt, or pins that do not work
together, fail here rather than on the organisers' machine. The cache keeps the three most recently used such venvs.

On a machine without CUDA, torch's CUDA build gives way to its CPU build (`llmkit.core.cpu_torch`).
Every other pin is installed as written.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llmkit.core.cpu_torch import cpu_requirements, cpu_torch_index
from llmkit.core.files import cache_dir, sha256_bytes
from llmkit.core.venvs import ToolVenv, venv_lock

LOG = logging.getLogger(__name__)

_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
DOCKER_BUILD_TIMEOUT_S = 3600
VENV_PREFIX = "submission-venv-"
KEPT_VENVS = 3  # zips' venvs left in the cache, the most recently used; older ones are removed (1.3 GB each)


@dataclass(frozen=True)
class ZipEnvironment:
    """The venv a zip's server runs in, and how its requirements were adapted to this machine."""

    venv: ToolVenv
    requirements_sha256: str  # of the zip's requirements.txt, as written
    torch_source: str  # where torch comes from here, in words

    @property
    def python(self) -> Path:
        return self.venv.python

    def install(self) -> list[Path]:
        """Install the venv unless it is there, mark it used, and remove the cache's zip venvs beyond the
        KEPT_VENVS most recently used (each distinct requirements.txt would otherwise keep 1.3 GB for good);
        returns the folders removed."""
        self.venv.install()
        os.utime(self.venv.path)  # the folder's mtime says when a smoke test last used it
        return prune_venvs(cache_dir(), KEPT_VENVS)

    def describe(self) -> str:
        return (
            f"a venv of the zip's requirements.txt alone (sha256 {self.requirements_sha256[:12]}; "
            f"{self.torch_source}) in {self.venv.path}"
        )


def zip_environment(requirements_txt: str, *, cuda: bool) -> ZipEnvironment:
    """The venv for a zip whose requirements.txt is `requirements_txt` (not installed yet: `.venv.install()`)."""
    digest = sha256_bytes(requirements_txt.encode())
    text, torch_source = requirements_txt, "torch as pinned (CUDA build)"
    if not cuda:
        text, torch_source = cpu_requirements(requirements_txt, cpu_torch_index())
    flavour = "cuda" if cuda else "cpu"
    venv = ToolVenv(
        directory=f"{VENV_PREFIX}{digest[:16]}-{flavour}",
        env_var=f"LLMKIT_SUBMISSION_VENV_{digest[:16].upper()}",  # another place for this one venv
        requirements=(),
        marker="bin/python",
        setup_command="llmkit verify-submission ZIP --smoke",
        requirements_file=text,
    )
    return ZipEnvironment(venv, digest, torch_source)


def prune_venvs(root: Path, keep: int) -> list[Path]:
    """Remove the zip venvs under `root` beyond the `keep` most recently used; one being installed (its lock held
    by another process) stays. Returns the folders removed."""
    venvs = sorted((p for p in root.glob(f"{VENV_PREFIX}*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    removed = []
    for venv in venvs[: max(len(venvs) - keep, 0)]:
        with open(venv_lock(venv), "w") as lock:  # ToolVenv.install's lock
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(venv)
            removed.append(venv)
        venv_lock(venv).unlink(missing_ok=True)
    if removed:
        LOG.info("Removed %d older zip venv(s) from %s: %s", len(removed), root, ", ".join(p.name for p in removed))
    return removed


def missing_module(log: str) -> str | None:
    """The module a server's log says could not be imported (the last ModuleNotFoundError), or None."""
    found = _MISSING_MODULE.findall(log)
    return found[-1] if found else None


@dataclass(frozen=True)
class DockerBuild:
    """`docker build` of the unpacked zip: ran (ok or not), or skipped, with one line saying which and why."""

    ran: bool
    ok: bool
    detail: str


def docker_build(context: Path, tag: str) -> DockerBuild:
    """`docker build -t tag context` where a Docker engine answers; else skipped, saying why."""
    docker = shutil.which("docker")
    if docker is None:
        return DockerBuild(False, True, "skipped: no docker command on this machine")
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        info = None
    if info is None or info.returncode != 0:
        return DockerBuild(False, True, "skipped: the docker command is here, but no Docker engine answers")
    LOG.info("docker build -t %s %s (Docker %s)", tag, context, info.stdout.strip())
    try:
        result = subprocess.run(
            [docker, "build", "-t", tag, str(context)], capture_output=True, text=True, timeout=DOCKER_BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return DockerBuild(True, False, f"docker build ran past {DOCKER_BUILD_TIMEOUT_S} s")
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return DockerBuild(True, False, f"docker build failed (exit {result.returncode}): " + " | ".join(tail))
    return DockerBuild(True, True, f"docker build: built image {tag} (Docker {info.stdout.strip()})")
