"""The zip's own environment for the smoke test: a venv built from its requirements.txt alone, and `docker build`.

The image installs the zip's requirements.txt and nothing else, so the smoke test does the same: a fresh venv
(llmkit.core.venvs.ToolVenv, in the cache, keyed by the sha256 of the requirements file) runs the Dockerfile's CMD,
with only the unpacked zip on its path. A package missing from requirements.txt, or pins that do not work
together, fail here rather than on the organisers' machine.

On a machine without CUDA the CUDA build of torch and its CUDA wheels (GBs, useless here) are replaced by torch's
CPU build of the same version: from PyTorch's CPU index when it answers, else whatever build pip finds for the pin
(a local CPU wheel, or PyPI's CUDA build, which runs on the CPU too). Every other pin is installed as written.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from llmkit.core.venvs import ToolVenv
from llmkit.submit.image import CUDA_ONLY_PACKAGES

LOG = logging.getLogger(__name__)

CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
DOCKER_BUILD_TIMEOUT_S = 3600


@dataclass(frozen=True)
class ZipEnvironment:
    """The venv a zip's server runs in, and how its requirements were adapted to this machine."""

    venv: ToolVenv
    requirements_sha256: str  # of the zip's requirements.txt, as written
    torch_source: str  # where torch comes from here, in words

    @property
    def python(self) -> Path:
        return self.venv.python

    def describe(self) -> str:
        return (
            f"a venv of the zip's requirements.txt alone (sha256 {self.requirements_sha256[:12]}; "
            f"{self.torch_source}) in {self.venv.path}"
        )


def zip_environment(requirements_txt: str, *, cuda: bool) -> ZipEnvironment:
    """The venv for a zip whose requirements.txt is `requirements_txt` (not installed yet: `.venv.install()`)."""
    digest = hashlib.sha256(requirements_txt.encode()).hexdigest()
    text, torch_source = requirements_txt, "torch as pinned (CUDA build)"
    if not cuda:
        index = CPU_TORCH_INDEX if _answers(CPU_TORCH_INDEX + "/torch/") else None
        text, torch_source = cpu_requirements(requirements_txt, index)
    flavour = "cuda" if cuda else "cpu"
    venv = ToolVenv(
        directory=f"submission-venv-{digest[:16]}-{flavour}",
        env_var=f"LLMKIT_SUBMISSION_VENV_{digest[:16].upper()}",  # another place for this one venv
        requirements=(),
        marker="bin/python",
        setup_command="llmkit verify-submission ZIP --smoke",
        requirements_file=text,
    )
    return ZipEnvironment(venv, digest, torch_source)


def cpu_requirements(text: str, cpu_index: str | None) -> tuple[str, str]:
    """`text` for a machine without CUDA, and where torch comes from, in words.

    torch's CUDA-only dependencies are dropped; with `cpu_index`, torch's pin becomes its `+cpu` build from there.
    """
    lines, torch_pin = [], None
    for line in text.splitlines():
        requirement = _requirement(line)
        name = canonicalize_name(requirement.name) if requirement else ""
        if CUDA_ONLY_PACKAGES.match(name):
            continue
        if name == "torch" and cpu_index is not None:
            torch_pin = next((s.version for s in requirement.specifier if s.operator == "=="), None)
            if torch_pin is not None:
                line = f"torch=={torch_pin.split('+')[0]}+cpu"
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


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.head(url, timeout=5, follow_redirects=True).status_code < 400
    except httpx.HTTPError:
        return False


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
